// Model size as a function of the channels kept per group, without rewriting the model. Every constant a group slices
// and every activation that carries its channels loses (n − k)·per entries along the sliced axis for each run of the
// group's channels; params are the constants' element counts and FLOPs the layers' multiply-accumulates on those
// shapes, so the size is exact and costs O(tensors touched) per evaluation.
import { equalInitializers, numel, type Model } from '../onnx/index.js';
import {
  constantTensors,
  dataInputs,
  inferShapes,
  modelStats,
  paramCount,
  nodeMacs,
  type InputShapes,
  type Shapes,
} from '../graph/shapes.js';
import { layerOf } from '../graph/ops.js';
import type { Group } from '../graph/types.js';
import type { SizeOf } from './index.js';

export type Target = 'params' | 'flops';

/** A run of a group's channels along one axis of a tensor. */
interface Shrink {
  axis: number;
  id: string;
  n: number;
  per: number;
}

/**
 * A model's size as terms: `base`, what no group changes; a term per constant (params) or layer (FLOPs) whose shape a
 * group changes, with the groups it depends on; `made`, the Constants pruning creates (params). The size under keeps
 * is base + made + the terms', each evaluated on shapes cut down to the keeps.
 */
interface SizeTerms {
  base: number;
  terms: { ids: string[]; size: SizeOf }[];
  made: SizeOf;
}

function sizeTerms(model: Model, groups: Group[], inputShape: InputShapes | undefined, target: Target, shapes: Shapes) {
  const shrinks = new Map<string, Shrink[]>();
  const add = (tensor: string, s: Shrink) => shrinks.set(tensor, [...(shrinks.get(tensor) ?? []), s]);
  for (const g of groups) {
    for (const s of [...g.slices, ...g.tensors]) add(s.tensor, { axis: s.axis, id: g.id, n: g.channels, per: s.per });
  }
  const dims = (t: string, keeps: Map<string, number>) => {
    const d = [...shapes.get(t)!];
    for (const s of shrinks.get(t) ?? []) d[s.axis]! -= (s.n - (keeps.get(s.id) ?? s.n)) * s.per;
    return d;
  };
  const idsOf = (tensors: string[]) => [...new Set(tensors.flatMap((t) => (shrinks.get(t) ?? []).map((s) => s.id)))];
  if (target === 'params') {
    const consts = constantTensors(model.graph!);
    const touched = [...shrinks.keys()].filter((t) => consts.has(t));
    // copies of one stored tensor (normalization gives each reader its own, equalInitializers) are one term: they
    // count once while uncut, as the file stores them, and each cut one counts apart
    const copies = equalInitializers(model.graph!),
      rootOf = (t: string) => copies.get(t) ?? t;
    const copied = new Map<string, string[]>();
    for (const t of model.graph!.initializer)
      copied.set(rootOf(t.name), [...(copied.get(rootOf(t.name)) ?? []), t.name]);
    const roots = [...new Set(touched.map(rootOf))],
      members = roots.map((root) => copied.get(root) ?? [root]);
    const base = paramCount(model.graph!, new Set(members.flat()));
    // node inputs that pruning turns into Constants of their own (see Edit), once each
    const parts = groups.flatMap((g) =>
      g.edits.flatMap((e) => ('input' in e ? [{ key: `${e.node}|${e.input}`, n: e.values.length, g }] : [])),
    );
    const made = (keeps: Map<string, number>) => {
      const pruned = parts.filter(({ g }) => (keeps.get(g.id) ?? g.channels) < g.channels);
      return [...new Map(pruned.map((p) => [p.key, p.n])).values()].reduce((a, n) => a + n, 0);
    };
    const terms = members.map((ts) => ({
      ids: idsOf(ts),
      size: (keeps: Map<string, number>) => {
        const cut = ts.map((t) => dims(t, keeps)).filter((d, i) => d.some((x, a) => x !== shapes.get(ts[i]!)![a]));
        return cut.reduce((a, d) => a + numel(d), cut.length < ts.length ? numel(shapes.get(ts[0]!)!) : 0);
      },
    }));
    return { base, terms, made } satisfies SizeTerms;
  }
  const batch = shapes.get(dataInputs(model.graph!)[0]?.name ?? '')?.[0] || 1;
  const touched = model.graph!.node.filter(
    (n) => layerOf(n) && [n.input[0], n.input[1], n.output[0]].some((t) => t && shrinks.has(t)),
  );
  const flopsOf = (macs: number | undefined) => (2 * (macs ?? 0)) / batch;
  const base =
    modelStats(model, inputShape, shapes).flops - touched.reduce((a, n) => a + flopsOf(nodeMacs(n, shapes)), 0);
  const terms = touched.map((n) => {
    const io = [n.input[0]!, n.input[1]!, n.output[0]!];
    const size = (keeps: Map<string, number>) => {
      const [x, w, y] = io.map((t) => dims(t, keeps));
      return flopsOf(layerOf(n)!.macs(n, x!, w!, y!));
    };
    return { ids: idsOf(io), size };
  });
  return { base, terms, made: () => 0 } satisfies SizeTerms;
}

/**
 * Exact params (every initializer and Constant tensor, as modelStats counts them) or FLOPs after pruning to `keeps`.
 * `shapes`: the model's at `inputShape`, when known already (the analysis inferred them).
 */
export function sizeModel(
  model: Model,
  groups: Group[],
  inputShape: InputShapes | undefined,
  target: Target,
  shapes: Shapes = inferShapes(model, inputShape),
): SizeOf {
  const { base, terms, made } = sizeTerms(model, groups, inputShape, target, shapes);
  return (keeps) => terms.reduce((a, t) => a + t.size(keeps), base + made(keeps));
}

/**
 * Per group, what removing all its channels saves with every other group whole: sizeModel's size with every channel
 * kept less its size with the group at 0, evaluated on the terms the group changes alone (sizeModel per group costs
 * O(groups × terms): 55 % of a DenseNet-121 analysis, which an asymmetric prune runs once per group).
 */
export function groupSavings(
  model: Model,
  groups: Group[],
  inputShape: InputShapes | undefined,
  target: Target,
  shapes: Shapes = inferShapes(model, inputShape),
): Map<string, number> {
  const { terms, made } = sizeTerms(model, groups, inputShape, target, shapes);
  const byGroup = new Map<string, SizeTerms['terms']>(groups.map((g) => [g.id, []]));
  for (const t of terms) for (const id of t.ids) byGroup.get(id)?.push(t);
  const full = new Map<string, number>();
  return new Map(
    groups.map((g) => {
      const none = new Map([[g.id, 0]]);
      const saved = byGroup.get(g.id)!.reduce((a, t) => a + t.size(full) - t.size(none), made(full) - made(none));
      return [g.id, saved];
    }),
  );
}
