// Per-group budgets from the groups themselves (--allocation sensitivity | global): one capture of the original model,
// one nested ranking per group (rank.ts), and for sensitivity each group's measured curve.
import { internal } from '../errors.js';
import type { Model } from '../onnx/index.js';
import type { Group } from '../graph/types.js';
import type { Calibration, InputData } from '../calibration.js';
import type { NpyFile } from '../npy.js';
import { captureGrams, type RuntimeOptions } from '../capture/index.js';
import type { Captured, StatsWanted } from '../capture/stats.js';
import type { KernelOptions } from '../kernels/instances.js';
import { statsFor, type Method, type MethodOptions } from '../select/baselines.js';
import { allocateByLevel, allocateGlobal, gridKeeps, type Curve } from '../budget/allocate.js';
import type { SizeOf } from '../budget/index.js';
import { openGroupProbe, verifyTargets, type VerifySet } from '../eval/alone.js';
import { paddedWeights, rankGroup, type Ranked } from './rank.js';

export type Allocation = 'uniform' | 'sensitivity' | 'global';
export const ALLOCATIONS: readonly Allocation[] = ['uniform', 'sensitivity', 'global'];

/**
 * The allocation when none is asked for: global for compression budgets, uniform for a keep ratio (one fraction for
 * every group is what a ratio says). Global costs what uniform costs (it needs only the groups' rankings) and was more
 * accurate on every bundled model at every compression measured but the ViT at 2× (README § Allocations).
 */
export const defaultAllocation = (budgets: readonly object[]): Allocation =>
  budgets.every((b) => 'compression' in b) ? 'global' : 'uniform';

/** How a compression budget is split over the groups. */
export interface AllocationOptions {
  /**
   * uniform (one keep fraction for all), sensitivity (each group's measured curve) or global (default for compression
   * budgets; see defaultAllocation).
   */
  allocation?: Allocation;
  /** The sensitivity allocation's verification set (default: the calibration inputs, measuring agreement). */
  verify?: VerifySet;
  /** The sensitivity allocation's grid step of kept fractions (default 0.01). */
  grid?: number;
}

/** One capture of the original model for every group (with the statistics the methods need). */
export function captureOriginal(
  model: Model,
  groups: Group[],
  calib: InputData,
  methods: readonly Method[],
  opts: RuntimeOptions & KernelOptions & { onBatch?: (d: number, n: number) => void } = {},
): Promise<Map<string, Captured[]>> {
  const stats: StatsWanted = {};
  for (const m of methods) Object.assign(stats, statsFor(m));
  return captureGrams(model, groups, calib, { ...opts, stats });
}

/**
 * Each group pruned alone to every channel count of its grid, measured on the verification set (accuracy with labels,
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
  opts: RuntimeOptions & {
    targets?: Int32Array;
    step?: number;
    full?: boolean;
    onStep?: (done: number, total: number) => void;
  } = {},
): Promise<Map<string, Curve>> {
  const targets = opts.targets ?? (await verifyTargets(model, verify, opts));
  const grids = ranked.map((r) => gridKeeps(r.group.channels, opts.step));
  const total = grids.reduce((a, g) => a + g.length, 0);
  let done = 0;
  const curves = new Map<string, Curve>();
  for (const [i, r] of ranked.entries()) {
    const probe = await openGroupProbe(model, r.group, verify, targets, opts),
      ks = grids[i];
    try {
      const cap = await probe.quality(paddedWeights(r, r.group.channels, refit));
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
      curves.set(r.group.id, { ks, values, measured });
    } finally {
      await probe.release();
    }
  }
  return curves;
}

// The global allocation starts every group at half the channels the uniform allocation keeps (see allocateGlobal).
const GLOBAL_FLOOR = 0.5;

/** Keeps for a size goal by an allocation that needs the groups' rankings (sensitivity: their curves too). */
export function allocateRanked(
  allocation: 'sensitivity' | 'global',
  ranked: Ranked[],
  sizeOf: SizeOf,
  goal: number,
  curves?: Map<string, Curve>,
): Map<string, number> {
  const groups = ranked.map((r) => r.group);
  if (allocation === 'global') {
    const objectives = new Map(ranked.map((r) => [r.group.id, r.sel.objective]));
    return allocateGlobal(groups, objectives, sizeOf, goal, GLOBAL_FLOOR);
  }
  if (!curves) throw internal("the sensitivity allocation needs the groups' curves");
  return allocateByLevel(groups, curves, sizeOf, goal);
}

/**
 * Per-group keeps for compression budgets (one map per size goal) by the sensitivity or global allocation, for `prune`:
 * one capture of the original model and the method's ranking of every group (both returned, so that layerwise pruning
 * reuses them), and for sensitivity each group's curve on the verification set (default: the calibration inputs,
 * label-free). The rankings and curves serve every goal.
 */
export async function allocateBudget(
  model: Model,
  groups: Group[],
  calib: Calibration,
  goals: { sizeOf: SizeOf; goal: number }[],
  opts: RuntimeOptions &
    KernelOptions &
    MethodOptions &
    AllocationOptions & {
      allocation: 'sensitivity' | 'global';
      refit?: boolean;
      /** The capture made beforehand (prune's `stats`): none is run. */
      grams?: Map<string, Captured[]>;
      onProgress?: (stage: string, done: number, total: number) => void;
    },
): Promise<{ keeps: Map<string, number>[]; grams: Map<string, Captured[]>; ranked: Ranked[] }> {
  const progress = opts.onProgress ?? (() => {});
  const grams =
    opts.grams ??
    (await captureOriginal(model, groups, calib, [opts.method ?? 'greedy'], {
      ...opts,
      onBatch: (d: number, n: number) => progress('capture', d, n),
    }));
  const ranked = groups.map((u) => rankGroup(model, u, grams.get(u.id)!, opts));
  const curves =
    opts.allocation === 'sensitivity'
      ? await sensitivityCurves(model, ranked, opts.refit ?? true, opts.verify ?? { data: calib }, {
          ...opts,
          step: opts.grid,
          onStep: (d: number, n: number) => progress('allocate', d, n),
        })
      : undefined;
  const keeps = goals.map((g) => allocateRanked(opts.allocation, ranked, g.sizeOf, g.goal, curves));
  return { keeps, grams, ranked };
}
