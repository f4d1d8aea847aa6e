// Flag helpers shared by prune and study: labels files and choices from a fixed list.
import { openNpy } from '../npy.js';
import { badInput } from '../errors.js';

/** Integer class labels from a 1-D .npy file. */
export function readLabels(path: string): Float64Array {
  const f = openNpy(path);
  try {
    if (f.shape.length !== 1 || !['i8', 'i4', 'u1'].includes(f.dtype)) throw badInput(`${path}: labels must be a 1-D integer array, got ${f.dtype} [${f.shape}]`);
    return f.readF64();
  } finally { f.close(); }
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
