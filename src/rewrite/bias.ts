// Where a consumer's re-fitted bias goes (the intercept, DESIGN.md). The re-fit gives, per consumer, δ (m values) to
// add to its output; it becomes a bias only where every one of the m outputs is one output channel (m equals the
// weight's output channels: not a ConvTranspose with a kernel, whose columns are summed over overlapping windows). The
// place: the layer's own bias input (its layer-table entry's biasInput), created if absent; for a layer without one,
// the constant of the Add that follows it, or a new Add.
import {
  attrFloat,
  DataType,
  float32Tensor,
  makeNode,
  makeTensorValueInfo,
  numel,
  tensorDims,
  type Model,
  type GraphProto,
  type TensorProto,
} from '../onnx/index.js';
import { badInput } from '../errors.js';
import { constantTensors } from '../graph/shapes.js';
import { layerOf } from '../graph/ops.js';
import type { AxisSlice, Consumer, Group } from '../graph/types.js';
import type { Draft } from './draft.js';

export type BiasSite =
  /** A constant of the consumer's own, its last axis the m outputs: δ is added to every row of it. */
  | { kind: 'constant'; tensor: string }
  /** The layer's bias input, absent: a new [m] constant there, holding δ/scale. */
  | { kind: 'input'; input: number; scale: number }
  /** A layer without a bias input: a new Add of an [m] constant after it. */
  | { kind: 'add' };

/** The weight axis of the output channels for each layout (see WeightLayout). */
export const outAxisOf = (c: Consumer) => (c.layout === 'in-out' ? 1 : 0);

/** Where consumer c's bias change goes in `graph`, or why it has no per-channel bias. */
export function biasSite(graph: GraphProto, consts: Map<string, TensorProto>, c: Consumer): BiasSite | string {
  const node = graph.node.find((n) => n.name === c.node.name);
  const w = consts.get(c.weight);
  if (!node || !w) return `node "${c.node.name}" or its weight "${c.weight}" is not in the model`;
  const outs = tensorDims(w)[outAxisOf(c)];
  if (outs !== c.m) return `its ${c.m} outputs per row are not its ${outs} output channels`;
  const uses = (name: string) =>
    graph.node.reduce((a, n) => a + n.input.filter((i) => i === name).length, 0) +
    graph.output.filter((o) => o.name === name).length;
  const own = (name: string, what: string): BiasSite | string => {
    const t = consts.get(name);
    if (!t) return `its ${what} "${name}" is not a constant`;
    const dims = tensorDims(t);
    if (dims[dims.length - 1] !== c.m) return `its ${what} "${name}" of shape [${dims}] does not end in ${c.m} outputs`;
    if (uses(name) !== 1) return `its ${what} "${name}" is shared with other nodes`;
    return { kind: 'constant', tensor: name };
  };
  const input = layerOf(node)?.biasInput;
  if (input) {
    const b = node.input[input.input];
    if (b) return own(b, 'bias');
    return { kind: 'input', input: input.input, scale: input.scale ? attrFloat(node, input.scale, 1) : 1 };
  }
  // no bias input: the Add of a constant that alone follows it (an exporter's bias), else a new one
  const y = node.output[0] ?? '';
  const next = graph.node.filter((n) => n.input.includes(y));
  const add = next.length === 1 && next[0]!.opType === 'Add' && uses(y) === 1 ? next[0]! : undefined;
  const other = add?.input.find((i) => i !== y);
  const t = other !== undefined ? consts.get(other) : undefined;
  if (add && other && t && numel(tensorDims(t)) === c.m && add.input.length === 2) return own(other, 'bias');
  return { kind: 'add' };
}

/** A plan's bias changes, as the rewrite takes them: one per consumer of the group (undefined: none). */
export interface BiasPlan {
  group: Group;
  bias?: (Float64Array | undefined)[];
}

/**
 * Writes every plan's bias changes into `draft` (the copy being rewritten), in the original coordinates: δ of all
 * plans summed per layer (a layer reading two groups compensates both), then added to the layer's bias constant through
 * `edit` (the rewrite's decoded copy of a constant), or written as a new constant wired in as its bias input or
 * through a new Add. A new constant of a layer whose output channels a plan prunes loses the same channels as the
 * layer's weight: those slices are returned per group, for the rewrite to apply with the recorded ones.
 */
export function writeBiases(
  draft: Draft,
  plans: BiasPlan[],
  consts: Map<string, TensorProto>,
  edit: (tensor: string, group: Group) => { dims: number[]; data: Float32Array },
): Map<Group, AxisSlice[]> {
  const graph = draft.graph;
  const sums = new Map<string, { c: Consumer; group: Group; delta: Float64Array }>();
  for (const { group, bias } of plans)
    group.consumers.forEach((c, t) => {
      const b = bias?.[t];
      if (!b) return;
      if (b.length !== c.m) throw badInput(`group "${group.id}": bias of ${b.length} values for ${c.m} outputs.`);
      const s = sums.get(c.node.name);
      if (s) s.delta.forEach((_, j) => (s.delta[j] += b[j]!));
      else sums.set(c.node.name, { c, group, delta: b.slice() });
    });
  const sites = [...sums.values()].map((s) => ({ ...s, site: biasSite(graph, consts, s.c) }));
  const derived = new Map<Group, AxisSlice[]>();
  for (const { c, group, delta, site } of sites) {
    if (typeof site === 'string')
      throw badInput(`group "${group.id}": consumer ${c.node.name} takes no bias: ${site}.`);
    if (site.kind === 'constant') {
      const w = edit(site.tensor, group);
      for (let i = 0; i < w.data.length; i++) w.data[i] += delta[i % c.m]!;
      continue;
    }
    const node = draft.node(c.node.name)!;
    const dataType = consts.get(c.weight)!.dataType || DataType.FLOAT;
    const scale = site.kind === 'input' ? site.scale : 1;
    const name = uniqueName(graph, `${node.name}_bias`);
    const t = float32Tensor(
      name,
      [c.m],
      Float32Array.from(delta, (v) => v / scale),
      dataType,
    );
    graph.initializer.push(t);
    if (draft.model.irVersion < 4n) graph.input.push(makeTensorValueInfo(name, dataType, [c.m])); // listed before IR 4
    consts.set(name, t);
    if (site.kind === 'input') {
      while (node.input.length < site.input) node.input.push('');
      node.input[site.input] = name;
    } else {
      const y = node.output[0]!,
        before = uniqueName(graph, `${y}_unbiased`);
      node.output[0] = before;
      graph.node.splice(graph.node.indexOf(node) + 1, 0, makeNode('Add', [before, name], [y], [], name));
    }
    // the layer's output channels that a plan removes: the same entries of the new bias
    for (const p of plans)
      for (const s of p.group.slices)
        if (s.tensor === c.weight && s.axis === outAxisOf(c)) {
          const list = derived.get(p.group) ?? [];
          list.push({ tensor: name, axis: 0, offset: s.offset, per: s.per });
          derived.set(p.group, list);
        }
  }
  return derived;
}

/** A name no initializer, input, node or node output of the graph uses yet. */
export function uniqueName(graph: GraphProto, base: string): string {
  const taken = new Set([
    ...graph.initializer.map((t) => t.name),
    ...graph.input.map((i) => i.name),
    ...graph.node.flatMap((n) => [...n.output, n.name]),
  ]);
  let name = base;
  for (let i = 1; taken.has(name); i++) name = `${base}_${i}`;
  return name;
}

/**
 * Parameters of the biases the rewrite creates, as a function of the channels kept (for the budget, on top of the
 * size model): a layer without a bias that consumes a re-fitted group gets one of its output channels, as many as its
 * own output groups keep. `always`: a group is re-fitted even when it keeps every channel (asymmetric mode); otherwise
 * only when it keeps fewer (a layer already fitting its own input keeps its weights).
 */
export function createdBiasParams(
  model: Model,
  groups: Group[],
  always: boolean,
): (keeps: Map<string, number>) => number {
  const graph = model.graph!,
    consts = constantTensors(graph);
  const layers = new Map<string, { m: number; weight: string; axis: number; reads: Group[] }>();
  for (const g of groups)
    for (const c of g.consumers) {
      const site = biasSite(graph, consts, c);
      if (typeof site === 'string' || site.kind === 'constant') continue;
      const l = layers.get(c.node.name) ?? { m: c.m, weight: c.weight, axis: outAxisOf(c), reads: [] };
      l.reads.push(g);
      layers.set(c.node.name, l);
    }
  // the layer's output channels that groups remove: its weight's slices on the output axis
  const outs = [...layers.values()].map((l) => ({
    ...l,
    shrinks: groups.flatMap((g) =>
      g.slices.filter((s) => s.tensor === l.weight && s.axis === l.axis).map((s) => ({ g, per: s.per })),
    ),
  }));
  const kept = (keeps: Map<string, number>, g: Group) => keeps.get(g.id) ?? g.channels;
  return (keeps) =>
    outs.reduce((a, l) => {
      if (!always && l.reads.every((g) => kept(keeps, g) >= g.channels)) return a;
      return a + l.m - l.shrinks.reduce((b, { g, per }) => b + (g.channels - kept(keeps, g)) * per, 0);
    }, 0);
}
