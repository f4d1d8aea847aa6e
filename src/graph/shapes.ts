// Minimal static shape inference, enough for FLOPs and for the features per channel after a Flatten/Reshape.
// Shapes are concrete numbers: the first graph input takes the given shape, symbolic dims elsewhere become 1.
// An op without a rule here leaves its outputs unknown (absent from the map); callers refuse or report that.
import { badInput } from '../errors.js';
import { opOf } from '../limits.js';
import {
  attrInt,
  attrInts,
  attrString,
  DataType,
  tensorDims,
  tensorToInt64,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../onnx/index.js';

export type Shapes = Map<string, number[]>;

/** The node that computes each tensor (graph inputs and initializers have none). */
export function producerMap(graph: GraphProto): Map<string, NodeProto> {
  return new Map(graph.node.flatMap((n) => n.output.map((o) => [o, n] as [string, NodeProto])));
}

/** Constant tensors by name: initializers and outputs of Constant nodes holding a `value` tensor. */
export function constantTensors(graph: GraphProto): Map<string, TensorProto> {
  const map = new Map(graph.initializer.map((t) => [t.name, t] as [string, TensorProto]));
  for (const n of graph.node) {
    const v = n.opType === 'Constant' ? n.attribute.find((a) => a.name === 'value')?.t : undefined;
    if (v && n.output[0]) map.set(n.output[0], v);
  }
  return map;
}

/** Declared shape of a value; unknown or symbolic dims as undefined. */
export function declaredShape(vi: ValueInfoProto): (number | undefined)[] | undefined {
  if (vi.type?.value.case !== 'tensorType') return undefined;
  const shape = vi.type.value.value.shape;
  if (!shape) return undefined;
  return shape.dim.map((d) => (d.value.case === 'dimValue' ? Number(d.value.value) : undefined));
}

/** The graph inputs that are real inputs (not initializers listed as inputs, as before IR 4). */
export function dataInputs(graph: GraphProto): ValueInfoProto[] {
  const inits = new Set(graph.initializer.map((t) => t.name));
  return graph.input.filter((vi) => !inits.has(vi.name));
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const normAxis = (a: number, rank: number) => (a < 0 ? a + rank : a);

/** Begin/end pads of a Conv or pool, resolving auto_pad from the input's spatial size. ONNX order: [b1, b2, ..., e1, e2, ...]. */
export function resolvePads(
  node: NodeProto,
  spatial: readonly number[],
  kernel: readonly number[],
  strides: readonly number[],
  dilations: readonly number[],
): number[] {
  const k = spatial.length;
  const auto = attrString(node, 'auto_pad', 'NOTSET');
  if (auto === 'NOTSET') return attrInts(node, 'pads', new Array<number>(2 * k).fill(0));
  if (auto === 'VALID') return new Array<number>(2 * k).fill(0);
  if (auto !== 'SAME_UPPER' && auto !== 'SAME_LOWER')
    throw badInput(`${node.opType} node "${node.name}": unknown auto_pad "${auto}".`);
  const pads = new Array<number>(2 * k).fill(0);
  for (let i = 0; i < k; i++) {
    const out = Math.ceil(spatial[i]! / strides[i]!);
    const total = Math.max(0, (out - 1) * strides[i]! + (kernel[i]! - 1) * dilations[i]! + 1 - spatial[i]!);
    const small = Math.floor(total / 2);
    pads[i] = auto === 'SAME_UPPER' ? small : total - small; // SAME_UPPER puts the extra pad at the end
    pads[i + k] = total - pads[i]!;
  }
  return pads;
}

/** Geometry of a Conv or pool over `spatial`: kernel, strides, dilations, pads and the output spatial size. */
export function windowGeometry(node: NodeProto, spatial: readonly number[], kernel: readonly number[]) {
  const k = spatial.length;
  const strides = attrInts(node, 'strides', new Array<number>(k).fill(1));
  const dilations = attrInts(node, 'dilations', new Array<number>(k).fill(1));
  const pads = resolvePads(node, spatial, kernel, strides, dilations);
  const ceil = node.opType !== 'Conv' && attrInt(node, 'ceil_mode', 0) === 1;
  const out = spatial.map((s, i) => {
    const span = s + pads[i]! + pads[i + k]! - ((kernel[i]! - 1) * dilations[i]! + 1);
    let o = (ceil ? Math.ceil(span / strides[i]!) : Math.floor(span / strides[i]!)) + 1;
    if (ceil && (o - 1) * strides[i]! >= s + pads[i]!) o--; // the last window must start inside the input or left pad
    return o;
  });
  return { strides, dilations, pads, out };
}

function broadcast(shapes: number[][]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const j = rank - s.length + i;
      if (s[i] !== 1) out[j] = s[i]!;
    }
  }
  return out;
}

/** Axes given as an attribute (older opsets) or as a constant second input (newer ones); undefined if absent or computed. */
function axesOf(node: NodeProto, consts: Map<string, TensorProto>): number[] | undefined {
  if (node.attribute.some((a) => a.name === 'axes')) return attrInts(node, 'axes');
  const name = node.input[1];
  const t = name ? consts.get(name) : undefined;
  return t ? Array.from(tensorToInt64(t).data, Number) : undefined;
}

/** An INT64 constant's values, or undefined if the tensor is computed or of another type. */
function int64Values(t: TensorProto | undefined): number[] | undefined {
  return t?.dataType === DataType.INT64 ? Array.from(tensorToInt64(t).data, Number) : undefined;
}

/** The index a Gather on axis 0 takes with a constant INT64 index, and whether that index is a scalar (else [i]). */
export function gatherIndex(
  gather: NodeProto,
  constant: (name: string) => TensorProto | undefined,
): { index: number; scalar: boolean } | undefined {
  const t = constant(gather.input[1] ?? '');
  const v = int64Values(t);
  const axis = attrInt(gather, 'axis', 0);
  if (opOf(gather) !== 'Gather' || !v || v.length !== 1 || (axis !== 0 && axis !== -1)) return undefined; // -1 is 0 on a rank-1 shape
  const rank = tensorDims(t!).length;
  return rank <= 1 ? { index: v[0]!, scalar: rank === 0 } : undefined;
}

/**
 * Whether Reshape `node` reshapes its data input x to [x.size(0), -1] with the shape computed at run time from x itself,
 * as torch exports x.view(x.size(0), -1) with a dynamic batch: Concat(Unsqueeze(Gather(Shape(x), 0), axes [0]), [-1]) on
 * axis 0 (Unsqueeze axes as attribute before opset 13, as input from 13; or Gather of index [0] without the Unsqueeze;
 * [-1] an INT64 initializer or Constant). Such a Reshape is a Flatten(axis=1), and its shape follows x's channels by
 * itself. Anything else (another index, another tensor's Shape, a Shape with start ≠ 0) is not recognised.
 */
export function isViewFlatten(
  node: NodeProto,
  producer: (name: string) => NodeProto | undefined,
  constant: (name: string) => TensorProto | undefined,
): boolean {
  const is = (n: NodeProto | undefined, op: string) => (n && opOf(n) === op ? n : undefined);
  const concat = is(producer(node.input[1] ?? ''), 'Concat');
  if (opOf(node) !== 'Reshape' || !concat || concat.input.length !== 2) return false;
  const axis = attrInt(concat, 'axis', 1); // axis is required; without it this is not the pattern
  const minus1 = constant(concat.input[1]!),
    rest = int64Values(minus1);
  if ((axis !== 0 && axis !== -1) || rest?.length !== 1 || rest[0] !== -1 || tensorDims(minus1!).length !== 1)
    return false;
  let gather = is(producer(concat.input[0]!), 'Gather');
  const unsqueeze = is(producer(concat.input[0]!), 'Unsqueeze');
  if (unsqueeze) {
    const axes = unsqueeze.attribute.some((a) => a.name === 'axes')
      ? attrInts(unsqueeze, 'axes')
      : int64Values(constant(unsqueeze.input[1] ?? ''));
    if (axes?.length !== 1 || (axes[0] !== 0 && axes[0] !== -1)) return false;
    gather = is(producer(unsqueeze.input[0]!), 'Gather');
  }
  const g = gather && gatherIndex(gather, constant);
  if (!g || g.index !== 0 || g.scalar !== Boolean(unsqueeze)) return false; // a scalar is unsqueezed to [1], an [i] index is [1] already
  const shape = is(producer(gather!.input[0]!), 'Shape');
  return !!shape && shape.input[0] === node.input[0] && attrInt(shape, 'start', 0) === 0;
}

const SAME_SHAPE = new Set([
  'Relu',
  'LeakyRelu',
  'PRelu',
  'Sigmoid',
  'HardSigmoid',
  'HardSwish',
  'Tanh',
  'Elu',
  'Selu',
  'Celu',
  'Softplus',
  'Softsign',
  'Mish',
  'Gelu',
  'ThresholdedRelu',
  'Abs',
  'Neg',
  'Exp',
  'Log',
  'Sqrt',
  'Reciprocal',
  'Erf',
  'Floor',
  'Ceil',
  'Round',
  'Sign',
  'Clip',
  'BatchNormalization',
  'InstanceNormalization',
  'LayerNormalization',
  'LRN',
  'Softmax',
  'LogSoftmax',
  'Hardmax',
  'Dropout',
  'Identity',
  'Cast',
  'Not',
]);
const BROADCAST = new Set([
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Pow',
  'Max',
  'Min',
  'Sum',
  'Mean',
  'Where',
  'Equal',
  'Less',
  'Greater',
  'LessOrEqual',
  'GreaterOrEqual',
  'And',
  'Or',
  'Xor',
]);
const REDUCE = new Set([
  'ReduceMean',
  'ReduceMax',
  'ReduceMin',
  'ReduceSum',
  'ReduceProd',
  'ReduceL1',
  'ReduceL2',
  'ReduceLogSum',
  'ReduceLogSumExp',
  'ReduceSumSquare',
]);
const POOL = new Set(['MaxPool', 'AveragePool', 'LpPool']);
const GLOBAL_POOL = new Set(['GlobalAveragePool', 'GlobalMaxPool', 'GlobalLpPool']);

/** Output shapes of one node (only the first output for most ops), or undefined if unknown. */
function nodeShapes(
  node: NodeProto,
  ins: (number[] | undefined)[],
  consts: Map<string, TensorProto>,
  producers: Map<string, NodeProto>,
): (number[] | undefined)[] | undefined {
  const x = ins[0];
  const op = node.opType;
  if (op === 'Constant') {
    const t = consts.get(node.output[0] ?? '');
    return t ? [tensorDims(t)] : undefined;
  }
  if (!x) return undefined;
  if (SAME_SHAPE.has(op)) return node.output.map(() => [...x]); // Dropout's mask and BN's optional outputs aside
  if (BROADCAST.has(op)) return ins.every((s) => s) ? [broadcast(ins as number[][])] : undefined;
  if (op === 'Shape') return [[x.length]];
  if (op === 'Conv') {
    const w = ins[1];
    if (!w) return undefined;
    const { out } = windowGeometry(node, x.slice(2), w.slice(2));
    return [[x[0]!, w[0]!, ...out]];
  }
  if (POOL.has(op)) {
    const { out } = windowGeometry(node, x.slice(2), attrInts(node, 'kernel_shape'));
    const y = [x[0]!, x[1]!, ...out];
    return [y, y];
  }
  if (GLOBAL_POOL.has(op)) return [[x[0]!, x[1]!, ...x.slice(2).map(() => 1)]];
  if (op === 'Gemm') {
    const b = ins[1];
    if (!b || x.length !== 2 || b.length !== 2) return undefined;
    const M = attrInt(node, 'transA', 0) ? x[1]! : x[0]!;
    const N = attrInt(node, 'transB', 0) ? b[0]! : b[1]!;
    return [[M, N]];
  }
  if (op === 'MatMul') {
    const b = ins[1];
    if (!b) return undefined;
    const a2 = x.length === 1 ? [1, x[0]!] : x;
    const b2 = b.length === 1 ? [b[0]!, 1] : b;
    const batch = broadcast([a2.slice(0, -2), b2.slice(0, -2)]);
    const y = [...batch, a2[a2.length - 2]!, b2[b2.length - 1]!];
    if (x.length === 1) y.splice(y.length - 2, 1);
    if (b.length === 1) y.pop();
    return [y];
  }
  if (op === 'Flatten') {
    const axis = normAxis(attrInt(node, 'axis', 1), x.length);
    return [[numel(x.slice(0, axis)), numel(x.slice(axis))]];
  }
  if (op === 'Reshape') {
    const t = consts.get(node.input[1] ?? '');
    if (
      !t &&
      x.length >= 1 &&
      isViewFlatten(
        node,
        (n) => producers.get(n),
        (n) => consts.get(n),
      )
    )
      return [[x[0]!, numel(x.slice(1))]];
    if (!t) return undefined;
    const spec = Array.from(tensorToInt64(t).data, Number);
    const allowZero = attrInt(node, 'allowzero', 0) === 1;
    const y = spec.map((d, i) => (d === 0 && !allowZero ? x[i]! : d));
    const free = y.indexOf(-1);
    if (free >= 0) y[free] = numel(x) / numel(y.filter((_, i) => i !== free));
    return [y];
  }
  if (op === 'Transpose') {
    const perm = attrInts(
      node,
      'perm',
      x.map((_, i) => x.length - 1 - i),
    );
    return [perm.map((p) => x[p]!)];
  }
  if (op === 'Squeeze') {
    const axes = axesOf(node, consts)?.map((a) => normAxis(a, x.length)) ?? x.flatMap((d, i) => (d === 1 ? [i] : []));
    return [x.filter((_, i) => !axes.includes(i))];
  }
  if (op === 'Unsqueeze') {
    const axes = axesOf(node, consts);
    if (!axes) return undefined;
    const rank = x.length + axes.length;
    const at = new Set(axes.map((a) => normAxis(a, rank)));
    const y: number[] = [];
    let j = 0;
    for (let i = 0; i < rank; i++) y.push(at.has(i) ? 1 : x[j++]!);
    return [y];
  }
  if (REDUCE.has(op)) {
    let axes = axesOf(node, consts);
    if (!axes || axes.length === 0) {
      if (attrInt(node, 'noop_with_empty_axes', 0) === 1) return [[...x]];
      axes = x.map((_, i) => i);
    }
    const set = new Set(axes.map((a) => normAxis(a, x.length)));
    const keep = attrInt(node, 'keepdims', 1) === 1;
    return [x.flatMap((d, i) => (set.has(i) ? (keep ? [1] : []) : [d]))];
  }
  if (op === 'Concat') {
    if (!ins.every((s) => s)) return undefined;
    const axis = normAxis(attrInt(node, 'axis'), x.length);
    const y = [...x];
    y[axis] = (ins as number[][]).reduce((a, s) => a + s[axis]!, 0);
    return [y];
  }
  return undefined;
}

/**
 * Shapes of every tensor the rules above can follow. inputShape replaces the first graph input's shape
 * (it must have the same rank); every other symbolic dimension is taken as 1.
 */
export function inferShapes(model: Model, inputShape?: readonly number[]): Shapes {
  const graph = model.graph;
  if (!graph) throw badInput('the model has no graph.');
  const consts = constantTensors(graph);
  const producers = producerMap(graph);
  const shapes: Shapes = new Map();
  for (const [name, t] of consts) shapes.set(name, tensorDims(t));
  dataInputs(graph).forEach((vi, i) => {
    const declared = declaredShape(vi);
    if (i === 0 && inputShape) {
      if (declared && declared.length !== inputShape.length) {
        throw badInput(
          `input shape [${inputShape.join(', ')}] has rank ${inputShape.length}, but the model's input "${vi.name}" has rank ${declared.length}.`,
        );
      }
      declared?.forEach((d, j) => {
        if (d !== undefined && d !== inputShape[j]) {
          throw badInput(
            `input shape [${inputShape.join(', ')}] does not match the model's input "${vi.name}" [${declared.map((x) => x ?? '?').join(', ')}].`,
          );
        }
      });
      shapes.set(vi.name, [...inputShape]);
    } else if (declared) {
      shapes.set(
        vi.name,
        declared.map((d) => d ?? 1),
      );
    }
  });
  for (const node of graph.node) {
    const ins = node.input.map((n) => (n ? shapes.get(n) : undefined));
    const outs = nodeShapes(node, ins, consts, producers);
    outs?.forEach((s, i) => {
      const name = node.output[i];
      if (s && name && !shapes.has(name)) shapes.set(name, s);
    });
  }
  return shapes;
}

/** Multiply-accumulates of one Conv/Gemm/MatMul node for the whole batch of `shapes`, or undefined if a shape is unknown. */
export function nodeMacs(node: NodeProto, shapes: Shapes): number | undefined {
  const x = shapes.get(node.input[0] ?? '');
  const w = shapes.get(node.input[1] ?? '');
  const y = shapes.get(node.output[0] ?? '');
  if (!x || !w || !y) return undefined;
  if (node.opType === 'Conv') return numel(y) * numel(w.slice(1)); // each output: (C/group)·kernel MACs
  if (node.opType === 'Gemm') return numel(y) * (attrInt(node, 'transA', 0) ? x[0]! : x[1]!);
  if (node.opType === 'MatMul') return numel(y) * x[x.length - 1]!;
  return 0;
}
