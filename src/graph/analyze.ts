// Finding prunable units: walk from every layer (the layer table, layers.ts) through ops the op table (ops.ts) knows to
// act per channel until the next layer. Anything the tables cannot vouch for is refused with a reason, never guessed.
import { badInput } from '../errors.js';
import {
  attrInt,
  opsetVersion,
  tensorDims,
  tensorToFloat32,
  numel,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import { checkOpset, gatherIndex, opOf, OPS, type ChannelLayout, type ParamSlice, type ShapeEdit } from './ops.js';
import { biasSlice, LAYERS, weightToMatrix } from './layers.js';
import { constantTensors, dataInputs, producerMap, inferShapes, nodeMacs, type Shapes } from './shapes.js';
import { normalizeGraph } from './normalize.js';
import type { Analysis, Refused, Unit } from './types.js';
import { notRewritable } from '../rewrite/index.js';
import { tooBigToSelect } from '../select/greedy.js';

interface Use {
  node: NodeProto;
  slot: number;
}

/**
 * Every place a tensor name is read: node inputs of the graph, and (as a use without a slot) names read inside
 * subgraphs.
 */
function usesOf(graph: GraphProto): Map<string, Use[]> {
  const uses = new Map<string, Use[]>();
  const add = (name: string, use: Use) => {
    if (!name) return;
    const list = uses.get(name);
    if (list) list.push(use);
    else uses.set(name, [use]);
  };
  const inner = (g: GraphProto, owner: NodeProto) => {
    for (const n of g.node) {
      n.input.forEach((name) => add(name, { node: owner, slot: -1 }));
      for (const a of n.attribute) [a.g, ...a.graphs].forEach((sub) => sub && inner(sub, owner));
    }
  };
  for (const n of graph.node) {
    n.input.forEach((name, slot) => add(name, { node: n, slot }));
    for (const a of n.attribute) [a.g, ...a.graphs].forEach((sub) => sub && inner(sub, n));
  }
  return uses;
}

const label = (n: NodeProto) => `${n.opType} "${n.name}"`;

/** The analysis state shared by all candidate producers. */
class Graph {
  readonly consts: Map<string, TensorProto>;
  readonly uses: Map<string, Use[]>;
  readonly producers: Map<string, NodeProto>;
  readonly outputs: Set<string>;
  readonly opset: number;
  readonly batch: number;
  constructor(
    readonly graph: GraphProto,
    readonly shapes: Shapes,
    opset: number,
  ) {
    this.consts = constantTensors(graph);
    this.uses = usesOf(graph);
    this.producers = producerMap(graph);
    this.outputs = new Set(graph.output.map((o) => o.name));
    this.opset = opset;
    this.batch = shapes.get(dataInputs(graph)[0]?.name ?? '')?.[0] || 1;
  }
  constant = (name: string): TensorProto | undefined => this.consts.get(name);
  producer = (name: string): NodeProto | undefined => this.producers.get(name);
  /** Why a constant cannot be changed for this unit alone, if it is read by more than one place. */
  shared(name: string): string | undefined {
    const uses = this.uses.get(name) ?? [];
    if (uses.length <= 1 && !this.outputs.has(name)) return undefined;
    const by = [...new Set(uses.map((u) => u.node.name))].join(', ');
    return (
      `constant "${name}" is shared (used by ${by}${this.outputs.has(name) ? ' and as a graph output' : ''}); ` +
      'changing it for one unit would change the others'
    );
  }
  flops(node: NodeProto): number | undefined {
    const macs = nodeMacs(node, this.shapes);
    return macs === undefined ? undefined : (2 * macs) / this.batch;
  }
}

/**
 * Why Shape node S, reading tensor t whose channels are on `axis`, may see the channel count; undefined if its output
 * is only used to take dimension 0 (one Gather of index 0 on axis 0: torch's x.size(0), the batch size), which pruning
 * leaves as it is. Such a Shape is not a consumer of the channels.
 */
function shapeSeesChannels(G: Graph, S: NodeProto, t: string, axis: number): string | undefined {
  const out = S.output[0] ?? '';
  const uses = G.uses.get(out) ?? [];
  if (axis === 0)
    return `tensor "${t}" is read by ${label(S)} while its channels are on dimension 0, so the shape changes with them`;
  const only =
    "only taking dimension 0 of it (a Gather of index 0 on axis 0, as torch's x.size(0)) is known not to " +
    'change with the channels';
  const why = (what: string) => `tensor "${t}" is read by ${label(S)}, ${what}; ${only}`;
  if (attrInt(S, 'start', 0) !== 0) return why(`which takes the shape from dimension ${attrInt(S, 'start', 0)} on`);
  if (G.outputs.has(out)) return why('whose output is a graph output');
  if (uses.length !== 1)
    return why(`whose output is read by ${uses.length} nodes (${uses.map((u) => u.node.name).join(', ')})`);
  const { node: U, slot } = uses[0]!;
  const g = slot === 0 ? gatherIndex(U, G.constant) : undefined;
  if (!g) return why(`whose output is read by ${label(U)}`);
  if (g.index !== 0) return why(`whose dimension ${g.index} is taken by ${label(U)}`);
  return undefined;
}

function findUnit(G: Graph, P: NodeProto): Unit | string {
  const layer = OPS[opOf(P)]!.layer!;
  const info = layer.read(P, G.constant);
  if ('refuse' in info) return info.refuse;
  const n = info.weightDims[info.outAxis]!;
  const y = P.output[0] ?? '';
  const yShape = G.shapes.get(y);
  if (!yShape) return `the shape of "${y}" is unknown (an op before it has no shape rule in subprune)`;
  let layout: ChannelLayout = { axis: layer.channelAxis(yShape.length), group: 1 };
  if (yShape[layout.axis] !== n)
    return `output "${y}" has shape [${yShape.join(', ')}], expected ${n} channels on axis ${layout.axis}`;
  const slices: ParamSlice[] = [{ tensor: info.weight, axis: info.outAxis, group: 1 }];
  if (info.bias) slices.push(...biasSlice(G.constant(info.bias)!, info.bias, n));
  const shapeEdits: ShapeEdit[] = [];
  const chain: NodeProto[] = [];
  for (const s of slices) {
    const why = G.shared(s.tensor);
    if (why) return why;
  }

  const seen = new Set<string>(); // a corrupted graph can loop back on itself
  for (let t = y; ;) {
    if (seen.has(t)) return `the graph has a cycle through "${t}"; the model is corrupted`;
    seen.add(t);
    const uses = G.uses.get(t) ?? [];
    if (uses.length === 0) return 'output layer: no consumer';
    if (G.outputs.has(t)) return `tensor "${t}" is a graph output, so its channels cannot change`;
    const inShape = G.shapes.get(t)!;
    // A Shape that only takes the batch size (x.size(0) of torch's x.view(x.size(0), -1)) does not read the channels.
    const shapes = uses.filter((u) => u.slot === 0 && opOf(u.node) === 'Shape');
    for (const u of shapes) {
      const why = shapeSeesChannels(G, u.node, t, layout.axis);
      if (why) return why;
    }
    const readers = uses.filter((u) => !shapes.includes(u));
    if (readers.length === 0)
      return `tensor "${t}" is read only by ${shapes.map((u) => label(u.node)).join(', ')}: no consumer`;
    if (readers.length > 1) {
      return (
        `tensor "${t}" feeds ${uses.length} inputs (${uses.map((u) => u.node.name).join(', ')}); with fan-out ` +
        'the channels of every consumer are coupled'
      );
    }
    const { node: U, slot } = readers[0]!;
    if (slot < 0) return `tensor "${t}" is read inside a subgraph of ${label(U)}`;

    const consumer = OPS[opOf(U)]?.layer;
    if (consumer) {
      const ci = consumer.read(U, G.constant);
      if ('refuse' in ci) return `consumer ${ci.refuse}`;
      if (slot !== 0) return `consumer ${label(U)} takes the channels as its ${slot === 1 ? 'weight' : 'bias'} input`;
      const why = G.shared(ci.weight);
      if (why) return why;
      const shape = consumer.consume(U, ci, inShape, layout, n);
      if (typeof shape === 'string') return shape;
      const { g, d, input } = shape;
      const w = ci.weightDims;
      const m = w[ci.outAxis]!;
      for (const name of [...slices.map((s) => s.tensor), ci.weight]) {
        const why = notRewritable(G.constant(name)!);
        if (why) return why;
      }
      const huge = tooBigToSelect({ d, m, g });
      if (huge) return huge;
      const chainParams = new Set(slices.slice(1).map((s) => s.tensor));
      const params = [info.weight, ...chainParams, ci.weight].reduce(
        (a, name) => a + numel(tensorDims(G.constant(name)!)),
        0,
      );
      return {
        id: P.name,
        producer: P,
        weight: info.weight,
        ...(info.bias ? { bias: info.bias } : {}),
        channels: n,
        g,
        chain,
        consumer: U,
        consumerWeight: ci.weight,
        consumerInput: t,
        consumerKind: input.kind,
        ...(input.kind === 'conv' ? { conv: input.conv } : {}),
        d,
        m,
        params,
        flops: (G.flops(P) ?? 0) + (G.flops(U) ?? 0),
        consumerLayout: ci.layout,
        slices,
        shapeEdits,
      };
    }

    const rule = OPS[opOf(U)]?.chain;
    if (!rule)
      return `${opOf(U)} "${U.name}" is not known to act per channel (it may mix channels); subprune stops at it`;
    const step = rule({
      node: U,
      input: slot,
      channels: n,
      layout,
      inShape,
      outShape: G.shapes.get(U.output[0] ?? ''),
      opset: G.opset,
      constant: G.constant,
      producer: G.producer,
    });
    if ('refuse' in step) return step.refuse;
    for (const o of U.output.slice(1)) {
      if (o && (G.uses.has(o) || G.outputs.has(o))) return `${label(U)}: its extra output "${o}" is used`;
    }
    for (const name of [...step.slices.map((s) => s.tensor), ...step.shapeEdits.map((e) => e.tensor)]) {
      const why = G.shared(name);
      if (why) return why;
    }
    slices.push(...step.slices);
    shapeEdits.push(...step.shapeEdits);
    chain.push(U);
    layout = step.layout;
    t = U.output[0] ?? '';
    if (!G.shapes.has(t)) return `the shape of "${t}" is unknown (no shape rule for ${label(U)} or an op before it)`;
  }
}

function prepare(model: Model, inputShape?: readonly number[]): Graph {
  const graph = model.graph;
  if (!graph) throw badInput('the model has no graph.');
  checkOpset(model);
  normalizeGraph(graph);
  return new Graph(graph, inferShapes(model, inputShape), opsetVersion(model) ?? 1);
}

/**
 * Find the prunable units of a model and the Conv/Gemm/MatMul nodes that cannot be pruned, with reasons. Normalises the
 * graph in place (see normalizeGraph: names unnamed nodes, folds Identity aliases of constants). inputShape: the first
 * input's shape (default: declared, symbolic dims 1).
 */
export function analyze(model: Model, inputShape?: number[]): Analysis {
  const G = prepare(model, inputShape);
  const units: Unit[] = [];
  const refused: Refused[] = [];
  for (const node of G.graph.node) {
    if (!OPS[opOf(node)]?.layer) continue;
    const r = findUnit(G, node);
    if (typeof r === 'string') refused.push({ node: node.name, reason: r });
    else units.push(r);
  }
  return { units, refused };
}

/**
 * params: element count of every initializer and Constant-node tensor; flops: 2 × multiply-accumulates of all
 * Conv/Gemm/MatMul nodes per sample. Nodes whose shapes cannot be inferred are listed in `unknown` (their FLOPs are not
 * counted). Does not change the model. (After analyze has folded Identity aliases of constants, each copy counts.)
 */
export function modelStats(model: Model, inputShape?: number[]): { params: number; flops: number; unknown: string[] } {
  if (!model.graph) throw badInput('the model has no graph.');
  // read-only: no normalising
  const G = new Graph(model.graph, inferShapes(model, inputShape), opsetVersion(model) ?? 1);
  let params = 0;
  for (const t of G.graph.initializer) params += numel(tensorDims(t));
  for (const n of G.graph.node) {
    if (n.opType !== 'Constant') continue;
    for (const a of n.attribute) {
      if (a.t) params += numel(tensorDims(a.t));
      params += a.floats.length + a.ints.length + (a.name === 'value_float' || a.name === 'value_int' ? 1 : 0);
    }
  }
  let flops = 0;
  const unknown: string[] = [];
  for (const n of G.graph.node) {
    if (!LAYERS[n.opType]) continue; // by op type, as shape inference
    const f = G.flops(n);
    if (f === undefined) unknown.push(n.name || `${n.opType} (unnamed)`);
    else flops += f;
  }
  return { params, flops, unknown };
}

/** The consumer's weights as the d×m matrix W with consumer output = B·W (bias aside): see weightToMatrix. */
export function consumerWeightMatrix(model: Model, unit: Unit): Float64Array {
  const t = model.graph && constantTensors(model.graph).get(unit.consumerWeight);
  if (!t) throw badInput(`the model has no constant "${unit.consumerWeight}" (consumer weight of unit "${unit.id}").`);
  const { data } = tensorToFloat32(t);
  const { d, m } = unit;
  if (data.length !== d * m) {
    const expects = `unit "${unit.id}" expects ${d}×${m}; was the model changed after analysis?`;
    throw badInput(`consumer weight "${unit.consumerWeight}" has ${data.length} values, ${expects}`);
  }
  return weightToMatrix(unit.consumerLayout, data, d, m);
}
