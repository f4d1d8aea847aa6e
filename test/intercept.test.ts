import { describe, it, expect } from 'vitest';
import { selectChannels, selectGroup, type LayerProblem } from '../src/select/greedy.js';
import { GramAccumulator } from '../src/kernels/gram.js';
import { getKernels } from '../src/kernels/instances.js';
import { BUILDS } from './relaxed-simd.js';
import {
  rng,
  randMat,
  matmul,
  gramOf,
  objective,
  oracleGreedy,
  oracleGroupGreedy,
  groupObjective,
  leastSquares,
  channelCols,
  withOnes,
  gaussian,
  type Mat,
} from './oracle.js';

// The intercept (a column of ones in B, always kept) against the float64 oracle, which solves each least squares on B
// with the ones column directly. Float64 inputs: G, C, H and the sums are formed in float64 here, so the greedy must
// match the oracle to 1e-9 as the tests without the intercept do (test/select.test.ts).

interface Case {
  B: Mat;
  A: Mat;
  W: Mat;
  g: number;
  asym: boolean;
}

/** Correlated activations with column means of the size of their spread (as after a ReLU); A = B + noise + shift. */
function makeCase(seed: number, N: number, d: number, m: number, g: number, asym: boolean): Case {
  const r = rng(seed);
  const Z = matmul(randMat(N, d, r), randMat(d, d, r));
  const mean = Array.from({ length: d }, () => 3 * gaussian(r));
  const B = { ...Z, a: Z.a.map((v, i) => v + mean[i % d]!) };
  const shift = Array.from({ length: d }, () => 0.5 * gaussian(r));
  const A: Mat = asym ? { ...B, a: B.a.map((v, i) => v + 0.3 * gaussian(r) + shift[i % d]!) } : B;
  return { B, A, W: randMat(d, m, r), g, asym };
}

const colSums = (X: Mat) => {
  const s = new Float64Array(X.cols);
  for (let i = 0; i < X.rows; i++) for (let j = 0; j < X.cols; j++) s[j] += X.a[i * X.cols + j]!;
  return s;
};

/**
 * The case's problem; `projected`: the asymmetric target as the capture projects it on W, CW = BᵀA W, ‖A W‖² and
 * Wᵀ Aᵀ1 (from T = A W), in place of C, H and Aᵀ1.
 */
function problem(c: Case, intercept = true, projected = false): LayerProblem {
  const { B, A, W, g, asym } = c;
  const T = matmul(A, W);
  const target = projected
    ? { CW: gramOf(B, T), targetNorm2: T.a.reduce((a, v) => a + v * v, 0) }
    : { C: gramOf(B, A), H: gramOf(A) };
  const sums = projected ? { targetSumsW: colSums(T) } : { targetSums: colSums(A) };
  return {
    d: B.cols,
    m: W.cols,
    g,
    G: gramOf(B),
    W: W.a,
    ...(asym ? target : {}),
    ...(intercept ? { intercept: { sums: colSums(B), rows: B.rows, ...(asym ? sums : {}) } } : {}),
  };
}

const rms = (X: Mat) => Math.sqrt(X.a.reduce((a, v) => a + v * v, 0) / X.a.length);

/** The oracle's least squares with the ones column first: δ (m) and W′ (|cols|×m). */
function oracleFit(B: Mat, T: Mat, cols: number[]): { bias: Float64Array; W: Float64Array } {
  const X = leastSquares(withOnes(B), T, [B.cols, ...cols]),
    m = T.cols;
  return { bias: X.slice(0, m), W: X.slice(m) };
}

/** |got − want| ≤ rel × the largest |want| (or `floor`, for values that may all be near 0: a bias at k = n). */
const close = (got: ArrayLike<number>, want: ArrayLike<number>, rel: number, floor = 0) => {
  expect(got.length).toBe(want.length);
  const scale = Math.max(floor, ...Array.from(want, Math.abs));
  for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThanOrEqual(rel * scale);
};

describe.each(['wasm', 'plain'] as const)('the intercept (%s kernels) against the float64 oracle', (backend) => {
  it.each([
    ['symmetric, g = 1', 1, 120, 24, 7, 1, false, 24],
    ['asymmetric, g = 1', 2, 100, 20, 5, 1, true, 14],
    ['symmetric, g = 9', 3, 200, 54, 6, 9, false, 6],
    ['asymmetric, g = 9', 4, 200, 54, 6, 9, true, 5],
    ['asymmetric projected on W, g = 1', 2, 100, 20, 5, 1, 'projected', 14],
    ['asymmetric projected on W, g = 9', 4, 200, 54, 6, 9, 'projected', 5],
  ] as const)('%s: same order, every objective to 1e-9, weights and bias re-fitted', (_, seed, N, d, m, g, asym, k) => {
    const c = makeCase(seed, N, d, m, g, !!asym),
      T = matmul(c.A, c.W);
    const sel = selectChannels(problem(c, true, asym === 'projected'), k, { kernels: backend });
    const want = oracleGreedy(c.B, T, g, k, true);
    expect(sel.order).toEqual(want.order);
    sel.objective.forEach((v, s) => expect(Math.abs(v - want.objective[s]!)).toBeLessThanOrEqual(1e-9));
    for (const p of [0, 1, Math.ceil(k / 2), k]) {
      const fit = sel.refit(p),
        ref = oracleFit(c.B, T, channelCols(fit.keep, g));
      close(fit.bias!, ref.bias, 1e-7, rms(T));
      close(fit.W, ref.W, 1e-7);
    }
  });

  it('keeping nothing leaves the intercept alone: its objective and bias are the target means', () => {
    const c = makeCase(5, 80, 12, 4, 1, true),
      T = matmul(c.A, c.W);
    const sel = selectChannels(problem(c), 0, { kernels: backend });
    const mean = colSums(T).map((v) => v / T.rows);
    close(sel.refit(0).bias!, mean, 1e-12);
    // the objective of the first channel counts what the intercept alone fits
    const one = selectChannels(problem(c), 1, { kernels: backend });
    expect(Math.abs(one.objective[0]! - objective(c.B, T, one.order, 1, true))).toBeLessThanOrEqual(1e-9);
  });

  it('a channel that carries mostly its mean: first without the intercept, not with it', () => {
    // channel 0 is 5 + small noise and its weights are large: it explains the mean of the target, which the intercept
    // explains as well, so with the intercept its gain is its small variation only
    const c = makeCase(6, 150, 10, 3, 1, false);
    const r = rng(60);
    for (let i = 0; i < c.B.rows; i++) c.B.a[i * c.B.cols] = 5 + 0.01 * gaussian(r);
    for (let j = 0; j < c.W.cols; j++) c.W.a[j] = 3;
    const T = matmul(c.A, c.W);
    const plain = selectChannels(problem(c, false), 4, { kernels: backend }),
      mine = selectChannels(problem(c), 4, { kernels: backend });
    expect(plain.order).toEqual(oracleGreedy(c.B, T, 1, 4).order);
    expect(mine.order).toEqual(oracleGreedy(c.B, T, 1, 4, true).order);
    expect(plain.order[0]).toBe(0);
    expect(mine.order.slice(0, 3)).not.toContain(0);
    // on the same channels the intercept's fit is at least as good at every k (one more free parameter per output)
    const same = selectChannels(problem(c), 4, { kernels: backend, order: plain.order });
    same.objective.forEach((v, s) => expect(v).toBeGreaterThan(plain.objective[s]! + 1e-6));
  });

  it('a constant channel lies in the span of the ones column: gain 0, never NaN (g = 1 and g = 3)', () => {
    for (const g of [1, 3]) {
      const c = makeCase(7, 90, 6 * g, 4, g, false);
      for (let i = 0; i < c.B.rows; i++) for (let a = 0; a < g; a++) c.B.a[i * c.B.cols + 2 * g + a] = 2.5 + a;
      const T = matmul(c.A, c.W);
      const sel = selectChannels(problem(c), 6, { kernels: backend });
      expect(sel.order[5]).toBe(2);
      expect(sel.objective[5]).toBe(sel.objective[4]);
      sel.objective.forEach((v) => expect(Number.isFinite(v)).toBe(true));
      const fit = sel.refit(6),
        ref = oracleFit(c.B, T, channelCols([0, 1, 3, 4, 5], g));
      // the constant channel's rows are 0; the others and the bias are the least squares without it
      const rows = fit.W.length / 6;
      close(fit.W.slice(2 * rows, 3 * rows), new Float64Array(rows), 0);
      close([...fit.W.slice(0, 2 * rows), ...fit.W.slice(3 * rows)], ref.W, 1e-7);
      close(fit.bias!, ref.bias, 1e-7, rms(T));
    }
  });

  it('a group whose consumers differ: the intercept on two of three, same order and objectives as the oracle', () => {
    const cases = [
      makeCase(21, 150, 54, 5, 9, false),
      makeCase(22, 60, 6, 3, 1, true),
      makeCase(23, 90, 24, 4, 4, true),
    ];
    const flags = [true, false, true];
    const k = 6;
    const sel = selectGroup(
      cases.map((c, i) => problem(c, flags[i])),
      k,
      { kernels: backend },
    );
    const cs = cases.map((c, i) => ({ B: c.B, T: matmul(c.A, c.W), g: c.g, intercept: flags[i] }));
    const want = oracleGroupGreedy(cs, k);
    expect(sel.order).toEqual(want.order);
    for (let s = 0; s < k; s++) {
      const S = sel.order.slice(0, s + 1);
      expect(Math.abs(sel.objective[s]! - groupObjective(cs, S))).toBeLessThanOrEqual(1e-9);
      cs.forEach((c, i) =>
        expect(Math.abs(sel.consumers[i]![s]! - objective(c.B, c.T, S, c.g, c.intercept))).toBeLessThanOrEqual(1e-9),
      );
    }
    const { keep, W, bias } = sel.refit(3);
    cases.forEach((c, i) => {
      const cols = channelCols(keep, c.g);
      if (flags[i]) {
        const ref = oracleFit(c.B, cs[i]!.T, cols);
        close(W[i]!, ref.W, 1e-7);
        close(bias[i]!, ref.bias, 1e-7, rms(cs[i]!.T));
      } else {
        close(W[i]!, leastSquares(c.B, cs[i]!.T, cols), 1e-7);
        expect(bias[i]).toBeUndefined();
      }
    });
  });

  it('without the intercept nothing changes: bit for bit the selection of a problem that never had one', () => {
    const c = makeCase(8, 100, 36, 5, 9, true);
    const { intercept: _, ...bare } = problem(c);
    const a = selectChannels(bare, 4, { kernels: backend }),
      b = selectChannels(problem(c, false), 4, { kernels: backend });
    expect(a.order).toEqual(b.order);
    expect(a.objective).toEqual(b.objective);
    expect(a.refit(4).W).toEqual(b.refit(4).W);
    expect(a.refit(4).bias).toBeUndefined();
  });
});

describe('the Gram accumulator sums the columns it accumulates', () => {
  it('rows and conv patches (padding, stride), symmetric and asymmetric, over several chunks', () => {
    const r = rng(31);
    // dense rows
    const d = 7,
      rows = 700;
    const B = Float32Array.from({ length: rows * d }, () => r() - 0.3),
      A = Float32Array.from({ length: rows * d }, () => r() + 0.2);
    const acc = new GramAccumulator(d, { asymmetric: true });
    acc.add(B.subarray(0, 300 * d), A.subarray(0, 300 * d));
    acc.add(B.subarray(300 * d), A.subarray(300 * d));
    const got = acc.result();
    acc.release();
    const sums = (X: Float32Array, cols: number) => {
      const s = new Float64Array(cols);
      X.forEach((v, i) => (s[i % cols] += v));
      return s;
    };
    close(got.sums!, sums(B, d), 1e-12);
    close(got.targetSums!, sums(A, d), 1e-12);
    expect(got.rows).toBe(rows);
    // conv patches: a 3×3 kernel, stride 2, padding 1 on a [3, 2, 9, 8] input; the sum of column (c, i, j) is the sum
    // of the input entries that position of the kernel reads over all output positions (zeros outside)
    const [b, C, H, Wd] = [3, 2, 9, 8];
    const X = Float32Array.from({ length: b * C * H * Wd }, () => r());
    const conv = {
      kernel: [3, 3] as [number, number],
      strides: [2, 2] as [number, number],
      pads: [1, 1, 1, 1] as [number, number, number, number],
      dilations: [1, 1] as [number, number],
    };
    const cacc = new GramAccumulator(C * 9);
    cacc.addConv(X, [b, C, H, Wd], conv);
    const cg = cacc.result();
    cacc.release();
    const OH = Math.floor((H + 2 - 3) / 2) + 1,
      OW = Math.floor((Wd + 2 - 3) / 2) + 1;
    const want = new Float64Array(C * 9);
    for (let s = 0; s < b; s++)
      for (let c = 0; c < C; c++)
        for (let i = 0; i < 3; i++)
          for (let j = 0; j < 3; j++)
            for (let oy = 0; oy < OH; oy++)
              for (let ox = 0; ox < OW; ox++) {
                const y = oy * 2 - 1 + i,
                  x = ox * 2 - 1 + j;
                if (y >= 0 && y < H && x >= 0 && x < Wd) want[c * 9 + i * 3 + j] += X[((s * C + c) * H + y) * Wd + x]!;
              }
    close(cg.sums!, want, 1e-12);
    expect(cg.rows).toBe(b * OH * OW);
    expect(cg.targetSums).toBeUndefined();
  });

  it('the same sums, bit for bit, from the plain kernels and the wasm builds on 1 and 2 threads', () => {
    // every build adds each column's f32 entries in f64 in row order, so they agree exactly; 2 threads split the
    // columns (rows × d past the kernels' threshold for a second thread), not the rows
    const r = rng(32),
      d = 37,
      rows = 16000;
    const B = Float32Array.from({ length: rows * d }, () => r() * 4 - 1);
    const want = new Float64Array(d);
    B.forEach((v, i) => (want[i % d] += v));
    const got = [getKernels('plain'), ...BUILDS.flatMap((b) => [1, 2].map((t) => getKernels('wasm', t, b)))].map(
      (kernels) => {
        const acc = new GramAccumulator(d, { kernels });
        acc.add(B);
        const sums = acc.result().sums!;
        acc.release();
        return sums;
      },
    );
    close(got[0]!, want, 1e-12);
    for (const s of got.slice(1)) expect(s).toEqual(got[0]);
  });
});
