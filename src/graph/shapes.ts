// Minimal static shape inference, enough for FLOPs and for the features per channel after a Flatten/Reshape, by the
// op table's shape rules (ops.ts). Shapes are concrete numbers: the first graph input takes the given shape, symbolic
// dims elsewhere become 1. An op without a rule leaves its outputs unknown (absent from the map); callers refuse or
// report that.
import { badInput } from '../errors.js';
import {
  tensorDims,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../onnx/index.js';
import { OPS } from './ops.js';
import { LAYERS } from './layers.js';

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

/**
 * Shapes of every tensor the op table's shape rules can follow. inputShape replaces the first graph input's shape
 * (it must have the same rank); every other symbolic dimension is taken as 1.
 */
export function inferShapes(model: Model, inputShape?: readonly number[]): Shapes {
  const graph = model.graph;
  if (!graph) throw badInput('the model has no graph.');
  const consts = constantTensors(graph);
  const producers = producerMap(graph);
  const constant = (name: string) => consts.get(name);
  const producer = (name: string) => producers.get(name);
  const shapes: Shapes = new Map();
  for (const [name, t] of consts) shapes.set(name, tensorDims(t));
  dataInputs(graph).forEach((vi, i) => {
    const declared = declaredShape(vi);
    if (i === 0 && inputShape) {
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
    // by op type, whatever the domain: shapes only feed FLOPs and geometry; custom ops never pass a chain rule
    const outs = OPS[node.opType]?.shape?.({ node, ins, constant, producer });
    outs?.forEach((s, i) => {
      const name = node.output[i];
      if (s && name && !shapes.has(name)) shapes.set(name, s);
    });
  }
  return shapes;
}

/** Multiply-accumulates of one layer node for the whole batch of `shapes`; 0 for other ops; undefined if unknown. */
export function nodeMacs(node: NodeProto, shapes: Shapes): number | undefined {
  const x = shapes.get(node.input[0] ?? '');
  const w = shapes.get(node.input[1] ?? '');
  const y = shapes.get(node.output[0] ?? '');
  if (!x || !w || !y) return undefined;
  return LAYERS[node.opType]?.macs(node, x, w, y) ?? 0;
}
