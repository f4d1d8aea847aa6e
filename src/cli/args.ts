// Flag helpers shared by prune and study: labels files, choices from a fixed list, the method and allocation flags.
import { openNpy } from '../npy.js';
import { openInputs, type Inputs } from './inputs.js';
import { badInput } from '../errors.js';
import { METHODS, type Method } from '../select/baselines.js';
import { PRUNE_ALLOCATIONS, type Allocation } from '../prune/allocation.js';
import type { VerifySet } from '../eval/alone.js';

/** Integer class labels from a 1-D .npy file. */
export function readLabels(path: string): Float64Array {
  const f = openNpy(path);
  try {
    if (f.shape.length !== 1 || !['i8', 'i4', 'u1'].includes(f.dtype))
      throw badInput(`${path}: labels must be a 1-D integer array, got ${f.dtype} [${f.shape}]`);
    return f.readF64();
  } finally {
    f.close();
  }
}

/** One value of a flag with a fixed set of choices. */
export function choice<T extends string>(s: string, flag: string, choices: readonly T[]): T {
  if (!choices.includes(s as T)) throw badInput(`${flag} ${s}: use ${choices.join(', ')}`);
  return s as T;
}

/** A comma-separated list of choices (all of them when absent). */
export function choices<T extends string>(s: string | undefined, flag: string, all: readonly T[]): T[] {
  return s === undefined ? [...all] : s.split(',').map((x) => choice(x.trim(), flag, all));
}

/** prune's flags for the ranking method and the per-group allocation (parseArgs options, help, parsing). */
export const methodOptions = {
  method: { type: 'string', default: 'greedy' },
  seed: { type: 'string', default: '0' },
  allocation: { type: 'string' },
  verify: { type: 'string', multiple: true },
  'verify-labels': { type: 'string' },
  grid: { type: 'string' },
} as const;

export const methodHelp = `\
  --method NAME       how channels are ranked: greedy (default, the paper's), or a baseline: random,
                      weight-norm (L1 of the outgoing weights), activation-norm (mean |activation| on the
                      calibration data), sampling (Liebenwein et al.'s sensitivity sampling); every method
                      gets the same least-squares re-fit (unless --no-refit)
  --seed n            seed of random and sampling (default 0)
  --allocation A      how --compression is split over the groups: global (default: one greedy over all
                      groups, gains normalised per group; no more work than uniform), uniform (one keep
                      fraction for all; the default for --keep-ratio), sensitivity (each group pruned alone
                      at fractions 0.01 … 1 and measured on --verify; a common accuracy level that meets the
                      target; the slowest), search (global, then a coordinate search on per-group weights
                      of its gains: each candidate is pruned whole and scored on up to 512 rows of --verify,
                      evenly spaced, by the divergence of its outputs from the original model's (KL of class
                      scores, squared relative error of other outputs such as a detector's maps), or by
                      accuracy with --verify-labels; at most 1 + 6 × groups candidates, each a rewrite and a
                      pass over those rows)
  --verify DATA       held-out inputs (as --calib), not used for the fit: the pruned model's fidelity is
                      measured on them (default: on the calibration inputs, which flatter a model fitted
                      from few samples), and --allocation sensitivity or search scores on them. Label-free:
                      top-1 agreement with the original model (sensitivity: needs an output of class
                      scores), the divergence from its outputs (search); accuracy too with
                      --verify-labels FILE
  --grid STEP         the sensitivity allocation's fractions: STEP, 2·STEP, …, 1 (default 0.01)`;

export interface MethodFlags {
  method: Method;
  seed: number;
  /** As given (undefined: the default for the budget, see defaultAllocation). */
  allocation?: Allocation;
  verify?: VerifySet;
  grid?: number;
  /** Files opened for the flags, to close when done. */
  opened: Inputs[];
}

export function methodFlags(o: {
  method?: string;
  seed?: string;
  allocation?: string;
  verify?: string[];
  'verify-labels'?: string;
  grid?: string;
  preprocess?: string;
}): MethodFlags {
  const method = choice(o.method ?? 'greedy', '--method', METHODS),
    allocation = o.allocation === undefined ? undefined : choice(o.allocation, '--allocation', PRUNE_ALLOCATIONS);
  const seed = Number(o.seed ?? '0');
  if (!Number.isInteger(seed) || seed < 0) throw badInput(`--seed ${o.seed}: expected a whole number ≥ 0`);
  if (o['verify-labels'] && !o.verify) throw badInput('--verify-labels needs --verify');
  if (o.grid && allocation !== 'sensitivity') throw badInput('--grid is for --allocation sensitivity');
  const grid = gridFlag(o.grid);
  const opened = o.verify ? openInputs(o.verify, '--verify', o.preprocess, true) : undefined;
  const data = opened?.data;
  const verify = data && { data, ...(o['verify-labels'] ? { labels: readLabels(o['verify-labels']) } : {}) };
  return {
    method,
    seed,
    allocation,
    ...(verify ? { verify } : {}),
    ...(grid ? { grid } : {}),
    opened: opened ? [opened] : [],
  };
}

export function gridFlag(s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const v = Number(s);
  if (!(v > 0 && v <= 1)) throw badInput(`--grid ${s}: expected a step in (0, 1], e.g. 0.01`);
  return v;
}
