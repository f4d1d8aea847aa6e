import { describe, it, expect, beforeAll } from 'vitest';
import * as ort from 'onnxruntime-node';
import { readModel, serializeModel, opsetVersion, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { chainView } from './graph-helpers.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { prune, type PruneReport } from '../src/prune/index.js';
import type { Group } from '../src/graph/types.js';

// Real exporter output at several opsets, end to end. test/fixtures/lenet-opset{9,11,17}.onnx are the bundled LeNet
// (models/lenet.onnx's weights) exported by torch 1.13 at those opsets, lenet-opset21.onnx the opset-17 export with its
// opset import raised to 21 (IR version 10) after checking that its ops mean the same; test/fixtures/make-opsets.py
// makes them and explains how. Each must run in onnxruntime-node like models/lenet.onnx, have the same groups, and
// prune to the same channels: the weights are identical, so any difference would come from how subprune reads the
// graph at that opset.

const SHAPE = [1, 1, 28, 28];
const N = 64; // samples compared through onnxruntime
const FIXTURES = [
  { opset: 9, ir: 4 },
  { opset: 11, ir: 6 },
  { opset: 13, ir: 7 },
  { opset: 17, ir: 8 },
  { opset: 21, ir: 10 },
];

const relDiff = (a: Float32Array, b: Float32Array) => {
  expect(a.length).toBe(b.length);
  return Math.sqrt(a.reduce((s, v, i) => s + (v - b[i]!) ** 2, 0) / b.reduce((s, v) => s + v * v, 0));
};

/**
 * The outputs of the first N calibration samples, by onnxruntime-node from a file path (not through subprune) or a
 * model.
 */
async function outputs(model: string | Model): Promise<{ dims: readonly number[]; data: Float32Array }> {
  const s =
    typeof model === 'string'
      ? await ort.InferenceSession.create(model)
      : await ort.InferenceSession.create(serializeModel(model));
  try {
    const calib = openNpy('models/calib.npy');
    const x = calib.readF32(0, N);
    calib.close();
    expect(s.inputNames).toEqual(['input']);
    expect(s.outputNames).toEqual(['logits']);
    const y = (await s.run({ input: new ort.Tensor('float32', x, [N, ...SHAPE.slice(1)]) })).logits!;
    return { dims: y.dims, data: y.data as Float32Array };
  } finally {
    await s.release();
  }
}

/** What a group is, without its id (node names are the exporter's). */
const shapeOf = (group: Group) => ({
  ...((u) => ({ producer: u.producers[0]!.opType }))(group),
  ...shapeRest(chainView(group)),
});
const shapeRest = (u: ReturnType<typeof chainView>) => ({
  channels: u.channels,
  g: u.g,
  d: u.d,
  m: u.m,
  chain: u.chain.map((n) => n.opType),
  consumer: u.consumer.opType,
  consumerKind: u.consumerKind,
  params: u.params,
  flops: u.flops,
});

async function prune4(path: string): Promise<{ model: Model; report: PruneReport }> {
  const calib = openNpy('models/calib.npy');
  try {
    return await prune(readModel(path), calib, { budget: { compression: 4 } });
  } finally {
    calib.close();
  }
}

const ref = {} as {
  y: Float32Array;
  groups: Group[];
  refused: number;
  pruned: Model;
  report: PruneReport;
  yPruned: Float32Array;
};

beforeAll(async () => {
  ref.y = (await outputs('models/lenet.onnx')).data;
  const a = analyze(readModel('models/lenet.onnx'), SHAPE);
  ref.groups = a.groups;
  ref.refused = a.refused.length;
  const { model, report } = await prune4('models/lenet.onnx');
  ref.pruned = model;
  ref.report = report;
  ref.yPruned = (await outputs(model)).data;
  // fc3 is the output layer
  expect(ref.groups.map((u) => u.id)).toEqual(['/conv1/Conv', '/conv2/Conv', '/fc1/Gemm', '/fc2/Gemm']);
});

describe.each(FIXTURES)('lenet exported at opset $opset', ({ opset, ir }) => {
  // the bundled model is the opset-13 export
  const path = opset === 13 ? 'models/lenet.onnx' : `test/fixtures/lenet-opset${opset}.onnx`;

  it("is the opset it claims; onnxruntime-node loads it and its outputs are lenet.onnx's", async () => {
    const m = readModel(path);
    expect(opsetVersion(m)).toBe(opset);
    expect(m.opsetImport.length).toBe(1);
    expect(m.irVersion).toBe(BigInt(ir));
    const y = await outputs(path);
    expect(y.dims).toEqual([N, 10]);
    expect(relDiff(y.data, ref.y)).toBeLessThan(1e-4);
  });

  it('analyze finds the groups of lenet.onnx', () => {
    const { groups, refused } = analyze(readModel(path), SHAPE);
    expect(groups.map(shapeOf)).toEqual(ref.groups.map(shapeOf));
    expect(groups.map(chainView).map((u) => [u.channels, u.g, u.consumer.opType])).toEqual([
      [6, 9, 'Conv'],
      [16, 25, 'Gemm'],
      [120, 1, 'Gemm'],
      [84, 1, 'Gemm'],
    ]);
    expect(refused.length).toBe(ref.refused);
  });

  it('prune at compression 4: loads in onnxruntime, params match the report, same channels as lenet.onnx', async () => {
    const { model, report } = await prune4(path);
    expect(report.groups.length).toBe(ref.report.groups.length);
    expect(modelStats(model, SHAPE).params).toBe(report.params.after);
    expect(report.params).toEqual(ref.report.params);
    expect(report.params.after).toBeLessThanOrEqual(report.params.before / 4);
    report.groups.forEach((u, i) => {
      const r = ref.report.groups[i]!;
      expect([u.channels, u.kept]).toEqual([r.channels, r.kept]);
      expect(u.order).toEqual(r.order);
      expect(Math.abs(u.objective - r.objective)).toBeLessThan(1e-6);
    });
    // the rewrite keeps the file's opset and IR version
    expect(opsetVersion(model)).toBe(opset);
    expect(model.irVersion).toBe(BigInt(ir));
    const y = await outputs(model);
    expect(y.dims).toEqual([N, 10]);
    expect(y.data.every(Number.isFinite)).toBe(true);
    expect(relDiff(y.data, ref.yPruned)).toBeLessThan(1e-4);
  });
});
