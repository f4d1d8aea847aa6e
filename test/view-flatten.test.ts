import { describe, it, expect } from 'vitest';
import { clone, toBinary } from '@bufbuild/protobuf';
import {
  intAttr,
  intsAttr,
  int64Tensor,
  makeNode,
  ModelProtoSchema,
  NodeProtoSchema,
  opsetVersion,
  readModel,
  tensorAttr,
  TensorProtoSchema,
  type Model,
  type NodeProto,
} from '../src/onnx/index.js';
import { encodeNpy, npyFromBytes, openNpy, type NpyFile } from '../src/npy.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { inferShapes } from '../src/graph/shapes.js';
import { prune, type Mode } from '../src/prune/index.js';
import { chainView, randInput, randTensor, rng, run1, smallModel } from './graph-helpers.js';
import { measuredObjective } from './objective.js';
import { runCli } from './cli-helpers.js';

// torch's x.view(x.size(0), -1) with a dynamic batch exports as Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)),
// [-1])): x feeds a Shape and the Reshape. A Shape whose output only gives dimension 0 reads no channel values, and
// that Reshape is a Flatten(axis=1) whose shape follows the channels at run time. Built models at opset 11 (Unsqueeze
// axes as attribute, constants as initializers) and 13 (axes as input, constants as Constant nodes), the variants that
// must still be refused, and a real torch export (test/fixtures/view-flatten.onnx, made by make-view-flatten.py).

const randomCalib = (dims: number[], seed: number): NpyFile =>
  npyFromBytes(encodeNpy(randInput(dims, seed).data, dims), 'random');

interface Variant {
  opset: 11 | 13;
  /** The dimension the Gather takes from the Shape. */
  dim?: number;
  /** Gather of index [0] straight into the Concat (no Unsqueeze). */
  direct?: boolean;
  /** The tensor the Shape reads (the Reshape reshapes "r"). */
  shapeOf?: string;
  /** A Slice that also reads the Shape's output. */
  slice?: boolean;
}

/**
 * Conv → Relu → x.view(x.size(0), -1) → Gemm → Relu → Gemm, input [N, 2, 4, 4]; the conv has 4 channels of 16
 * features.
 */
function viewModel({ opset, dim = 0, direct = false, shapeOf = 'r', slice = false }: Variant): Model {
  const r = rng(3);
  const inits = [
    randTensor('cw', [4, 2, 3, 3], r),
    randTensor('cb', [4], r),
    randTensor('g1w', [6, 64], r),
    randTensor('g1b', [6], r),
    randTensor('g2w', [6, 3], r),
  ];
  const constant = (name: string, dims: number[], v: number[]): NodeProto[] => {
    if (opset === 13)
      return [makeNode('Constant', [], [name], [tensorAttr('value', int64Tensor(name, dims, v))], `${name}_const`)];
    inits.push(int64Tensor(name, dims, v));
    return [];
  };
  const unsqueeze =
    opset === 13
      ? [...constant('axes', [1], [0]), makeNode('Unsqueeze', ['n', 'axes'], ['nu'], [], 'unsqueeze')]
      : [makeNode('Unsqueeze', ['n'], ['nu'], [intsAttr('axes', [0])], 'unsqueeze')];
  const nodes = [
    makeNode('Conv', ['x', 'cw', 'cb'], ['a'], [intsAttr('pads', [1, 1, 1, 1])], 'conv'),
    makeNode('Relu', ['a'], ['r'], [], 'relu'),
    makeNode('Shape', [shapeOf], ['s'], [], 'shape'),
    ...(slice
      ? [
          ...constant('one', [1], [1]),
          ...constant('two', [1], [2]),
          makeNode('Slice', ['s', 'one', 'two'], ['s1'], [], 'slice'),
        ]
      : []),
    ...constant('idx', direct ? [1] : [], [dim]),
    makeNode('Gather', ['s', 'idx'], [direct ? 'nu' : 'n'], [intAttr('axis', 0)], 'gather'),
    ...(direct ? [] : unsqueeze),
    ...constant('minus1', [1], [-1]),
    makeNode('Concat', ['nu', 'minus1'], ['shp'], [intAttr('axis', 0)], 'concat'),
    makeNode('Reshape', ['r', 'shp'], ['f'], [], 'view'),
    makeNode('Gemm', ['f', 'g1w', 'g1b'], ['h'], [intAttr('transB', 1)], 'fc1'),
    makeNode('Relu', ['h'], ['rh'], [], 'relu_h'),
    makeNode('Gemm', ['rh', 'g2w'], ['y'], [], 'fc2'),
  ];
  return smallModel(nodes, inits, ['N', 2, 4, 4], opset);
}

/** The nodes that compute the view's shape, with their constants, as bytes: the rewrite must leave them as they are. */
function shapeSubgraph(m: Model): Uint8Array[] {
  const names = new Set(['shape', 'gather', 'unsqueeze', 'concat', 'idx', 'axes', 'minus1']);
  const g = m.graph!;
  return [
    ...g.node.filter((n) => names.has(n.name) || names.has(n.output[0]!)).map((n) => toBinary(NodeProtoSchema, n)),
    ...g.initializer.filter((t) => names.has(t.name)).map((t) => toBinary(TensorProtoSchema, t)),
  ];
}

/**
 * prune() at keep ratio 0.5: the model runs in onnxruntime at other batch sizes, its parameters are the report's, and
 * each unit's objective is what onnxruntime measures (layerwise: `alone` pruned alone; asymmetric: every unit, from the
 * run's own steps, against the original model).
 */
async function checkPrune(m: Model, calib: NpyFile, alone: string, shape: number[], tol: number): Promise<Model[]> {
  const { groups } = analyze(clone(ModelProtoSchema, m), shape);
  const out: Model[] = [];
  for (const mode of ['layerwise', 'asymmetric'] as Mode[]) {
    const steps: Model[] = [];
    const { model: pruned, report } = await prune(m, calib, {
      budget: { keepRatio: 0.5 },
      mode,
      onGroupPruned: (_, s) => steps.push(s),
    });
    expect(report.groups.map((u) => [u.id, u.kept])).toEqual(groups.map((u) => [u.id, Math.round(u.channels / 2)]));
    expect(modelStats(pruned, shape).params).toBe(report.params.after);
    expect(report.params.after).toBeLessThan(report.params.before);
    for (const batch of [1, 5]) {
      const x = randInput([batch, ...shape.slice(1)], 8);
      const [y, y0] = [await run1(pruned, x), await run1(m, x)];
      expect(y.dims).toEqual(y0.dims);
      expect(y.data.every(Number.isFinite)).toBe(true);
    }
    if (mode === 'layerwise') {
      const i = groups.findIndex((u) => u.id === alone);
      const part = await prune(m, calib, { budget: { keep: { [alone]: report.groups[i]!.kept } }, mode });
      expect(part.report.groups[i]!.order).toEqual(report.groups[i]!.order);
      expect(
        Math.abs(report.groups[i]!.objective - (await measuredObjective(m, part.model, groups[i]!, calib))),
        alone,
      ).toBeLessThan(tol);
    } else {
      expect(steps.length).toBe(groups.length);
      for (let i = 0; i < groups.length; i++) {
        expect(
          Math.abs(report.groups[i]!.objective - (await measuredObjective(m, steps[i]!, groups[i]!, calib))),
          `asymmetric ${groups[i]!.id}`,
        ).toBeLessThan(tol);
      }
    }
    out.push(pruned);
  }
  return out;
}

describe.each([11, 13] as const)('x.view(x.size(0), -1) at opset %i', (opset) => {
  it('analyze follows the conv through the view into the Gemm, and infers its shape', () => {
    const m = viewModel({ opset });
    expect(inferShapes(m, [3, 2, 4, 4]).get('f')).toEqual([3, 64]);
    const { groups, refused } = analyze(m, [1, 2, 4, 4]);
    expect(
      groups
        .map(chainView)
        .map((u) => [u.id, u.consumer.name, u.channels, u.g, u.d, u.m, u.chain.map((n) => n.opType)]),
    ).toEqual([
      ['conv', 'fc1', 4, 16, 64, 6, ['Relu', 'Reshape']],
      ['fc1', 'fc2', 6, 1, 6, 3, ['Relu']],
    ]);
    expect(groups[0]!.edits).toEqual([]); // the shape is computed at run time: nothing to edit
    expect(refused).toEqual([{ node: 'fc2', reason: 'output layer: no consumer' }]);
  });

  it('prune at keep ratio 0.5: runs, params and objectives match onnxruntime; shape ops left alone', async () => {
    const m = viewModel({ opset });
    const pruned = await checkPrune(m, randomCalib([128, 2, 4, 4], 4), 'conv', [1, 2, 4, 4], 1e-4);
    for (const p of pruned) {
      expect(opsetVersion(p)).toBe(opset);
      expect(shapeSubgraph(p)).toEqual(shapeSubgraph(m));
      expect(p.graph!.node.map((n) => n.opType)).toEqual(m.graph!.node.map((n) => n.opType));
    }
  });
});

describe('x.view(x.size(0), -1): other forms of it, and what is still refused', () => {
  it('Gather of index [0] without the Unsqueeze is the same pattern', async () => {
    const m = viewModel({ opset: 13, direct: true });
    expect(
      analyze(m, [1, 2, 4, 4])
        .groups.map(chainView)
        .map((u) => [u.id, u.g]),
    ).toEqual([
      ['conv', 16],
      ['fc1', 1],
    ]);
    expect((await run1(m, randInput([2, 2, 4, 4], 1))).dims).toEqual([2, 3]);
  });

  it("the Shape's dimension 1 (the channels) instead of 0: the channels end up on the Gemm's rows", () => {
    const { groups, refused } = analyze(viewModel({ opset: 13, dim: 1 }), [1, 2, 4, 4]);
    expect(groups.map((g) => g.id)).toEqual(['fc1']); // the computed shape is known, so fc1's input is
    expect(refused.find((x) => x.node === 'conv')!.reason).toBe(
      'consumer Gemm "fc1" multiplies along the last axis, but the channels are on axis 0',
    );
  });

  // The shape's entries are traced to their sources: dimension 0 of any tensor is the batch, whoever else reads it.
  it.each([
    ["another node reading the Shape's output", { opset: 11, slice: true }],
    ["[x.size(0), -1] from another tensor's Shape", { opset: 13, shapeOf: 'a' }],
  ] as const)('%s: prunes, runs at other batch sizes, objectives match onnxruntime', async (_, form) => {
    const m = viewModel(form);
    expect(analyze(clone(ModelProtoSchema, m), [1, 2, 4, 4]).groups.map((g) => g.id)).toEqual(['conv', 'fc1']);
    await checkPrune(m, randomCalib([128, 2, 4, 4], 4), 'conv', [1, 2, 4, 4], 1e-4);
  });
});

describe('a torch export with x.view(x.size(0), -1) (test/fixtures/view-flatten.onnx)', () => {
  const path = 'test/fixtures/view-flatten.onnx';
  const shape = [1, 1, 28, 28];

  it('analyze finds both convs and fc1', () => {
    const m = readModel(path);
    expect(opsetVersion(m)).toBe(13);
    expect(m.graph!.node.map((n) => n.opType)).toContain('Shape');
    const { groups, refused } = analyze(m, shape);
    expect(
      groups
        .map(chainView)
        .map((u) => [u.id, u.consumer.name, u.channels, u.g, u.d, u.m, u.chain.map((n) => n.opType)]),
    ).toEqual([
      ['/conv1/Conv', '/conv2/Conv', 4, 9, 36, 8, ['Relu', 'MaxPool']],
      ['/conv2/Conv', '/fc1/Gemm', 8, 25, 200, 16, ['Relu', 'MaxPool', 'Reshape']],
      ['/fc1/Gemm', '/fc2/Gemm', 16, 1, 16, 10, ['Relu']],
    ]);
    expect(refused).toEqual([{ node: '/fc2/Gemm', reason: 'output layer: no consumer' }]);
  });

  it('prune at keep ratio 0.5 with models/calib.npy: runs, params and objectives match onnxruntime', async () => {
    const calib = openNpy('models/calib.npy');
    try {
      await checkPrune(readModel(path), calib, '/conv2/Conv', shape, 1e-3);
    } finally {
      calib.close();
    }
  });

  it('inspect lists the groups with the chain through the view', async () => {
    const r = await runCli('inspect', path);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/\/conv2\/Conv .*\/fc1\/Gemm \(25, 200\)\s+Relu→MaxPool→Reshape/);
    expect(r.out).toMatch(/refused:\n {2}\/fc2\/Gemm: output layer: no consumer/);
  });
});
