import { describe, it, expect } from 'vitest';
import { existsSync, mkdtempSync } from 'node:fs';
import { clone } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-node';
import {
  DataType,
  ModelProtoSchema,
  float32Tensor,
  int64Tensor,
  intAttr,
  intsAttr,
  makeNode,
  makeTensorValueInfo,
  readModel,
  serializeModel,
  writeModel,
  type Model,
} from '../src/onnx/index.js';
import { analyze, outputAxesOf } from '../src/graph/analyze.js';
import { argmaxAxis, evaluate, klSum } from '../src/eval/index.js';
import { verifyTargets } from '../src/eval/alone.js';
import { prune } from '../src/prune/index.js';
import { openNpy, writeNpy } from '../src/npy.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rng, randn, randTensor, run, smallModel, type Out } from './graph-helpers.js';
import { expectFailure, runCli } from './cli-helpers.js';

// How a pruned model's outputs are compared with the original's: class scores (top-1 agreement and KL per position
// along the class axis) only where an output holds them; every output by its relative error. Oracles: onnxruntime's
// outputs of both models, compared here in float64 by explicit index arithmetic.

const F = 'test/fixtures/';

/** The entry of a row-major tensor of `dims` at multi-index `at`. */
const at = (dims: number[], idx: number[]) => idx.reduce((a, i, k) => a * dims[k]! + i, 0);

/** Every multi-index of `dims` with axis `axis` left out (that axis' entry set to 0). */
function positions(dims: number[], axis: number): number[][] {
  let out: number[][] = [[]];
  dims.forEach((d, k) => {
    const range = k === axis ? [0] : Array.from({ length: d }, (_, i) => i);
    out = out.flatMap((p) => range.map((i) => [...p, i]));
  });
  return out;
}

/** Oracle: per position, the top-1 classes of y and ref along `axis`, and Σ KL(softmax(ref) ‖ softmax(y)). */
function compareAlong(y: Out, ref: Out, axis: number) {
  let agree = 0,
    kl = 0;
  const ps = positions(ref.dims, axis);
  for (const p of ps) {
    const col = (t: Out) =>
      Array.from(
        { length: t.dims[axis]! },
        (_, c) =>
          t.data[
            at(
              t.dims,
              p.map((v, k) => (k === axis ? c : v)),
            )
          ]!,
      );
    const a = col(y),
      r = col(ref);
    const lse = (v: number[]) => Math.log(v.reduce((s, x) => s + Math.exp(x), 0));
    const la = lse(a),
      lr = lse(r);
    kl += r.reduce((s, x, c) => s + Math.exp(x - lr) * (x - lr - (a[c]! - la)), 0);
    if (a.indexOf(Math.max(...a)) === r.indexOf(Math.max(...r))) agree++;
  }
  return { agree, kl, positions: ps.length };
}

const relError = (y: Out, ref: Out) => {
  let e = 0,
    n = 0;
  ref.data.forEach((v, i) => ((e += (y.data[i]! - v) ** 2), (n += v * v)));
  return Math.sqrt(e / n);
};

/** All rows of an .npy file as one input. */
function inputOf(path: string): Out {
  const f = openNpy(path);
  try {
    return { data: f.readF32(), dims: f.shape };
  } finally {
    f.close();
  }
}

describe('class scores along any axis', () => {
  it('argmaxAxis and klSum along an inner axis give what the transposed scores give', () => {
    const r = rng(3),
      dims = [2, 5, 3, 4];
    const y = { data: randn(120, r, 2), dims },
      ref = { data: randn(120, r, 2), dims };
    for (const axis of [1, 2, 3]) {
      const want = compareAlong(y, ref, axis);
      const classes = dims[axis]!,
        inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
      const a = argmaxAxis(y.data, classes, inner),
        b = argmaxAxis(ref.data, classes, inner);
      expect(a.length).toBe(want.positions);
      expect(a.filter((c, i) => c === b[i]).length).toBe(want.agree);
      expect(klSum(ref.data, y.data, classes, inner)).toBeCloseTo(want.kl, 9);
    }
  });
});

describe('which outputs hold class scores', () => {
  it.each([
    ['../../models/lenet.onnx', [1]], // Gemm logits
    ['det7-bisenetv2.onnx', [1]], // per-pixel class logits, upsampled
    ['ocr6-crnn-convctc.onnx', [2]], // CTC scores [N, T, C]
    ['xp9-p2o-rec.onnx', [2]], // paddle's Softmax
    ['ocr6-lkpan-db.onnx', [undefined]], // DB's probability map (Sigmoid, one channel)
    ['det7-east.onnx', [undefined, undefined]], // score map and geometry
    ['det7-efficientdet.onnx', [undefined, undefined]], // box regression and Sigmoid class probabilities
    ['det7-yolox.onnx', [undefined]], // boxes, objectness and classes concatenated
  ])('%s', (file, axes) => {
    const outputs = analyze(readModel(F + file)).outputs;
    expect(outputs.map((o) => o.classAxis)).toEqual(axes);
  });

  const r = rng(5);
  const conv = (out: string, m: number) =>
    makeNode('Conv', ['x', `w${m}${out}`], [out], [intsAttr('pads', [1, 1, 1, 1])], `conv_${out}`);
  const w = (out: string, m: number) => randTensor(`w${m}${out}`, [m, 3, 3, 3], r);
  const cases: [string, Model, (number | undefined)[]][] = [
    [
      'a Conv then Transpose to channels last',
      smallModel(
        [conv('c', 4), makeNode('Transpose', ['c'], ['y'], [intsAttr('perm', [0, 2, 3, 1])])],
        [w('c', 4)],
        ['N', 3, 8, 8],
      ),
      [3],
    ],
    ['a one-channel Conv', smallModel([conv('y', 1)], [w('y', 1)], ['N', 3, 8, 8]), [undefined]],
    [
      'a Conv then Sigmoid',
      smallModel([conv('c', 4), makeNode('Sigmoid', ['c'], ['y'])], [w('c', 4)], ['N', 3, 8, 8]),
      [undefined],
    ],
    [
      'two Convs concatenated',
      smallModel(
        [conv('a', 4), conv('b', 2), makeNode('Concat', ['a', 'b'], ['y'], [intAttr('axis', 1)])],
        [w('a', 4), w('b', 2)],
        ['N', 3, 8, 8],
      ),
      [undefined],
    ],
    [
      'a Conv then Softmax over its channels',
      smallModel([conv('c', 4), makeNode('Softmax', ['c'], ['y'], [intAttr('axis', 1)])], [w('c', 4)], ['N', 3, 8, 8]),
      [1],
    ],
  ];
  it.each(cases)('%s', (_, model, axes) => {
    expect(outputAxesOf(model).map((o) => o.classAxis)).toEqual(axes);
  });
});

describe("a pruned model's fidelity", () => {
  it('a detector: relative error of its probability map, no top-1 agreement', async () => {
    const model = readModel(F + 'ocr6-lkpan-db.onnx'),
      calib = openNpy(F + 'ocr6-lines.calib.npy');
    const { model: pruned, report } = await prune(model, calib, { budget: { compression: 2 } });
    const x = inputOf(calib.path),
      name = model.graph!.output[0]!.name;
    const want = relError((await run(pruned, x)).get(name)!, (await run(model, x)).get(name)!);
    expect(report.fidelity.agreement).toBeUndefined();
    expect(report.fidelity.kl).toBeUndefined();
    expect(report.fidelity.relError).toBeCloseTo(want, 5);
    expect(report.fidelity.outputs).toEqual([
      {
        name,
        relError: report.fidelity.relError,
        centeredRelError: expect.any(Number),
        acrossInputsRelError: expect.any(Number),
      },
    ]);
  }, 120_000);

  it('two outputs: each its own relative error, the largest the headline', async () => {
    const model = readModel(F + 'det7-efficientdet.onnx'),
      calib = openNpy(F + 'cnn-images.calib.npy');
    const { model: pruned, report } = await prune(model, calib, { budget: { compression: 2 }, mode: 'layerwise' });
    const x = inputOf(calib.path),
      mine = await run(pruned, x),
      orig = await run(model, x);
    const want = model.graph!.output.map((o) => relError(mine.get(o.name)!, orig.get(o.name)!));
    expect(report.fidelity.outputs!.map((o) => o.name)).toEqual(model.graph!.output.map((o) => o.name));
    report.fidelity.outputs!.forEach((o, i) => expect(o.relError).toBeCloseTo(want[i]!, 5));
    expect(report.fidelity.relError).toBe(Math.max(...report.fidelity.outputs!.map((o) => o.relError)));
    expect(report.fidelity.agreement).toBeUndefined();
  }, 120_000);

  it('sequence scores [N, T, C]: agreement and KL per position along the classes', async () => {
    const model = readModel(F + 'ocr6-crnn-convctc.onnx'),
      calib = openNpy(F + 'ocr6-lines.calib.npy');
    const { model: pruned, report } = await prune(model, calib, { budget: { compression: 2 } });
    const x = inputOf(calib.path),
      name = model.graph!.output[0]!.name;
    const y = (await run(pruned, x)).get(name)!,
      ref = (await run(model, x)).get(name)!;
    const want = compareAlong(y, ref, 2);
    expect(want.positions).toBeGreaterThan(x.dims[0]!); // several positions per sample
    expect(report.fidelity.agreement).toBeCloseTo(want.agree / want.positions, 9);
    expect(report.fidelity.kl).toBeCloseTo(want.kl / want.positions, 5);
  }, 120_000);

  it("the sensitivity allocation's targets are the original's top-1 class at each position", async () => {
    const model = readModel(F + 'ocr6-crnn-convctc.onnx'),
      calib = openNpy(F + 'ocr6-lines.calib.npy');
    const t = await verifyTargets(model, { data: calib });
    const ref = (await run(model, inputOf(calib.path))).get(t.output)!;
    const want = positions(ref.dims, 2).map((p) => {
      const col = Array.from({ length: ref.dims[2]! }, (_, c) => ref.data[at(ref.dims, [p[0]!, p[1]!, c])]!);
      return col.indexOf(Math.max(...col));
    });
    expect(t.classAxis).toBe(2);
    expect([...t.classes]).toEqual(want);
  });
});

describe('integer outputs', () => {
  it('a classifier that also outputs its labels (ArgMax, int64): pruned, checked, compared by its logits', async () => {
    const model = readModel('models/lenet.onnx');
    model.graph!.node.push(makeNode('ArgMax', ['logits'], ['label'], [intAttr('axis', 1), intAttr('keepdims', 0)]));
    model.graph!.output.push(makeTensorValueInfo('label', DataType.INT64, ['N']));
    const calib = openNpy('models/calib.npy');
    const { model: pruned, report } = await prune(model, calib, { budget: { compression: 4 } });
    expect(report.fidelity.outputs!.map((o) => o.name)).toEqual(['logits']);
    expect(report.fidelity.uncompared).toEqual(['label']);
    const x = inputOf(calib.path);
    const session = await ort.InferenceSession.create(serializeModel(pruned));
    const y = await session.run({ [model.graph!.input[0]!.name]: new ort.Tensor('float32', x.data, x.dims) });
    await session.release();
    const logits = y.logits!.data as Float32Array,
      label = y.label!.data as BigInt64Array;
    const want = Array.from({ length: x.dims[0]! }, (_, i) => {
      const row = Array.from(logits.subarray(i * 10, i * 10 + 10));
      return BigInt(row.indexOf(Math.max(...row)));
    });
    expect([...label]).toEqual(want);
    // eval --reference compares the logits and names the labels it leaves out
    const dir = mkdtempSync(join(tmpdir(), 'subprune-argmax-'));
    writeModel(model, join(dir, 'orig.onnx'));
    writeModel(pruned, join(dir, 'pruned.onnx'));
    const r = await runCli(
      'eval',
      join(dir, 'pruned.onnx'),
      '--data',
      'models/calib.npy',
      '--reference',
      join(dir, 'orig.onnx'),
    );
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/relative output error 0\.\d+\n\s+not compared: label \(integers/);
  }, 120_000);
});

/**
 * A detector with NonMaxSuppression in the graph: Conv → ReLU → 1×1 Conv to 4 box coordinates and 1 score per
 * position, the boxes [N, 64, 4] and the Sigmoid's scores [N, 1, 64] into NMS (its selected indices are an output,
 * their count depends on the scores), and the scores an output too.
 */
function nmsModel(): Model {
  const r = rng(11),
    i64 = (name: string, v: number[]) => int64Tensor(name, [v.length], v);
  const nodes = [
    makeNode('Conv', ['x', 'W1'], ['c1'], [intsAttr('pads', [1, 1, 1, 1])], 'conv1'),
    makeNode('Relu', ['c1'], ['r1'], [], 'relu1'),
    makeNode('Conv', ['r1', 'W2'], ['c2'], [], 'conv2'),
    makeNode('Reshape', ['c2', 'shape'], ['flat'], [], 'reshape'),
    makeNode('Transpose', ['flat'], ['t'], [intsAttr('perm', [0, 2, 1])], 'transpose'),
    makeNode('Slice', ['t', 's0', 's4', 'ax2'], ['boxes'], [], 'boxes'),
    makeNode('Slice', ['flat', 's4', 's5', 'ax1'], ['scores'], [], 'scores'),
    makeNode('Sigmoid', ['scores'], ['prob'], [], 'sigmoid'),
    makeNode('NonMaxSuppression', ['boxes', 'prob', 'max', 'iou', 'thr'], ['selected'], [], 'nms'),
  ];
  const inits = [
    randTensor('W1', [8, 3, 3, 3], r, 0.3),
    randTensor('W2', [5, 8, 1, 1], r, 0.3),
    ...[i64('shape', [0, 5, 64]), i64('s0', [0]), i64('s4', [4]), i64('s5', [5]), i64('ax1', [1])],
    ...[i64('ax2', [2]), i64('max', [64]), float32Tensor('iou', [1], [0.5]), float32Tensor('thr', [1], [0.6])],
  ];
  const m = smallModel(nodes, inits, ['N', 3, 8, 8], 17);
  m.graph!.output = [makeTensorValueInfo('prob', DataType.FLOAT), makeTensorValueInfo('selected', DataType.INT64)];
  return m;
}

describe('outputs whose shape depends on the values', () => {
  it('NonMaxSuppression: its indices are neither shape-checked nor compared; the scores are', async () => {
    const model = nmsModel(),
      r = rng(12),
      x = { data: randn(32 * 3 * 64, r), dims: [32, 3, 8, 8] };
    expect(outputAxesOf(model)).toEqual([{ name: 'prob' }, { name: 'selected', uncompared: 'data-shaped' }]);
    const file = join(mkdtempSync(join(tmpdir(), 'subprune-nms-')), 'x.npy');
    writeNpy(file, x.data, x.dims);
    const { model: pruned, report } = await prune(model, openNpy(file), { budget: { compression: 1.5 } });
    const mine = await run(pruned, x),
      orig = await run(model, x);
    // pruning changed how many boxes NMS keeps: the check must not call that broken
    expect(mine.get('selected')!.dims[0]).not.toBe(orig.get('selected')!.dims[0]);
    expect(report.fidelity.outputs).toEqual([
      {
        name: 'prob',
        relError: report.fidelity.relError,
        centeredRelError: expect.any(Number),
        acrossInputsRelError: expect.any(Number),
      },
    ]);
    expect(report.fidelity.uncompared).toEqual(['selected']);
    expect(report.fidelity.relError).toBeCloseTo(relError(mine.get('prob')!, orig.get('prob')!), 5);
  }, 120_000);
});

describe('refusals', () => {
  it('the sensitivity allocation on a model without class scores, before any capture', async () => {
    const out = '/tmp/subprune-outputs-sensitivity.onnx';
    const r = await runCli(
      'prune',
      F + 'ocr6-lkpan-db.onnx',
      '--calib',
      F + 'ocr6-lines.calib.npy',
      '--compression',
      '2',
      '--allocation',
      'sensitivity',
      '-o',
      out,
    );
    expectFailure(r, 2, /none of its outputs holds class scores.*--allocation global or search/);
    expect(r.out + r.err).not.toMatch(/kernel memory/); // refused before the plan's capture
    expect(existsSync(out)).toBe(false);
  });

  it("an output that reads a group's channel count (a Shape's) refuses the group; the batch's does not", () => {
    const withShapeOutput = (gather: boolean) => {
      const model = readModel('models/lenet.onnx'),
        g = model.graph!,
        relu = g.node.find((n) => n.opType === 'Relu')!.output[0]!;
      g.node.push(makeNode('Shape', [relu], [gather ? 'dims' : 'out'], [], 'shape'));
      if (gather) {
        g.initializer.push(int64Tensor('zero', [], [0]));
        g.node.push(makeNode('Gather', ['dims', 'zero'], ['out'], [intAttr('axis', 0)], 'batch'));
      }
      g.output.push(makeTensorValueInfo('out', DataType.INT64));
      return analyze(model);
    };
    const counted = withShapeOutput(false);
    expect(counted.groups.map((u) => u.id)).not.toContain('/conv1/Conv');
    expect(counted.refused.find((r) => r.node === '/conv1/Conv')?.reason).toMatch(
      /the channel count it reads is the model output "out", which pruning would change/,
    );
    expect(withShapeOutput(true).groups.map((u) => u.id)).toContain('/conv1/Conv');
  });

  it('eval against a reference whose outputs are other ones', async () => {
    const model = readModel('models/lenet.onnx'),
      other = clone(ModelProtoSchema, model);
    other.graph!.output[0]!.name = 'renamed';
    other.graph!.node.at(-1)!.output[0] = 'renamed';
    await expect(evaluate(other, openNpy('models/calib.npy'), { reference: model })).rejects.toThrow(
      /outputs are \[renamed\], the reference model's \[logits\]/,
    );
  });
});
