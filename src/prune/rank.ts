// Ranking one group's channels and turning a prefix of the ranking into a plan: the stage prune, the allocations and
// the study share. Every method's ranking goes through selectGroup (a baseline's order is forced), so all get the
// same objective per step and the same least-squares re-fit.
import type { Model } from '../onnx/index.js';
import type { Consumer, Group } from '../graph/types.js';
import { consumerWeightMatrix } from '../graph/analyze.js';
import type { PrunePlan } from '../rewrite/index.js';
import type { Captured } from '../capture/stats.js';
import type { Gram } from '../kernels/gram.js';
import type { KernelOptions } from '../kernels/instances.js';
import { selectGroup, type FitOptions, type GroupSelection, type LayerProblem } from '../select/greedy.js';
import { biasSite } from '../rewrite/bias.js';
import { constantTensors } from '../graph/shapes.js';
import { groupSeed, rankChannels, type MethodOptions } from '../select/baselines.js';
import { refineSelection, type Refined } from '../select/refine.js';

/** A group with its method's nested order over its first k channels (and the objective and re-fit of every prefix). */
export interface Ranked {
  group: Group;
  /** Each consumer's weights for the group as the d×m matrix the selection saw. */
  W: Float64Array[];
  sel: GroupSelection;
  /**
   * Per consumer: fewer calibration rows than columns (refitRowsShort), so its weights are only sliced, and its gains
   * do not steer the greedy while another consumer's can.
   */
  sliced?: readonly boolean[];
  /** With --refine: the problems the swaps need, and the refined set per k (computed on first use). */
  refine?: { rounds: number; problems: LayerProblem[]; opts: KernelOptions; at: Map<number, Refined> };
}

/**
 * The method's order of `group`'s channels (the first k; default all), run through selectGroup. `model` holds the
 * consumer weights the selection fits; `captured` each consumer's Gram matrices and channel statistics; `sliced` the
 * consumers with too few rows to re-fit (Ranked.sliced): when all are, the group is ranked as with --no-refit.
 */
export function rankGroup(
  model: Model,
  group: Group,
  captured: Captured[],
  options: MethodOptions & KernelOptions & FitOptions = {},
  k = group.channels,
  sliced?: readonly boolean[],
): Ranked {
  const some = sliced?.some((x) => x) ? sliced : undefined,
    how = some?.every((x) => x) ? { ...options, refit: false } : options;
  const W = group.consumers.map((c) => consumerWeightMatrix(model, c));
  const inputs = group.consumers.map((c, i) => ({
    n: group.channels,
    g: c.g,
    m: c.m,
    W: W[i]!,
    stats: captured[i]!.stats,
  }));
  const order = rankChannels(how.method ?? 'greedy', inputs, groupSeed(how.seed ?? 0, group.id));
  const consts = how.biasRefit === false || how.refit === false ? undefined : constantTensors(model.graph!);
  const problems = group.consumers.map((c, i): LayerProblem => {
    const gram = captured[i]!;
    // the intercept where the consumer can take a bias change (bias.ts) and the capture has the column sums
    const intercept = consts && gram.sums && typeof biasSite(model.graph!, consts, c) !== 'string';
    return {
      ...{ d: c.d, m: c.m, g: c.g, G: gram.G, C: gram.C, H: gram.H, CW: gram.CW, targetNorm2: gram.targetNorm2 },
      W: W[i]!,
      ...(some?.[i] ? { ranks: false } : {}),
      ...(intercept
        ? {
            intercept: {
              sums: gram.sums!,
              targetSums: gram.targetSums,
              targetSumsW: gram.targetSumsW,
              rows: gram.rows,
            },
          }
        : {}),
    };
  });
  const kernels = { kernels: how.kernels, threads: how.threads };
  const sel = selectGroup(problems, k, { ...kernels, order });
  const rounds = how.refit === false ? 0 : (how.refine ?? 0);
  const refine = rounds > 0 ? { refine: { rounds, problems, opts: kernels, at: new Map() } } : {};
  return { group, W, sel, ...(some ? { sliced: some } : {}), ...refine };
}

/** The swaps' result at k (undefined without --refine, or at k = 0 or all channels, where no swap exists). */
export function refinedAt(r: Ranked, k: number): Refined | undefined {
  const f = r.refine;
  if (!f || k === 0 || k >= r.group.channels) return undefined;
  if (!f.at.has(k)) f.at.set(k, refineSelection(f.problems, r.sel.order.slice(0, k), f.rounds, f.opts));
  return f.at.get(k);
}

/** The selection that k channels come from: the greedy's (its prefix of k), or the refined set's. */
const selectionAt = (r: Ranked, k: number): GroupSelection => refinedAt(r, k)?.sel ?? r.sel;

/**
 * The plan keeping the first k channels of the order: re-fitted consumer weights, or their rows only sliced. With
 * `fitted` (the model's own input is the target and every channel is kept), W is already a minimiser (error 0) and
 * re-fitting could only move it along the null space of a rank-deficient B, changing outputs off the calibration set,
 * so the weights are kept as they are.
 */
export function planOf(r: Ranked, k: number, refit: boolean, fitted = false): PrunePlan {
  const fit = selectionAt(r, k).refit(k);
  const keepW = !refit || (fitted && k === r.group.channels) || r.sliced?.every((x) => x);
  const W = fit.W.map((w, t) => (r.sliced?.[t] ? undefined : w)),
    bias = fit.bias.map((b, t) => (r.sliced?.[t] ? undefined : b));
  return { group: r.group, keep: fit.keep, ...(keepW ? {} : { W, ...(bias.some((b) => b) ? { bias } : {}) }) };
}

/** Each consumer's d×m weights of that plan with zero rows for the pruned channels: the same consumer outputs. */
export function paddedWeights(r: Ranked, k: number, refit: boolean): Float64Array[] {
  const { keep, W: Wk } = r.sel.refit(k);
  return r.group.consumers.map(({ g, m, d }, t) => {
    const out = new Float64Array(d * m),
      rows = g * m,
      W = r.W[t]!;
    keep.forEach((c, i) =>
      out.set(refit ? Wk[t]!.subarray(i * rows, (i + 1) * rows) : W.subarray(c * rows, (c + 1) * rows), c * rows),
    );
    return out;
  });
}

/**
 * Each consumer's 1 − relative error of its input with the first k channels: re-fitted (the selection's objective),
 * or with the weights sliced (all with --no-refit, those of `r.sliced` otherwise). The group's objective is their
 * mean.
 */
export function objectivesOf(r: Ranked, grams: Gram[], k: number, refit: boolean): number[] {
  const fitted = selectionAt(r, k).consumers.map((o) => (k ? o[k - 1]! : 0));
  if (refit && !r.sliced) return fitted;
  const keep = selectionAt(r, k).refit(k).keep;
  return r.group.consumers.map((c, t) =>
    refit && !r.sliced?.[t] ? fitted[t]! : slicedObjective(c, grams[t]!, r.W[t]!, keep, r.sel.norm2[t]!),
  );
}

export const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** 1 − ‖B_S W_S − A W‖²/‖A W‖² for the sliced (not re-fitted) weights, in Gram space. */
function slicedObjective(c: Consumer, gram: Gram, W: Float64Array, keep: number[], norm2: number): number {
  const { d, m, g } = c,
    G = gram.G,
    C = gram.C ?? gram.G,
    CW = gram.CW;
  const cols = keep.flatMap((ch) => Array.from({ length: g }, (_, a) => ch * g + a));
  let cross = 0,
    quad = 0;
  const GW = new Float64Array(m),
    CWi = new Float64Array(m);
  for (const i of cols) {
    GW.fill(0);
    CWi.fill(0);
    for (const l of cols) {
      const v = G[i * d + l];
      if (v) for (let j = 0; j < m; j++) GW[j] += v * W[l * m + j];
    }
    if (CW) CWi.set(CW.subarray(i * m, (i + 1) * m));
    else
      for (let l = 0; l < d; l++) {
        const v = C[i * d + l];
        if (v) for (let j = 0; j < m; j++) CWi[j] += v * W[l * m + j];
      }
    for (let j = 0; j < m; j++) {
      quad += W[i * m + j] * GW[j];
      cross += W[i * m + j] * CWi[j];
    }
  }
  return norm2 > 0 ? 1 - (quad - 2 * cross + norm2) / norm2 : 1;
}
