import type { Arena } from './memory.js';

/**
 * The hot loops, as assembly/index.ts exports them. Every array is a byte offset into `arena`'s memory.
 * Two implementations: wasm.ts (SIMD WebAssembly) and plain.ts (plain TypeScript, for tests and as the baseline).
 */
export interface Kernels {
  readonly name: 'wasm' | 'plain';
  readonly arena: Arena;
  gramPackFloats(d: number): number;
  gram(X: number, rows: number, d: number, G: number, P: number): void;
  gramCross(X: number, dx: number, Y: number, dy: number, rows: number, C: number, PX: number, PY: number): void;
  symmetrize(G: number, d: number): void;
  gemmPackDoubles(N: number): number;
  gemm(A: number, B: number, C: number, M: number, K: number, N: number, P: number): void;
  gather(G: number, d: number, j: number, orig: number, n: number, gcol: number): void;
  extend(L: number, ldl: number, t: number, n: number, jrow: number, gcol: number, inv: number, u: number): void;
  updateRows(Q: number, m: number, u: number, q: number, n: number): void;
  updateScan(Q: number, m: number, u: number, q: number, n: number, e: number, diag0: number, tol: number, gains: number): void;
  downdateBlocks(E: number, u: number, nblk: number, g: number): void;
  groupGains(Q: number, m: number, E: number, diag0: number, nblk: number, g: number, tol: number, gains: number, S: number): void;
  argmax(gains: number, chan: number, n: number): number;
  solveUpperT(L: number, ldl: number, t: number, X: number, m: number): void;
  im2col(X: number, C: number, H: number, W: number, kh: number, kw: number, sh: number, sw: number, pt: number, pl: number,
    dh: number, dw: number, OH: number, OW: number, out: number): void;
}
