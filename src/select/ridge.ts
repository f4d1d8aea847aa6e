// The re-fit of a consumer with few rows of input per column: least squares with a ridge toward its own weights.
// ‖B_S W′ − A W‖² + λ‖W′ − W_S‖² is the least squares of the same shape with G + λI
// and the target's terms gaining λW (C + λI, CW + λW, ‖AW‖² + λ‖W‖²), so the greedy's
// factorisation solves it unchanged (DESIGN.md, "The ridge").
// With fewer rows than columns the plain least squares is underdetermined (it fits these samples and fails on
// others); with barely more it still overfits them.
import type { LayerProblem } from './greedy.js';
import { getKernels, type KernelOptions } from '../kernels/instances.js';
import { gemm } from '../kernels/ops.js';

/** λ = RIDGE · tr(G_SS)/N: a prior of fixed strength, which the data outweigh as rows grow (chosen by measure). */
export const RIDGE = 0.03;
/** A fit with at least this many rows per column is the plain least squares: λ would be ≤ RIDGE/10 of G's. */
export const RIDGE_ROWS = 10;

/** Whether a re-fit of `cols` columns (the kept channels') from `rows` rows of input takes the ridge. */
export const takesRidge = (cols: number, rows: number) => rows < RIDGE_ROWS * cols;

/** λ for the kept channels' columns of G (N = rows of the consumer input). */
export function ridgeLambda(pr: LayerProblem, keep: readonly number[], rows: number): number {
  const { G, d, g } = pr;
  let trace = 0;
  for (const c of keep) for (let a = 0; a < g; a++) trace += G[(c * g + a) * (d + 1)]!;
  return (RIDGE * trace) / Math.max(rows, 1);
}

/** The problem whose least squares is `pr`'s with a ridge λ toward its weights W (solved alone: ranks). */
export function ridged(pr: LayerProblem, lambda: number): LayerProblem {
  const { d, W } = pr;
  const plusI = (X: Float64Array) => {
    const Y = X.slice();
    for (let i = 0; i < d; i++) Y[i * (d + 1)] += lambda;
    return Y;
  };
  let w2 = 0;
  for (const x of W) w2 += x * x;
  const CW = pr.CW?.map((x, i) => x + lambda * W[i]!);
  return {
    ...pr,
    G: plusI(pr.G),
    ...(pr.C ? { C: plusI(pr.C) } : {}),
    ...(pr.H ? { H: plusI(pr.H) } : {}),
    ...(CW ? { CW } : {}),
    ...(pr.targetNorm2 !== undefined ? { targetNorm2: pr.targetNorm2 + lambda * w2 } : {}),
    ranks: true,
  };
}

/**
 * `ridged(pr, λ)` on the kept channels' columns alone, for a re-fit whose channels are chosen: the same fit and
 * objective, since the greedy reads only the kept rows of Q = C·W (or G·W) and ‖AW‖² comes from the selection
 * (`norm2`). Those rows cost t·d·m multiply-adds instead of d²·m, and the factor has t columns instead of d.
 * Channel i of the result is keep[i].
 */
export function ridgedKept(
  pr: LayerProblem,
  keep: readonly number[],
  lambda: number,
  norm2: number,
  kernels: KernelOptions,
): LayerProblem {
  const { d, m, g, W } = pr,
    cols = keep.flatMap((c) => Array.from({ length: g }, (_, a) => c * g + a)),
    t = cols.length;
  const G = new Float64Array(t * t);
  cols.forEach((i, r) => {
    for (let c = 0; c < t; c++) G[r * t + c] = pr.G[i * d + cols[c]!]!;
    G[r * t + r] += lambda;
  });
  const Q = pr.CW ? rowsOf(pr.CW, cols, m) : keptProduct(pr.C ?? pr.G, cols, d, W, m, kernels),
    Wk = rowsOf(W, cols, m),
    CW = Q.map((x, i) => x + lambda * Wk[i]!);
  let w2 = 0;
  for (const x of W) w2 += x * x;
  const ic = pr.intercept;
  const targetSumsW =
    ic &&
    (ic.targetSumsW ??
      Float64Array.from({ length: m }, (_, j) => {
        let v = 0;
        for (let i = 0; i < d; i++) v += W[i * m + j]! * (ic.targetSums ?? ic.sums)[i]!;
        return v;
      }));
  return {
    d: t,
    m,
    g,
    G,
    CW,
    targetNorm2: norm2 + lambda * w2,
    W: Wk,
    ranks: true,
    ...(ic ? { intercept: { sums: Float64Array.from(cols, (i) => ic.sums[i]!), targetSumsW, rows: ic.rows } } : {}),
  };
}

/** Rows `rows` of an n×m matrix. */
const rowsOf = (X: Float64Array, rows: number[], m: number) => {
  const out = new Float64Array(rows.length * m);
  rows.forEach((i, r) => out.set(X.subarray(i * m, i * m + m), r * m));
  return out;
};

/** Rows `rows` of M·W (M: d×d, W: d×m), in the kernels' f64 product. */
function keptProduct(M: Float64Array, rows: number[], d: number, W: Float64Array, m: number, opts: KernelOptions) {
  const K = getKernels(opts.kernels, opts.threads),
    a = K.arena,
    mark = a.mark(),
    t = rows.length;
  try {
    const [A, B, C] = [a.alloc(t * d * 8), a.alloc(d * m * 8), a.alloc(t * m * 8)];
    a.f64(A, t * d).set(rowsOf(M, rows, d));
    a.f64(B, d * m).set(W);
    gemm(K, A, B, C, t, d, m, a.alloc(K.gemmPackDoubles(m) * 8), a.alloc(128 * K.threads));
    return a.f64(C, t * m).slice();
  } finally {
    a.release(mark);
  }
}

/**
 * A ridge fit's own objective, 1 − ‖B_S W′ − A W‖²/‖A W‖² (`norm2` = ‖A W‖²), from the
 * ridged problem's: its error (1 − `ridgedObjective`)·`ridgedNorm2` less the prior's terms
 * λ‖W′ − W_S‖² and λ‖W_S̄‖² (the removed channels' rows of W, which no kept column reaches).
 * O(d·m), where measuring the fit in Gram space costs O(k·d·m): seconds per consumer on an ImageNet classifier.
 * W: the d×m weights by channel (`rows` = g·m each); Wk: the kept channels' rows, in `keep`'s order.
 */
export function ridgeFitObjective(
  ridgedObjective: number,
  ridgedNorm2: number,
  norm2: number,
  lambda: number,
  W: Float64Array,
  Wk: Float64Array,
  keep: readonly number[],
  rows: number,
): number {
  const at = new Map(keep.map((c, i) => [c, i]));
  let prior = 0;
  for (let c = 0; c < W.length / rows; c++) {
    const i = at.get(c);
    for (let j = 0; j < rows; j++) prior += (W[c * rows + j]! - (i === undefined ? 0 : Wk[i * rows + j]!)) ** 2;
  }
  const err = (1 - ridgedObjective) * ridgedNorm2 - lambda * prior;
  // a fit as good as the target's own weights leaves rounding on either side of 0
  return norm2 > 0 ? 1 - Math.max(err, 0) / norm2 : 1;
}
