// The model a rewrite edits: a copy that shares the source's nodes, constants and value infos until it changes one
// (copy on write). Copying a whole model for each group was most of a sequential prune's rewrite, and with sharing a
// frontier (capture/frontier.ts) tells a node or constant the rewrite left alone by identity instead of by its bytes.
import { clone } from '@bufbuild/protobuf';
import {
  ModelProtoSchema,
  NodeProtoSchema,
  replaceInitializerData,
  setTensorValues,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import { badInput } from '../errors.js';
import { isNormalized, normalizeModel } from '../graph/normalize.js';

export class Draft {
  /** The copy being edited. */
  readonly model: Model;
  /** The source's nodes, which the copy shares until it changes one (initializers: replaceInitializerData). */
  private readonly shared: Set<NodeProto>;

  /** A model not in normal form yet (normalizeModel) is copied whole and normalized: that changes nodes everywhere. */
  constructor(source: Model) {
    const g = source.graph;
    if (!g) throw badInput('the model has no graph.');
    if (!isNormalized(source)) {
      this.model = clone(ModelProtoSchema, source);
      normalizeModel(this.model);
      this.shared = new Set();
      return;
    }
    const graph = {
      ...g,
      node: [...g.node],
      initializer: [...g.initializer],
      input: [...g.input],
      output: [...g.output],
      valueInfo: [...g.valueInfo],
    };
    this.model = { ...source, graph };
    this.shared = new Set(g.node);
  }

  get graph(): GraphProto {
    return this.model.graph!;
  }

  /** The node named `name`, the draft's own (undefined: no such node). */
  node(name: string): NodeProto | undefined {
    const nodes = this.graph.node,
      i = nodes.findIndex((n) => n.name === name);
    if (i < 0) return undefined;
    if (this.shared.has(nodes[i]!)) nodes[i] = clone(NodeProtoSchema, nodes[i]!);
    return nodes[i];
  }

  /**
   * Stores new values in constant `name` (an initializer, or the value of the Constant node that outputs it) in a
   * tensor of the draft's own, keeping its data type (setTensorValues). Returns the tensor now holding them.
   */
  setConstant(name: string, dims: readonly number[], data: Float32Array | BigInt64Array): TensorProto {
    const g = this.graph;
    if (g.initializer.some((t) => t.name === name)) return replaceInitializerData(g, name, dims, data);
    const producer = g.node.find((n) => n.opType === 'Constant' && n.output[0] === name),
      t = producer && this.node(producer.name)!.attribute.find((a) => a.name === 'value')?.t;
    if (!t) throw badInput(`the model has no constant "${name}".`);
    setTensorValues(t, dims, data);
    return t;
  }
}
