// Per-group budgets from the groups themselves (--allocation sensitivity | global | search): one capture of the
// original model, one nested ranking per group (rank.ts); for sensitivity each group's measured curve, for search the
// whole pruned network measured for each candidate allocation.
import { internal } from '../errors.js';
import type { Model } from '../onnx/index.js';
import type { Group } from '../graph/types.js';
import { Calibration, type InputData } from '../calibration.js';
import { captureGrams, type CaptureOptions, type RuntimeOptions } from '../capture/index.js';
import type { Captured, StatsWanted } from '../capture/stats.js';
import type { KernelOptions } from '../kernels/instances.js';
import { statsFor, type Method, type MethodOptions } from '../select/baselines.js';
import { allocateByLevel, allocateGlobal, gridKeeps, shareOfUniform, type Curve } from '../budget/allocate.js';
import { nextKeep, type SizeOf } from '../budget/index.js';
import { openGroupProbe, verifyTargets, type Targets, type VerifySet } from '../eval/alone.js';
import { betterScore, openNetworkProbe, type NetworkProbe, type NetworkScore } from '../eval/network.js';
import { pruneGroups, type PrunePlan } from '../rewrite/index.js';
import { fidelitySampleRows } from './verify.js';
import { deepened, paddedWeights, planOf, rankGroup, settled, type Ranked } from './rank.js';

export type Allocation = 'uniform' | 'sensitivity' | 'global' | 'search';
/** The allocations made from the groups' rankings (and curves) alone: the study's (src/study). */
export const ALLOCATIONS: readonly Allocation[] = ['uniform', 'sensitivity', 'global'];
/** What prune offers: those, and the search, which also measures pruned networks. */
export const PRUNE_ALLOCATIONS: readonly Allocation[] = [...ALLOCATIONS, 'search'];

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
   * uniform (one keep fraction for all), sensitivity (each group's measured curve), global (default for compression
   * budgets; see defaultAllocation) or search (global, improved by measuring the whole pruned network).
   */
  allocation?: Allocation;
  /**
   * The sensitivity and search allocations' verification set (default: the calibration inputs, label-free: agreement
   * with the original model, and for search the KL divergence from its outputs).
   */
  verify?: VerifySet;
  /** The sensitivity allocation's grid step of kept fractions (default 0.01). */
  grid?: number;
  /**
   * Keep a multiple of roundTo entries of every constant a group cuts (roundTo channels of a conv, any count of
   * heads: keepStep), or all of them; 1: any count; 'auto' (the default but for a `keep` budget, which is kept as
   * given): 8 in groups of 2-D convolutions of 32 channels or more, 1 elsewhere (autoStep). onnxruntime's blocked
   * convolutions (NCHWc: its default optimization level on x86) take only channel counts in multiples of 8 (16 with
   * AVX-512) and fall back to slower ones otherwise.
   */
  roundTo?: RoundTo;
}

/** A number (keepStep), or 'auto' (autoStep: 8 in groups of 2-D convolutions of 32 channels or more, else 1). */
export type RoundTo = number | 'auto';

/** One capture of the original model for every group (with the statistics the methods need). */
export function captureOriginal(
  model: Model,
  groups: Group[],
  calib: InputData,
  methods: readonly Method[],
  opts: RuntimeOptions & KernelOptions & Pick<CaptureOptions, 'onBatch' | 'fill' | 'reference'> = {},
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
    targets?: Targets;
    step?: number;
    full?: boolean;
    onStep?: (done: number, total: number) => void;
  } = {},
): Promise<Map<string, Curve>> {
  const targets = opts.targets ?? (await verifyTargets(model, verify, opts));
  const grids = ranked.map((r) => gridKeeps(r.group, opts.step));
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

/** The global allocation with each group's gains multiplied by its weight (default: 1 for every group). */
function allocateWeighted(
  ranked: Ranked[],
  sizeOf: SizeOf,
  goal: number,
  weights?: Map<string, number>,
): Map<string, number> {
  const objectives = new Map(ranked.map((r) => [r.group.id, r.sel.objective]));
  return allocateGlobal(
    ranked.map((r) => r.group),
    objectives,
    sizeOf,
    goal,
    GLOBAL_FLOOR,
    weights,
  );
}

/**
 * Keeps for a size goal by an allocation that needs the groups' rankings (sensitivity: their curves too). The search
 * allocation also measures pruned networks: searchAllocation.
 */
export function allocateRanked(
  allocation: Exclude<Allocation, 'uniform'>,
  ranked: Ranked[],
  sizeOf: SizeOf,
  goal: number,
  curves?: Map<string, Curve>,
): Map<string, number> {
  if (allocation === 'global') return allocateWeighted(ranked, sizeOf, goal);
  if (allocation === 'search') throw internal('the search allocation measures pruned networks: use searchAllocation');
  if (!curves) throw internal("the sensitivity allocation needs the groups' curves");
  return allocateByLevel(
    ranked.map((r) => r.group),
    curves,
    sizeOf,
    goal,
  );
}

/**
 * The search allocation's bounds. Rows: the verification rows each candidate is measured on (evenly spaced; as the
 * report's fidelity, 512 rows keep a pass cheap and still cover every class of a set sorted by class). Factors: one
 * round per factor, largest first; in a round each group's weight is tried multiplied and divided by the factor.
 * So at most 1 + 2 × groups × factors.length candidates are measured (repeated allocations are not re-measured).
 */
export const SEARCH = { rows: 512, factors: [4, 2, Math.SQRT2] } as const;

/** What the search found for one size goal. */
export interface SearchResult {
  keeps: Map<string, number>;
  /** Each group's weight on its gains (1: the global allocation's). */
  weights: Map<string, number>;
  /** The global allocation's score (where the search starts) and the search's. */
  start: NetworkScore;
  score: NetworkScore;
  /** Distinct allocations measured (each a rewrite and a pass over the probe's rows). */
  evaluations: number;
}

/** The layerwise pruned model for some keeps, the plans made once per group and channel count (`plans`). */
function prunedAt(model: Model, ranked: Ranked[], keeps: Map<string, number>, refit: boolean, plans: PrunePlan[][]) {
  return pruneGroups(
    model,
    ranked.map((r, i) => {
      const k = keeps.get(r.group.id)!;
      plans[i]![k] ??= planOf(r, k, refit, true);
      return plans[i]![k]!;
    }),
  );
}

const keyOf = (ranked: Ranked[], keeps: Map<string, number>) => ranked.map((r) => keeps.get(r.group.id)).join(',');

/**
 * The global allocation improved by measuring the whole pruned network (layerwise: each group's first k channels,
 * re-fitted) on the probe's rows. Coordinate search on per-group weights of the global allocation's gains: for each
 * factor of SEARCH.factors and each group in turn, multiply its weight by the factor, else divide by it, and keep the
 * change when the pruned network scores better (betterScore). Every candidate is a global allocation (reweighted),
 * so it meets the goal as global does; the result never scores worse than the start.
 */
export async function searchAllocation(
  model: Model,
  ranked: Ranked[],
  sizeOf: SizeOf,
  goal: number,
  probe: NetworkProbe,
  opts: { refit?: boolean; factors?: readonly number[]; onStep?: (done: number, total: number) => void } = {},
): Promise<SearchResult> {
  const refit = opts.refit ?? true,
    factors = opts.factors ?? SEARCH.factors;
  const plans: PrunePlan[][] = ranked.map(() => []);
  const total = 1 + 2 * ranked.length * factors.length;
  let step = 0;
  const first = allocateWeighted(ranked, sizeOf, goal);
  const start = await probe.score(prunedAt(model, ranked, first, refit, plans));
  opts.onStep?.(++step, total);
  const seen = new Set([keyOf(ranked, first)]);
  let best = { keeps: first, weights: new Map(ranked.map((r) => [r.group.id, 1])), score: start };
  for (const factor of factors)
    for (const r of ranked)
      for (const f of [factor, 1 / factor]) {
        const weights = new Map(best.weights).set(r.group.id, best.weights.get(r.group.id)! * f);
        const keeps = allocateWeighted(ranked, sizeOf, goal, weights);
        const key = keyOf(ranked, keeps);
        opts.onStep?.(++step, total);
        if (seen.has(key)) continue;
        seen.add(key);
        const score = await probe.score(prunedAt(model, ranked, keeps, refit, plans));
        if (!betterScore(score, best.score)) continue;
        best = { keeps, weights, score };
        break; // the other direction of this group is not tried
      }
  return { ...best, start, evaluations: seen.size };
}

/** The search allocation's probe: SEARCH.rows rows of the verification set, evenly spaced (fidelitySampleRows). */
export function openSearchProbe(model: Model, verify: VerifySet, opts: RuntimeOptions = {}): Promise<NetworkProbe> {
  const rows = fidelitySampleRows(Calibration.of(model, verify.data).rows, SEARCH.rows);
  return openNetworkProbe(model, verify, rows, opts);
}

/**
 * Per-group keeps for compression budgets (one map per size goal) by the sensitivity, global or search allocation, for
 * `prune`: one capture of the original model and the method's ranking of every group (both returned, so that
 * layerwise pruning reuses them); for sensitivity each group's curve on the verification set (default: the
 * calibration inputs, label-free), which serves every goal; for search, per goal, the search's candidates measured on
 * the verification set (the results returned too).
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
      allocation: Exclude<Allocation, 'uniform'>;
      refit?: boolean;
      /** The capture made beforehand (prune's `stats`): none is run. */
      grams?: Map<string, Captured[]>;
      onProgress?: (stage: string, done: number, total: number) => void;
    },
): Promise<{
  keeps: Map<string, number>[];
  grams: Map<string, Captured[]>;
  ranked: Ranked[];
  search?: SearchResult[];
}> {
  const progress = opts.onProgress ?? (() => {});
  const grams =
    opts.grams ??
    (await captureOriginal(model, groups, calib, [opts.method ?? 'greedy'], {
      ...opts,
      onBatch: (d: number, n: number) => progress('capture', d, n),
    }));
  const ranked =
    opts.allocation === 'global'
      ? rankedForGlobal(model, groups, grams, goals, opts)
      : groups.map((u) => rankGroup(model, u, grams.get(u.id)!, opts));
  const curves =
    opts.allocation === 'sensitivity'
      ? await sensitivityCurves(model, ranked, opts.refit ?? true, opts.verify ?? { data: calib }, {
          ...opts,
          step: opts.grid,
          onStep: (d: number, n: number) => progress('allocate', d, n),
        })
      : undefined;
  if (opts.allocation === 'search') {
    const search = await searchGoals(model, ranked, goals, opts.verify ?? { data: calib }, {
      ...opts,
      onStep: (d: number, n: number) => progress('allocate', d, n),
    });
    return { keeps: search.map((s) => s.keeps), grams, ranked, search };
  }
  const keeps = goals.map((g) => allocateRanked(opts.allocation, ranked, g.sizeOf, g.goal, curves));
  return { keeps, grams, ranked };
}

/**
 * Each group ranked as deep as the global allocation takes it, for every goal: first to the uniform allocation's
 * keep (at least RANK_DEPTH channels), then, for a group the allocation stops at the end of its ranking, twice as deep
 * again, going on from where its greedy stopped, until none stops there. The greedy's order is nested, so each curve
 * is a prefix of the whole ranking's and the keeps are those of ranking every channel. A DistilBERT-sized encoder
 * at 2×: its six FFNs ranked to 755 of their 3072 neurons, the allocation 130–168 s → 77–98 s (loaded machine).
 */
export function rankedForGlobal(
  model: Model,
  groups: Group[],
  grams: Map<string, Captured[]>,
  goals: { sizeOf: SizeOf; goal: number }[],
  opts: MethodOptions & KernelOptions & { refit?: boolean },
): Ranked[] {
  const uniform = goals.map((g) => shareOfUniform(groups, g.sizeOf, g.goal, 1));
  const depth = (u: Group) =>
    Math.min(u.channels, Math.max(RANK_DEPTH, 2 * (u.step ?? 1), ...uniform.map((k) => k.get(u.id)!)));
  const depths = groups.map(depth),
    more = (i: number) => depths[i]! < groups[i]!.channels;
  const ranked = groups.map((u, i) =>
    rankGroup(model, u, grams.get(u.id)!, { ...opts, keepState: more(i) }, depths[i]),
  );
  for (;;) {
    const keeps = goals.map((g) => allocateWeighted(ranked, g.sizeOf, g.goal));
    // a group the allocation would grow past its ranking
    const cut = groups.flatMap((u, i) =>
      more(i) && keeps.some((k) => nextKeep(u, k.get(u.id)!) > depths[i]!) ? [i] : [],
    );
    if (!cut.length) return ranked.map(settled);
    for (const i of cut) {
      depths[i] = Math.min(groups[i]!.channels, 2 * depths[i]!);
      ranked[i] = deepened(ranked[i]!, depths[i]!, more(i));
    }
  }
}

/** The least depth rankedForGlobal ranks a group to at first. */
const RANK_DEPTH = 16;

/** searchAllocation for every goal, with one probe (the original model's outputs computed once). */
async function searchGoals(
  model: Model,
  ranked: Ranked[],
  goals: { sizeOf: SizeOf; goal: number }[],
  verify: VerifySet,
  opts: RuntimeOptions & { refit?: boolean; onStep?: (done: number, total: number) => void },
): Promise<SearchResult[]> {
  const probe = await openSearchProbe(model, verify, opts);
  const out: SearchResult[] = [];
  for (const [i, g] of goals.entries())
    out.push(
      await searchAllocation(model, ranked, g.sizeOf, g.goal, probe, {
        refit: opts.refit,
        onStep: (d, n) => opts.onStep?.(i * n + d, goals.length * n),
      }),
    );
  return out;
}
