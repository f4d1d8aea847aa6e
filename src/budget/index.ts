import { badInput } from '../errors.js';
import type { Group } from '../graph/types.js';
import type { GraphProto, NodeProto } from '../onnx/index.js';

/** How many channels to keep: a compression ratio, a keep fraction, or explicit counts per group. */
export type Budget =
  { compression: number; target?: 'params' | 'flops' } | { keepRatio: number } | { keep: Record<string, number> };

/** Model size (params or FLOPs) after keeping keeps.get(id) channels of each group. */
export type SizeOf = (keeps: Map<string, number>) => number;

/**
 * A group as the allocations see it. `step` (default 1): it keeps a multiple of step channels, or all of them (prune's
 * roundTo, see keepStep).
 */
export interface AllocGroup {
  id: string;
  channels: number;
  step?: number;
}

const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);

/**
 * The channel step that keeps every constant the group cuts (weights, biases, per-channel tables) at a multiple of
 * `roundTo` entries along its axis: roundTo channels of one entry each (a conv's), fewer where every constant holds
 * several entries per channel (attention heads of 16 or 64: any count). The activations' head axes (scores
 * [B, heads, T, T]) do not count: no kernel blocks them.
 */
export function keepStep(u: Group, roundTo: number): number {
  const per = u.slices.reduce((a, s) => gcd(a, s.per), 0) || 1;
  return roundTo / gcd(roundTo, per);
}

/** roundTo 'auto': the step of a group a 2-D Conv produces or reads, and the fewest channels such a group needs. */
export const AUTO_ROUND = { step: 8, channels: 32 };

/** Whether a node is a 2-D Conv (a 4-D weight): what onnxruntime blocks (NCHWc), not 1-D or 3-D ones. */
export function conv2d(g: GraphProto): (n: NodeProto) => boolean {
  const rank = new Map(g.initializer.map((t) => [t.name, t.dims.length]));
  return (n) => n.opType === 'Conv' && rank.get(n.input[1] ?? '') === 4;
}

/**
 * A group's step under roundTo 'auto': AUTO_ROUND.step (as keepStep) where a 2-D Conv (`blocked`, conv2d) produces or
 * reads the group and it has at least AUTO_ROUND.channels channels, else 1. A smaller group would choose among too
 * few counts (LeNet at 16× lost 4 points with roundTo 8), and others gain no speed (onnxruntime blocks only 2-D
 * convolutions) but lose accuracy (the ViT's dense layers, 0.6 points at 1.5× fewer FLOPs).
 */
export function autoStep(u: Group, blocked: (n: NodeProto) => boolean): number {
  const conv = u.producers.some(blocked) || u.consumers.some((c) => blocked(c.node));
  return conv && u.channels >= AUTO_ROUND.channels ? keepStep(u, AUTO_ROUND.step) : 1;
}

/** The fewest channels a group keeps: one step, or all of a group smaller than a step. */
export const leastKeep = (u: AllocGroup) => Math.min(u.channels, u.step ?? 1);

/** The count after k: one step more, or all the channels. */
export const nextKeep = (u: AllocGroup, k: number) =>
  k + (u.step ?? 1) <= u.channels ? k + (u.step ?? 1) : u.channels;

/** The allowed count nearest to k (k ≥ the channels: all of them). */
export function roundKeep(u: AllocGroup, k: number): number {
  const step = u.step ?? 1;
  return k >= u.channels ? u.channels : Math.min(u.channels, Math.max(step, Math.round(k / step) * step));
}

/** The largest allowed count up to k, at least leastKeep. */
export function floorKeep(u: AllocGroup, k: number): number {
  const step = u.step ?? 1;
  return k >= u.channels ? u.channels : Math.max(leastKeep(u), Math.floor(k / step) * step);
}

/** Channels kept in each group for a fraction f of its channels (at least one step). */
export function uniformKeeps(groups: AllocGroup[], f: number): Map<string, number> {
  return new Map(groups.map((u) => [u.id, roundKeep(u, Math.max(1, Math.round(f * u.channels)))]));
}

/**
 * Why a goal below what every group's fewest channels leave is out of reach: the steps (the default rounding, which
 * the user may not know of), or the layers no group cuts.
 */
export function unreachable(groups: AllocGroup[], sizeOf: SizeOf, goal: number): string {
  const anyCount = groups.map((u) => ({ ...u, step: 1 }));
  return groups.some((u) => (u.step ?? 1) > 1) && sizeOf(uniformKeeps(anyCount, 0)) <= goal
    ? '--round-to 1 (any count; slower convolutions in onnxruntime) reaches it'
    : 'the rest is in layers subprune cannot prune (see subprune inspect)';
}

/** What every group pruned to its least keeps, in words. */
export const fewest = (groups: AllocGroup[]) =>
  groups.some((u) => (u.step ?? 1) > 1) ? 'its fewest channels (one --round-to step)' : 'one channel';

/**
 * The size a compression c asks for: `full` (the model's size before pruning; default: sizeOf with every channel kept)
 * over c; refused when c < 1 or when one channel per group still leaves more.
 */
export function compressionGoal(groups: AllocGroup[], c: number, sizeOf: SizeOf, full?: number): number {
  if (!(c >= 1)) throw badInput(`compression ${c}: must be at least 1 (1 keeps everything)`);
  const before = full ?? sizeOf(uniformKeeps(groups, 1)),
    goal = before / c;
  const least = sizeOf(uniformKeeps(groups, 0));
  if (least > goal) {
    throw badInput(
      `compression ${c} is out of reach: pruning every group to ${fewest(groups)} leaves ${least} of ${before} ` +
        `(${(before / least).toFixed(2)}×); ${unreachable(groups, sizeOf, goal)}`,
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
      if (roundKeep(u, k) !== k)
        throw badInput(
          `budget for ${u.id}: ${k} channels; with --round-to it keeps a multiple of ${u.step} or all ${u.channels}`,
        );
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
