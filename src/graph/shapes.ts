// Minimal static shape inference, enough for FLOPs and for the features per channel after a Flatten/Reshape, by the
// op table's shape rules (ops.ts). Shapes are concrete numbers: the first graph input takes the given shape, symbolic
// dims elsewhere become 1. An op without a rule leaves its outputs unknown (absent from the map); callers refuse or
// report that.
import { badInput } from '../errors.js';
import {
  DataType,
  numel,
  tensorDims,
  tensorToInt64,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../onnx/index.js';
import { OPS, layerOf, opOf } from './ops.js';

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
  for (const node of graph.node) {
    const ins = node.input.map((n) => (n ? shapes.get(n) : undefined));
    // by op name: an op of another domain (onnxruntime's NCHWc Conv, whose channels are blocked) is not its namesake
    const rule = OPS[opOf(node)],
      ctx = { node, ins, constant, producer, value, shape: (name: string) => shapes.get(name) };
    rule?.shape?.(ctx)?.forEach((s, i) => {
      const name = node.output[i];
      if (s && name && !shapes.has(name)) shapes.set(name, s);
    });
    const vs = rule?.values ? rule.values(ctx) : [rule?.value?.(ctx)];
    vs.forEach((v, i) => {
      const name = node.output[i];
      if (v && name && !values.has(name) && v.every(Number.isFinite)) values.set(name, v);
    });
  }
  return { shapes, values };
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
 * params: element count of every initializer and Constant-node tensor; flops: 2 × multiply-accumulates of all layer
 * nodes per sample. Nodes whose shapes cannot be inferred are listed in `unknown` (their FLOPs are not counted). Does
 * not change the model. (After analyze has folded views of constants, each copy still read counts.)
 */
export function modelStats(
  model: Model,
  inputShape?: InputShapes,
  shapes: Shapes = inferShapes(model, inputShape),
): { params: number; flops: number; unknown: string[] } {
  if (!model.graph) throw badInput('the model has no graph.');
  const graph = model.graph, // read-only: no normalising
    batch = shapes.get(dataInputs(graph)[0]?.name ?? '')?.[0] || 1;
  let params = 0;
  for (const t of graph.initializer) params += numel(tensorDims(t));
  for (const n of graph.node) {
    if (n.opType !== 'Constant') continue;
    for (const a of n.attribute) {
      if (a.t) params += numel(tensorDims(a.t));
      params += a.floats.length + a.ints.length + (a.name === 'value_float' || a.name === 'value_int' ? 1 : 0);
    }
  }
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
