// The baselines of the paper's study, each as a ranking of a group's channels (most important first). selectGroup
// takes the ranking as its `order`, so every method gets the same objective per step and the same least-squares re-fit.
// A group read by several consumers scores a channel by all of them: each consumer's scores as a share of its total
// (so every consumer counts equally, as in the greedy's objective), the PFP sensitivity by its largest share.
import { internal } from '../errors.js';
import type { ChannelStats } from '../capture/stats.js';

export type Method = 'greedy' | 'random' | 'weight-norm' | 'activation-norm' | 'sampling';
export const METHODS: readonly Method[] = ['greedy', 'random', 'weight-norm', 'activation-norm', 'sampling'];

/** How channels are ranked: the paper's greedy (default) or a baseline, with the seed of the stochastic ones. */
export interface MethodOptions {
  method?: Method;
  /** Seed of the random and sampling methods (default 0). */
  seed?: number;
}

/** What a method needs to know about one consumer: the group's size, its d×m weights W, and channel statistics. */
export interface RankInput {
  n: number;
  g: number;
  m: number;
  W: Float64Array;
  stats?: ChannelStats;
}

/** Scores of every consumer summed, each as a share of its own total (one consumer: its scores as they are). */
function combined(scores: Float64Array[]): Float64Array {
  if (scores.length === 1) return scores[0]!;
  const out = new Float64Array(scores[0]!.length);
  for (const s of scores) {
    const total = s.reduce((a, b) => a + b, 0) || 1;
    s.forEach((v, c) => (out[c] += v / total));
  }
  return out;
}

/** The channels of a group, most important first; undefined for greedy (the selection itself ranks). */
export function rankChannels(method: Method, consumers: RankInput[], seed = 0): number[] | undefined {
  const n = consumers[0]!.n;
  switch (method) {
    case 'greedy':
      return undefined;
    case 'random':
      return sampleOrder(new Float64Array(n).fill(1), seed);
    case 'weight-norm':
      return byScore(combined(consumers.map(weightNorms)));
    case 'activation-norm':
      return byScore(combined(consumers.map((p) => need(p.stats?.absMean, 'activation-norm', 'absMean'))));
    case 'sampling': {
      const sens = consumers.map((p) => need(p.stats?.sensitivity, 'sampling', 'sensitivity'));
      return sampleOrder(
        sens.reduce((a, s) => a.map((v, c) => Math.max(v, s[c]!))),
        seed,
      );
    }
  }
}

/** Which channel statistics a method needs from the capture. */
export function statsFor(method: Method): { absMean?: boolean; sensitivity?: boolean } | undefined {
  return method === 'activation-norm' ? { absMean: true } : method === 'sampling' ? { sensitivity: true } : undefined;
}

function need(x: Float64Array | undefined, method: string, what: string): Float64Array {
  if (!x) throw internal(`${method} needs the channel statistic ${what} from the capture`);
  return x;
}

/** L1 norm of each channel's outgoing weights: its g rows of W (all m consumer outputs). */
export function weightNorms({ n, g, m, W }: RankInput): Float64Array {
  const s = new Float64Array(n);
  for (let c = 0; c < n; c++) for (let i = c * g * m; i < (c + 1) * g * m; i++) s[c] += Math.abs(W[i]);
  return s;
}

/** Channels by decreasing score (ties: lower index first). */
export function byScore(score: ArrayLike<number>): number[] {
  return Array.from({ length: score.length }, (_, c) => c).sort((a, b) => score[b] - score[a] || a - b);
}

/**
 * A seeded ordering by successive sampling without replacement with probability ∝ weight: sorting by the keys
 * log(u)/w (u uniform) draws exactly that distribution (Efraimidis & Spirakis 2006). Zero weights come last, in
 * random order.
 */
export function sampleOrder(weight: ArrayLike<number>, seed: number): number[] {
  const r = rng(seed),
    n = weight.length;
  const key = Array.from({ length: n }, (_, c) => ({
    c,
    k: weight[c] > 0 ? Math.log(r()) / weight[c] : -Infinity,
    t: r(),
  }));
  return key.sort((a, b) => b.k - a.k || b.t - a.t).map((x) => x.c);
}

/** A small seeded generator of uniforms in (0, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
}

/** A group's own seed, so that the groups of one run get independent orders (FNV-1a of the id, mixed with the seed). */
export function groupSeed(seed: number, id: string): number {
  let h = 0x811c9dc5 ^ Math.imul(seed >>> 0, 0x9e3779b1);
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
