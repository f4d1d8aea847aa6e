import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SubpruneError } from '../src/errors.js';
import { DataType, forEachTensor, parseModel, tensorToFloat32, tensorToInt64 } from '../src/onnx/index.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { rng } from './oracle.js';

// Mutated bytes of every bundled model (bit flips, truncations, corrupted length fields and varint values) go through
// what `subprune inspect` does, and decode every weight: parse (external data resolved in an empty folder), decode the
// FLOAT/FLOAT16/DOUBLE and INT64 tensors, analyze, count params and FLOPs.
// Each case must load or throw SubpruneError('bad-input'), never anything else, and take well under 2 s.
// Deterministic: the seeds are fixed, so a failing case is reproduced by its name.

const MODELS = readdirSync('models')
  .filter((f) => f.endsWith('.onnx'))
  .sort();
const CASES = 320; // in all, split over the models
const PER_CASE_MS = 2000;
const FLOATS = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE]);

interface Field {
  tag: number;
  at: number;
  lenAt?: number;
  lenBytes?: number;
  len?: number;
  start: number;
  end: number;
}

function varint(b: Uint8Array, i: number): [number, number] | undefined {
  let v = 0,
    mul = 1;
  for (let k = 0; k < 10; k++) {
    if (i + k >= b.length) return undefined;
    v += (b[i + k] & 0x7f) * mul;
    mul *= 128;
    if (!(b[i + k] & 0x80)) return [v, k + 1];
  }
  return undefined;
}

/**
 * Protobuf fields of bytes[start, end) and, recursively, of every length-delimited payload that parses as a message.
 */
function fields(b: Uint8Array, start: number, end: number, out: Field[], depth = 0): boolean {
  const mine: Field[] = [];
  for (let i = start; i < end;) {
    const tag = varint(b, i);
    if (!tag || tag[0] < 8) return false;
    const at = i,
      type = tag[0] % 8;
    i += tag[1];
    if (type === 0) {
      const v = varint(b, i);
      if (!v) return false;
      mine.push({ tag: tag[0], at, start: i, end: i + v[1] });
      i += v[1];
    } else if (type === 1) i += 8;
    else if (type === 5) i += 4;
    else if (type === 2) {
      const l = varint(b, i);
      if (!l || i + l[1] + l[0] > end) return false;
      mine.push({ tag: tag[0], at, lenAt: i, lenBytes: l[1], len: l[0], start: i + l[1], end: i + l[1] + l[0] });
      i += l[1] + l[0];
    } else return false;
    if (i > end) return false;
  }
  out.push(...mine);
  // field 9 is raw_data (TensorProto) or strings (AttributeProto): never a message
  for (const f of mine)
    if (f.len !== undefined && f.tag >> 3 !== 9 && depth < 8) fields(b, f.start, f.end, out, depth + 1);
  return true;
}

function encodeVarint(v: bigint, minBytes: number): number[] {
  const out: number[] = [];
  do {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  } while (v > 0n || out.length < minBytes);
  out[out.length - 1] &= 0x7f;
  return out;
}

function splice(b: Uint8Array, from: number, to: number, bytes: number[]): Uint8Array {
  const out = new Uint8Array(b.length - (to - from) + bytes.length);
  out.set(b.subarray(0, from));
  out.set(bytes, from);
  out.set(b.subarray(to), from + bytes.length);
  return out;
}

/** The mutations of one model: [name, bytes] pairs, deterministic for a seed. */
function mutations(bytes: Uint8Array, n: number, seed: number): [string, Uint8Array][] {
  const r = rng(seed),
    pick = <T>(a: T[]) => a[Math.floor(r() * a.length)]!;
  const all: Field[] = [];
  fields(bytes, 0, bytes.length, all);
  const delimited = all.filter((f) => f.len !== undefined),
    varints = all.filter((f) => f.len === undefined);
  // structure is what breaks readers: aim half of the bit flips outside the weights (raw_data payloads)
  const raw = delimited.filter((f) => f.tag >> 3 === 9 && f.len! > 64);
  const inRaw = (i: number) => raw.some((f) => i >= f.start && i < f.end);
  const out: [string, Uint8Array][] = [];
  for (let c = 0; out.length < n; c++) {
    const kind = c % 4;
    if (kind === 0) {
      const b = bytes.slice(),
        flips = 1 + Math.floor(r() * 4),
        where: number[] = [];
      for (let k = 0; k < flips; k++) {
        let i = Math.floor(r() * b.length);
        for (let tries = 0; c % 8 === 0 && inRaw(i) && tries < 100; tries++) i = Math.floor(r() * b.length);
        b[i] ^= 1 << Math.floor(r() * 8);
        where.push(i);
      }
      out.push([`flip bits at ${where}`, b]);
    } else if (kind === 1) {
      const len = r() < 0.5 ? Math.floor(r() * 2048) : Math.floor(r() * bytes.length);
      out.push([`truncate to ${len} bytes`, bytes.subarray(0, len)]);
    } else if (kind === 2) {
      const f = pick(delimited);
      const v = pick([
        0n,
        BigInt(f.len! - 1),
        BigInt(f.len! + 1),
        BigInt(f.len! + 1000),
        BigInt(2 ** 31 - 1),
        2n ** 32n + 5n,
        2n ** 62n,
      ]);
      out.push([
        `length of field ${f.tag >> 3} at ${f.at}: ${f.len} → ${v}`,
        splice(bytes, f.lenAt!, f.lenAt! + f.lenBytes!, encodeVarint(v < 0n ? 0n : v, f.lenBytes!)),
      ]);
    } else {
      const f = pick(varints);
      const v = pick([0n, 1n, 2n ** 31n, 2n ** 40n, 2n ** 63n - 1n, 2n ** 64n - 1n, 1000n, 17n]);
      out.push([
        `varint field ${f.tag >> 3} at ${f.at} → ${v}`,
        splice(bytes, f.start, f.end, encodeVarint(v, f.end - f.start)),
      ]);
    }
  }
  return out;
}

describe('fuzz: the model reader and the analysis on mutated bundled models', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'subprune-fuzz-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.each(MODELS)(
    '%s: every mutation loads or throws SubpruneError(bad-input), each within 2 s',
    (file) => {
      const bytes = new Uint8Array(readFileSync(join('models', file)));
      const cases = mutations(bytes, Math.ceil(CASES / MODELS.length), 1 + MODELS.indexOf(file));
      const wrong: string[] = [];
      let loaded = 0,
        refused = 0;
      for (const [name, b] of cases) {
        const t = performance.now();
        try {
          const model = parseModel(b, dir);
          forEachTensor(model, (x) => {
            if (x.dataType === DataType.INT64) tensorToInt64(x);
            else if (FLOATS.has(x.dataType)) tensorToFloat32(x);
          });
          analyze(model);
          modelStats(model);
          loaded++;
        } catch (e) {
          if (e instanceof SubpruneError && e.code === 'bad-input') refused++;
          else wrong.push(`${name}: ${(e as Error)?.constructor?.name} ${(e as Error)?.message ?? e}`);
        }
        const ms = performance.now() - t;
        if (ms > PER_CASE_MS) wrong.push(`${name}: took ${ms.toFixed(0)} ms`);
      }
      expect(wrong.slice(0, 10)).toEqual([]);
      // not vacuous: the mutations both break the reader and get through it
      expect(refused).toBeGreaterThan(cases.length / 5);
      expect(loaded).toBeGreaterThan(cases.length / 10);
    },
    60_000,
  );
});
