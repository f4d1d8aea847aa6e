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
