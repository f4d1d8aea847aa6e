// Helpers for the graph and rewrite tests: small model builders and an onnxruntime runner.
// The references these tests compare with come from onnxruntime, never from the code under test.
import * as ort from 'onnxruntime-node';
import { clone, create } from '@bufbuild/protobuf';
import {
  DataType,
  ModelProtoSchema,
  TypeProtoSchema,
  TypeProto_TensorSchema,
  ValueInfoProtoSchema,
  float32Tensor,
  encodeFloat32,
  setTensorData,
  serializeModel,
  tensorToFloat32,
  tensorDims,
  int64Tensor,
  intAttr,
  intsAttr,
  makeGraph,
  makeModel,
  makeNode,
  makeTensorValueInfo,
  numel,
  stringAttr,
  tensorAttr,
  type Model,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../src/onnx/index.js';
import { rng, gaussian } from './oracle.js';
import type { Consumer, Group } from '../src/graph/types.js';

export { rng };

export interface Out {
  data: Float32Array;
  dims: number[];
}

/** Run the model in onnxruntime on one float32 input; `extra` names intermediate tensors to return as well. */
export async function run(model: Model, input: Out, extra: string[] = []): Promise<Map<string, Out>> {
  const m = clone(ModelProtoSchema, model);
  const g = m.graph!;
  for (const name of extra) {
    const tensor = create(TypeProto_TensorSchema, { elemType: DataType.FLOAT });
    g.output.push(
      create(ValueInfoProtoSchema, {
        name,
        type: create(TypeProtoSchema, { value: { case: 'tensorType', value: tensor } }),
      }),
    );
  }
  const inits = new Set(g.initializer.map((t) => t.name));
  const inName = g.input.find((i) => !inits.has(i.name))!.name;
  // no warnings for IR<4 style inputs
  const session = await ort.InferenceSession.create(serializeModel(m), { logSeverityLevel: 3 });
  try {
    const res = await session.run({ [inName]: new ort.Tensor('float32', input.data, input.dims) });
    return new Map(
      Object.entries(res).map(([k, t]) => [k, { data: t.data as Float32Array, dims: t.dims.map(Number) }]),
    );
  } finally {
    await session.release();
  }
}

/** The model's first output on `input`. */
export async function run1(model: Model, input: Out): Promise<Out> {
  const out = await run(model, input);
  return out.get(model.graph!.output[0]!.name)!;
}

export function randn(n: number, r: () => number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = gaussian(r) * scale;
  return a;
}

export function randTensor(
  name: string,
  dims: number[],
  r: () => number,
  scale = 0.5,
  dataType: number = DataType.FLOAT,
): TensorProto {
  return float32Tensor(
    name,
    dims,
    randn(
      dims.reduce((a, b) => a * b, 1),
      r,
      scale,
    ),
    dataType,
  );
}

export function randInput(dims: number[], seed: number): Out {
  return {
    data: randn(
      dims.reduce((a, b) => a * b, 1),
      rng(seed),
    ),
    dims,
  };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

export function initializer(model: Model, name: string): TensorProto {
  const t = model.graph!.initializer.find((x) => x.name === name);
  if (!t) throw new Error(`no initializer ${name}`);
  return t;
}

/** Set entries of a float initializer in place: every index along `axis` in `drop` becomes 0. */
export function zeroAlong(model: Model, name: string, axis: number, drop: (i: number) => boolean): void {
  const t = initializer(model, name);
  const { dims, data } = tensorToFloat32(t);
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  for (let i = 0; i < data.length; i++) if (drop(Math.floor(i / inner) % dims[axis]!)) data[i] = 0;
  setTensorData(t, dims, t.dataType, encodeFloat32(data, t.dataType));
}

/** The elements a model's file stores: its initializers' and Constant nodes' tensors, each copy its own. */
export function storedElements(m: Model): number {
  const g = m.graph!;
  const constants = g.node.filter((n) => n.opType === 'Constant').flatMap((n) => n.attribute.map((a) => a.t));
  return [...g.initializer, ...constants].reduce((a, t) => a + (t ? numel(tensorDims(t)) : 0), 0);
}

/** Random strictly ascending subset of 0..n-1 with k elements. */
export function randomKeep(n: number, k: number, r: () => number): number[] {
  const idx = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [idx[i], idx[j]] = [idx[j]!, idx[i]!];
  }
  return idx.slice(0, k).sort((a, b) => a - b);
}

/** A graph output without a declared shape (onnxruntime infers it). */
export function outInfo(name: string): ValueInfoProto {
  const tensor = create(TypeProto_TensorSchema, { elemType: DataType.FLOAT });
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, { value: { case: 'tensorType', value: tensor } }),
  });
}

/** A one-input, one-output float model. */
export function smallModel(nodes: NodeProto[], inits: TensorProto[], inDims: (number | string)[], opset = 13): Model {
  return makeModel(
    makeGraph('test', nodes, [makeTensorValueInfo('x', DataType.FLOAT, inDims)], [outInfo('y')], inits),
    opset,
  );
}

/**
 * A model exercising the per-op table: Conv → BN → PRelu → Mul (Constant node) → Add (scalar) → MaxPool →
 * Conv (SAME_UPPER, stride 2) → Relu → Reshape [-1, 20] (Constant node) → Gemm (transB=0) → Sigmoid → MatMul
 * → Add bias → Relu → Gemm (transB=1) → Relu → Gemm (transB=0, no bias). Input [N, 3, 8, 8]. Node names are
 * given unless `named` is false.
 */
export function chainModel(seed = 7, named = true): Model {
  const r = rng(seed);
  const pos = (name: string, n: number) =>
    float32Tensor(
      name,
      [n],
      randn(n, r).map((v) => Math.abs(v) + 0.5),
    );
  const nm = (s: string) => (named ? s : '');
  const nodes = [
    makeNode('Conv', ['x', 'c1w', 'c1b'], ['t1'], [intsAttr('pads', [1, 1, 1, 1])], nm('conv1')),
    makeNode('BatchNormalization', ['t1', 'bn_s', 'bn_b', 'bn_m', 'bn_v'], ['t2'], [], nm('bn')),
    makeNode('PRelu', ['t2', 'slope'], ['t3'], [], nm('prelu')),
    makeNode(
      'Constant',
      [],
      ['mc'],
      [tensorAttr('value', float32Tensor('mc', [6, 1, 1], randn(6, r)))],
      nm('mc_const'),
    ),
    makeNode('Mul', ['t3', 'mc'], ['t4'], [], nm('mul')),
    makeNode('Add', ['t4', 'ac'], ['t5'], [], nm('add_scalar')),
    makeNode('MaxPool', ['t5'], ['t6'], [intsAttr('kernel_shape', [2, 2]), intsAttr('strides', [2, 2])], nm('pool')),
    makeNode(
      'Conv',
      ['t6', 'c2w', 'c2b'],
      ['t7'],
      [stringAttr('auto_pad', 'SAME_UPPER'), intsAttr('strides', [2, 2])],
      nm('conv2'),
    ),
    makeNode('Relu', ['t7'], ['t8'], [], nm('relu2')),
    makeNode('Constant', [], ['shape'], [tensorAttr('value', int64Tensor('shape', [2], [-1, 20]))], nm('shape_const')),
    makeNode('Reshape', ['t8', 'shape'], ['t9'], [], nm('reshape')),
    makeNode('Gemm', ['t9', 'g1w', 'g1b'], ['t10'], [], nm('gemm1')),
    makeNode('Sigmoid', ['t10'], ['t11'], [], nm('sigmoid')),
    makeNode('MatMul', ['t11', 'mw'], ['t12'], [], nm('matmul')),
    makeNode('Add', ['t12', 'mb'], ['t13'], [], nm('add_bias')),
    makeNode('Relu', ['t13'], ['t14'], [], nm('relu3')),
    makeNode('Gemm', ['t14', 'g2w', 'g2b'], ['t15'], [intAttr('transB', 1)], nm('gemm2')),
    makeNode('Relu', ['t15'], ['t16'], [], nm('relu4')),
    makeNode('Gemm', ['t16', 'g3w'], ['y'], [], nm('gemm3')),
  ];
  const inits = [
    randTensor('c1w', [6, 3, 3, 3], r),
    randTensor('c1b', [6], r),
    randTensor('bn_s', [6], r),
    randTensor('bn_b', [6], r),
    randTensor('bn_m', [6], r),
    pos('bn_v', 6),
    float32Tensor('slope', [6, 1, 1], randn(6, r, 0.3)),
    float32Tensor('ac', [], Float32Array.of(0.1)),
    randTensor('c2w', [5, 6, 3, 3], r),
    randTensor('c2b', [5], r),
    randTensor('g1w', [20, 7], r),
    randTensor('g1b', [7], r),
    randTensor('mw', [7, 4], r),
    randTensor('mb', [4], r),
    randTensor('g2w', [5, 4], r),
    randTensor('g2b', [5], r),
    randTensor('g3w', [5, 3], r),
  ];
  return smallModel(nodes, inits, ['N', 3, 8, 8]);
}

/**
 * The reference for a pruned model: the original model with, for every plan, each consumer's weight entries that read
 * a dropped channel set to 0. The consumer's input axis is found from the node itself (Conv and Gemm transB=1: axis 1,
 * otherwise axis 0); the group's channels own its entries from `offset` on, g per channel (a Conv: g / kernel size).
 */
export function zeroDroppedInputs(model: Model, plans: { group: Group; keep: number[] }[]): Model {
  const ref = clone(ModelProtoSchema, model);
  for (const { group, keep } of plans) {
    for (const c of group.consumers) {
      const n = c.node;
      const transB = n.attribute.find((a) => a.name === 'transB')?.i === 1n;
      // onnxruntime's FusedConv, FusedGemm and FusedMatMul keep their weights as Conv, Gemm and MatMul (FusedMatMul
      // with transB=1 as Gemm's)
      const op = n.domain === 'com.microsoft' ? n.opType.replace(/^Fused/, '') : n.domain ? '' : n.opType;
      // the weight's input axis, from the ONNX definitions: Conv [m, c, kh, kw], Gemm transB=1 [m, d], LSTM/GRU/RNN
      // [directions, gates·hidden, input]
      const recurrent = ['LSTM', 'GRU', 'RNN'].includes(op);
      const axis = recurrent ? 2 : op === 'Conv' || (['Gemm', 'MatMul'].includes(op) && transB) ? 1 : 0;
      // a Conv channel's columns are its kernel's taps: the weight's dims after [m, c] (1-D, 2-D or 3-D)
      const taps = op === 'Conv' ? numel(tensorDims(initializer(ref, c.weight)).slice(2)) : 1,
        block = c.g / taps;
      const kept = new Set(keep);
      const mine = (i: number) => i >= c.offset && i < c.offset + block * group.channels;
      zeroAlong(ref, c.weight, axis, (i) => mine(i) && !kept.has(Math.floor((i - c.offset) / block)));
    }
  }
  return ref;
}

/** A chain group (one consumer) with its consumer's fields beside its own, as the tests of chain models read them. */
export function chainView(g: Group) {
  const c = g.consumers[0]!;
  if (g.consumers.length !== 1) throw new Error(`group ${g.id} has ${g.consumers.length} consumers, not one`);
  return { ...g, consumer: c.node, g: c.g, d: c.d, m: c.m, consumerKind: c.kind, conv: c.conv, consumerInput: c.input };
}

/**
 * A copy of `model` whose consumer c computes B·W′ for the group: its weight rows of the group's kept channels hold
 * W′ ((keep·g)×m), the rows of its dropped channels are 0, every other row as it was. The layout is written out
 * here from the ONNX definitions: Conv w[o][ch][i][j] = W[ch·kh·kw + i·kw + j][o]; Gemm transB=1 w[o][r] = W[r][o];
 * transB=0 and MatMul w[r][o] = W[r][o].
 */
export function withConsumerMatrix(model: Model, c: Consumer, keep: number[], W: Float64Array): Model {
  const ref = clone(ModelProtoSchema, model);
  const t = initializer(ref, c.weight);
  const { dims, data } = tensorToFloat32(t);
  const full = Float32Array.from(data);
  const transB = c.node.attribute.find((a) => a.name === 'transB')?.i === 1n;
  const conv = c.node.opType === 'Conv';
  const dTotal = conv ? dims[1]! * dims[2]! * dims[3]! : transB ? dims[1]! : dims[0]!;
  const at = (r: number, o: number) => (conv || transB ? o * dTotal + r : r * c.m + o);
  for (let r = c.row; r < c.row + c.d; r++) for (let o = 0; o < c.m; o++) full[at(r, o)] = 0;
  keep.forEach((ch, k) => {
    for (let j = 0; j < c.g; j++)
      for (let o = 0; o < c.m; o++) full[at(c.row + ch * c.g + j, o)] = W[(k * c.g + j) * c.m + o]!;
  });
  ref.graph!.initializer[ref.graph!.initializer.indexOf(t)] = float32Tensor(t.name, dims, full);
  return ref;
}
