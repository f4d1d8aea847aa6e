// Ranking one unit's channels and turning a prefix of the ranking into a plan: the stage prune, the allocations and
// the study share. Every method's ranking goes through selectChannels (a baseline's order is forced), so all get the
// same objective per step and the same least-squares re-fit.
import type { Model } from '../onnx/index.js';
import type { Unit } from '../graph/types.js';
import { consumerWeightMatrix } from '../graph/analyze.js';
import type { PrunePlan } from '../rewrite/index.js';
import type { Captured } from '../capture/stats.js';
import type { Gram } from '../kernels/gram.js';
import type { KernelOptions } from '../kernels/instances.js';
import { selectChannels, type Selection } from '../select/greedy.js';
import { rankChannels, unitSeed, type MethodOptions } from '../select/baselines.js';

/** A unit with its method's nested order over its first k channels (and the objective and re-fit of every prefix). */
export interface Ranked {
  unit: Unit;
  /** The consumer's weights as the d×m matrix the selection saw. */
  W: Float64Array;
  sel: Selection;
}

/**
 * The method's order of `unit`'s channels (the first k; default all), run through selectChannels. `model` holds the
 * consumer weights the selection fits; `captured` the unit's Gram matrices and channel statistics.
 */
export function rankUnit(
  model: Model,
  unit: Unit,
  captured: Captured,
  how: MethodOptions & KernelOptions = {},
  k = unit.channels,
): Ranked {
  const W = consumerWeightMatrix(model, unit);
  const input = { n: unit.channels, g: unit.g, m: unit.m, W, stats: captured.stats };
  const order = rankChannels(how.method ?? 'greedy', input, unitSeed(how.seed ?? 0, unit.id));
  const { d, m, g } = unit;
  const problem = { d, m, g, G: captured.G, C: captured.C, H: captured.H, W };
  const sel = selectChannels(problem, k, { kernels: how.kernels, threads: how.threads, order });
  return { unit, W, sel };
}

/**
 * The plan keeping the first k channels of the order: re-fitted consumer weights, or its rows only sliced. With
 * `fitted` (the model's own input is the target and every channel is kept), W is already a minimiser (error 0) and
 * re-fitting could only move it along the null space of a rank-deficient B, changing outputs off the calibration set,
 * so the weights are kept as they are.
 */
export function planOf(r: Ranked, k: number, refit: boolean, fitted = false): PrunePlan {
  const fit = r.sel.refit(k);
  const keepW = !refit || (fitted && k === r.unit.channels);
  return { unit: r.unit, keep: fit.keep, ...(keepW ? {} : { W: fit.W }) };
}

/** The consumer's d×m weights of that plan with zero rows for the pruned channels: the same consumer output. */
export function paddedWeights(r: Ranked, k: number, refit: boolean): Float64Array {
  const {
      unit: { g, m, d },
      W,
    } = r,
    { keep, W: Wk } = r.sel.refit(k),
    out = new Float64Array(d * m),
    rows = g * m;
  keep.forEach((c, i) =>
    out.set(refit ? Wk.subarray(i * rows, (i + 1) * rows) : W.subarray(c * rows, (c + 1) * rows), c * rows),
  );
  return out;
}

/** 1 − relative error of the consumer's input with the first k channels: re-fitted, or with the weights sliced. */
export function objectiveOf(r: Ranked, gram: Gram, k: number, refit: boolean): number {
  if (refit) return k ? r.sel.objective[k - 1] : 0;
  return slicedObjective(r.unit, gram, r.W, r.sel.refit(k).keep, r.sel.norm2);
}

/** 1 − ‖B_S W_S − A W‖²/‖A W‖² for the sliced (not re-fitted) weights, in Gram space. */
function slicedObjective(unit: Unit, gram: Gram, W: Float64Array, keep: number[], norm2: number): number {
  const { d, m, g } = unit,
    G = gram.G,
    C = gram.C ?? gram.G;
  const cols = keep.flatMap((c) => Array.from({ length: g }, (_, a) => c * g + a));
  let cross = 0,
    quad = 0;
  const GW = new Float64Array(m),
    CW = new Float64Array(m);
  for (const i of cols) {
    GW.fill(0);
    CW.fill(0);
    for (const l of cols) {
      const v = G[i * d + l];
      if (v) for (let j = 0; j < m; j++) GW[j] += v * W[l * m + j];
    }
    for (let l = 0; l < d; l++) {
      const v = C[i * d + l];
      if (v) for (let j = 0; j < m; j++) CW[j] += v * W[l * m + j];
    }
    for (let j = 0; j < m; j++) {
      quad += W[i * m + j] * GW[j];
      cross += W[i * m + j] * CW[j];
    }
  }
  return norm2 > 0 ? 1 - (quad - 2 * cross + norm2) / norm2 : 1;
}
