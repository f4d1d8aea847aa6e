import type { Kernels } from './types.js';

// Kernel sequences that several stages use: Gram accumulation and the f64 matrix product, split over threads.

/**
 * C += Xᵀ Y over `rows` f32 rows (X: rows×dx, Y: rows×dy), or with Y = 0 the upper triangle of G = Xᵀ X.
 * PX, PY: gramPackFloats floats each.
 */
export function gramAccumulate(
  K: Kernels,
  X: number,
  dx: number,
  Y: number,
  dy: number,
  rows: number,
  C: number,
  PX: number,
  PY: number,
): void {
  const RB = K.gramRows(),
    upper = Y ? 0 : 1,
    PB = Y ? PY : PX,
    db = Y ? dy : dx;
  // rows of G cost their length: in the upper triangle, row i's starts near column i
  const cost = (i: number) => (upper ? db - i : db);
  for (let r0 = 0; r0 < rows; r0 += RB) {
    const rb = Math.min(RB, rows - r0);
    // every thread packs its share of the panels, so none waits on a serial pack (2-thread Gram at d = 1024, median
    // of 8 runs: 1.2–1.9× one thread with a serial pack, 1.6–2.0× with this)
    K.par('gramPack', { X, ld: dx, r0, rb, d: dx, P: PX, p0: 0, p1: K.gramPanels(dx) }, { work: rb * dx });
    if (Y) K.par('gramPack', { X: Y, ld: dy, r0, rb, d: dy, P: PY, p0: 0, p1: K.gramPanels(dy) }, { work: rb * dy });
    const tiles = { PA: PX, da: dx, PB, db, rb, C, ldc: db, upper, i0: 0, i1: dx };
    K.par('gramTiles', tiles, { cost, work: (rb * dx * db) / (1 + upper) });
  }
}

/**
 * C = A B in f64 (A: M×Kd with rows lda ≥ Kd apart, B: Kd×N). P: gemmPackDoubles(N) doubles; tmp: 128 bytes per
 * thread.
 */
export function gemm(
  K: Kernels,
  A: number,
  B: number,
  C: number,
  M: number,
  Kd: number,
  N: number,
  P: number,
  tmp: number,
  lda = Kd,
): void {
  K.arena.f64(C, M * N).fill(0);
  const KC = K.gemmChunk();
  for (let k0 = 0; k0 < Kd; k0 += KC) {
    const kc = Math.min(KC, Kd - k0);
    K.gemmPack(B, N, k0, kc, P);
    K.par('gemmRows', { A, K: lda, k0, kc, P, C, N, tmp, i0: 0, i1: M }, { work: M * kc * N });
  }
}

/**
 * T += X Y (X: rows×d f32, Y: d×m f32, T: rows×m f64): the Gram tiles over Xᵀ's pack, RB of the d terms at a time.
 * PX: gramPackFloats(rows) floats, PY: gramPackFloats(m).
 */
export function productAccumulate(
  K: Kernels,
  X: number,
  rows: number,
  d: number,
  Y: number,
  m: number,
  T: number,
  PX: number,
  PY: number,
): void {
  const RB = K.gramRows();
  for (let k0 = 0; k0 < d; k0 += RB) {
    const kb = Math.min(RB, d - k0);
    K.par(
      'gramPackT',
      { X, ld: d, c0: k0, cb: kb, n: rows, P: PX, p0: 0, p1: K.gramPanels(rows) },
      { work: kb * rows },
    );
    K.par('gramPack', { X: Y, ld: m, r0: k0, rb: kb, d: m, P: PY, p0: 0, p1: K.gramPanels(m) }, { work: kb * m });
    const tiles = { PA: PX, da: rows, PB: PY, db: m, rb: kb, C: T, ldc: m, upper: 0, i0: 0, i1: rows };
    K.par('gramTiles', tiles, { work: kb * rows * m });
  }
}
