import type { Arena } from './memory.js';

/** What the table says about one kernel. */
interface KernelSpec {
  /** Its parameters in order: every array is a byte offset into the arena's memory. */
  readonly params: readonly string[];
  /** It returns a number (the others return nothing). */
  readonly returns?: true;
  /** The parameters [lo, hi) that `par` splits across threads. */
  readonly range?: readonly [string, string];
  /** Range boundaries fall on multiples of this: the kernel's block of rows or columns. */
  readonly align?: number;
  /** A per-thread scratch parameter: thread t gets param + t·bytes(args). */
  readonly scratch?: { readonly param: string; readonly bytes: (args: Record<string, number>) => number };
}

/**
 * The kernels of assembly/index.ts, one entry each: parameter names in order, and for the ones `par` can split, the
 * range, alignment and scratch. wasm.ts, plain.ts and pool.ts all read it; assembly/index.ts must declare the same
 * parameters in the same order (test/kernels.test.ts checks the names against the compiled exports' arity).
 */
export const KERNELS = {
  gramRows: { params: [], returns: true },
  gramPanels: { params: ['d'], returns: true },
  gramPackFloats: { params: ['d'], returns: true },
  gramPack: { params: ['X', 'ld', 'r0', 'rb', 'd', 'P', 'p0', 'p1'], range: ['p0', 'p1'] },
  gramPackT: { params: ['X', 'ld', 'c0', 'cb', 'n', 'P', 'p0', 'p1'], range: ['p0', 'p1'] },
  // align: the tile's rows (MR in assembly/index.ts), which must not straddle a packed panel
  gramTiles: { params: ['PA', 'da', 'PB', 'db', 'rb', 'C', 'ldc', 'upper', 'i0', 'i1'], range: ['i0', 'i1'], align: 2 },
  columnSums: { params: ['X', 'rows', 'd', 'sums', 'j0', 'j1'], range: ['j0', 'j1'], align: 4 },
  columnMoments: { params: ['X', 'rows', 'd', 'sums', 'squares', 'j0', 'j1'], range: ['j0', 'j1'], align: 4 },
  symmetrize: { params: ['G', 'd'] },
  zero: { params: ['P', 'bytes'] },
  gemmChunk: { params: [], returns: true },
  gemmPackDoubles: { params: ['N'], returns: true },
  gemmPack: { params: ['B', 'N', 'k0', 'kc', 'P'] },
  gemmRows: {
    params: ['A', 'K', 'k0', 'kc', 'P', 'C', 'N', 'tmp', 'i0', 'i1'],
    range: ['i0', 'i1'],
    align: 4,
    scratch: { param: 'tmp', bytes: () => 128 },
  },
  gather: { params: ['G', 'd', 'j', 'orig', 'n', 'gcol'] },
  extend: { params: ['L', 'ldl', 't0', 't', 'p0', 'p1', 'jrow', 'gcol', 'inv', 'u'], range: ['p0', 'p1'] },
  updateRows: { params: ['Q', 'm', 'u', 'q', 'p0', 'p1'], range: ['p0', 'p1'] },
  updateScan: { params: ['Q', 'm', 'u', 'q', 'p0', 'p1', 'e', 'diag0', 'tol', 'gains'], range: ['p0', 'p1'] },
  downdateBlocks: { params: ['E', 'u', 'b0', 'b1', 'g'], range: ['b0', 'b1'] },
  groupGains: {
    params: ['Q', 'm', 'E', 'diag0', 'b0', 'b1', 'g', 'tol', 'gains', 'S'],
    range: ['b0', 'b1'],
    scratch: { param: 'S', bytes: (a) => (3 * a.g * a.g + a.g) * 8 },
  },
  argmax: { params: ['gains', 'chan', 'n'], returns: true },
  // align: the back substitution's column block (CW), so that each thread solves whole blocks
  solveUpperT: { params: ['L', 'ldl', 't', 'X', 'm', 'j0', 'j1'], range: ['j0', 'j1'], align: 64 },
  transpose: { params: ['X', 'rows', 'cols', 'out'] },
  gatherRows: { params: ['X', 'd', 'idx', 'n', 'shift', 'out'] },
  // X and out need 16 bytes of slack past the sample and its patches: entries are copied four at a time
  im2col: {
    params: ['X', 'C', 'H', 'W', 'kh', 'kw', 'sh', 'sw', 'pt', 'pl', 'dh', 'dw', 'OH', 'OW', 'out'],
  },
} as const satisfies Record<string, KernelSpec>;

type Table = typeof KERNELS;
export type KernelName = keyof Table;
/** A kernel's arguments by name, e.g. KernelArgs<'updateRows'> = { Q, m, u, q, p0, p1 }. */
export type KernelArgs<N extends KernelName> = { [P in Table[N]['params'][number]]: number };
type Positional<L extends readonly string[]> = { -readonly [I in keyof L]: number };
type KernelFn<N extends KernelName> = (
  ...args: Positional<Table[N]['params']>
) => Table[N] extends { returns: true } ? number : void;
/** The kernels called directly, with positional arguments in the table's order. */
export type KernelFunctions = { readonly [N in KernelName]: KernelFn<N> };
/** The kernels `par` can split: those with a range. */
export type ParKernel = { [N in KernelName]: Table[N] extends { range: readonly string[] } ? N : never }[KernelName];

export const KERNEL_NAMES = Object.keys(KERNELS) as KernelName[];
export const PAR_KERNELS = KERNEL_NAMES.filter((n) => 'range' in KERNELS[n]) as ParKernel[];

/** Where `par` finds things in a kernel's positional arguments: the range's ends and the scratch (−1: none). */
export interface ParLayout {
  lo: number;
  hi: number;
  scratch: number;
  align: number;
}
export function parLayout(name: ParKernel): ParLayout {
  const spec: KernelSpec = KERNELS[name];
  const [lo, hi] = spec.range!.map((p) => spec.params.indexOf(p));
  return { lo, hi, scratch: spec.scratch ? spec.params.indexOf(spec.scratch.param) : -1, align: spec.align ?? 1 };
}

/** The named arguments in the kernel's parameter order (a missing or extra name is an error). */
export function positional<N extends KernelName>(name: N, args: KernelArgs<N>): number[] {
  const params: readonly string[] = KERNELS[name].params,
    named = args as Record<string, number>;
  const extra = Object.keys(named).find((k) => !params.includes(k));
  if (extra !== undefined) throw new TypeError(`kernel ${name} has no parameter ${extra}`);
  return params.map((p) => {
    const v = named[p];
    if (typeof v !== 'number') throw new TypeError(`kernel ${name}: argument ${p} is missing`);
    return v;
  });
}

/** Bytes of scratch one thread needs for a kernel call (0: the kernel takes none). */
export function scratchBytes<N extends ParKernel>(name: N, args: Partial<KernelArgs<N>>): number {
  const spec: KernelSpec = KERNELS[name];
  return spec.scratch ? spec.scratch.bytes(args as Record<string, number>) : 0;
}

export interface ParOptions {
  /** Range boundaries on multiples of this (default: the table's align for the kernel, else 1). */
  align?: number;
  /** What each step of the range costs, when steps differ (default: all alike): parts get about equal totals. */
  cost?: (i: number) => number;
  /** Multiply-adds the call does: small calls stay on this thread (none given: always split). */
  work?: number;
}

/**
 * The hot loops (see KERNELS). Two implementations: wasm.ts (SIMD WebAssembly, optionally on several threads) and
 * plain.ts (plain TypeScript, for tests and as the speed baseline).
 */
export interface Kernels extends KernelFunctions {
  readonly name: 'wasm' | 'plain';
  /** Which compiled build runs the wasm kernels ('plain' for the TypeScript twin). */
  readonly build: KernelBuild | 'plain';
  readonly arena: Arena;
  readonly threads: number;
  /**
   * Runs a kernel with named arguments, its range split into parts (boundaries on multiples of the kernel's align)
   * that the threads share; a scratch argument is offset per thread by the table's bytes. A part's result is the same
   * whichever thread computes it, so results do not depend on the thread count.
   */
  par<N extends ParKernel>(name: N, args: KernelArgs<N>, opts?: ParOptions): void;
}

/** The two wasm builds of assembly/index.ts: plain SIMD, and relaxed SIMD with fused multiply-add. */
export type KernelBuild = 'simd' | 'relaxed-simd';

/** Equal parts of [lo, hi), boundaries on multiples of align (the last part takes the rest). */
export function splitRange(lo: number, hi: number, parts: number, align = 1): [number, number][] {
  const out: [number, number][] = [];
  let a = lo;
  for (let t = 0; t < parts; t++) {
    let b = t === parts - 1 ? hi : lo + Math.round(((hi - lo) * (t + 1)) / parts);
    if (b < hi) b = Math.min(hi, lo + Math.ceil((b - lo) / align) * align);
    out.push([a, Math.max(a, b)]);
    a = Math.max(a, b);
  }
  return out;
}

/** Boundaries splitting [lo, hi) (steps of `align`) into parts of about equal Σ cost(i). */
export function balancedRanges(
  lo: number,
  hi: number,
  parts: number,
  align: number,
  cost: (i: number) => number,
): [number, number][] {
  const steps: number[] = [];
  let total = 0;
  for (let i = lo; i < hi; i += align) {
    total += cost(i);
    steps.push(total);
  }
  const out: [number, number][] = [];
  let a = lo,
    s = 0;
  for (let t = 0; t < parts; t++) {
    let b = a;
    if (t === parts - 1) b = hi;
    else {
      while (s < steps.length && steps[s] <= (total * (t + 1)) / parts) s++;
      b = Math.min(hi, lo + s * align);
    }
    out.push([a, b]);
    a = b;
  }
  return out;
}
