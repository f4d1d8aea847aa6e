import { describe, it, expect } from 'vitest';
import { clone, equals } from '@bufbuild/protobuf';
import { SubpruneError } from '../src/errors.js';
import {
  DataType,
  ModelProtoSchema,
  float32Tensor,
  intAttr,
  intsAttr,
  makeNode,
  makeTensorValueInfo,
  readModel,
  serializeModel,
  tensorDims,
  tensorToFloat32,
  type Model,
} from '../src/onnx/index.js';
import { analyze, consumerWeightMatrix, modelStats } from '../src/graph/analyze.js';
import type { Consumer, Group } from '../src/graph/types.js';
import { pruneGroups } from '../src/rewrite/index.js';
import {
  chainModel,
  initializer,
  maxAbs,
  maxAbsDiff,
  randInput,
  randn,
  randomKeep,
  randTensor,
  rng,
  run1,
  smallModel,
  zeroAlong,
  zeroDroppedInputs,
  withConsumerMatrix,
} from './graph-helpers.js';

const lenet = () => readModel('models/lenet.onnx');
const LENET_IN = [4, 1, 28, 28];

function byId(groups: Group[]): Record<string, Group> {
  return Object.fromEntries(groups.map((u) => [u.id, u]));
}

/** A group's one consumer (LeNet's chains have one). */
const sole = (g: Group): Consumer => g.consumers[0]!;

/** Rows of W for the kept channels (each channel's g rows), as a fresh d'×m matrix. */
function keptRows(W: Float64Array, unit: Consumer, keep: number[]): Float64Array {
  const { g, m } = unit;
  const out = new Float64Array(keep.length * g * m);
  keep.forEach((c, k) => out.set(W.subarray(c * g * m, (c + 1) * g * m), k * g * m));
  return out;
}

describe('pruneGroups: LeNet', () => {
  it('keeping every channel reproduces the original outputs', async () => {
    const m = lenet();
    const { groups } = analyze(m);
    const snapshot = clone(ModelProtoSchema, m);
    const pruned = pruneGroups(
      m,
      groups.map((unit) => ({ group: unit, keep: Array.from({ length: unit.channels }, (_, i) => i) })),
    );
    expect(equals(ModelProtoSchema, m, snapshot)).toBe(true); // input untouched
    const x = randInput(LENET_IN, 1);
    const [a, b] = [await run1(m, x), await run1(pruned, x)];
    expect(b.dims).toEqual([4, 10]);
    expect(maxAbsDiff(a.data, b.data)).toBeLessThan(1e-6);
  });

  it(
    'random channels: runs, has the expected dims and parameter count, equals the original with those inputs ' +
      'dropped',
    async () => {
      const m = lenet();
      const { groups } = analyze(m);
      const r = rng(21);
      const plans = groups.map((unit) => ({
        group: unit,
        keep: randomKeep(unit.channels, 1 + Math.floor(r() * unit.channels), r),
      }));
      const [k1, k2, k3, k4] = plans.map((p) => p.keep.length) as [number, number, number, number];
      const pruned = pruneGroups(m, plans);
      const dims = Object.fromEntries(pruned.graph!.initializer.map((t) => [t.name, tensorDims(t)]));
      expect(dims).toEqual({
        'conv1.weight': [k1, 1, 3, 3],
        'conv1.bias': [k1],
        'conv2.weight': [k2, k1, 3, 3],
        'conv2.bias': [k2],
        'fc1.weight': [k3, k2 * 25],
        'fc1.bias': [k3],
        'fc2.weight': [k4, k3],
        'fc2.bias': [k4],
        'fc3.weight': [10, k4],
        'fc3.bias': [10],
      });
      const params = k1 * 9 + k1 + k2 * k1 * 9 + k2 + k3 * k2 * 25 + k3 + k4 * k3 + k4 + 10 * k4 + 10;
      expect(modelStats(pruned, [1, 1, 28, 28]).params).toBe(params);
      const x = randInput(LENET_IN, 2);
      const got = await run1(pruned, x);
      expect(got.dims).toEqual([4, 10]);
      const ref = await run1(zeroDroppedInputs(m, plans), x);
      expect(maxAbsDiff(got.data, ref.data)).toBeLessThan(1e-5);
    },
  );

  it('W from consumerWeightMatrix equals slicing, for Conv and Gemm consumers', async () => {
    const m = lenet();
    const { groups } = analyze(m);
    const r = rng(3);
    const plans = groups.map((unit) => ({
      group: unit,
      keep: randomKeep(unit.channels, Math.ceil(unit.channels / 3), r),
    }));
    const refit = plans.map((p) => ({
      ...p,
      W: [keptRows(consumerWeightMatrix(m, sole(p.group)), sole(p.group), p.keep)],
    }));
    const x = randInput(LENET_IN, 3);
    const [a, b] = [await run1(pruneGroups(m, plans), x), await run1(pruneGroups(m, refit), x)];
    expect(maxAbsDiff(a.data, b.data)).toBeLessThan(1e-6);
  });

  it(
    'a new W lands in the consumer layout (Conv consumer, and fc1 as consumer of conv2 and producer of its own ' +
      'unit)',
    async () => {
      const m = lenet();
      const u = byId(analyze(m).groups);
      const r = rng(4);
      const x = randInput(LENET_IN, 4);
      // conv1 → conv2 with a random W.
      const c1 = u['/conv1/Conv']!;
      const keep1 = [0, 2, 3, 5];
      const W1 = Float64Array.from(randn(keep1.length * sole(c1).g * sole(c1).m, r, 0.2));
      const got1 = await run1(pruneGroups(m, [{ group: c1, keep: keep1, W: [W1] }]), x);
      const ref1 = await run1(withConsumerMatrix(m, sole(c1), keep1, W1), x);
      expect(maxAbsDiff(got1.data, ref1.data)).toBeLessThan(1e-5);

      // conv2 → fc1 with a new W (all 120 fc1 outputs), and fc1 → fc2 pruned in the same call: W's columns get
      // sliced.
      const c2 = u['/conv2/Conv']!,
        f1 = u['/fc1/Gemm']!;
      const keep2 = randomKeep(16, 7, r),
        keep3 = randomKeep(120, 50, r);
      const W2 = Float64Array.from(randn(keep2.length * 25 * 120, r, 0.05));
      const plans = [
        { group: c2, keep: keep2, W: [W2] },
        { group: f1, keep: keep3 },
      ];
      const got2 = await run1(pruneGroups(m, plans), x);
      const ref2 = await run1(
        zeroDroppedInputs(withConsumerMatrix(m, sole(c2), keep2, W2), [{ group: f1, keep: keep3 }]),
        x,
      );
      expect(maxAbsDiff(got2.data, ref2.data)).toBeLessThan(1e-5);
      expect(tensorDims(initializer(pruneGroups(m, plans), 'fc1.weight'))).toEqual([50, 7 * 25]);
    },
  );

  it('rejects bad plans', () => {
    const m = lenet();
    const [u] = analyze(m).groups;
    for (const keep of [[], [2, 1], [0, 0], [6], [-1]]) {
      expect(() => pruneGroups(m, [{ group: u!, keep }])).toThrow(SubpruneError);
    }
    expect(() => pruneGroups(m, [{ group: u!, keep: [0, 1], W: [new Float64Array(5)] }])).toThrow(/W has 5 values/);
    expect(() =>
      pruneGroups(m, [
        { group: u!, keep: [0] },
        { group: u!, keep: [1] },
      ]),
    ).toThrow(/twice/);
  });

  it('keeps initializers listed as graph inputs (IR < 4 style) consistent', async () => {
    const m = lenet();
    for (const t of m.graph!.initializer)
      m.graph!.input.push(makeTensorValueInfo(t.name, DataType.FLOAT, tensorDims(t)));
    const { groups } = analyze(m);
    const plans = groups.map((unit) => ({ group: unit, keep: [0, 1, 2] }));
    const got = await run1(pruneGroups(m, plans), randInput(LENET_IN, 5));
    const ref = await run1(zeroDroppedInputs(m, plans), randInput(LENET_IN, 5));
    expect(maxAbsDiff(got.data, ref.data)).toBeLessThan(1e-5);
  });
});

describe('pruneGroups: the per-op table', () => {
  it('slices BN, PRelu, Mul (Constant), MatMul bias; edits the Reshape constant; Gemm transB 0/1, MatMul', async () => {
    const m = chainModel();
    // Stale shapes in value_info would make onnxruntime reject the pruned model; they must be dropped.
    const N = 'N';
    m.graph!.valueInfo.push(
      makeTensorValueInfo('t2', DataType.FLOAT, [N, 6, 8, 8]),
      makeTensorValueInfo('t9', DataType.FLOAT, [N, 20]),
      makeTensorValueInfo('t15', DataType.FLOAT, [N, 5]),
    );
    const { groups } = analyze(m);
    const x = randInput([3, 3, 8, 8], 6);
    const all = pruneGroups(
      m,
      groups.map((unit) => ({ group: unit, keep: Array.from({ length: unit.channels }, (_, i) => i) })),
    );
    expect(maxAbsDiff((await run1(all, x)).data, (await run1(m, x)).data)).toBeLessThan(1e-6);

    const r = rng(8);
    for (let trial = 0; trial < 5; trial++) {
      const plans = groups.map((unit) => ({
        group: unit,
        keep: randomKeep(unit.channels, 1 + Math.floor(r() * unit.channels), r),
      }));
      const pruned = pruneGroups(m, plans);
      const got = await run1(pruned, x);
      const ref = await run1(zeroDroppedInputs(m, plans), x);
      expect(got.dims).toEqual([3, 3]);
      expect(maxAbsDiff(got.data, ref.data)).toBeLessThan(1e-5);
      expect(pruned.graph!.valueInfo.map((v) => v.name)).toEqual([]);
    }
  });

  it('a random W lands in the Gemm transB=0 and MatMul layouts', async () => {
    const m = chainModel();
    const u = byId(analyze(m).groups);
    const r = rng(10);
    const x = randInput([2, 3, 8, 8], 7);
    for (const id of ['conv2', 'gemm1', 'matmul', 'gemm2']) {
      const unit = u[id]!;
      const keep = randomKeep(unit.channels, Math.max(1, unit.channels - 2), r);
      const W = Float64Array.from(randn(keep.length * sole(unit).g * sole(unit).m, r, 0.3));
      const got = await run1(pruneGroups(m, [{ group: unit, keep, W: [W] }]), x);
      const ref = await run1(withConsumerMatrix(m, sole(unit), keep, W), x);
      expect(maxAbsDiff(got.data, ref.data), id).toBeLessThan(1e-5);
    }
  });

  it('pruning channels that are always zero changes nothing (Conv and Gemm producers)', async () => {
    const r = rng(12);
    const convModel = smallModel(
      [
        makeNode('Conv', ['x', 'wa', 'ba'], ['a'], [intsAttr('pads', [1, 1, 1, 1])], 'conv_a'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu'),
        makeNode('Conv', ['ra', 'wb', 'bb'], ['y'], [], 'conv_b'),
      ],
      [
        randTensor('wa', [4, 3, 3, 3], r),
        randTensor('ba', [4], r),
        randTensor('wb', [2, 4, 3, 3], r),
        randTensor('bb', [2], r),
      ],
      ['N', 3, 6, 6],
    );
    zeroAlong(convModel, 'wa', 0, (i) => i === 2);
    zeroAlong(convModel, 'ba', 0, (i) => i === 2);
    const denseModel = smallModel(
      [
        makeNode('Gemm', ['x', 'wa', 'ba'], ['a'], [intAttr('transB', 1)], 'fc_a'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu'),
        makeNode('Gemm', ['ra', 'wb'], ['y'], [], 'fc_b'),
      ],
      [randTensor('wa', [5, 6], r), randTensor('ba', [5], r), randTensor('wb', [5, 2], r)],
      [3, 6],
    );
    zeroAlong(denseModel, 'wa', 0, (i) => i === 1 || i === 4);
    zeroAlong(denseModel, 'ba', 0, (i) => i === 1 || i === 4);
    for (const [model, keep, dims] of [
      [convModel, [0, 1, 3], [2, 3, 6, 6]],
      [denseModel, [0, 2, 3], [3, 6]],
    ] as const) {
      const [unit] = analyze(model).groups;
      const x = randInput([...dims], 13);
      const before = await run1(model, x);
      expect(maxAbs(before.data)).toBeGreaterThan(0);
      const after = await run1(pruneGroups(model, [{ group: unit!, keep: [...keep] }]), x);
      expect(maxAbsDiff(before.data, after.data)).toBeLessThan(1e-6);
    }
  });

  it('FLOAT16 initializers stay FLOAT16', async () => {
    const r = rng(14);
    const h = (name: string, dims: number[]) => randTensor(name, dims, r, 0.5, DataType.FLOAT16);
    const m = smallModel(
      [
        makeNode('Cast', ['x'], ['xh'], [intAttr('to', DataType.FLOAT16)], 'to_half'),
        makeNode('Gemm', ['xh', 'w1', 'b1'], ['a'], [intAttr('transB', 1)], 'fc1'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu'),
        makeNode('MatMul', ['ra', 'w2'], ['b'], [], 'mm'),
        makeNode('Cast', ['b'], ['y'], [intAttr('to', DataType.FLOAT)], 'to_float'),
      ],
      [h('w1', [8, 6]), h('b1', [8]), h('w2', [8, 3])],
      [2, 6],
    );
    const [unit] = analyze(m).groups;
    expect(unit!.id).toBe('fc1');
    const keep = [0, 3, 4, 7];
    const pruned = pruneGroups(m, [{ group: unit!, keep }]);
    for (const name of ['w1', 'b1', 'w2']) expect(initializer(pruned, name).dataType).toBe(DataType.FLOAT16);
    expect(tensorDims(initializer(pruned, 'w1'))).toEqual([4, 6]);
    // float16 → float32 → float16 is exact, so the kept weights are bit-identical.
    const w1 = tensorToFloat32(initializer(m, 'w1')).data;
    expect(Array.from(tensorToFloat32(initializer(pruned, 'w1')).data)).toEqual(
      keep.flatMap((o) => Array.from(w1.subarray(o * 6, o * 6 + 6))),
    );
    const x = randInput([2, 6], 15);
    const got = await run1(pruned, x);
    const ref = await run1(zeroDroppedInputs(m, [{ group: unit!, keep }]), x);
    expect(maxAbsDiff(got.data, ref.data)).toBeLessThan(1e-2);
    expect(serializeModel(pruned).length).toBeLessThan(serializeModel(m).length);
  });
});
