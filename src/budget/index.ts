import { badInput } from '../errors.js';
import type { Group } from '../graph/types.js';

/** How many channels to keep: a compression ratio, a keep fraction, or explicit counts per group. */
export type Budget =
  { compression: number; target?: 'params' | 'flops' } | { keepRatio: number } | { keep: Record<string, number> };

/** Model size (params or FLOPs) after keeping keeps.get(id) channels of each group. */
export type SizeOf = (keeps: Map<string, number>) => number;

/** Channels kept in each group for a fraction f of its channels (at least one). */
export function uniformKeeps(groups: Group[], f: number): Map<string, number> {
  return new Map(groups.map((u) => [u.id, Math.min(u.channels, Math.max(1, Math.round(f * u.channels)))]));
}

/**
 * The size a compression c asks for: `full` (the model's size before pruning; default: sizeOf with every channel kept)
 * over c; refused when c < 1 or when one channel per group still leaves more.
 */
export function compressionGoal(groups: Group[], c: number, sizeOf: SizeOf, full?: number): number {
  if (!(c >= 1)) throw badInput(`compression ${c}: must be at least 1 (1 keeps everything)`);
  const before = full ?? sizeOf(uniformKeeps(groups, 1)),
    goal = before / c;
  const least = sizeOf(uniformKeeps(groups, 0));
  if (least > goal) {
    throw badInput(
      `compression ${c} is out of reach: pruning every group to one channel leaves ${least} of ${before} ` +
        `(${(before / least).toFixed(2)}×); the rest is in layers subprune cannot prune (see subprune inspect)`,
    );
  }
  return goal;
}

/**
 * Per-group channel counts for a budget. Compression c means size ÷ c for the whole model (every initializer, or
 * FLOPs); the keep fraction is the same for every group, the largest one that meets the target. A budget names a group
 * by its id, by any of its producers' node names, or by a producer's weight.
 */
export function resolveBudget(groups: Group[], budget: Budget, sizeOf: SizeOf, full?: number): Map<string, number> {
  if ('keep' in budget) {
    const out = new Map(groups.map((u) => [u.id, u.channels]));
    for (const [key, k] of Object.entries(budget.keep)) {
      const u = groups.find((x) => x.id === key || x.producers.some((p) => p.name === key || p.input[1] === key));
      if (!u)
        throw badInput(
          `budget names "${key}", which is no prunable group (ids: ${groups.map((x) => x.id).join(', ')}); see ` +
            'subprune inspect',
        );
      if (!Number.isInteger(k) || k < 1 || k > u.channels)
        throw badInput(`budget for ${u.id}: ${k} channels; it has ${u.channels}, keep between 1 and ${u.channels}`);
      out.set(u.id, k);
    }
    return out;
  }
  if ('keepRatio' in budget) {
    const r = budget.keepRatio;
    if (!(r > 0 && r <= 1)) throw badInput(`keep ratio ${r}: must be in (0, 1]`);
    return uniformKeeps(groups, r);
  }
  const goal = compressionGoal(groups, budget.compression, sizeOf, full);
  let lo = 0,
    hi = 1; // sizeOf(lo) ≤ goal < sizeOf(hi) unless c = 1
  if (sizeOf(uniformKeeps(groups, hi)) <= goal) return uniformKeeps(groups, hi);
  for (let i = 0; i < 40; i++) {
    const mid = (lo + hi) / 2;
    if (sizeOf(uniformKeeps(groups, mid)) <= goal) lo = mid;
    else hi = mid;
  }
  return uniformKeeps(groups, lo);
}
