// Minimal static shape inference, enough for FLOPs and for the features per channel after a Flatten/Reshape, by the
// op table's shape rules (ops.ts). Shapes are concrete numbers: the first graph input takes the given shape, symbolic
// dims elsewhere become 1. An op without a rule leaves its outputs unknown (absent from the map); callers refuse or
// report that.
import { badInput } from '../errors.js';
import {
  attrInt,
  attrInts,
  DataType,
  equalInitializers,
  numel,
  tensorDims,
  tensorToFloat32,
  tensorToInt64,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../onnx/index.js';
import { OPS, layerOf, opOf, type ShapeContext } from './ops.js';

export type Shapes = Map<string, number[]>;

/** The shapes the model's inputs are analysed at: the first input's (an array), or each input's by name. */
export type InputShapes = readonly number[] | ReadonlyMap<string, readonly number[]>;

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

/**
 * Shapes of every tensor the op table's shape rules can follow. inputShape replaces the first graph input's shape
 * (an array), or the named inputs' shapes (a map)
 * (it must have the same rank); every other symbolic dimension is taken as 1.
 */
export function inferShapes(model: Model, inputShapes?: InputShapes): Shapes {
  return inferShapesAndValues(model, inputShapes).shapes;
}

/** inferShapes, and the values of the small integer tensors that shapes are computed with. */
export function inferShapesAndValues(
  model: Model,
  inputShapes?: InputShapes,
): { shapes: Shapes; values: Map<string, number[]> } {
  const graph = model.graph;
  if (!graph) throw badInput('the model has no graph.');
  const consts = constantTensors(graph);
  const producers = producerMap(graph);
  const constant = (name: string) => consts.get(name);
  const producer = (name: string) => producers.get(name);
  const shapes: Shapes = new Map();
  const values = new Map<string, number[]>();
  for (const [name, t] of consts) {
    shapes.set(name, tensorDims(t));
    if (t.dataType === DataType.INT64 && numel(tensorDims(t)) <= 64)
      values.set(name, Array.from(tensorToInt64(t).data, Number));
  }
  const value = (name: string) => values.get(name);
  dataInputs(graph).forEach((vi, i) => {
    const declared = declaredShape(vi);
    const inputShape = inputShapes instanceof Map ? inputShapes.get(vi.name) : i === 0 ? inputShapes : undefined;
    if (inputShape) {
      if (declared && declared.length !== inputShape.length) {
        throw badInput(
          `input shape [${inputShape.join(', ')}] has rank ${inputShape.length}, but the model's input ` +
            `"${vi.name}" has rank ${declared.length}.`,
        );
      }
      declared?.forEach((d, j) => {
        if (d !== undefined && d !== inputShape[j]) {
          throw badInput(
            `input shape [${inputShape.join(', ')}] does not match the model's input "${vi.name}" ` +
              `[${declared.map((x) => x ?? '?').join(', ')}].`,
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
  inferNodes(graph.node, { constant, producer, value }, shapes, values);
  return { shapes, values };
}

/** The op table's shape and value rules over `nodes` in order, adding to `shapes` and `values`. */
function inferNodes(
  nodes: readonly NodeProto[],
  scope: Pick<RealScope, 'constant' | 'producer' | 'value'>,
  shapes: Shapes,
  values: Map<string, number[]>,
): void {
  const { constant, producer, value } = scope;
  for (const node of nodes) {
    const ins = node.input.map((n) => (n ? shapes.get(n) : undefined));
    // by op name: an op of another domain (onnxruntime's NCHWc Conv, whose channels are blocked) is not its namesake
    const rule = OPS[opOf(node)],
      ctx = { node, ins, constant, producer, value, shape: (name: string) => shapes.get(name) };
    const outs = node.opType === 'Loop' && !node.domain ? loopShapes(ctx, shapes, values) : rule?.shape?.(ctx);
    outs?.forEach((s, i) => {
      const name = node.output[i];
      if (s && name && !shapes.has(name)) shapes.set(name, s);
    });
    const vs = rule?.values ? rule.values(ctx) : [rule?.value?.(ctx)];
    vs.forEach((v, i) => {
      const name = node.output[i];
      if (v && name && !values.has(name) && v.every(Number.isFinite)) values.set(name, v);
    });
    const out = node.output[0];
    if (out && !values.has(out) && node.opType === 'Cast' && INTEGER_TYPES.has(attrInt(node, 'to'))) {
      const v = realValue(node.input[0] ?? '', { constant, producer, value, shape: (t) => shapes.get(t) }, new Map());
      if (v?.every(Number.isFinite)) values.set(out, v.map(Math.trunc));
    }
  }
}

/**
 * A Loop that runs its trip count out (its condition true throughout: torch's export of nn.EmbeddingBag, one
 * iteration per bag): each scan output stacks the body's output of every iteration, which has one shape in all of
 * them, so the body's shapes at iteration 0 give it. The body reads the outer graph's tensors by name.
 */
function loopShapes(ctx: ShapeContext, shapes: Shapes, values: Map<string, number[]>): (number[] | undefined)[] {
  const { node } = ctx,
    body = node.attribute.find((a) => a.name === 'body')?.g,
    trips = ctx.value(node.input[0] ?? '');
  if (!body || trips?.length !== 1 || body.input.length < 2) return [];
  const local = constantTensors(body),
    producers = producerMap(body);
  const constant = (name: string) => local.get(name) ?? ctx.constant(name);
  const isTrue = (name: string): boolean => {
    const t = constant(name),
      p = producers.get(name);
    if (t) return t.dataType === DataType.BOOL && numel(tensorDims(t)) === 1 && (t.rawData[0] ?? t.int32Data[0]) === 1;
    if (p && ['Cast', 'Identity'].includes(p.opType)) return isTrue(p.input[0] ?? '');
    return name === body.input[1]!.name && (!node.input[1] || isTrue(node.input[1]));
  };
  if (!body.output[0] || !isTrue(body.output[0].name)) return [];
  const inner: Shapes = new Map(shapes),
    innerValues = new Map(values);
  for (const [name, t] of local) inner.set(name, tensorDims(t));
  inner.set(body.input[0]!.name, []);
  innerValues.set(body.input[0]!.name, [0]);
  inner.set(body.input[1]!.name, []);
  body.input.slice(2).forEach((vi, i) => {
    const s = ctx.ins[2 + i];
    if (s) inner.set(vi.name, s);
  });
  const scope = {
    constant,
    producer: (name: string) => producers.get(name) ?? ctx.producer(name),
    value: (name: string) => innerValues.get(name),
  };
  inferNodes(body.node, scope, inner, innerValues);
  // a carried value keeps its shape only where the body gives it back as it took it (one that grows, a Concat of
  // each iteration's tokens, has another shape after the last iteration)
  const carried = node.input.length - 2,
    same = (a: number[], b?: number[]) => !!b && a.length === b.length && a.every((x, j) => x === b[j]);
  return node.output.map((_, i) => {
    const s = inner.get(body.output[1 + i]?.name ?? '');
    if (!s) return undefined;
    return i < carried ? (same(s, ctx.ins[2 + i]) ? s : undefined) : [trips[0]!, ...s];
  });
}

const INTEGER_TYPES = new Set<number>([DataType.INT64, DataType.INT32]);

/** What realValue reads: constants, producers and the integer values known so far. */
export interface RealScope {
  constant(name: string): TensorProto | undefined;
  producer(name: string): NodeProto | undefined;
  value(name: string): number[] | undefined;
  shape(name: string): number[] | undefined;
}

/** `f` entry by entry over two vectors of equal length, or a vector and a scalar (shapes checked by the caller). */
function broadcast1d(a: number[], b: number[], f: (x: number, y: number) => number): number[] | undefined {
  if (a.length !== b.length && a.length !== 1 && b.length !== 1) return undefined;
  return Array.from({ length: Math.max(a.length, b.length) }, (_, i) =>
    f(a[a.length === 1 ? 0 : i]!, b[b.length === 1 ? 0 : i]!),
  );
}

const REAL_UNARY: Record<string, (x: number) => number> = {
  Floor: Math.floor,
  Ceil: Math.ceil,
  Reciprocal: (x) => 1 / x,
  Neg: (x) => -x,
};
const REAL_BINARY: Record<string, (x: number, y: number) => number> = {
  Add: (x, y) => x + y,
  Sub: (x, y) => x - y,
  Mul: (x, y) => x * y,
  Div: (x, y) => x / y,
  Min: Math.min,
  Max: Math.max,
};
const REAL_REDUCE: Record<string, (v: number[]) => number> = {
  ReduceMin: (v) => Math.min(...v),
  ReduceMax: (v) => Math.max(...v),
};

/** The ops realValue computes. */
const REAL_OPS = new Set([
  ...['Cast', 'Identity', 'Unsqueeze', 'Squeeze', 'Reshape', 'Concat'],
  ...Object.keys(REAL_UNARY),
  ...Object.keys(REAL_BINARY),
  ...Object.keys(REAL_REDUCE),
]);

/**
 * The float32 values of a small tensor computed in float arithmetic from constants and known integer values, as
 * torchvision's GeneralizedRCNNTransform computes its resized size (`min(320 / min(h, w), 640 / max(h, w))`, Floor)
 * and its padding to a multiple of 32 (Ceil), read back by a Cast to an integer type. Only the ops below; undefined
 * otherwise.
 */
export function realValue(
  name: string,
  scope: RealScope,
  memo: Map<string, number[] | undefined> = new Map(),
): number[] | undefined {
  if (memo.has(name)) return memo.get(name);
  memo.set(name, undefined); // no cycles in a graph, but a malformed one must not loop
  // sizes are small tensors: not walking back from a large one or through other ops keeps this linear in the ops it
  // reads (MViTv2-S's 680 Casts to integers each walked the whole graph above them: 13 of its 20 s of analysis)
  const dims = scope.shape(name);
  if (dims && numel(dims) > 64) return undefined;
  const known = scope.value(name),
    t = scope.constant(name);
  let v: number[] | undefined = known;
  if (!v && t && (t.dataType === DataType.FLOAT || t.dataType === DataType.DOUBLE) && numel(tensorDims(t)) <= 64)
    v = Array.from(tensorToFloat32(t).data);
  const n = !v && !t ? scope.producer(name) : undefined;
  if (n && REAL_OPS.has(n.opType)) {
    const ins = n.input.map((i) => (i ? realValue(i, scope, memo) : undefined));
    const op = n.opType,
      [a, b] = ins,
      // entries in the same order however laid out: vectors and scalars (a Concat of [2, 1] along axis 1 is not)
      flat = n.input.every((i) => !i || (scope.shape(i)?.length ?? 2) <= 1);
    if (op === 'Cast' || op === 'Identity' || op === 'Unsqueeze' || op === 'Squeeze' || op === 'Reshape')
      v = op === 'Cast' && INTEGER_TYPES.has(attrInt(n, 'to')) ? a?.map(Math.trunc) : a;
    else if (REAL_UNARY[op]) v = a?.map(REAL_UNARY[op]);
    else if (REAL_BINARY[op] && ins.length === 2 && flat) v = a && b ? broadcast1d(a, b, REAL_BINARY[op]) : undefined;
    else if (op === 'Concat' && flat && ins.every((x) => x)) v = ins.flatMap((x) => x!);
    // a reduction of every entry (torch's min / max of a size vector), not over some axes of a larger tensor
    else if (
      REAL_REDUCE[op] &&
      a?.length &&
      !n.input[1] &&
      !attrInts(n, 'axes', []).length &&
      !attrInt(n, 'noop_with_empty_axes', 0)
    )
      v = [REAL_REDUCE[op](a)];
  }
  // float32 arithmetic, as onnxruntime's (the integer values stay exact)
  const r = v && !known ? v.map(Math.fround) : v;
  memo.set(name, r);
  return r;
}

/** Multiply-accumulates of one layer node for the whole batch of `shapes`; 0 for other ops; undefined if unknown. */
export function nodeMacs(node: NodeProto, shapes: Shapes): number | undefined {
  const x = shapes.get(node.input[0] ?? '');
  const w = shapes.get(node.input[1] ?? '');
  const y = shapes.get(node.output[0] ?? '');
  if (!x || !w || !y) return undefined;
  return layerOf(node)?.macs(node, x, w, y) ?? 0;
}

/**
 * Elements of the graph's initializers and Constant tensors but those named in `absent`; a copy of a tensor the graph
 * holds (equalInitializers) counts once, as the file holds it.
 */
export function paramCount(graph: GraphProto, absent: ReadonlySet<string> = new Set()): number {
  const copies = equalInitializers(graph, absent);
  let params = 0;
  for (const t of graph.initializer) if (!absent.has(t.name) && !copies.has(t.name)) params += numel(tensorDims(t));
  for (const n of graph.node) {
    if (n.opType !== 'Constant' || absent.has(n.output[0] ?? '')) continue;
    for (const a of n.attribute) {
      if (a.t) params += numel(tensorDims(a.t));
      params += a.floats.length + a.ints.length + (a.name === 'value_float' || a.name === 'value_int' ? 1 : 0);
    }
  }
  return params;
}

/**
 * params: element count of every initializer and Constant-node tensor (paramCount: a copy analyze made of a constant
 * the model shares counts once); flops: 2 × multiply-accumulates of all layer nodes per sample. Nodes whose shapes
 * cannot be inferred are listed in `unknown` (their FLOPs are not counted). Does not change the model.
 */
export function modelStats(
  model: Model,
  inputShape?: InputShapes,
  shapes: Shapes = inferShapes(model, inputShape),
): { params: number; flops: number; unknown: string[] } {
  if (!model.graph) throw badInput('the model has no graph.');
  const graph = model.graph, // read-only: no normalising
    batch = shapes.get(dataInputs(graph)[0]?.name ?? '')?.[0] || 1;
  const params = paramCount(graph);
  let flops = 0;
  const unknown: string[] = [];
  for (const n of graph.node) {
    if (!layerOf(n)) continue;
    const macs = nodeMacs(n, shapes);
    if (macs === undefined) unknown.push(n.name || `${n.opType} (unnamed)`);
    else flops += (2 * macs) / batch;
  }
  return { params, flops, unknown };
}
