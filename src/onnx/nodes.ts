// Small helpers over nodes, attributes and initializers, for graph analysis, rewriting and tests.
import { clone, create } from '@bufbuild/protobuf';
import { badInput } from '../errors.js';
import {
  AttributeProto_AttributeType as AttrType,
  AttributeProtoSchema,
  GraphProtoSchema,
  ModelProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  TensorShapeProtoSchema,
  TensorShapeProto_DimensionSchema,
  TypeProtoSchema,
  TypeProto_TensorSchema,
  ValueInfoProtoSchema,
  type AttributeProto,
  type GraphProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from './gen/onnx_pb.js';
import type { Model } from './model.js';
import { numel, setTensorValues } from './tensor.js';
import { isExternal } from './external.js';

// ---- attribute getters ------------------------------------------------------------------------

function nodeLabel(node: NodeProto): string {
  return `${node.opType} node "${node.name || node.output[0] || '?'}"`;
}

/** The attribute of that name if it has the wanted type (old models may leave type UNDEFINED). */
function getAttr(node: NodeProto, name: string, type: AttrType): AttributeProto | undefined {
  const a = node.attribute.find((x) => x.name === name);
  if (a && a.type !== type && a.type !== AttrType.UNDEFINED) {
    throw badInput(
      `${nodeLabel(node)}: attribute "${name}" is ${AttrType[a.type]}, expected ${AttrType[type]}; the model ` +
        'does not follow the ONNX spec.',
    );
  }
  return a;
}

function missing(node: NodeProto, name: string): never {
  throw badInput(`${nodeLabel(node)} lacks the required attribute "${name}"; the model does not follow the ONNX spec.`);
}

function toNumber(node: NodeProto, name: string, v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw badInput(`${nodeLabel(node)}: attribute "${name}" value ${v} is out of range.`);
  }
  return Number(v);
}

/** An INT attribute; without a default a missing attribute is an error. */
export function attrInt(node: NodeProto, name: string, dflt?: number): number {
  const a = getAttr(node, name, AttrType.INT);
  return a ? toNumber(node, name, a.i) : (dflt ?? missing(node, name));
}

export function attrInts(node: NodeProto, name: string, dflt?: readonly number[]): number[] {
  const a = getAttr(node, name, AttrType.INTS);
  return a ? a.ints.map((v) => toNumber(node, name, v)) : dflt ? [...dflt] : missing(node, name);
}

export function attrFloat(node: NodeProto, name: string, dflt?: number): number {
  const a = getAttr(node, name, AttrType.FLOAT);
  return a ? a.f : (dflt ?? missing(node, name));
}

export function attrString(node: NodeProto, name: string, dflt?: string): string {
  const a = getAttr(node, name, AttrType.STRING);
  return a ? new TextDecoder().decode(a.s) : (dflt ?? missing(node, name));
}

// ---- initializers -----------------------------------------------------------------------------

export function initializerMap(graph: GraphProto): Map<string, TensorProto> {
  return new Map(graph.initializer.map((t) => [t.name, t]));
}

// The copies normalizeModel makes of a constant the model shares (torch reads one tensor through Identity views:
// GPT-2's causal mask, tied embeddings), each with the tensor it copies. A rewrite replaces the initializers it changes
// by new tensors (replaceInitializerData), so a tensor still here is a copy as it was made.
const copied = new WeakMap<TensorProto, TensorProto>();

/** Records `copy` as a copy of `source` (of what `source` copies, if it is a copy itself). */
export function markCopy(copy: TensorProto, source: TensorProto): void {
  copied.set(copy, copied.get(source) ?? source);
}

/**
 * The initializers that are copies of another one still in the graph, each mapped to that one's name: copies
 * (markCopy) of one tensor with the same type, shape and data, the tensor itself where the graph still holds it. A
 * model that stores a constant once counts it once (modelStats), and a pruned model shares the copies again
 * (shareEqualInitializers). `absent`: names to leave out (the size model's constants that a group cuts). Copies
 * listed as graph inputs or outputs, or read inside a subgraph, are left out.
 */
export function equalInitializers(graph: GraphProto, absent: ReadonlySet<string> = new Set()): Map<string, string> {
  const fixed = new Set([...absent, ...[...graph.input, ...graph.output].map((v) => v.name)]);
  for (const n of graph.node) for (const a of n.attribute) [a.g, ...a.graphs].forEach((g) => g && readInside(g, fixed));
  const kept = graph.initializer.filter((t) => !fixed.has(t.name) && !isExternal(t)),
    key = (t: TensorProto) => `${t.dataType}|${t.dims.join(',')}`;
  // per tensor copied and shape, the first of it in the graph: the tensor itself if it is there
  const first = new Map<TensorProto, Map<string, TensorProto>>();
  const firstOf = (root: TensorProto) => first.get(root) ?? first.set(root, new Map()).get(root)!;
  for (const t of kept) if (!copied.has(t)) firstOf(t).set(key(t), t);
  const equal = new Map<string, string>();
  for (const t of kept) {
    const root = copied.get(t);
    if (!root) continue;
    const f = firstOf(root).get(key(t));
    if (!f) firstOf(root).set(key(t), t);
    else if (sameData(f, t)) {
      equal.set(t.name, f.name);
      checked.set(t, f);
    }
  }
  return equal;
}

/** Adds the names that nodes of `graph` (and of their subgraphs) read. */
function readInside(graph: GraphProto, names: Set<string>): void {
  for (const n of graph.node) {
    n.input.forEach((x) => names.add(x));
    for (const a of n.attribute) [a.g, ...a.graphs].forEach((g) => g && readInside(g, names));
  }
}

// Each copy with the tensor it was last found equal to: tensors are replaced, not written into, so a pair found equal
// stays equal, and a sequential prune's analyses (one per group) compare a tied embedding's bytes once
const checked = new WeakMap<TensorProto, TensorProto>();

/** Whether two tensors hold the same stored data (a copy's is its source's unless something wrote into it). */
function sameData(a: TensorProto, b: TensorProto): boolean {
  if (checked.get(b) === a) return true;
  const same = (x: ArrayLike<unknown>, y: ArrayLike<unknown>) => {
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    return true;
  };
  return (
    same(a.rawData, b.rawData) &&
    same(a.floatData, b.floatData) &&
    same(a.int32Data, b.int32Data) &&
    same(a.int64Data, b.int64Data) &&
    same(a.doubleData, b.doubleData) &&
    same(a.uint64Data, b.uint64Data)
  );
}

/** The graph with each copy that equalInitializers finds read under the name of the tensor it equals, and dropped. */
export function shareEqualInitializers(graph: GraphProto): GraphProto {
  const equal = equalInitializers(graph);
  if (!equal.size) return graph;
  const node = graph.node.map((n) => {
    if (!n.input.some((x) => equal.has(x))) return n;
    // a copy, not a spread: a parsed message's fields at their defaults (domain '') are not its own properties
    const copy = clone(NodeProtoSchema, n);
    copy.input = n.input.map((x) => equal.get(x) ?? x);
    return copy;
  });
  return { ...graph, node, initializer: graph.initializer.filter((t) => !equal.has(t.name)) };
}

/**
 * Give an initializer new contents and shape: a new tensor replaces it in the graph's list, and the old object is left
 * as it was (a rewrite's copy of a model shares its initializers with the source). Float data keeps the initializer's
 * own element type (a FLOAT16 weight stays FLOAT16); a BigInt64Array is stored as INT64. Graph inputs and value_info
 * entries of the same name (models before IR 4 list initializers as inputs) are replaced by copies with the new shape,
 * since onnxruntime rejects an initializer that contradicts its declared shape.
 */
export function replaceInitializerData(
  graph: GraphProto,
  name: string,
  dims: readonly number[],
  data: Float32Array | BigInt64Array,
): TensorProto {
  const i = graph.initializer.findIndex((x) => x.name === name);
  if (i < 0) throw badInput(`the graph has no initializer "${name}".`);
  const n = numel(dims);
  if (n !== data.length)
    throw badInput(`initializer "${name}": ${data.length} values do not fill dims [${dims.join(', ')}].`);
  const t = { ...graph.initializer[i]! };
  setTensorValues(t, dims, data);
  graph.initializer[i] = t;
  for (const list of [graph.input, graph.valueInfo])
    list.forEach((vi, k) => {
      if (vi.name !== name || vi.type?.value.case !== 'tensorType') return;
      const own = clone(ValueInfoProtoSchema, vi);
      if (own.type?.value.case === 'tensorType') own.type.value.value.shape = shapeProto(dims);
      list[k] = own;
    });
  return t;
}

// ---- builders ---------------------------------------------------------------------------------

export const intAttr = (name: string, v: number) =>
  create(AttributeProtoSchema, { name, type: AttrType.INT, i: BigInt(v) });
export const intsAttr = (name: string, v: readonly number[]) =>
  create(AttributeProtoSchema, { name, type: AttrType.INTS, ints: v.map(BigInt) });
export const floatAttr = (name: string, v: number) =>
  create(AttributeProtoSchema, { name, type: AttrType.FLOAT, f: v });
export const stringAttr = (name: string, v: string) =>
  create(AttributeProtoSchema, { name, type: AttrType.STRING, s: new TextEncoder().encode(v) });
export const tensorAttr = (name: string, t: TensorProto) =>
  create(AttributeProtoSchema, { name, type: AttrType.TENSOR, t });

export function makeNode(
  opType: string,
  inputs: string[],
  outputs: string[],
  attribute: AttributeProto[] = [],
  name = '',
): NodeProto {
  return create(NodeProtoSchema, { opType, input: inputs, output: outputs, attribute, name });
}

function shapeProto(shape: readonly (number | string)[]) {
  return create(TensorShapeProtoSchema, {
    dim: shape.map((d) =>
      create(TensorShapeProto_DimensionSchema, {
        value: typeof d === 'number' ? { case: 'dimValue', value: BigInt(d) } : { case: 'dimParam', value: d },
      }),
    ),
  });
}

/** A tensor-typed graph input/output; a string dimension is symbolic (e.g. 'N'). */
/** A tensor's value_info; without a shape, onnxruntime infers it. */
export function makeTensorValueInfo(
  name: string,
  elemType: number,
  shape?: readonly (number | string)[],
): ValueInfoProto {
  const tensor = create(TypeProto_TensorSchema, { elemType, ...(shape ? { shape: shapeProto(shape) } : {}) });
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, { value: { case: 'tensorType', value: tensor } }),
  });
}

export function makeGraph(
  name: string,
  nodes: NodeProto[],
  inputs: ValueInfoProto[],
  outputs: ValueInfoProto[],
  initializers: TensorProto[] = [],
): GraphProto {
  return create(GraphProtoSchema, { name, node: nodes, input: inputs, output: outputs, initializer: initializers });
}

/** A model importing the default ONNX domain at `opset`; IR 8 is what ONNX 1.12 writes. */
export function makeModel(graph: GraphProto, opset = 13, irVersion = 8): Model {
  return create(ModelProtoSchema, {
    irVersion: BigInt(irVersion),
    producerName: 'subprune',
    graph,
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(opset) })],
  });
}
