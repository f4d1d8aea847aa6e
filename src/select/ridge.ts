// The re-fit of a consumer with few rows of input per column: least squares with a ridge toward its own weights.
// ‖B_S W′ − A W‖² + λ‖W′ − W_S‖² is the least squares of the same shape with G + λI
// and the target's terms gaining λW (C + λI, CW + λW, ‖AW‖² + λ‖W‖²), so the greedy's
// factorisation solves it unchanged (DESIGN.md, "The ridge").
// With fewer rows than columns the plain least squares is underdetermined (it fits these samples and fails on
// others); with barely more it still overfits them.
import type { LayerProblem } from './greedy.js';

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
