// Rewriting a model with fewer channels. Analysis (src/graph) already recorded, per group, every constant entry that
// belongs to a channel, every count that follows the channels and every consumer; this module applies those records
// generically, so it has no per-op knowledge. Everything is done in the original model's coordinates: first the
// re-fitted consumer weights are written into the kept rows, then each constant loses the entries of every removed
// channel of every group at once, then the counts shrink.
import { badInput } from '../errors.js';
import {
  AttributeProto_AttributeType,
  DataType,
  dataTypeName,
  int64Tensor,
  makeNode,
  tensorAttr,
  numel,
  dropEntries,
  tensorToFloat32,
  tensorToInt64,
  type GraphProto,
  type Model,
  type TensorProto,
} from '../onnx/index.js';
import { constantTensors } from '../graph/shapes.js';
import { weightIndex } from '../graph/layers.js';
import type { Group } from '../graph/types.js';
import { writeBiases } from './bias.js';
import { Draft } from './draft.js';

export interface PrunePlan {
  group: Group;
  /** Kept channel indices, strictly ascending, at least one. */
  keep: number[];
  /**
   * Re-fitted weights, one entry per consumer of the group (undefined: that consumer's weights are only sliced):
   * (keep.length·g) × m row-major, rows c·g + j for the kept channels in `keep` order (see consumerWeightMatrix).
   */
  W?: (Float64Array | undefined)[];
  /** Bias changes, one entry per consumer (undefined: none): m values added to its output (see bias.ts). */
  bias?: (Float64Array | undefined)[];
}

const FLOATS = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE]);

/** Why a constant cannot be sliced or replaced by the rewrite (it reads and writes FLOAT, FLOAT16 and DOUBLE only). */
export function notRewritable(t: TensorProto): string | undefined {
  if (FLOATS.has(t.dataType)) return undefined;
  const type = dataTypeName(t.dataType);
  return `constant "${t.name}" has data type ${type}; subprune rewrites FLOAT, FLOAT16 and DOUBLE constants only`;
}

/** A float constant being edited: decoded once, written back once (so FLOAT16 weights are rounded only once). */
interface Work {
  dims: number[];
  data: Float32Array;
}

const changedModel = 'was the model changed after analysis?';

/** Keeps, along `axis`, only the entries not in `removed`. */
function sliceAxis(w: Work, axis: number, removed: Set<number>): void {
  Object.assign(w, dropEntries(w, axis, removed));
}

function checkPlan(p: PrunePlan): void {
  const { group, keep } = p;
  if (keep.length === 0)
    throw badInput(
      `group "${group.id}": keep at least one channel (removing all of them would disconnect the consumers).`,
    );
  keep.forEach((c, i) => {
    if (!Number.isInteger(c) || c < 0 || c >= group.channels)
      throw badInput(`group "${group.id}": channel ${c} is out of range 0..${group.channels - 1}.`);
    if (i > 0 && c <= keep[i - 1]!)
      throw badInput(`group "${group.id}": kept channels must be strictly ascending (W's rows follow keep).`);
  });
  if (p.W && p.W.length !== group.consumers.length)
    throw badInput(`group "${group.id}": ${p.W.length} re-fitted weights for ${group.consumers.length} consumers.`);
  if (p.bias && p.bias.length !== group.consumers.length)
    throw badInput(`group "${group.id}": ${p.bias.length} bias changes for ${group.consumers.length} consumers.`);
}

/**
 * A new model with each plan's group pruned to its kept channels: every recorded constant entry of the removed
 * channels is sliced away (producer weights and biases, per-channel parameters, the consumers' input rows), the
 * consumers' kept rows are replaced by the re-fitted weights where given, and shape constants and attributes that
 * count the channels shrink. Initializers keep their data types. Shapes recorded in value_info for the changed
 * tensors are dropped (onnxruntime re-infers them). The input model is not changed; the new one shares with it the
 * nodes and constants the rewrite leaves as they are (Draft).
 */
export function pruneGroups(model: Model, plans: PrunePlan[]): Model {
  // in the normal form the groups were found in (a model that went through analyze is in it already)
  const draft = new Draft(model),
    out = draft.model,
    graph = draft.graph;
  const consts = constantTensors(graph);
  const work = new Map<string, Work>();
  const get = (name: string, group: Group): Work => {
    let w = work.get(name);
    if (!w) {
      const t = consts.get(name);
      if (!t)
        throw badInput(
          `group "${group.id}": the model has no constant "${name}"; was it analysed on a different model?`,
        );
      w = tensorToFloat32(t);
      work.set(name, w);
    }
    return w;
  };
  const ids = new Set<string>();
  for (const p of plans) {
    checkPlan(p);
    if (ids.has(p.group.id)) throw badInput(`group "${p.group.id}" appears twice in one pruneGroups call.`);
    ids.add(p.group.id);
  }

  // 1. Re-fitted consumer weights into the kept rows, in the original coordinates.
  for (const { group, keep, W } of plans) {
    group.consumers.forEach((c, t) => {
      const Wt = W?.[t];
      if (!Wt) return;
      const w = get(c.weight, group);
      if (w.data.length !== c.dTotal * c.m)
        throw badInput(
          `group "${group.id}": weight "${c.weight}" has ${w.data.length} values, expected ${c.dTotal}×${c.m}; ` +
            `${changedModel}`,
        );
      if (Wt.length !== keep.length * c.g * c.m)
        throw badInput(
          `group "${group.id}": W has ${Wt.length} values, expected ${keep.length * c.g}×${c.m} (kept channels ` +
            '× g by outputs).',
        );
      const at = weightIndex(c.layout, c.dTotal, c.m);
      keep.forEach((ch, i) => {
        for (let a = 0; a < c.g; a++) {
          const row = c.row + ch * c.g + a;
          for (let o = 0; o < c.m; o++) w.data[at(row, o)] = Wt[(i * c.g + a) * c.m + o]!;
        }
      });
    });
  }

  // 1b. Bias changes (the intercept) into the consumers' biases, created where a layer has none.
  const derived = writeBiases(draft, plans, consts, get);

  // 2. Every removed channel's entries, per constant and axis, sliced at once.
  const removed = new Map<string, Map<number, Set<number>>>();
  for (const { group, keep } of plans) {
    // a group kept whole leaves its constants as they are: a copy of a shared one stays one (shareEqualInitializers)
    if (keep.length === group.channels) continue;
    const kept = new Set(keep);
    for (const s of [...group.slices, ...(derived.get(group) ?? [])]) {
      const w = get(s.tensor, group);
      if (s.offset + group.channels * s.per > (w.dims[s.axis] ?? 0))
        throw badInput(
          `group "${group.id}": constant "${s.tensor}" has ${w.dims[s.axis]} entries on axis ${s.axis}; ` +
            `${changedModel}`,
        );
      const axes = removed.get(s.tensor) ?? new Map<number, Set<number>>();
      const set = axes.get(s.axis) ?? new Set<number>();
      for (let c = 0; c < group.channels; c++) {
        if (kept.has(c)) continue;
        for (let e = 0; e < s.per; e++) set.add(s.offset + c * s.per + e);
      }
      axes.set(s.axis, set);
      removed.set(s.tensor, axes);
    }
  }
  for (const [name, axes] of removed) for (const [axis, set] of axes) sliceAxis(work.get(name)!, axis, set);

  // 3. Counts that follow the channels (an input made a constant of its own: summed over the groups, then written).
  const parts = new Map<string, { node: string; input: number; values: number[] }>();
  for (const { group, keep } of plans) {
    const gone = group.channels - keep.length;
    const once = new Set<string>(); // a shared count shrinks once however many of the group's nodes read it
    for (const e of group.edits) {
      if ('tensor' in e && e.shared) {
        if (once.has(`${e.tensor}|${e.index}`)) continue;
        once.add(`${e.tensor}|${e.index}`);
      }
      if ('input' in e) {
        if (!gone) continue;
        const key = `${e.node}|${e.input}`,
          part = parts.get(key) ?? { node: e.node, input: e.input, values: [...e.values] };
        part.values[e.index]! -= gone * e.per;
        parts.set(key, part);
      } else if ('tensor' in e) {
        const t = consts.get(e.tensor);
        if (!t) throw badInput(`group "${group.id}": the model has no shape constant "${e.tensor}".`);
        const { dims, data } = tensorToInt64(t);
        data[e.index] = data[e.index]! - BigInt(gone * e.per);
        consts.set(e.tensor, draft.setConstant(e.tensor, dims, data));
      } else {
        const a = draft.node(e.node)?.attribute.find((x) => x.name === e.attribute);
        if (!a || a.type !== AttributeProto_AttributeType.INT)
          throw badInput(
            `group "${group.id}": node "${e.node}" has no INT attribute "${e.attribute}"; ${changedModel}`,
          );
        a.i -= BigInt(gone * e.per);
      }
    }
  }
  for (const part of parts.values()) {
    const node = draft.node(part.node);
    if (!node) throw badInput(`the model has no node "${part.node}"; ${changedModel}`);
    // a Constant node, as exporters write shape parts (an initializer would count as a parameter)
    const name = uniqueName(graph, `${part.node}_${part.input}_pruned`);
    const value = tensorAttr('value', int64Tensor(name, [part.values.length], part.values));
    graph.node.splice(graph.node.indexOf(node), 0, makeNode('Constant', [], [name], [value], name));
    node.input[part.input] = name;
  }
  for (const [name, w] of work) draft.setConstant(name, w.dims, w.data);

  // Shapes of the channels' activations changed; drop stale value_info rather than guess (onnxruntime re-infers).
  const changed = new Set(plans.flatMap((p) => p.group.tensors.map((t) => t.tensor)));
  graph.valueInfo = graph.valueInfo.filter((vi) => !changed.has(vi.name) && !work.has(vi.name));
  // an If passing the channels (torch's squeeze) declares its branches' output shapes too
  for (const { name } of graph.node.filter(
    (x) => x.output.some((o) => changed.has(o)) && x.attribute.some((a) => a.g || a.graphs.length),
  ))
    for (const a of draft.node(name)!.attribute)
      for (const g of [a.g, ...a.graphs]) {
        if (!g) continue;
        for (const vi of g.output) if (vi.type?.value.case === 'tensorType') vi.type.value.value.shape = undefined;
        g.valueInfo = [];
      }
  return out;
}

/** A tensor name no initializer, input or node output of the graph uses yet. */
function uniqueName(graph: GraphProto, base: string): string {
  const taken = new Set([
    ...graph.initializer.map((t) => t.name),
    ...graph.input.map((i) => i.name),
    ...graph.node.flatMap((n) => n.output),
  ]);
  let name = base;
  for (let i = 1; taken.has(name); i++) name = `${base}_${i}`;
  return name;
}
