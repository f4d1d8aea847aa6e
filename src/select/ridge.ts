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
