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
import {
  selectGroup,
  type FitOptions,
  type GroupSelection,
  type LayerProblem,
  type SelectOptions,
} from '../select/greedy.js';
import { biasSite } from '../rewrite/bias.js';
import { constantTensors } from '../graph/shapes.js';
import { groupSeed, rankChannels, type MethodOptions } from '../select/baselines.js';
import { refineSelection, type Refined } from '../select/refine.js';
import { ridgedKept, ridgeFitObjective, ridgeLambda, takesRidge } from '../select/ridge.js';

/** A group with its method's nested order over its first k channels (and the objective and re-fit of every prefix). */
export interface Ranked {
  group: Group;
  /** Each consumer's weights for the group as the d×m matrix the selection saw. */
  W: Float64Array[];
  sel: GroupSelection;
  /** A baseline method's order, forced on the selection (undefined: the greedy's own). */
  order?: number[];
  /** Each consumer's problem as the selection saw it, and its rows of input (the ridge's N). */
  problems: LayerProblem[];
  rows: number[];
  kernels: KernelOptions;
  /** With --refine: the rounds, and the refined set per k (computed on first use). */
  refine?: { rounds: number; at: Map<number, Refined> };
  /** The re-fit per k (fitAt; computed on first use). */
  fits: Map<number, Fit>;
}

/**
 * Kept channels (ascending), each consumer's re-fitted weights (rows of the kept channels) and bias change, and its
 * objective where the re-fit took the ridge (elsewhere the selection's own).
 */
export type Fit = ReturnType<GroupSelection['refit']> & { ridgeObjective: (number | undefined)[] };

/**
 * The method's order of `group`'s channels (the first k; default all), run through selectGroup. `model` holds the
 * consumer weights the selection fits; `captured` each consumer's Gram matrices and channel statistics; `short` the
 * consumers with fewer rows of input than columns (refitRowsShort), whose gains then steer nothing while another
 * consumer's can (every set of rows/g channels fits them exactly; their re-fit takes the ridge, fitAt).
 */
export function rankGroup(
  model: Model,
  group: Group,
  captured: Captured[],
  options: MethodOptions & KernelOptions & FitOptions & Pick<SelectOptions, 'keepState'> = {},
  k = group.channels,
  short?: readonly boolean[],
): Ranked {
  // a group of short consumers only is ranked by them all
  const steers = (i: number) => !short?.[i] || short.every((x) => x);
  const W = group.consumers.map((c) => consumerWeightMatrix(model, c));
  const inputs = group.consumers.map((c, i) => ({
    n: group.channels,
    g: c.g,
    m: c.m,
    W: W[i]!,
    stats: captured[i]!.stats,
  }));
  const order = rankChannels(options.method ?? 'greedy', inputs, groupSeed(options.seed ?? 0, group.id));
  const consts = options.biasRefit === false || options.refit === false ? undefined : constantTensors(model.graph!);
  const problems = group.consumers.map((c, i): LayerProblem => {
    const gram = captured[i]!;
    // the intercept where the consumer can take a bias change (bias.ts) and the capture has the column sums
    const intercept = consts && gram.sums && typeof biasSite(model.graph!, consts, c) !== 'string';
    return {
      ...{ d: c.d, m: c.m, g: c.g, G: gram.G, C: gram.C, H: gram.H, CW: gram.CW, targetNorm2: gram.targetNorm2 },
      W: W[i]!,
      ...(steers(i) ? {} : { ranks: false }),
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
  const kernels = { kernels: options.kernels, threads: options.threads };
  const sel = selectGroup(problems, k, { ...kernels, order, keepState: options.keepState });
  const rounds = options.refit === false || short?.some((x) => x) ? 0 : (options.refine ?? 0);
  const refine = rounds > 0 ? { refine: { rounds, at: new Map() } } : {};
  const rows = captured.map((c) => c.rows);
  return { group, W, sel, ...(order ? { order } : {}), problems, rows, kernels, ...refine, fits: new Map() };
}

/**
 * The ranking gone on to k channels from where its selection stopped (ranked with `keepState`): the ranking to k in
 * one run, bit for bit, without its set-up again. Its fits and swaps so far stay: each prefix is the same.
 */
export function deepened(r: Ranked, k: number, keepState: boolean): Ranked {
  const sel = selectGroup(r.problems, k, { ...r.kernels, order: r.order, resume: r.sel.state, keepState });
  return { ...r, sel };
}

/** The ranking without the state it could go on from (which holds about as much as its Gram matrices). */
export function settled(r: Ranked): Ranked {
  const { state: _, ...sel } = r.sel;
  return { ...r, sel };
}

/** The swaps' result at k (undefined without --refine, or at k = 0 or all channels, where no swap exists). */
export function refinedAt(r: Ranked, k: number): Refined | undefined {
  const f = r.refine;
  if (!f || k === 0 || k >= r.group.channels) return undefined;
  if (!f.at.has(k)) f.at.set(k, refineSelection(r.problems, r.sel.order.slice(0, k), f.rounds, r.kernels));
  return f.at.get(k);
}

/** The selection that k channels come from: the greedy's (its prefix of k), or the refined set's. */
const selectionAt = (r: Ranked, k: number): GroupSelection => refinedAt(r, k)?.sel ?? r.sel;

/**
 * The re-fit keeping k channels: the selection's least squares, except for a consumer with few rows of input per
 * column (takesRidge), re-fitted with the ridge toward its weights (ridge.ts) on the same channels.
 */
export function fitAt(r: Ranked, k: number): Fit {
  const known = r.fits.get(k);
  if (known) return known;
  const fit = selectionAt(r, k).refit(k);
  const out: Fit = { keep: fit.keep, W: [...fit.W], bias: [...fit.bias], ridgeObjective: [] };
  r.problems.forEach((p, t) => {
    if (!k || !takesRidge(k * p.g, r.rows[t]!)) return;
    if (k === r.group.channels && !p.C && !p.CW) {
      // every channel kept and the target the input itself: the ridge toward W is solved by W (no error, no change);
      // solving it costs a pass of Q = G·W and k steps (AlexNet's features.10, d = 9216: most of its 220 s)
      [out.W[t], out.bias[t], out.ridgeObjective[t]] = [r.W[t]!, undefined, 1];
      return;
    }
    const lambda = ridgeLambda(p, fit.keep, r.rows[t]!);
    const kept = ridgedKept(p, fit.keep, lambda, r.sel.norm2[t]!, r.kernels),
      ridge = selectGroup([kept], k, { ...r.kernels, order: fit.keep.map((_, i) => i) });
    const f = ridge.refit(k);
    out.W[t] = f.W[0]!;
    out.bias[t] = f.bias[0];
    const [o, norm2] = [ridge.consumers[0]![k - 1]!, ridge.norm2[0]!];
    out.ridgeObjective[t] = ridgeFitObjective(o, norm2, r.sel.norm2[t]!, lambda, p.W, out.W[t], fit.keep, p.g * p.m);
  });
  r.fits.set(k, out);
  return out;
}

/**
 * The plan keeping the first k channels of the order: re-fitted consumer weights (fitAt), or their rows only sliced.
 * With `fitted` (the model's own input is the target and every channel is kept), W is already a minimiser (error 0)
 * and re-fitting could only move it along the null space of a rank-deficient B, changing outputs off the calibration
 * set, so the weights are kept as they are.
 */
export function planOf(r: Ranked, k: number, refit: boolean, fitted = false): PrunePlan {
  const fit = refit ? fitAt(r, k) : selectionAt(r, k).refit(k);
  const keepW = !refit || (fitted && k === r.group.channels);
  return {
    group: r.group,
    keep: fit.keep,
    ...(keepW ? {} : { W: fit.W, ...(fit.bias.some((b) => b) ? { bias: fit.bias } : {}) }),
  };
}

/** Consumer t's rows of its weights W for the kept channels' columns. */
function keptRows(r: Ranked, t: number, keep: number[]): Float64Array {
  const { g, m } = r.group.consumers[t]!,
    W = r.W[t]!,
    out = new Float64Array(keep.length * g * m);
  keep.forEach((c, i) => out.set(W.subarray(c * g * m, (c + 1) * g * m), i * g * m));
  return out;
}

/** Each consumer's d×m weights of that plan with zero rows for the pruned channels: the same consumer outputs. */
export function paddedWeights(r: Ranked, k: number, refit: boolean): Float64Array[] {
  const { keep, W: Wk } = refit ? fitAt(r, k) : r.sel.refit(k);
  return r.group.consumers.map(({ g, m, d }, t) => {
    const out = new Float64Array(d * m),
      rows = g * m,
      kept = refit ? Wk[t]! : keptRows(r, t, keep);
    keep.forEach((c, i) => out.set(kept.subarray(i * rows, (i + 1) * rows), c * rows));
    return out;
  });
}

/**
 * Each consumer's 1 − relative error of its input with the first k channels: re-fitted (the selection's objective,
 * or the ridge's, fitAt), or with the weights sliced (--no-refit, measured in Gram space). The group's objective is
 * their mean.
 */
export function objectivesOf(r: Ranked, grams: Gram[], k: number, refit: boolean): number[] {
  if (refit) {
    const fitted = selectionAt(r, k).consumers.map((o) => (k ? o[k - 1]! : 0)),
      ridge = fitAt(r, k).ridgeObjective;
    return fitted.map((o, t) => ridge[t] ?? o);
  }
  const { keep } = selectionAt(r, k).refit(k);
  return r.group.consumers.map((c, t) =>
    slicedObjective(c, grams[t]!, r.W[t]!, keep, keptRows(r, t, keep), r.sel.norm2[t]!),
  );
}

export const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * 1 − ‖B_S W′ − A W‖²/‖A W‖² in Gram space, for weights W′ of the kept channels' columns
 * (keep.length·g rows).
 */
function slicedObjective(
  c: Consumer,
  gram: Gram,
  W: Float64Array,
  keep: number[],
  Wk: Float64Array,
  norm2: number,
): number {
  const { d, m, g } = c,
    G = gram.G,
    C = gram.C ?? gram.G,
    CW = gram.CW;
  const cols = keep.flatMap((ch) => Array.from({ length: g }, (_, a) => ch * g + a));
  let cross = 0,
    quad = 0;
  const GW = new Float64Array(m),
    CWi = new Float64Array(m);
  cols.forEach((i, p) => {
    GW.fill(0);
    CWi.fill(0);
    cols.forEach((l, q) => {
      const v = G[i * d + l]!;
      if (v) for (let j = 0; j < m; j++) GW[j] += v * Wk[q * m + j]!;
    });
    if (CW) CWi.set(CW.subarray(i * m, (i + 1) * m));
    else
      for (let l = 0; l < d; l++) {
        const v = C[i * d + l]!;
        if (v) for (let j = 0; j < m; j++) CWi[j] += v * W[l * m + j]!;
      }
    for (let j = 0; j < m; j++) {
      quad += Wk[p * m + j]! * GW[j]!;
      cross += Wk[p * m + j]! * CWi[j]!;
    }
  });
  const err = quad - 2 * cross + norm2;
  // slicing nothing leaves rounding on either side of 0
  return norm2 > 0 ? 1 - Math.max(err, 0) / norm2 : 1;
}
