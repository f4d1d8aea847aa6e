// Per-unit budgets from the units themselves (--allocation sensitivity | global), and the per-unit machinery the
// allocations and the study share: one capture of the original model, one nested ranking per unit and method, and
// from it the plan for any channel count.
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import type { Unit } from '../graph/types.js';
import { consumerWeightMatrix } from '../graph/analyze.js';
import type { PrunePlan } from '../rewrite/index.js';
import { captureGrams, type Backend } from '../capture/index.js';
import type { Captured, StatsWanted } from '../capture/stats.js';
import { selectChannels, type Selection } from '../select/greedy.js';
import { rankChannels, statsFor, unitSeed, type Method } from '../select/baselines.js';
import { allocateByLevel, allocateGlobal, gridKeeps, type Curve } from '../budget/allocate.js';
import type { SizeOf } from '../budget/index.js';
import { openUnitProbe, verifyTargets, type VerifySet } from '../eval/alone.js';

export type Allocation = 'uniform' | 'sensitivity' | 'global';
export const ALLOCATIONS: readonly Allocation[] = ['uniform', 'sensitivity', 'global'];

/** A unit with its method's nested order over all its channels (and the objective and re-fit of every prefix). */
export interface Ranked {
  unit: Unit;
  W: Float64Array;
  sel: Selection;
}

export interface RunOptions {
  batch?: number;
  backend?: Backend;
  kernels?: 'wasm' | 'plain';
  threads?: number;
}

/** One capture of the original model for every unit (with the statistics the methods need). */
export function captureOriginal(
  model: Model,
  units: Unit[],
  calib: NpyFile,
  methods: readonly Method[],
  opts: RunOptions & { onBatch?: (d: number, n: number) => void } = {},
): Promise<Map<string, Captured>> {
  const stats: StatsWanted = {};
  for (const m of methods) Object.assign(stats, statsFor(m));
  return captureGrams(model, units, calib, {
    batch: opts.batch,
    backend: opts.backend,
    threads: opts.threads,
    onBatch: opts.onBatch,
    stats,
  });
}

/** The method's order of all channels of `unit`, run through selectChannels (a baseline's order is forced). */
export function rankUnit(
  model: Model,
  unit: Unit,
  gram: Captured,
  method: Method,
  seed: number,
  opts: RunOptions = {},
): Ranked {
  const W = consumerWeightMatrix(model, unit);
  const order = rankChannels(
    method,
    { n: unit.channels, g: unit.g, m: unit.m, W, stats: gram.stats },
    unitSeed(seed, unit.id),
  );
  const sel = selectChannels({ d: unit.d, m: unit.m, g: unit.g, G: gram.G, C: gram.C, H: gram.H, W }, unit.channels, {
    kernels: opts.kernels,
    threads: opts.threads,
    order,
  });
  return { unit, W, sel };
}

/** The plan keeping the first k channels of the order: re-fitted consumer weights, or its rows only sliced. */
export function planOf(r: Ranked, k: number, refit: boolean): PrunePlan {
  const fit = r.sel.refit(k);
  return { unit: r.unit, keep: fit.keep, ...(refit ? { W: fit.W } : {}) };
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

/**
 * Each unit pruned alone to every channel count of its grid, measured on the verification set (accuracy with labels,
 * top-1 agreement with the original model without). The nested order means one ranking serves every count.
 * Counts are measured upwards from 1 until the quality reaches its value with every channel kept (measured first):
 * from there on the monotone curve is that value whatever the rest measures, so the rest is filled with it, unmeasured
 * (`full` measures every count).
 */
export async function sensitivityCurves(
  model: Model,
  ranked: Ranked[],
  refit: boolean,
  verify: VerifySet,
  opts: RunOptions & {
    targets?: Int32Array;
    step?: number;
    full?: boolean;
    onStep?: (done: number, total: number) => void;
  } = {},
): Promise<Map<string, Curve>> {
  const targets = opts.targets ?? (await verifyTargets(model, verify, opts));
  const grids = ranked.map((r) => gridKeeps(r.unit.channels, opts.step));
  const total = grids.reduce((a, g) => a + g.length, 0);
  let done = 0;
  const curves = new Map<string, Curve>();
  for (const [i, r] of ranked.entries()) {
    const probe = await openUnitProbe(model, r.unit, verify, targets, opts),
      ks = grids[i];
    try {
      const cap = await probe.quality(paddedWeights(r, r.unit.channels, refit));
      const values: number[] = [];
      let best = -Infinity;
      for (const k of ks.slice(0, -1)) {
        if (best >= cap && !opts.full) break;
        values.push(await probe.quality(paddedWeights(r, k, refit)));
        best = Math.max(best, values[values.length - 1]);
        opts.onStep?.(++done, total);
      }
      const measured = values.length;
      while (values.length < ks.length) values.push(cap);
      done += ks.length - measured - 1;
      opts.onStep?.(++done, total);
      curves.set(r.unit.id, { ks, values, measured });
    } finally {
      await probe.release();
    }
  }
  return curves;
}

/** Keeps for a size goal by an allocation that needs the units' rankings (sensitivity: their curves too). */
export function allocateRanked(
  allocation: 'sensitivity' | 'global',
  ranked: Ranked[],
  sizeOf: SizeOf,
  goal: number,
  curves?: Map<string, Curve>,
): Map<string, number> {
  const units = ranked.map((r) => r.unit);
  if (allocation === 'global')
    return allocateGlobal(units, new Map(ranked.map((r) => [r.unit.id, r.sel.objective])), sizeOf, goal);
  if (!curves) throw new Error("the sensitivity allocation needs the units' curves");
  return allocateByLevel(units, curves, sizeOf, goal);
}

/**
 * Per-unit keeps for a compression budget by the sensitivity or global allocation, for `prune`: one capture of the
 * original model (returned, so that layerwise pruning reuses it), the method's ranking of every unit, and for
 * sensitivity each unit's curve on the verification set (default: the calibration inputs, label-free).
 */
export async function allocateBudget(
  model: Model,
  units: Unit[],
  calib: NpyFile,
  sizeOf: SizeOf,
  goal: number,
  opts: RunOptions & {
    allocation: 'sensitivity' | 'global';
    method?: Method;
    seed?: number;
    refit?: boolean;
    verify?: VerifySet;
    grid?: number;
    onProgress?: (stage: string, done: number, total: number) => void;
  },
): Promise<{ keeps: Map<string, number>; grams: Map<string, Captured> }> {
  const method = opts.method ?? 'greedy',
    progress = opts.onProgress ?? (() => {});
  const grams = await captureOriginal(model, units, calib, [method], {
    ...opts,
    onBatch: (d, n) => progress('capture', d, n),
  });
  const ranked = units.map((u) => rankUnit(model, u, grams.get(u.id)!, method, opts.seed ?? 0, opts));
  const curves =
    opts.allocation === 'sensitivity'
      ? await sensitivityCurves(model, ranked, opts.refit ?? true, opts.verify ?? { data: calib }, {
          ...opts,
          step: opts.grid,
          onStep: (d, n) => progress('allocate', d, n),
        })
      : undefined;
  return { keeps: allocateRanked(opts.allocation, ranked, sizeOf, goal, curves), grams };
}
