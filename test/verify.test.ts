import { describe, it, expect, vi, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clone } from '@bufbuild/protobuf';
import { SubpruneError } from '../src/errors.js';
import {
  ModelProtoSchema,
  initializerMap,
  readModel,
  replaceInitializerData,
  tensorToFloat32,
  tensorToInt64,
  type Model,
  type NodeProto,
} from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { Calibration } from '../src/calibration.js';
import { openNpy } from '../src/npy.js';
import { BROKEN_ERROR, fidelityWarnings, verifyPruned } from '../src/prune/verify.js';
import { prune } from '../src/prune/index.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { expectFailure, runCli } from './cli-helpers.js';

// The last gate before a pruned model is written: onnxruntime must load it and run it on a calibration batch with
// finite outputs shaped like the original's. Broken models are made here by hand, and (to reach the gate through the
// real pipeline and CLI) by a rewrite that is made to break its result.

// 'nan': a NaN output (verification fails); 'far': an output pushed far off (finite: verified, but warned about)
const broken = vi.hoisted(() => ({ on: undefined as 'nan' | 'far' | undefined }));
vi.mock('../src/rewrite/index.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../src/rewrite/index.js')>();
  return {
    ...real,
    pruneGroups: (...a: Parameters<typeof real.pruneGroups>) => {
      const out = real.pruneGroups(...a);
      if (broken.on) setFloat(out, 'fc3.bias', 0, broken.on === 'nan' ? NaN : 1e4);
      return out;
    },
  };
});

function setFloat(m: Model, name: string, i: number, v: number): void {
  const { dims, data } = tensorToFloat32(initializerMap(m.graph!).get(name)!);
  data[i] = v;
  replaceInitializerData(m.graph!, name, dims, data);
}

const lenet = readModel('models/lenet.onnx');
const calib = openNpy('models/calib.npy');
afterAll(() => calib.close());

async function internal(p: Promise<unknown>, message: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(SubpruneError);
  expect((e as SubpruneError).code).toBe('internal');
  expect((e as Error).message).toMatch(message);
}

describe('verifyPruned', () => {
  it('passes the original model and a correctly pruned one', async () => {
    await verifyPruned(lenet, lenet, calib);
    broken.on = undefined;
    const { model } = await prune(lenet, calib, { budget: { compression: 2 } });
    await verifyPruned(lenet, model, calib);
  });

  it('fails a model with non-finite outputs, other output shapes, or that onnxruntime cannot load', async () => {
    const nan = clone(ModelProtoSchema, lenet);
    setFloat(nan, 'fc3.bias', 2, Infinity);
    await internal(
      verifyPruned(lenet, nan, calib),
      /failed verification: tensor \S+ has Infinity on the calibration data/,
    );
    const narrow = clone(ModelProtoSchema, lenet); // fc3 with 9 outputs instead of 10
    const map = initializerMap(narrow.graph!),
      w = tensorToFloat32(map.get('fc3.weight')!),
      b = tensorToFloat32(map.get('fc3.bias')!);
    replaceInitializerData(narrow.graph!, 'fc3.weight', [9, 84], w.data.subarray(0, 9 * 84));
    replaceInitializerData(narrow.graph!, 'fc3.bias', [9], b.data.subarray(0, 9));
    await internal(verifyPruned(lenet, narrow, calib), /output \S+ has shape \[16,9\], the original's \[16,10\]/);
    const unloadable = clone(ModelProtoSchema, lenet);
    unloadable.graph!.initializer = unloadable.graph!.initializer.filter((t) => t.name !== 'fc2.weight');
    await internal(verifyPruned(lenet, unloadable, calib), /failed verification: onnxruntime cannot load the model/);
    const renamed = clone(ModelProtoSchema, lenet);
    renamed.graph!.output[0]!.name = 'other';
    await internal(verifyPruned(lenet, renamed, calib), /its outputs are \[other\]/);
  });
});

describe('a shape ONNX refuses and onnxruntime fuses away', () => {
  it('fails verification: the pruned model runs as ONNX defines it', async () => {
    // a GPT-2 pruned to 2 of its 4 heads, then one of its head_dim divisors (x.size(-1) // heads) set back to 4: a
    // Reshape asks for [B, T, 2, 4] of 16 features; onnxruntime's ReshapeFusion computes the entry from the shape
    // instead, so a session with its default optimizations runs the model (the rewrite wrote such models before)
    broken.on = undefined; // the real rewrite (mocked above)
    const gpt2 = readModel('test/fixtures/more-gpt2.onnx'),
      ids = openNpy('test/fixtures/more-gpt2.calib.npy');
    const heads = analyze(gpt2, Calibration.of(gpt2, ids).shapes).groups[0]!;
    expect(heads.channels).toBe(4);
    const pruned = pruneGroups(gpt2, [{ group: heads, keep: [0, 1] }]);
    const value = (n: NodeProto) => tensorToInt64(n.attribute[0]!.t!).data[0];
    const original = new Map(gpt2.graph!.node.filter((n) => n.opType === 'Constant').map((n) => [n.output[0], n]));
    const divisors = new Set(pruned.graph!.node.filter((n) => n.opType === 'Div').map((n) => n.input[1]));
    const divisor = pruned.graph!.node.find(
      (n) => n.opType === 'Constant' && divisors.has(n.output[0]!) && value(n) === 2n,
    )!;
    expect(value(original.get(divisor.output[0]!)!)).toBe(4n);
    await verifyPruned(gpt2, pruned, ids); // the rewrite's model passes
    divisor.attribute[0]!.t = original.get(divisor.output[0]!)!.attribute[0]!.t;
    await internal(verifyPruned(gpt2, pruned, ids), /failed verification: .*Reshape/);
    ids.close();
  });
});

describe('a pruned model that fails verification is never written', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'subprune-verify-'));
  });
  afterAll(() => {
    broken.on = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('prune() rejects it with an internal error', async () => {
    broken.on = 'nan';
    await internal(prune(lenet, calib, { budget: { compression: 2 } }), /the pruned model failed verification: .*NaN/);
  });

  it('the CLI exits 1 with one line, and writes neither the model nor the report', async () => {
    broken.on = 'nan';
    const out = join(dir, 'out.onnx'),
      report = join(dir, 'out.json');
    const r = await runCli('prune', 'models/lenet.onnx', '--calib', 'models/calib.npy', '-o', out, '--report', report);
    expectFailure(
      r,
      1,
      /^subprune prune: the pruned model failed verification: .*; nothing was written \(please report this\)$/,
    );
    expect(existsSync(out) || existsSync(report)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('a pruned model whose outputs are far off is written with a warning', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'subprune-warn-'));
  });
  afterAll(() => {
    broken.on = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('past a relative output error of 1, not at or below it', () => {
    const at = (relError?: number) => fidelityWarnings({ samples: 1, outputDims: [1], relError });
    expect(BROKEN_ERROR).toBe(1);
    for (const e of [undefined, 0, 0.5, 1]) expect(at(e)).toEqual([]);
    for (const e of [1.001, 3, 1e9]) expect(at(e)).toEqual([expect.stringMatching(/relative output error .*unusable/)]);
  });

  it('a normal prune has none; one with a logit pushed to 10⁴ has one, in the report and on stderr', async () => {
    broken.on = undefined;
    const { report } = await prune(lenet, calib, { budget: { compression: 2 } });
    expect(report.fidelity.relError).toBeLessThan(BROKEN_ERROR);
    expect(report.warnings).toEqual([]);

    broken.on = 'far';
    const out = join(dir, 'out.onnx'),
      json = join(dir, 'out.json');
    const r = await runCli('prune', 'models/lenet.onnx', '--calib', 'models/calib.npy', '-o', out, '--report', json);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/^warning: .*out\.onnx: the pruned model's relative output error .* is \d/m);
    expect((JSON.parse(readFileSync(json, 'utf8')) as { warnings: string[] }).warnings).toHaveLength(1);
    expect(existsSync(out)).toBe(true);
  });
});
