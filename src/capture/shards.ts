// Sharded capture. The layerwise capture's statistics are sums over the calibration samples, so a calibration set split
// over processes or machines is captured part by part and the parts merge: per group and consumer the Gram matrix G =
// BᵀB, the column sums Bᵀ1 (the intercept's re-fit) and the row count, and the channel statistics a baseline ranks
// by (mean |x|: a mean weighted by rows; PFP's sensitivity: a maximum). This module holds that value (CaptureStats),
// its file format (docs/DESIGN.md, "Sharded capture: the .stats format"), the merge, and the checks that shards, and a
// prune run, agree.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { toBinary } from '@bufbuild/protobuf';
import { ModelProtoSchema, TensorProtoSchema, type Model } from '../onnx/index.js';
import { badInput, internal } from '../errors.js';
import type { Group } from '../graph/types.js';
import { analyze } from '../graph/analyze.js';
import { Calibration, countDistinct, type InputData } from '../calibration.js';
import { statsFor, type Method } from '../select/baselines.js';
import { captureBatch, captureGrams, type CaptureOptions } from './index.js';
import type { Captured, ChannelStats } from './stats.js';

/** The channel statistics a capture can hold besides the Gram matrices (see ChannelStats). */
export type ChannelStatName = keyof ChannelStats;
const CHANNEL_STATS: readonly ChannelStatName[] = ['absMean', 'sensitivity'];

/** What makes two captures' statistics parts of one sum: shards merge, and prune uses them, only when these agree. */
export interface StatsKey {
  /** The subprune version that captured (what a capture computes may change between versions). */
  subprune: string;
  /** SHA-256 (hex) of the model as analysed: modelFingerprint. */
  model: string;
  /** Each model input's name and the shape of one sample (no batch axis). */
  inputs: { name: string; sample: number[] }[];
  /** The image preprocessing that made the samples (--calib FOLDER --preprocess), or null. */
  preprocess: unknown;
  /** The channel statistics held besides the Gram matrices (those the --method needs). */
  channelStats: ChannelStatName[];
  /** Padding tokens left out of the rows (Calibration.padding: 'masked', the default) or counted (--all-tokens). */
  tokens: 'masked' | 'all';
  /** The groups, in the analysis's order: id, channels, and each consumer's node and columns d. */
  groups: { id: string; channels: number; consumers: { node: string; d: number }[] }[];
}

/** The layerwise capture's sufficient statistics over some calibration samples (one shard, or several merged). */
export interface CaptureStats {
  key: StatsKey;
  /** Calibration samples summed over. */
  samples: number;
  /** The shards merged: each one's samples and the SHA-256 of its sample hashes (the same shard twice is refused). */
  shards: { samples: number; digest: string }[];
  /** Two 32-bit hashes per sample (Calibration.sampleHashes), for the count of distinct samples the re-fit needs. */
  sampleHashes: Uint32Array;
  /** Per group id, one Captured per consumer (in the group's consumer order): d, rows, G, sums, channel stats. */
  grams: Map<string, Captured[]>;
}

export interface CaptureStatsOptions extends Omit<CaptureOptions, 'target' | 'stats'> {
  /** The method prune will rank with: its channel statistics are captured too (default greedy: none). */
  method?: Method;
  /** Recorded in the key: the image preprocessing that made the samples, if any. */
  preprocess?: unknown;
  /** Count padding tokens as rows (prune's allTokens; recorded in the key). */
  allTokens?: boolean;
}

/** SHA-256 (hex) of the model's protobuf encoding, tensor by tensor (no buffer ever holds the whole model). */
export function modelFingerprint(model: Model): string {
  const h = createHash('sha256'),
    g = model.graph!;
  h.update(toBinary(ModelProtoSchema, { ...model, graph: { ...g, initializer: [] } }));
  for (const t of g.initializer) h.update(toBinary(TensorProtoSchema, t));
  return h.digest('hex');
}

let version: string | undefined;

/** subprune's version, from its package.json (found upwards from this module, in src/ or dist/src/). */
export function subpruneVersion(): string {
  if (version) return version;
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'subprune' && pkg.version) return (version = pkg.version);
    }
    if (dirname(dir) === dir) throw internal("subprune's package.json was not found above its modules");
  }
}

/** The key of a capture of `groups` (the analysis of `model` at the calibration shapes) with `method`'s statistics. */
export function statsKey(
  model: Model,
  groups: Group[],
  calib: Calibration,
  opts: { method?: Method; preprocess?: unknown } = {},
): StatsKey {
  const wanted = statsFor(opts.method ?? 'greedy') ?? {};
  return {
    subprune: subpruneVersion(),
    model: modelFingerprint(model),
    inputs: [...calib.shapes].map(([name, shape]) => ({ name, sample: shape.slice(1) })),
    preprocess: opts.preprocess ?? null,
    channelStats: CHANNEL_STATS.filter((s) => wanted[s]),
    tokens: calib.masked ? 'masked' : 'all',
    groups: groups.map((u) => ({
      id: u.id,
      channels: u.channels,
      consumers: u.consumers.map((c) => ({ node: c.node.name, d: c.d })),
    })),
  };
}

const sha256 = (a: Uint32Array) =>
  createHash('sha256')
    .update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength))
    .digest('hex');

/**
 * The layerwise capture of every group (as prune captures it) over `data`, as statistics that merge with other
 * shards' (mergeStats) and serialise (encodeStats).
 */
export async function captureStats(
  model: Model,
  data: InputData,
  opts: CaptureStatsOptions = {},
): Promise<CaptureStats> {
  const calib = Calibration.of(model, data, opts.allTokens);
  const { groups, inputBytes } = analyze(model, calib.shapes);
  if (!groups.length)
    throw badInput('the model has no prunable groups, so there is nothing to capture (subprune inspect says why)');
  const key = statsKey(model, groups, calib, opts);
  const stats = statsFor(opts.method ?? 'greedy');
  const batch = opts.batch ?? captureBatch(inputBytes),
    grams = await captureGrams(model, groups, calib, { ...opts, batch, ...(stats ? { stats } : {}) });
  const sampleHashes = calib.sampleHashes();
  return {
    key,
    samples: calib.rows,
    shards: [{ samples: calib.rows, digest: sha256(sampleHashes) }],
    sampleHashes,
    grams,
  };
}

/** How many different samples the statistics were summed over (exact repeats count once). */
export const distinctSamples = (s: CaptureStats): number => countDistinct(s.sampleHashes);

const fmtInputs = (k: StatsKey) => k.inputs.map((x) => `${x.name} [${x.sample}]`).join(', ');
const fmtGroup = (u: StatsKey['groups'][number]) =>
  `${u.id} (${u.channels} channels; ${u.consumers.map((c) => `${c.node}, d = ${c.d}`).join('; ')})`;

/**
 * How the statistics' key `have` differs from `want`, as "<have's>, not <want's>", or undefined when they agree. Loose
 * (prune's check): `want` without a preprocessing accepts any, and `have` may hold more channel statistics than wanted.
 */
function keyDifference(have: StatsKey, want: StatsKey, loose: boolean): string | undefined {
  if (have.subprune !== want.subprune) return `captured by subprune ${have.subprune}, not ${want.subprune}`;
  if (have.model !== want.model)
    return `captured from another model (SHA-256 ${have.model.slice(0, 12)}…, not ${want.model.slice(0, 12)}…)`;
  if (fmtInputs(have) !== fmtInputs(want)) return `captured at input shapes ${fmtInputs(have)}, not ${fmtInputs(want)}`;
  const pre = (k: StatsKey) => JSON.stringify(k.preprocess);
  if (pre(have) !== pre(want) && !(loose && want.preprocess === null))
    return `captured with --preprocess ${pre(have)}, not ${pre(want)}`;
  const missing = want.channelStats.filter((s) => !have.channelStats.includes(s));
  if (loose && missing.length) {
    const method = missing.includes('sensitivity') ? 'sampling' : 'activation-norm';
    return `captured without the ${missing.join(', ')} statistics the method needs (capture with --method ${method})`;
  }
  if (!loose && have.channelStats.join() !== want.channelStats.join()) {
    const list = (k: StatsKey) => `[${k.channelStats.join(', ')}]`;
    return `captured with channel statistics ${list(have)}, not ${list(want)} (capture every shard with one --method)`;
  }
  if (have.tokens !== want.tokens) {
    const how = (k: StatsKey) => (k.tokens === 'all' ? 'with --all-tokens' : 'without --all-tokens');
    return `captured ${how(have)}, not ${how(want)} (padding tokens counted in one, not the other)`;
  }
  const n = Math.max(have.groups.length, want.groups.length);
  for (let i = 0; i < n; i++) {
    const a = have.groups[i],
      b = want.groups[i];
    if (a && b && fmtGroup(a) === fmtGroup(b)) continue;
    return `captured group ${a ? fmtGroup(a) : 'none'} where ${b ? fmtGroup(b) : 'none'} was expected`;
  }
  return undefined;
}

/**
 * The statistics of two shards summed (new arrays; the inputs are not changed). Refused with a one-line reason when
 * their keys differ or they hold the same samples (a shard given twice). `names` name them in messages.
 */
export function mergeStats(
  a: CaptureStats,
  b: CaptureStats,
  names: [string, string] = ['one stats', 'another'],
): CaptureStats {
  const why = keyDifference(b.key, a.key, false);
  if (why) throw badInput(`${names[1]} does not match ${names[0]}: ${why}`);
  const twice = b.shards.find((s) => a.shards.some((t) => t.digest === s.digest));
  if (twice)
    throw badInput(
      `${names[1]} holds the same ${twice.samples} samples as a shard already in ${names[0]}; give each shard once`,
    );
  const grams = new Map(
    a.key.groups.map((u) => [u.id, a.grams.get(u.id)!.map((x, i) => mergeCaptured(x, b.grams.get(u.id)![i]!))]),
  );
  const sampleHashes = new Uint32Array(a.sampleHashes.length + b.sampleHashes.length);
  sampleHashes.set(a.sampleHashes);
  sampleHashes.set(b.sampleHashes, a.sampleHashes.length);
  return { key: a.key, samples: a.samples + b.samples, shards: [...a.shards, ...b.shards], sampleHashes, grams };
}

/** One consumer's statistics of two shards: sums add; mean |x| is weighted by rows; the sensitivity is a maximum. */
function mergeCaptured(a: Captured, b: Captured): Captured {
  if (a.d !== b.d || a.C || b.C) throw internal(`merging captures of ${a.d} and ${b.d} columns (or asymmetric ones)`);
  const add = (x: Float64Array, y: Float64Array) => x.map((v, i) => v + y[i]!);
  const rows = a.rows + b.rows;
  const stats: ChannelStats = {};
  const [sa, sb] = [a.stats ?? {}, b.stats ?? {}];
  if (sa.absMean && sb.absMean)
    stats.absMean = sa.absMean.map((v, i) => (rows ? (v * a.rows + sb.absMean![i]! * b.rows) / rows : 0));
  if (sa.sensitivity && sb.sensitivity)
    stats.sensitivity = sa.sensitivity.map((v, i) => Math.max(v, sb.sensitivity![i]!));
  return {
    d: a.d,
    rows,
    G: add(a.G, b.G),
    sums: add(a.sums!, b.sums!),
    ...(a.stats ? { stats } : {}),
  };
}

/**
 * Refuses (one line) statistics that do not fit this prune run: captured from another model, at other input shapes,
 * by another subprune, of another group set, or without the channel statistics `method` ranks by.
 */
export function checkStats(
  stats: CaptureStats,
  model: Model,
  groups: Group[],
  calib: Calibration,
  method?: Method,
): void {
  const why = keyDifference(stats.key, statsKey(model, groups, calib, { method }), true);
  if (why) throw badInput(`the stats do not match this run: ${why}`);
}

/** Refuses statistics captured from images preprocessed otherwise than the images prune verifies on. */
export function checkStatsPreprocess(stats: CaptureStats, preprocess: unknown): void {
  const [have, want] = [JSON.stringify(stats.key.preprocess), JSON.stringify(preprocess)];
  if (have !== want)
    throw badInput(`the stats were captured with --preprocess ${have}, the --calib images use ${want}; use one`);
}

// The file format (docs/DESIGN.md): magic, format version, header length, JSON header, f64 arrays, SHA-256.
const MAGIC = 'subprune-stats\0\0';
export const STATS_FORMAT = 1;
const PRELUDE = 24,
  DIGEST = 32;

interface Header {
  key: StatsKey;
  samples: number;
  shards: { samples: number; digest: string }[];
  /** Rows of each group's consumers' inputs, [group][consumer]. */
  rows: number[][];
}

/** The f64 arrays of a capture in file order: per group and consumer G, sums, then its channel statistics. */
function arraysOf(s: CaptureStats): Float64Array[] {
  const out: Float64Array[] = [];
  for (const u of s.key.groups)
    for (const c of s.grams.get(u.id)!) {
      out.push(c.G, c.sums!);
      for (const name of s.key.channelStats) out.push(c.stats![name]!);
    }
  out.push(Float64Array.from(s.sampleHashes));
  return out;
}

/** The statistics as the bytes of a .stats file (little-endian; see docs/DESIGN.md). */
export function encodeStats(s: CaptureStats): Uint8Array {
  const header: Header = {
    key: s.key,
    samples: s.samples,
    shards: s.shards,
    rows: s.key.groups.map((u) => s.grams.get(u.id)!.map((c) => c.rows)),
  };
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, ' ')]); // arrays start 8-aligned
  const arrays = arraysOf(s),
    floats = arrays.reduce((a, x) => a + x.length, 0);
  const out = new Uint8Array(PRELUDE + json.length + 8 * floats + DIGEST);
  const view = new DataView(out.buffer);
  out.set(Buffer.from(MAGIC, 'latin1'));
  view.setUint32(16, STATS_FORMAT, true);
  view.setUint32(20, json.length, true);
  out.set(json, PRELUDE);
  let at = PRELUDE + json.length;
  for (const a of arrays) for (let i = 0; i < a.length; i++, at += 8) view.setFloat64(at, a[i]!, true);
  out.set(createHash('sha256').update(out.subarray(0, at)).digest(), at);
  return out;
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isText = (v: unknown): v is string => typeof v === 'string';

/** Why a decoded header is malformed, or undefined. */
function headerProblem(h: Header): string | undefined {
  const k = h?.key;
  if (!k || !isText(k.subprune) || !isText(k.model) || !Array.isArray(k.inputs) || !Array.isArray(k.groups))
    return 'its header has no valid key';
  if (!k.inputs.every((x) => isText(x?.name) && Array.isArray(x.sample) && x.sample.every(isCount)))
    return 'its header has invalid input shapes';
  if (!Array.isArray(k.channelStats) || !k.channelStats.every((s) => CHANNEL_STATS.includes(s)))
    return 'its header names unknown channel statistics';
  const groupOk = (u: StatsKey['groups'][number]) =>
    isText(u?.id) &&
    isCount(u.channels) &&
    u.channels > 0 &&
    Array.isArray(u.consumers) &&
    u.consumers.length > 0 &&
    u.consumers.every((c) => isText(c?.node) && isCount(c.d) && c.d > 0 && c.d % u.channels === 0);
  if (!k.groups.every(groupOk)) return 'its header has an invalid group';
  if (!isCount(h.samples) || h.samples < 1) return 'its header has no sample count';
  if (!Array.isArray(h.shards) || !h.shards.every((s) => isCount(s?.samples) && isText(s.digest)))
    return 'its header has invalid shards';
  if (h.shards.reduce((a, s) => a + s.samples, 0) !== h.samples) return "its shards' samples do not add up";
  const rowsOk =
    Array.isArray(h.rows) &&
    h.rows.length === k.groups.length &&
    h.rows.every((r, i) => Array.isArray(r) && r.length === k.groups[i]!.consumers.length && r.every(isCount));
  return rowsOk ? undefined : 'its header has invalid row counts';
}

/**
 * Statistics from the bytes of a .stats file. A file that is not one, of another format version, truncated, or
 * corrupted (its SHA-256) is refused with one line naming `name`.
 */
export function decodeStats(bytes: Uint8Array, name = 'the stats'): CaptureStats {
  const bad = (why: string) => badInput(`${name}: ${why}; capture it again with subprune capture`);
  if (bytes.length < PRELUDE || Buffer.from(bytes.subarray(0, 16)).toString('latin1') !== MAGIC)
    throw badInput(`${name} is not a subprune stats file (subprune capture writes them)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const format = view.getUint32(16, true),
    length = view.getUint32(20, true);
  if (format !== STATS_FORMAT) throw bad(`stats format ${format}; this subprune reads format ${STATS_FORMAT}`);
  if (PRELUDE + length + DIGEST > bytes.length) throw bad(`it is truncated (${bytes.length} bytes)`);
  let header: Header;
  try {
    header = JSON.parse(Buffer.from(bytes.subarray(PRELUDE, PRELUDE + length)).toString('utf8')) as Header;
  } catch (e) {
    throw bad(`its header is not JSON (${(e as Error).message})`);
  }
  const problem = headerProblem(header);
  if (problem) throw bad(problem);
  const { key } = header;
  const per = key.groups.map((u) => u.consumers.map((c) => c.d * c.d + c.d + key.channelStats.length * u.channels));
  const floats = per.flat().reduce((a, b) => a + b, 0) + 2 * header.samples;
  const want = PRELUDE + length + 8 * floats + DIGEST;
  if (bytes.length !== want)
    throw bad(
      bytes.length < want
        ? `it is truncated (${bytes.length} of ${want} bytes)`
        : `it has ${bytes.length} bytes, not ${want}`,
    );
  const digest = createHash('sha256')
    .update(bytes.subarray(0, want - DIGEST))
    .digest();
  if (!digest.equals(bytes.subarray(want - DIGEST))) throw bad('it is corrupted (its SHA-256 does not match)');
  let at = PRELUDE + length;
  const take = (n: number) => {
    const a = new Float64Array(n);
    for (let i = 0; i < n; i++, at += 8) a[i] = view.getFloat64(at, true);
    if (!a.every(Number.isFinite)) throw bad('it holds values that are not finite');
    return a;
  };
  const grams = new Map<string, Captured[]>();
  key.groups.forEach((u, gi) => {
    const list = u.consumers.map((c, ci): Captured => {
      const G = take(c.d * c.d),
        sums = take(c.d);
      const stats: ChannelStats = {};
      for (const s of key.channelStats) stats[s] = take(u.channels);
      return { d: c.d, rows: header.rows[gi]![ci]!, G, sums, ...(key.channelStats.length ? { stats } : {}) };
    });
    grams.set(u.id, list);
  });
  const hashes = take(2 * header.samples);
  if (!hashes.every((v) => Number.isInteger(v) && v >= 0 && v < 2 ** 32)) throw bad('its sample hashes are invalid');
  if (grams.size !== key.groups.length) throw bad('it names a group twice');
  return { key, samples: header.samples, shards: header.shards, sampleHashes: Uint32Array.from(hashes), grams };
}

/** A .stats file read and decoded (one line naming it when it cannot be read or is not a valid one). */
export function readStats(path: string): CaptureStats {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw badInput(`${path}: cannot open (${why}); check the path`, e);
  }
  return decodeStats(bytes, path);
}

/** The .stats files read and merged one by one (one line naming the file that cannot be read or merged). */
export function readMergedStats(paths: string[]): CaptureStats {
  let merged = readStats(paths[0]!);
  for (const [i, path] of paths.entries())
    if (i) merged = mergeStats(merged, readStats(path), [paths.slice(0, i).join(' + '), path]);
  return merged;
}
