// Per-group channel counts that meet a size goal, from per-group curves: the paper's per-layer selection (a common
// accuracy level across groups, from each group pruned alone) and a whole-network greedy (normalised objective gains).
import { badInput, internal } from '../errors.js';
import {
  fewest,
  floorKeep,
  leastKeep,
  nextKeep,
  roundKeep,
  unreachable,
  type AllocGroup,
  type SizeOf,
} from './index.js';

export type { AllocGroup };

/**
 * Quality of the model with only this group pruned to ks[i] channels (ks ascending, from 1 to the group's channels).
 */
export interface Curve {
  ks: number[];
  values: number[];
  /** values[i] for i ≥ measured (and < ks.length − 1) were not measured: the value at ks.length − 1 stands in. */
  measured?: number;
}

/**
 * The channel counts a group is measured at: k = round(f·n) for the fractions f = step, 2·step, …, 1, with the
 * fewest a group can keep always included (so the lowest level is every group at its least), each rounded to a count
 * the group may keep (`u.step`).
 */
export function gridKeeps(u: AllocGroup, step = 0.01): number[] {
  const n = u.channels,
    ks = new Set([leastKeep(u)]);
  for (let i = 1; i * step <= 1 + 1e-9; i++) ks.add(roundKeep(u, Math.max(1, Math.round(i * step * n))));
  ks.add(n);
  return [...ks].sort((a, b) => a - b);
}

/** Running maximum over growing k, capped at the value with every channel kept (more channels never hurt, by fiat). */
export function monotone(values: readonly number[]): number[] {
  const cap = values[values.length - 1]!;
  let best = -Infinity;
  return values.map((v) => Math.min(cap, (best = Math.max(best, v))));
}

const keepsOf = (groups: AllocGroup[], k: (u: AllocGroup) => number) => new Map(groups.map((u) => [u.id, k(u)]));

function checkReachable(groups: AllocGroup[], sizeOf: SizeOf, goal: number): void {
  const least = sizeOf(keepsOf(groups, leastKeep));
  if (least > goal)
    throw badInput(
      `the size goal ${goal} is out of reach: pruning every group to ${fewest(groups)} leaves ${least}; ` +
        unreachable(groups, sizeOf, goal),
    );
}

/**
 * The paper's per-layer budgets: the highest common level τ such that keeping, in every group, the fewest channels
 * whose (monotone) curve reaches τ meets the goal; then the leftover budget goes, one channel at a time, to the groups
 * with the largest kept fractions that can still grow within the goal.
 */
export function allocateByLevel(
  groups: AllocGroup[],
  curves: Map<string, Curve>,
  sizeOf: SizeOf,
  goal: number,
): Map<string, number> {
  return spendLeftover(groups, commonLevel(groups, curves, sizeOf, goal).keeps, sizeOf, goal);
}

/** The highest common level τ that meets the goal, and its keeps (before the leftover is spent). */
export function commonLevel(
  groups: AllocGroup[],
  curves: Map<string, Curve>,
  sizeOf: SizeOf,
  goal: number,
): { level: number; keeps: Map<string, number> } {
  checkReachable(groups, sizeOf, goal);
  const mono = new Map(
    groups.map((u) => {
      const c = curves.get(u.id);
      if (!c || c.ks[0] !== leastKeep(u) || c.ks[c.ks.length - 1] !== u.channels || c.ks.length !== c.values.length)
        throw internal(`curve of ${u.id} must cover k = ${leastKeep(u)} … ${u.channels}`);
      return [u.id, { ks: c.ks, values: monotone(c.values) }];
    }),
  );
  const at = (tau: number) =>
    keepsOf(groups, (u) => {
      const c = mono.get(u.id)!,
        i = c.values.findIndex((v) => v >= tau);
      return i < 0 ? u.channels : c.ks[i]!;
    });
  // The feasible levels form a prefix of the sorted candidates (size grows with τ); the lowest one is all-ones.
  const levels = [...new Set([...mono.values()].flatMap((c) => c.values))].sort((a, b) => a - b);
  let lo = 0,
    hi = levels.length; // levels[lo] feasible; levels[hi] (if any) not
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (sizeOf(at(levels[mid]!)) <= goal) lo = mid;
    else hi = mid;
  }
  return { level: levels[lo]!, keeps: at(levels[lo]!) };
}

/** Adds channels (a step at a time), largest kept fraction first, while the goal still holds. */
export function spendLeftover(
  groups: AllocGroup[],
  keeps: Map<string, number>,
  sizeOf: SizeOf,
  goal: number,
): Map<string, number> {
  const out = new Map(keeps);
  for (;;) {
    const grow = groups
      .filter((u) => out.get(u.id)! < u.channels)
      .sort((a, b) => out.get(b.id)! / b.channels - out.get(a.id)! / a.channels)
      .find((u) => sizeOf(new Map(out).set(u.id, nextKeep(u, out.get(u.id)!))) <= goal);
    if (!grow) return out;
    out.set(grow.id, nextKeep(grow, out.get(grow.id)!));
  }
}

/**
 * The whole-network greedy: objective[u][i] is group u's normalised objective (1 − relative error of its consumer's
 * input) with its first i+1 greedy channels. Starting from one channel per group, add the channel with the largest
 * objective gain over all groups while the goal holds. Units are selected independently (layerwise), so this is the
 * greedy on Σ_u F_u(S_u)/‖A_u W_u‖² over the union of all channels.
 *
 * `floor` > 0 starts every group at that share of the channels the uniform allocation would keep for the goal: a
 * group whose channels gain little one by one (a ViT's FFN neurons beside its heads) is otherwise starved, which the
 * objective does not see and the network's output does (ViT 2× fewer FLOPs: 0.787 test accuracy from 1 channel,
 * 0.865 from half the uniform share; README § Allocations).
 *
 * `weights` (default 1 for every group) multiply each group's gains: the search allocation's knob (a group whose
 * pruning hurts the network more than its objective says gets a larger weight and so more channels).
 */
export function allocateGlobal(
  groups: AllocGroup[],
  objectives: Map<string, number[]>,
  sizeOf: SizeOf,
  goal: number,
  floor = 0,
  weights?: Map<string, number>,
): Map<string, number> {
  checkReachable(groups, sizeOf, goal);
  const keeps = floor > 0 ? shareOfUniform(groups, sizeOf, goal, floor) : keepsOf(groups, leastKeep);
  // a group grows, a step at a time, while its curve goes on: a ranking cut short (rankedForGlobal) stops it at its end
  const next = (u: AllocGroup) => nextKeep(u, keeps.get(u.id)!),
    grows = (u: AllocGroup) => keeps.get(u.id)! < u.channels && next(u) <= objectives.get(u.id)!.length;
  const active = new Set(groups.filter(grows));
  // the gain per channel the step adds, so that groups of different steps compare
  const gain = (u: AllocGroup) => {
    const o = objectives.get(u.id)!,
      k = keeps.get(u.id)!,
      k1 = next(u);
    return ((o[k1 - 1]! - o[k - 1]!) / (k1 - k)) * (weights?.get(u.id) ?? 1);
  };
  while (active.size) {
    let best: AllocGroup | undefined;
    for (const u of active) if (!best || gain(u) > gain(best)) best = u;
    const k = next(best!);
    if (sizeOf(new Map(keeps).set(best!.id, k)) > goal) {
      active.delete(best!);
      continue;
    } // grows only costlier
    keeps.set(best!.id, k);
    if (!grows(best!)) active.delete(best!);
  }
  return keeps;
}

/** `share` of the channels (at least a step) of the largest fraction kept in every group that meets the goal. */
export function shareOfUniform(groups: AllocGroup[], sizeOf: SizeOf, goal: number, share: number): Map<string, number> {
  const keep = (f: number) => keepsOf(groups, (u) => floorKeep(u, Math.floor(f * u.channels)));
  let lo = 0,
    hi = 1;
  for (let i = 0; i < 30; i++) {
    const mid = (lo + hi) / 2;
    if (sizeOf(keep(mid)) <= goal) lo = mid;
    else hi = mid;
  }
  return keep(lo * share);
}
