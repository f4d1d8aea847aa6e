import { describe, it, expect } from 'vitest';
import {
  DataType,
  float32Tensor,
  floatAttr,
  int64Tensor,
  intAttr,
  intsAttr,
  makeGraph,
  makeModel,
  makeNode,
  makeTensorValueInfo,
  readModel,
  tensorToFloat32,
  type Model,
} from '../src/onnx/index.js';
import { analyze, consumerWeightMatrix, modelStats } from '../src/graph/analyze.js';
import type { Consumer, Group } from '../src/graph/types.js';
import { pruneGroups } from '../src/rewrite/index.js';
import {
  chainModel,
  initializer,
  maxAbsDiff,
  outInfo,
  randInput,
  randomKeep,
  randTensor,
  rng,
  run,
  run1,
  smallModel,
  zeroDroppedInputs,
} from './graph-helpers.js';

const lenet = () => readModel('models/lenet.onnx');

/** A group's one consumer (the chains of these tests have exactly one). */
function sole(g: Group): Consumer {
  expect(g.consumers.length, `${g.id} has one consumer`).toBe(1);
  return g.consumers[0]!;
}

function groupOf(groups: Group[], id: string): Group {
  const u = groups.find((x) => x.id === id);
  if (!u) throw new Error(`no unit ${id}; have ${groups.map((x) => x.id).join(', ')}`);
  return u;
}

/**
 * consumer output = im2col(consumer input) · W + bias, with the patches built here by plain loops from the Conv
 * definition and both tensors taken from onnxruntime.
 */
async function checkConvMatrix(model: Model, unit: Consumer, inDims: number[]): Promise<void> {
  const y = unit.node.output[0]!;
  const acts = await run(model, randInput(inDims, 3), [unit.input, y]);
  const X = acts.get(unit.input)!;
  const Y = acts.get(y)!;
  const [N, C, H, Wd] = X.dims as [number, number, number, number];
  const [, M, OH, OW] = Y.dims as [number, number, number, number];
  const {
    kernel: [kh, kw],
    strides: [sh, sw],
    pads: [pt, pl],
    dilations: [dh, dw],
  } = unit.conv!;
  const W = consumerWeightMatrix(model, unit);
  const bias = unit.node.input[2] ? tensorToFloat32(initializer(model, unit.node.input[2])).data : new Float32Array(M);
  expect(W.length).toBe(C * kh * kw * M);
  let err = 0;
  const row = new Float64Array(C * kh * kw);
  for (let n = 0; n < N; n++)
    for (let oy = 0; oy < OH; oy++)
      for (let ox = 0; ox < OW; ox++) {
        for (let c = 0; c < C; c++)
          for (let i = 0; i < kh; i++)
            for (let j = 0; j < kw; j++) {
              const yy = oy * sh - pt + i * dh,
                xx = ox * sw - pl + j * dw;
              row[c * kh * kw + i * kw + j] =
                yy >= 0 && yy < H && xx >= 0 && xx < Wd ? X.data[((n * C + c) * H + yy) * Wd + xx]! : 0;
            }
        for (let o = 0; o < M; o++) {
          let s = bias[o]!;
          for (let r = 0; r < row.length; r++) s += row[r]! * W[r * M + o]!;
          err = Math.max(err, Math.abs(s - Y.data[((n * M + o) * OH + oy) * OW + ox]!));
        }
      }
  expect(err).toBeLessThan(1e-4);
}

/** consumer output = (consumer input rows) · W + bias for a Gemm/MatMul consumer (bias: Gemm C, or none). */
async function checkDenseMatrix(model: Model, unit: Consumer, inDims: number[]): Promise<void> {
  const y = unit.node.output[0]!;
  const acts = await run(model, randInput(inDims, 4), [unit.input, y]);
  const X = acts.get(unit.input)!;
  const Y = acts.get(y)!;
  const { d, m } = unit;
  const W = consumerWeightMatrix(model, unit);
  const bias = unit.node.input[2] ? tensorToFloat32(initializer(model, unit.node.input[2])).data : new Float32Array(m);
  let err = 0;
  for (let n = 0; n < X.data.length / d; n++)
    for (let o = 0; o < m; o++) {
      let s = bias[o]!;
      for (let r = 0; r < d; r++) s += X.data[n * d + r]! * W[r * m + o]!;
      err = Math.max(err, Math.abs(s - Y.data[n * m + o]!));
    }
  expect(err).toBeLessThan(1e-4);
}

describe('analyze: LeNet', () => {
  it('finds conv1→conv2, conv2→fc1, fc1→fc2, fc2→fc3 and refuses fc3', () => {
    const { groups, refused } = analyze(lenet(), [1, 1, 28, 28]);
    const got = groups.map((u) => [u.id, sole(u).node.name, u.channels, sole(u).g, sole(u).d, sole(u).m, sole(u).kind]);
    expect(got).toEqual([
      ['/conv1/Conv', '/conv2/Conv', 6, 9, 54, 16, 'conv'],
      ['/conv2/Conv', '/fc1/Gemm', 16, 25, 400, 120, 'dense'],
      ['/fc1/Gemm', '/fc2/Gemm', 120, 1, 120, 84, 'dense'],
      ['/fc2/Gemm', '/fc3/Gemm', 84, 1, 84, 10, 'dense'],
    ]);
    expect(refused).toEqual([{ node: '/fc3/Gemm', reason: 'output layer: no consumer' }]);
    const c1 = groupOf(groups, '/conv1/Conv');
    expect(sole(c1).conv).toEqual({ kernel: [3, 3], strides: [1, 1], pads: [0, 0, 0, 0], dilations: [1, 1] });
    expect([c1.producers.map((p) => p.name), sole(c1).weight, sole(c1).input]).toEqual([
      ['/conv1/Conv'],
      'conv2.weight',
      '/pool1/MaxPool_output_0',
    ]);
    expect(c1.slices.map((x) => x.tensor).sort()).toEqual(['conv1.bias', 'conv1.weight', 'conv2.weight']);
    expect(c1.chain.map((n) => n.opType)).toEqual(['Relu', 'MaxPool']);
    expect(groupOf(groups, '/conv2/Conv').chain.map((n) => n.opType)).toEqual(['Relu', 'MaxPool', 'Flatten']);
    // params: producer weight + bias + consumer weight; FLOPs: 2 × MACs per sample of producer and consumer.
    expect(c1.params).toBe(6 * 9 + 6 + 16 * 6 * 9);
    expect(c1.flops).toBe(2 * (26 * 26 * 6 * 9 + 11 * 11 * 16 * 54));
    expect(groupOf(groups, '/fc1/Gemm').flops).toBe(2 * (400 * 120 + 120 * 84));
  });

  it('modelStats counts all initializers and 2×MACs per sample', () => {
    const s = modelStats(lenet(), [1, 1, 28, 28]);
    expect(s.params).toBe(6 * 9 + 6 + 16 * 54 + 16 + 120 * 400 + 120 + 84 * 120 + 84 + 10 * 84 + 10);
    expect(s.flops).toBe(2 * (26 * 26 * 6 * 9 + 11 * 11 * 16 * 54 + 400 * 120 + 120 * 84 + 84 * 10));
    expect(modelStats(lenet(), [5, 1, 28, 28]).flops).toBe(s.flops); // per sample
  });

  it('consumerWeightMatrix matches onnxruntime: Conv consumer via im2col, Gemm via the flattened input', async () => {
    const m = lenet();
    const { groups } = analyze(m, [2, 1, 28, 28]);
    await checkConvMatrix(m, sole(groupOf(groups, '/conv1/Conv')), [2, 1, 28, 28]);
    await checkDenseMatrix(m, sole(groupOf(groups, '/conv2/Conv')), [2, 1, 28, 28]);
    await checkDenseMatrix(m, sole(groupOf(groups, '/fc1/Gemm')), [2, 1, 28, 28]);
  });
});

describe('consumerWeightMatrix', () => {
  it("reads a group's rows of a consumer that reads several groups (a DenseNet's concatenation)", () => {
    const model = readModel('test/fixtures/cnn4-densenet.onnx');
    const consumers = analyze(model).groups.flatMap((g) => g.consumers);
    expect(consumers.some((c) => c.row > 0 && c.d < c.dTotal)).toBe(true);
    for (const c of consumers) {
      const { data } = tensorToFloat32(model.graph!.initializer.find((t) => t.name === c.weight)!);
      // entry (r, o) of the whole dTotal×m matrix, from the layout's definition
      const entry = (r: number, o: number) => (c.layout === 'in-out' ? data[r * c.m + o]! : data[o * c.dTotal + r]!);
      const want = Float64Array.from({ length: c.d * c.m }, (_, i) => entry(c.row + Math.floor(i / c.m), i % c.m));
      expect(consumerWeightMatrix(model, c), c.node.name).toEqual(want);
    }
  });
});

describe('analyze: the per-op table', () => {
  it('follows BN, PRelu, Mul/Add constants, pools, Reshape, Gemm transB 0/1, MatMul and SAME_UPPER pads', async () => {
    const m = chainModel();
    const { groups, refused } = analyze(m, [2, 3, 8, 8]);
    expect(
      groups.map((u) => [u.id, sole(u).node.name, u.channels, sole(u).g, sole(u).d, sole(u).m, sole(u).layout]),
    ).toEqual([
      ['conv1', 'conv2', 6, 9, 54, 5, 'conv'],
      ['conv2', 'gemm1', 5, 4, 20, 7, 'in-out'],
      ['gemm1', 'matmul', 7, 1, 7, 4, 'in-out'],
      ['matmul', 'gemm2', 4, 1, 4, 5, 'out-in'],
      ['gemm2', 'gemm3', 5, 1, 5, 3, 'in-out'],
    ]);
    expect(refused).toEqual([{ node: 'gemm3', reason: 'output layer: no consumer' }]);
    const c1 = groupOf(groups, 'conv1');
    expect(c1.chain.map((n) => n.name)).toEqual(['bn', 'prelu', 'mul', 'add_scalar', 'pool']);
    expect(c1.slices.map((s) => s.tensor).sort()).toEqual([
      'bn_b',
      'bn_m',
      'bn_s',
      'bn_v',
      'c1b',
      'c1w',
      'c2w',
      'mc',
      'slope',
    ]);
    expect(sole(c1).conv!.pads).toEqual([0, 0, 1, 1]); // SAME_UPPER, 4×4 input, stride 2, kernel 3: one pad at the end
    expect(sole(c1).conv!.strides).toEqual([2, 2]);
    expect(groupOf(groups, 'conv2').edits).toEqual([{ tensor: 'shape', index: 1, per: 4 }]);
    expect(groupOf(groups, 'matmul').slices).toEqual([
      { tensor: 'mw', axis: 1, offset: 0, per: 1 },
      { tensor: 'mb', axis: 0, offset: 0, per: 1 },
      { tensor: 'g2w', axis: 1, offset: 0, per: 1 },
    ]);
    await checkConvMatrix(m, sole(c1), [2, 3, 8, 8]);
    for (const id of ['conv2', 'gemm1', 'matmul', 'gemm2'])
      await checkDenseMatrix(m, sole(groupOf(groups, id)), [2, 3, 8, 8]);
  });

  it('names unnamed nodes deterministically and writes the names back', () => {
    const a = chainModel(7, false);
    const ids = analyze(a).groups.map((u) => u.id);
    expect(ids).toEqual(['Conv_0', 'Conv_7', 'Gemm_11', 'MatMul_13', 'Gemm_16']);
    expect(a.graph!.node.every((n) => n.name !== '')).toBe(true);
    expect(analyze(a).groups.map((u) => u.id)).toEqual(ids);
    expect(analyze(chainModel(7, false)).groups.map((u) => u.id)).toEqual(ids);
  });

  it('folds Identity aliases of a constant (how the PyTorch exporter deduplicates equal biases)', async () => {
    const r = rng(6);
    const m = smallModel(
      [
        makeNode('Identity', ['ba'], ['bb'], [], 'dedup'),
        makeNode('Conv', ['x', 'wa', 'ba'], ['a'], [], 'conv_a'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu_a'),
        makeNode('Conv', ['ra', 'wb', 'bb'], ['b'], [], 'conv_b'),
        makeNode('Relu', ['b'], ['rb'], [], 'relu_b'),
        makeNode('Conv', ['rb', 'wc'], ['y'], [], 'conv_c'),
      ],
      [
        randTensor('wa', [4, 3, 3, 3], r),
        randTensor('ba', [4], r),
        randTensor('wb', [4, 4, 1, 1], r),
        randTensor('wc', [2, 4, 1, 1], r),
      ],
      [1, 3, 6, 6],
    );
    await expectRefused(m, [1, 3, 6, 6], { conv_c: /output layer/ });
    expect(analyze(m).groups.map((u) => [u.id, u.slices.map((x) => x.tensor).find((t) => t.startsWith('b'))])).toEqual([
      ['conv_a', 'ba'],
      ['conv_b', 'bb'],
    ]);
  });

  it('follows a spatial ReduceMean (keepdims=0) into a Gemm', () => {
    const r = rng(5);
    const m = smallModel(
      [
        makeNode('Conv', ['x', 'w1'], ['a'], [], 'conv_a'),
        makeNode('ReduceMean', ['a'], ['p'], [intsAttr('axes', [2, 3]), intAttr('keepdims', 0)], 'gap'),
        makeNode('Gemm', ['p', 'w2'], ['y'], [intAttr('transB', 1)], 'fc'),
      ],
      [randTensor('w1', [4, 3, 3, 3], r), randTensor('w2', [2, 4], r)],
      [1, 3, 6, 6],
    );
    const { groups } = analyze(m);
    expect(groups.map((u) => [u.id, sole(u).node.name, sole(u).g, sole(u).d])).toEqual([['conv_a', 'fc', 1, 4]]);
  });
});

// ---- coupled and refused patterns -------------------------------------------------------------------------------

const conv = (x: string, w: string, y: string, name: string, attrs = [intsAttr('pads', [1, 1, 1, 1])]) =>
  makeNode('Conv', [x, w], [y], attrs, name);

/**
 * Analyse, check the expected refusals (and groups: id → producers, consumers), and prune every group that was found
 * (keeping a random half): the result must match onnxruntime's reference, the original with the dropped channels'
 * consumer weights zeroed.
 */
async function expectRefused(
  m: Model,
  inDims: number[],
  want: Record<string, RegExp>,
  groupsWanted?: Record<string, [string[], string[]]>,
): Promise<void> {
  const before = await run1(m, randInput(inDims, 1)); // the test model itself is valid
  const { groups, refused } = analyze(m, inDims);
  for (const [node, reason] of Object.entries(want)) {
    const r = refused.find((x) => x.node === node);
    expect(r, `${node} should be refused`).toBeDefined();
    expect(r!.reason).toMatch(reason);
    expect(groups.find((u) => u.id === node)).toBeUndefined();
  }
  if (groupsWanted) {
    const got = groups.map((g) => [g.id, [g.producers.map((p) => p.name), g.consumers.map((c) => c.node.name)]]);
    expect(Object.fromEntries(got)).toEqual(groupsWanted);
  }
  const r = rng(9);
  const plans = groups.map((group) => ({ group, keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r) }));
  const pruned = pruneGroups(m, plans);
  const got = await run1(pruned, randInput(inDims, 1));
  const ref = await run1(zeroDroppedInputs(m, plans), randInput(inDims, 1));
  expect(got.dims).toEqual(before.dims);
  expect(maxAbsDiff(got.data, ref.data)).toBeLessThan(1e-5);
}

describe('analyze: coupled channels become groups', () => {
  const r = rng(11);
  const w = (name: string, dims: number[]) => randTensor(name, dims, r);

  it('a grouped ConvTranspose (2 groups of 2) passes its input channels in whole conv groups', async () => {
    const m = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu_a'),
        makeNode(
          'ConvTranspose',
          ['ra', 'wt', 'bt'],
          ['u'],
          [intsAttr('kernel_shape', [2, 2]), intsAttr('strides', [2, 2]), intAttr('group', 2)],
          'up',
        ),
        conv('u', 'wc', 'y', 'conv_c', []),
      ],
      [w('wa', [4, 3, 3, 3]), w('wt', [4, 2, 2, 2]), w('bt', [4]), w('wc', [2, 4, 1, 1])],
      [1, 3, 6, 6],
    );
    // one channel of the group is a conv group: conv_a's filters 2k and 2k + 1, conv_c's columns likewise
    await expectRefused(m, [1, 3, 6, 6], { conv_c: /output layer/ }, { conv_a: [['conv_a'], ['conv_c']] });
    expect(analyze(m, [1, 3, 6, 6]).groups.map((g) => [g.channels, sole(g).g])).toEqual([[2, 2]]);
  });

  it('residual Add: the block input, the branch and the sum are one group', async () => {
    const m = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu_a'),
        conv('ra', 'wb', 'b', 'conv_b'),
        makeNode('Add', ['b', 'ra'], ['s'], [], 'add'),
        makeNode('Relu', ['s'], ['rs'], [], 'relu_s'),
        conv('rs', 'wc', 'y', 'conv_c', []),
      ],
      [w('wa', [4, 3, 3, 3]), w('wb', [4, 4, 3, 3]), w('wc', [2, 4, 1, 1])],
      [1, 3, 6, 6],
    );
    await expectRefused(
      m,
      [1, 3, 6, 6],
      { conv_c: /output layer: no consumer/ },
      {
        conv_a: [
          ['conv_a', 'conv_b'],
          ['conv_b', 'conv_c'],
        ],
      },
    );
  });

  it('Concat: each part is a group at its offset of the consumer', async () => {
    const m = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        conv('x', 'wb', 'b', 'conv_b'),
        makeNode('Concat', ['a', 'b', 'x'], ['c'], [intAttr('axis', 1)], 'concat'),
        conv('c', 'wc', 'y', 'conv_c'),
      ],
      [w('wa', [4, 3, 3, 3]), w('wb', [2, 3, 3, 3]), w('wc', [2, 9, 3, 3])],
      [1, 3, 6, 6],
    );
    await expectRefused(
      m,
      [1, 3, 6, 6],
      { conv_c: /output layer/ },
      {
        conv_a: [['conv_a'], ['conv_c']],
        conv_b: [['conv_b'], ['conv_c']],
      },
    );
    const { groups } = analyze(m, [1, 3, 6, 6]);
    expect(groups.map((g) => [g.consumers[0]!.offset, g.consumers[0]!.row, g.consumers[0]!.dTotal])).toEqual([
      [0, 0, 81],
      [4, 36, 81],
    ]);
  });

  it('depthwise convolutions pass channels through; grouped ones pass whole conv groups', async () => {
    const m = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu_a'),
        conv('ra', 'wdw', 'b', 'dw', [intsAttr('pads', [1, 1, 1, 1]), intAttr('group', 4)]),
        makeNode('Relu', ['b'], ['rb'], [], 'relu_b'),
        conv('rb', 'wd', 'y', 'conv_d'),
      ],
      [w('wa', [4, 3, 3, 3]), w('wdw', [4, 1, 3, 3]), w('wd', [2, 4, 3, 3])],
      [1, 3, 6, 6],
    );
    await expectRefused(m, [1, 3, 6, 6], {}, { conv_a: [['conv_a'], ['conv_d']] });
    expect(analyze(m, [1, 3, 6, 6]).groups[0]!.edits).toEqual([{ node: 'dw', attribute: 'group', per: 1 }]);
    const g = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        conv('a', 'wg', 'c', 'grouped', [intsAttr('pads', [1, 1, 1, 1]), intAttr('group', 2)]),
        conv('c', 'wd', 'y', 'conv_d'),
      ],
      [w('wa', [4, 3, 3, 3]), w('wg', [6, 2, 3, 3]), w('wd', [2, 6, 3, 3])],
      [1, 3, 6, 6],
    );
    // 4 input channels in 2 conv groups of 2 (3 filters each): conv_a's channels go in pairs, one pair per conv group;
    // pruning one drops its pair of conv_a, its 3 filters in the grouped conv, their columns of conv_d, 1 of group
    await expectRefused(g, [1, 3, 6, 6], {}, { conv_a: [['conv_a'], ['conv_d']] });
    const [grouped] = analyze(g, [1, 3, 6, 6]).groups;
    expect([grouped!.channels, grouped!.consumers[0]!.g, grouped!.edits]).toEqual([
      2,
      3 * 9,
      [{ node: 'grouped', attribute: 'group', per: 1 }],
    ]);
    const pruned = pruneGroups(g, [{ group: grouped!, keep: [1] }]);
    const node = pruned.graph!.node.find((n) => n.name === 'grouped')!;
    expect(node.attribute.find((a) => a.name === 'group')!.i).toBe(1n);
  });

  it('two consumers of one tensor, and two producers joined by an Add', async () => {
    const m = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu_a'),
        conv('ra', 'wb', 'b', 'conv_b'),
        conv('ra', 'wc', 'c', 'conv_c'),
        makeNode('Add', ['b', 'c'], ['s'], [], 'add'),
        conv('s', 'we', 'y', 'conv_e'),
      ],
      [w('wa', [4, 3, 3, 3]), w('wb', [3, 4, 3, 3]), w('wc', [3, 4, 3, 3]), w('we', [2, 3, 3, 3])],
      [1, 3, 6, 6],
    );
    await expectRefused(
      m,
      [1, 3, 6, 6],
      { conv_e: /output layer/ },
      {
        conv_a: [['conv_a'], ['conv_b', 'conv_c']],
        conv_b: [['conv_b', 'conv_c'], ['conv_e']],
      },
    );
  });

  it('a squeeze-and-excitation gate and a decomposed HardSwish', async () => {
    const m = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        makeNode('HardSigmoid', ['a'], ['hs'], [], 'hsig'),
        makeNode('Mul', ['a', 'hs'], ['h'], [], 'hswish'),
        makeNode('GlobalAveragePool', ['h'], ['p'], [], 'gap'),
        conv('p', 'wsq', 'q', 'squeeze', []),
        makeNode('Relu', ['q'], ['rq'], [], 'relu_q'),
        conv('rq', 'wex', 'e', 'excite', []),
        makeNode('Sigmoid', ['e'], ['s'], [], 'gate'),
        makeNode('Mul', ['h', 's'], ['t'], [], 'scale'),
        conv('t', 'wd', 'y', 'conv_d'),
      ],
      [w('wa', [4, 3, 3, 3]), w('wsq', [2, 4, 1, 1]), w('wex', [4, 2, 1, 1]), w('wd', [2, 4, 3, 3])],
      [1, 3, 6, 6],
    );
    await expectRefused(
      m,
      [1, 3, 6, 6],
      { conv_d: /output layer/ },
      {
        conv_a: [
          ['conv_a', 'excite'],
          ['squeeze', 'conv_d'],
        ],
        squeeze: [['squeeze'], ['excite']],
      },
    );
  });
});

describe('analyze: refused patterns', () => {
  const r = rng(11);
  const w = (name: string, dims: number[]) => randTensor(name, dims, r);

  // pads computed at run time, as the Pytorch-UNet's F.pad(x1, [diffX // 2, …]) to its skip's size exports: before,
  // any computed pads were refused ('its pads are not a constant')
  const padBy = (index: number) =>
    smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        makeNode('Shape', ['a'], ['s'], [], 'shape'),
        makeNode('Gather', ['s', 'at'], ['d'], [intAttr('axis', 0)], 'gather'),
        makeNode('Sub', ['d', 'less'], ['pads'], [], 'sub'),
        makeNode('Pad', ['a', 'pads'], ['p'], [], 'pad'),
        conv('p', 'wb', 'y', 'conv_b', []),
      ],
      [
        w('wa', [4, 3, 3, 3]),
        w('wb', [2, 4, 1, 1]),
        int64Tensor('at', [8], new Array(8).fill(index)),
        // pads [0, 0, 0, 0, 0, 0, 1, 1] for either size: 6 rows, 4 channels
        int64Tensor('less', [8], index === 1 ? [4, 4, 4, 4, 4, 4, 3, 3] : [6, 6, 6, 6, 6, 6, 5, 5]),
      ],
      [1, 3, 6, 6],
    );

  it('Pad with pads computed from a spatial size passes the channels', async () => {
    await expectRefused(padBy(2), [1, 3, 6, 6], { conv_b: /output layer/ }, { conv_a: [['conv_a'], ['conv_b']] });
  });

  it('Pad with pads computed from the channel count is refused (they would change with it)', async () => {
    await expectRefused(padBy(1), [1, 3, 6, 6], {
      conv_a: /Pad "pad": its pads are neither a constant nor computed from sizes other than channel counts/,
    });
  });

  it('mean/variance across channels (LayerNorm-like ReduceMean, Softmax over channels)', async () => {
    const m = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        makeNode('ReduceMean', ['a'], ['mu'], [intsAttr('axes', [1])], 'mean_c'),
        conv('mu', 'wb', 'b', 'conv_b'),
        makeNode('Softmax', ['b'], ['sb'], [intAttr('axis', 1)], 'softmax'),
        conv('sb', 'wc', 'y', 'conv_c'),
      ],
      [w('wa', [4, 3, 3, 3]), w('wb', [3, 1, 3, 3]), w('wc', [2, 3, 3, 3])],
      [1, 3, 6, 6],
    );
    await expectRefused(m, [1, 3, 6, 6], {
      conv_a: /reduces over the channel axis/,
      conv_b: /normalises across the channels/,
    });
    // The usual LayerNorm decomposition: the mean over the channels couples them.
    const ln = smallModel(
      [
        makeNode('Gemm', ['x', 'g1'], ['h'], [], 'fc1'),
        makeNode('ReduceMean', ['h'], ['hm'], [intsAttr('axes', [-1])], 'mean'),
        makeNode('Sub', ['h', 'hm'], ['hc'], [], 'center'),
        makeNode('Gemm', ['hc', 'g2'], ['y'], [], 'fc2'),
      ],
      [w('g1', [6, 5]), w('g2', [5, 2])],
      [2, 6],
    );
    await expectRefused(ln, [2, 6], { fc1: /reduces over the channel axis/, fc2: /output layer/ });
  });

  it('Transpose and Reshape that mix channels', async () => {
    const m = smallModel(
      [
        conv('x', 'wa', 'a', 'conv_a'),
        makeNode('Transpose', ['a'], ['t'], [intsAttr('perm', [0, 2, 3, 1])], 'nhwc'),
        makeNode('Flatten', ['t'], ['f'], [], 'flatten'),
        makeNode('Gemm', ['f', 'g1'], ['h'], [], 'fc1'),
        makeNode('Relu', ['h'], ['rh'], [], 'relu_h'),
        makeNode('Reshape', ['rh', 'shp3'], ['rr'], [], 'reshape_mix'),
        makeNode('MatMul', ['rr', 'mw'], ['y'], [], 'mm'),
      ],
      [
        w('wa', [4, 3, 3, 3]),
        w('g1', [144, 6]),
        float32Tensor('mw', [4, 2], new Float32Array(8).fill(0.5)),
        int64Tensor('shp3', [2], [3, 4]),
      ],
      [2, 3, 6, 6],
    );
    // a batch of 2: with a batch of 1, [1, 6] → [2, 3] splits the channels (the batch is merged with them, as in
    // nn.MultiheadAttention's [T, B·heads, d])
    await expectRefused(m, [2, 3, 6, 6], {
      conv_a: /Flatten "flatten" \(axis=1\) mixes the channels on axis 3/,
      fc1: /Reshape "reshape_mix" to \[3, 4\] mixes the channels/,
    });
  });

  it('a weight shared by two layers', async () => {
    const m = smallModel(
      [
        makeNode('Gemm', ['x', 'ws'], ['a'], [], 'fc_a'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu_a'),
        makeNode('Gemm', ['ra', 'ws'], ['b'], [], 'fc_b'),
        makeNode('Relu', ['b'], ['rb'], [], 'relu_b'),
        makeNode('Gemm', ['rb', 'wc'], ['y'], [intAttr('transB', 1)], 'fc_c'),
      ],
      [w('ws', [6, 6]), w('wc', [2, 6])],
      [2, 6],
    );
    await expectRefused(m, [2, 6], {
      fc_a: /constant "ws" is shared \(used by fc_a, fc_b\)/,
      fc_b: /constant "ws" is shared/,
    });
  });

  it('MatMul with the constant on the left, and a product of activations summing over the channels', async () => {
    const m = smallModel(
      [
        makeNode('MatMul', ['wl', 'x'], ['a'], [], 'left'),
        makeNode('Relu', ['a'], ['ra'], [], 'relu'),
        makeNode('MatMul', ['ra', 'wr'], ['y'], [], 'right'),
      ],
      [w('wl', [4, 6]), w('wr', [3, 2])],
      [6, 3],
    );
    await expectRefused(m, [6, 3], { left: /constant on the left/ });
    const two = makeModel(
      makeGraph(
        't',
        [
          makeNode('Gemm', ['x', 'g0'], ['h'], [], 'fc0'),
          makeNode('MatMul', ['h', 'x2'], ['a'], [], 'act'),
          makeNode('Gemm', ['a', 'g'], ['y'], [], 'fc'),
        ],
        [makeTensorValueInfo('x', DataType.FLOAT, [2, 5]), makeTensorValueInfo('x2', DataType.FLOAT, [4, 3])],
        [outInfo('y')],
        [w('g0', [5, 4]), w('g', [3, 2])],
      ),
    );
    // a product of two activations is no layer (nothing to prune in it); it sums over fc0's channels
    const { refused } = analyze(two);
    expect(refused.map((r) => r.node)).not.toContain('act');
    expect(refused).toContainEqual({
      node: 'fc0',
      reason: 'MatMul "act" sums over the channels (they are its inner dimension), which couples them',
    });
  });

  it('Gemm with alpha ≠ 1', () => {
    const m = smallModel(
      [
        makeNode('Gemm', ['x', 'w1'], ['a'], [], 'ok'),
        makeNode('Gemm', ['a', 'w2'], ['b'], [floatAttr('alpha', 2)], 'scaled'),
        makeNode('Gemm', ['b', 'w3'], ['y'], [], 'last'),
      ],
      [w('w1', [6, 5]), w('w2', [5, 4]), w('w3', [4, 2])],
      [2, 6],
    );
    const { refused } = analyze(m);
    expect(refused.find((x) => x.node === 'ok')!.reason).toMatch(/consumer Gemm "scaled" has alpha=2/);
    expect(refused.find((x) => x.node === 'scaled')!.reason).toMatch(/alpha=2/);
  });
});
