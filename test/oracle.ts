// An independent float64 oracle for the selection problem, working on the activations B directly (never on G):
// per-candidate least squares by modified Gram–Schmidt, as the paper states the objective.

export type Mat = { rows: number; cols: number; a: Float64Array }; // row-major

export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function gaussian(r: () => number): number {
  return Math.sqrt(-2 * Math.log(r() + 1e-300)) * Math.cos(2 * Math.PI * r());
}

export function randMat(rows: number, cols: number, r: () => number): Mat {
  const a = new Float64Array(rows * cols);
  for (let i = 0; i < a.length; i++) a[i] = gaussian(r);
  return { rows, cols, a };
}

export function matmul(X: Mat, Y: Mat): Mat {
  const out = new Float64Array(X.rows * Y.cols);
  for (let i = 0; i < X.rows; i++)
    for (let k = 0; k < X.cols; k++) {
      const x = X.a[i * X.cols + k];
      for (let j = 0; j < Y.cols; j++) out[i * Y.cols + j] += x * Y.a[k * Y.cols + j];
    }
  return { rows: X.rows, cols: Y.cols, a: out };
}

export function gramOf(X: Mat, Y: Mat = X): Float64Array {
  const out = new Float64Array(X.cols * Y.cols);
  for (let r = 0; r < X.rows; r++)
    for (let i = 0; i < X.cols; i++) {
      const x = X.a[r * X.cols + i];
      for (let j = 0; j < Y.cols; j++) out[i * Y.cols + j] += x * Y.a[r * Y.cols + j];
    }
  return out;
}

function col(X: Mat, j: number): Float64Array {
  const c = new Float64Array(X.rows);
  for (let i = 0; i < X.rows; i++) c[i] = X.a[i * X.cols + j];
  return c;
}

const dot = (x: Float64Array, y: Float64Array) => x.reduce((s, v, i) => s + v * y[i], 0);

/**
 * Orthonormal basis of the given columns of B (twice-iterated MGS); a column whose residual is ≤ tol of its norm is
 * dropped.
 */
export function basis(B: Mat, cols: number[], tol = 1e-9): { Qs: Float64Array[]; used: number[]; R: number[][] } {
  const Qs: Float64Array[] = [],
    used: number[] = [],
    R: number[][] = [];
  for (const j of cols) {
    const v = col(B, j),
      n0 = dot(v, v),
      coef = new Array(Qs.length).fill(0);
    for (let pass = 0; pass < 2; pass++)
      Qs.forEach((q, i) => {
        const c = dot(q, v);
        coef[i] += c;
        for (let r = 0; r < v.length; r++) v[r] -= c * q[r];
      });
    const n1 = dot(v, v);
    if (n1 <= tol * n0 || n1 === 0) continue;
    const s = Math.sqrt(n1);
    Qs.push(v.map((x) => x / s));
    used.push(j);
    R.push([...coef, s]);
  }
  return { Qs, used, R };
}

/** The columns of channels S, g each. */
export const channelCols = (S: number[], g: number) => S.flatMap((c) => Array.from({ length: g }, (_, a) => c * g + a));

/** B with a column of ones appended (the intercept) as its last column, B.cols. */
export function withOnes(B: Mat): Mat {
  const d = B.cols,
    a = new Float64Array(B.rows * (d + 1));
  for (let i = 0; i < B.rows; i++) {
    a.set(B.a.subarray(i * d, (i + 1) * d), i * (d + 1));
    a[i * (d + 1) + d] = 1;
  }
  return { rows: B.rows, cols: d + 1, a };
}

/**
 * 1 − ‖B_S W' − T‖²/‖T‖² at the least-squares W', for the channels S (g columns each). With `intercept`,
 * B_S gains a column of ones, taken first (so a constant column of B counts as dependent): 1 − ‖B_S W' + 1δᵀ −
 * T‖²/‖T‖² at the least-squares W', δ.
 */
export function objective(B: Mat, T: Mat, S: number[], g: number, intercept = false): number {
  const cols = channelCols(S, g);
  return intercept ? objectiveOfCols(withOnes(B), T, [B.cols, ...cols]) : objectiveOfCols(B, T, cols);
}

function objectiveOfCols(B: Mat, T: Mat, cols: number[]): number {
  const { Qs } = basis(B, cols);
  let proj = 0,
    total = 0;
  for (let j = 0; j < T.cols; j++) {
    const t = col(T, j);
    total += dot(t, t);
    for (const q of Qs) proj += dot(q, t) ** 2;
  }
  return total > 0 ? proj / total : 1;
}

/** The greedy on B directly: at each step the channel whose addition leaves the smallest least-squares error. */
export function oracleGreedy(
  B: Mat,
  T: Mat,
  g: number,
  k: number,
  intercept = false,
): { order: number[]; objective: number[] } {
  return oracleGroupGreedy([{ B, T, g, intercept }], k); // one consumer: its own objective
}

/** Least-squares W' (|cols|×m) for min ‖B_cols W' − T‖ by QR of B_cols, for columns that are independent. */
export function leastSquares(B: Mat, T: Mat, cols: number[]): Float64Array {
  const { Qs, used, R } = basis(B, cols, 0);
  if (used.length !== cols.length) throw new Error('oracle least squares: dependent columns');
  const t = cols.length,
    m = T.cols,
    X = new Float64Array(t * m);
  for (let j = 0; j < m; j++) {
    const y = Qs.map((q) => dot(q, col(T, j)));
    for (let i = t - 1; i >= 0; i--) {
      let v = y[i];
      for (let l = i + 1; l < t; l++) v -= R[l][i] * X[l * m + j];
      X[i * m + j] = v / R[i][i];
    }
  }
  return X;
}

/**
 * One consumer of a group: its input B (N×d, g columns per channel) and its target T = A·W; with `intercept`, its
 * least squares has a column of ones too.
 */
export interface OracleConsumer {
  B: Mat;
  T: Mat;
  g: number;
  intercept?: boolean;
}

/** A group's objective: the mean over its consumers of 1 − relative least-squares error, each on its own B and T. */
export function groupObjective(cs: OracleConsumer[], S: number[]): number {
  return cs.reduce((a, c) => a + objective(c.B, c.T, S, c.g, c.intercept), 0) / cs.length;
}

/** The greedy on a group directly: at each step the channel that raises the mean objective most. */
export function oracleGroupGreedy(cs: OracleConsumer[], k: number): { order: number[]; objective: number[] } {
  const n = cs[0]!.B.cols / cs[0]!.g,
    order: number[] = [],
    obj: number[] = [];
  for (let s = 0; s < k; s++) {
    let best = -1,
      bestV = -Infinity;
    for (let c = 0; c < n; c++) {
      if (order.includes(c)) continue;
      const v = groupObjective(cs, [...order, c]);
      if (v > bestV + 1e-12) {
        best = c;
        bestV = v;
      }
    }
    order.push(best);
    obj.push(bestV);
  }
  return { order, objective: obj };
}
