import type { Arena } from './memory.js';

/**
 * The hot loops, as assembly/index.ts exports them. Every array is a byte offset into `arena`'s memory.
 * Two implementations: wasm.ts (SIMD WebAssembly, optionally on several threads) and plain.ts (plain TypeScript,
 * for tests and as the speed baseline). Range arguments (p0, p1 / b0, b1 / i0, i1 / j0, j1) let `par` split a call.
 */
export interface Kernels {
  readonly name: 'wasm' | 'plain';
  readonly arena: Arena;
  readonly threads: number;
  /** Rows packed per gramPack call, and the floats its panel buffer needs. */
  gramRows(): number;
  gramPackFloats(d: number): number;
  /** Packs panels p0 ≤ p < p1 (8 columns each; all: 0 .. ⌈d/8⌉). */
  gramPack(X: number, ld: number, r0: number, rb: number, d: number, P: number, p0: number, p1: number): void;
  gramTiles(
    PA: number,
    da: number,
    PB: number,
    db: number,
    rb: number,
    C: number,
    ldc: number,
    upper: number,
    tmp: number,
    i0: number,
    i1: number,
  ): void;
  symmetrize(G: number, d: number): void;
  gemmChunk(): number;
  gemmPackDoubles(N: number): number;
  gemmPack(B: number, N: number, k0: number, kc: number, P: number): void;
  gemmRows(
    A: number,
    K: number,
    k0: number,
    kc: number,
    P: number,
    C: number,
    N: number,
    tmp: number,
    i0: number,
    i1: number,
  ): void;
  gather(G: number, d: number, j: number, orig: number, n: number, gcol: number): void;
  extend(
    L: number,
    ldl: number,
    t: number,
    p0: number,
    p1: number,
    jrow: number,
    gcol: number,
    inv: number,
    u: number,
  ): void;
  updateRows(Q: number, m: number, u: number, q: number, p0: number, p1: number): void;
  updateScan(
    Q: number,
    m: number,
    u: number,
    q: number,
    p0: number,
    p1: number,
    e: number,
    diag0: number,
    tol: number,
    gains: number,
  ): void;
  downdateBlocks(E: number, u: number, b0: number, b1: number, g: number): void;
  groupGains(
    Q: number,
    m: number,
    E: number,
    diag0: number,
    b0: number,
    b1: number,
    g: number,
    tol: number,
    gains: number,
    S: number,
  ): void;
  argmax(gains: number, chan: number, n: number): number;
  solveUpperT(L: number, ldl: number, t: number, X: number, m: number, j0: number, j1: number): void;
  im2col(
    X: number,
    C: number,
    H: number,
    W: number,
    kh: number,
    kw: number,
    sh: number,
    sw: number,
    pt: number,
    pl: number,
    dh: number,
    dw: number,
    OH: number,
    OW: number,
    out: number,
  ): void;
  /**
   * Runs kernel `name` over the range args[lo] .. args[lo + 1], split into `ranges` (default: equal parts, multiples of
   * `align`) across the threads; with `scratch: [i, stride]`, thread t gets args[i] + t·stride. Each range's result is
   * the same whichever thread computes it, so results do not depend on the thread count.
   */
  par<N extends ParKernel>(name: N, args: Parameters<Kernels[N]>, lo: number, opts?: ParOptions): void;
}

export type ParKernel =
  | 'gramPack'
  | 'gramTiles'
  | 'gemmRows'
  | 'extend'
  | 'updateRows'
  | 'updateScan'
  | 'downdateBlocks'
  | 'groupGains'
  | 'solveUpperT';
export interface ParOptions {
  align?: number;
  ranges?: [number, number][];
  scratch?: [number, number];
  work?: number;
}
export const PAR_KERNELS: ParKernel[] = [
  'gramPack',
  'gramTiles',
  'gemmRows',
  'extend',
  'updateRows',
  'updateScan',
  'downdateBlocks',
  'groupGains',
  'solveUpperT',
];

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
