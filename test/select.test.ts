import { describe, it, expect } from 'vitest';
import { selectChannels, selectGroup, selectionBytes, type LayerProblem } from '../src/select/greedy.js';
import { GramAccumulator } from '../src/kernels/gram.js';
import { getKernels } from '../src/kernels/instances.js';
import { gramAccumulate } from '../src/kernels/ops.js';
import { ridged, ridgedKept, ridgeFitObjective } from '../src/select/ridge.js';
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
  basis,
  withOnes,
  type Mat,
} from './oracle.js';

// Float64 inputs: G, C, H are formed in float64 here, so the greedy must match the oracle to 1e-9 relative.

interface Case {
  B: Mat;
  A: Mat;
  W: Mat;
  g: number;
  asym: boolean;
}

/** Correlated activations (B = Z M) so that gains are spread out; A = B + noise for the asymmetric objective. */
function makeCase(seed: number, N: number, d: number, m: number, g: number, asym: boolean): Case {
  const r = rng(seed);
  const B = matmul(randMat(N, d, r), randMat(d, d, r));
  const A: Mat = asym ? { ...B, a: B.a.map((v) => v + 0.5 * randMat(1, 1, r).a[0]) } : B;
  return { B, A, W: randMat(d, m, r), g, asym };
}

function problem(c: Case): LayerProblem {
  const { B, A, W, g, asym } = c;
  return { d: B.cols, m: W.cols, g, G: gramOf(B), W: W.a, ...(asym ? { C: gramOf(B, A), H: gramOf(A) } : {}) };
}

function setCols(X: Mat, dst: number, src: number | null) {
  for (let i = 0; i < X.rows; i++) X.a[i * X.cols + dst] = src === null ? 0 : X.a[i * X.cols + src];
}

/**
 * Checks the selection against the oracle step by step: each choice is optimal (ties aside) and each objective exact.
 */
function checkAgainstOracle(c: Case, k: number, backend: 'wasm' | 'plain', sameOrder: boolean) {
  const T = matmul(c.A, c.W);
  const sel = selectChannels(problem(c), k, { kernels: backend });
  expect(sel.order.length).toBe(k);
  expect(new Set(sel.order).size).toBe(k);
  for (let s = 0; s < k; s++) {
    const prefix = sel.order.slice(0, s);
    const mine = objective(c.B, T, [...prefix, sel.order[s]], c.g);
    let best = -Infinity;
    for (let ch = 0; ch < c.B.cols / c.g; ch++)
      if (!prefix.includes(ch)) best = Math.max(best, objective(c.B, T, [...prefix, ch], c.g));
    expect(mine).toBeGreaterThanOrEqual(best - 1e-9 * Math.max(1, best));
    expect(Math.abs(sel.objective[s] - mine)).toBeLessThanOrEqual(1e-9 * Math.max(1, mine));
    for (const v of sel.objective) expect(Number.isFinite(v)).toBe(true);
  }
  if (sameOrder) expect(sel.order).toEqual(oracleGreedy(c.B, T, c.g, k).order);
  return { sel, T };
}

/**
 * `chans` by decreasing stand-alone energy Σ over their columns j of ‖B_j‖²·‖W_j‖² (float64, from B and
 * W), ties to the lowest id: the order of the channels the greedy cannot tell apart (every gain 0).
 */
function byEnergy(c: Case, chans: number[]): number[] {
  const { B, W, g } = c,
    m = W.cols;
  const energy = (ch: number) => {
    let e = 0;
    for (let j = ch * g; j < (ch + 1) * g; j++) {
      let b2 = 0,
        w2 = 0;
      for (let i = 0; i < B.rows; i++) b2 += B.a[i * B.cols + j]! ** 2;
      for (let o = 0; o < m; o++) w2 += W.a[j * m + o]! ** 2;
      e += b2 * w2;
    }
    return e;
  };
  return [...chans].sort((x, y) => energy(y) - energy(x) || x - y);
}

/** Re-fitted weights: the least-squares solution where the kept columns are independent; else the same fit B_S W'. */
function checkRefit(c: Case, T: Mat, sel: ReturnType<typeof selectChannels>, p: number) {
  const { keep, W } = sel.refit(p);
  expect(keep).toEqual([...sel.order.slice(0, p)].sort((x, y) => x - y));
  const cols = keep.flatMap((ch) => Array.from({ length: c.g }, (_, a) => ch * c.g + a));
  const m = c.W.cols;
  expect(W.length).toBe(cols.length * m);
  const indep = basis(c.B, cols).used.length === cols.length;
  if (indep && cols.length) {
    const ref = leastSquares(c.B, T, cols);
    const scale = Math.max(...ref.map(Math.abs));
    for (let i = 0; i < ref.length; i++) expect(Math.abs(W[i] - ref[i])).toBeLessThanOrEqual(1e-7 * scale);
  }
  // The fit itself: ‖B_S W' − T‖² equals the oracle's least-squares error.
  const Bs: Mat = { rows: c.B.rows, cols: cols.length, a: new Float64Array(c.B.rows * cols.length) };
  for (let i = 0; i < c.B.rows; i++) cols.forEach((j, l) => (Bs.a[i * cols.length + l] = c.B.a[i * c.B.cols + j]));
  const fit = cols.length ? matmul(Bs, { rows: cols.length, cols: m, a: W }) : { a: new Float64Array(T.a.length) };
  const err = T.a.reduce((s, v, i) => s + (v - fit.a[i]) ** 2, 0),
    tot = T.a.reduce((s, v) => s + v * v, 0);
  expect(Math.abs(1 - err / tot - objective(c.B, T, keep, c.g))).toBeLessThanOrEqual(1e-8);
}

describe.each(['wasm', 'plain'] as const)('greedy selection (%s kernels) against the float64 oracle', (backend) => {
  it('symmetric, g = 1: same order, objective and re-fit at every prefix', () => {
    const c = makeCase(1, 120, 24, 7, 1, false);
    const { sel, T } = checkAgainstOracle(c, 24, backend, true);
    expect(sel.objective[23]).toBeCloseTo(1, 9);
    for (const p of [0, 1, 5, 12, 24]) checkRefit(c, T, sel, p);
  });

  it('asymmetric, g = 1', () => {
    const c = makeCase(2, 100, 20, 5, 1, true);
    const { sel, T } = checkAgainstOracle(c, 14, backend, true);
    for (const p of [3, 14]) checkRefit(c, T, sel, p);
  });

  it('symmetric and asymmetric, g = 9 (3×3 conv consumer)', () => {
    for (const asym of [false, true]) {
      const c = makeCase(3, 200, 54, 6, 9, asym);
      const { sel, T } = checkAgainstOracle(c, 6, backend, true);
      for (const p of [1, 3, 6]) checkRefit(c, T, sel, p);
    }
  });

  it('attention heads: g = head_dim = 16 columns per channel (an output projection over 4 heads)', () => {
    for (const asym of [false, true]) {
      const c = makeCase(8, 200, 64, 8, 16, asym);
      const { sel, T } = checkAgainstOracle(c, 4, backend, true);
      for (const p of [1, 2, 4]) checkRefit(c, T, sel, p);
    }
  });

  it('fewer rows than columns (N < d): gains of dependent channels are exactly 0, never NaN', () => {
    for (const g of [1, 3]) {
      const c = makeCase(4, 10, 24, 4, g, false);
      const { sel, T } = checkAgainstOracle(c, 24 / g, backend, false);
      expect(sel.objective[sel.objective.length - 1]).toBeCloseTo(1, 9);
      const full = sel.objective.findIndex((v) => v > 1 - 1e-9);
      // once the span is full, the rest follow by their stand-alone energy (all gains 0)
      const rest = sel.order.slice(full + 1);
      expect(rest.length).toBeGreaterThanOrEqual(3);
      expect(rest).toEqual(byEnergy(c, rest));
      checkRefit(c, T, sel, sel.order.length);
    }
  });

  it('duplicate and all-zero columns and channels (g = 1 and g = 9)', () => {
    const c1 = makeCase(5, 80, 16, 5, 1, false);
    setCols(c1.B, 3, 5);
    setCols(c1.B, 7, null);
    setCols(c1.B, 11, 2);
    const { sel: s1, T: T1 } = checkAgainstOracle(c1, 16, backend, false);
    // the zero column and one of each duplicate pair add nothing: they are the last three, by their stand-alone
    // energy, the zero column last
    expect(s1.order.slice(13)).toEqual(byEnergy(c1, s1.order.slice(13)));
    expect(s1.order[15]).toBe(7);
    expect(s1.objective[12]).toBeCloseTo(1, 9);
    checkRefit(c1, T1, s1, 16);

    const c9 = makeCase(6, 150, 45, 4, 9, true);
    for (let a = 0; a < 9; a++) {
      setCols(c9.B, 18 + a, a);
      setCols(c9.B, 36 + a, null);
    } // channel 2 = channel 0, channel 4 = 0
    setCols(c9.B, 9 + 4, 9 + 1); // a duplicate column inside channel 1
    c9.A = { ...c9.B, a: c9.B.a.map((v, i) => v + 0.1 * Math.sin(i)) };
    const { sel: s9, T: T9 } = checkAgainstOracle(c9, 5, backend, false);
    expect(s9.order[4]).toBe(4);
    for (const p of [2, 5]) checkRefit(c9, T9, s9, p);
  });

  it('k = 0 and the nested order: a shorter run is a prefix of a longer one', () => {
    const c = makeCase(7, 60, 12, 3, 1, false);
    const none = selectChannels(problem(c), 0, { kernels: backend });
    expect(none.order).toEqual([]);
    expect(none.refit(0).W.length).toBe(0);
    const long = selectChannels(problem(c), 12, { kernels: backend });
    expect(selectChannels(problem(c), 5, { kernels: backend }).order).toEqual(long.order.slice(0, 5));
    expect(() => selectChannels(problem(c), 13, { kernels: backend })).toThrow(/k = 13/);
    expect(() => long.refit(13)).toThrow(RangeError);
  });

  it('a greedy gone on from its stopped state is one run to the larger k, bit for bit', () => {
    // a group of 12 channels read by three consumers: g = 1; g = 3, asymmetric; g = 1 with the intercept
    const cases = [
      makeCase(21, 80, 12, 5, 1, false),
      makeCase(22, 80, 36, 4, 3, true),
      makeCase(23, 80, 12, 6, 1, false),
    ];
    const problems = cases.map(problem);
    const B = cases[2]!.B,
      sums = new Float64Array(B.cols);
    for (let i = 0; i < B.rows; i++) for (let j = 0; j < B.cols; j++) sums[j] += B.a[i * B.cols + j]! + 3;
    problems[2] = { ...problems[2]!, G: gramOf({ ...B, a: B.a.map((v) => v + 3) }), intercept: { sums, rows: B.rows } };
    const opts = { kernels: backend } as const;
    const one = selectGroup(problems, 12, opts);
    const first = selectGroup(problems, 4, { ...opts, keepState: true });
    const second = selectGroup(problems, 9, { ...opts, resume: first.state, keepState: true });
    const last = selectGroup(problems, 12, { ...opts, resume: second.state });
    expect(first.order).toEqual(one.order.slice(0, 4));
    expect(second.order).toEqual(one.order.slice(0, 9));
    for (const sel of [second, last]) {
      const k = sel.order.length;
      expect(sel.objective).toEqual(one.objective.slice(0, k));
      expect(sel.consumers).toEqual(one.consumers.map((o) => o.slice(0, k)));
      for (const p of [0, 3, 4, k]) expect(sel.refit(p)).toEqual(one.refit(p));
    }
    expect(last.gains).toEqual(one.gains);
    expect(() => selectGroup(problems, 3, { ...opts, resume: first.state })).toThrow(/resume/);
  });
});

describe('wasm and plain kernels agree', () => {
  it('on selections, objectives and re-fits (g = 1, g = 25, asymmetric)', () => {
    for (const [seed, N, d, m, g, asym] of [
      [11, 300, 40, 33, 1, false],
      [12, 300, 100, 10, 25, true],
      [13, 100, 64, 17, 1, true],
    ] as const) {
      const pr = problem(makeCase(seed, N, d, m, g, asym));
      const k = d / g - 1;
      const a = selectChannels(pr, k, { kernels: 'wasm' }),
        b = selectChannels(pr, k, { kernels: 'plain' });
      expect(a.order).toEqual(b.order);
      a.objective.forEach((v, i) => expect(Math.abs(v - b.objective[i])).toBeLessThan(1e-12));
      const wa = a.refit(k).W,
        wb = b.refit(k).W,
        s = Math.max(...wb.map(Math.abs));
      wa.forEach((v, i) => expect(Math.abs(v - wb[i])).toBeLessThan(1e-9 * s));
    }
  });

  it('on Gram kernels for odd sizes and several row blocks', () => {
    const r = rng(21);
    for (const [rows, dx, dy] of [
      [300, 13, 13],
      [129, 8, 21],
      [5, 1, 3],
      [260, 37, 9],
    ]) {
      const X = Float32Array.from({ length: rows * dx }, () => r() - 0.5);
      const Y = Float32Array.from({ length: rows * dy }, () => r() - 0.5);
      const out = [getKernels('wasm', 1), getKernels('wasm', 2), getKernels('plain')].map((k) => {
        const a = k.arena,
          mark = a.mark();
        const PX = a.alloc(k.gramPackFloats(dx) * 4),
          PY = a.alloc(k.gramPackFloats(dy) * 4);
        const Xp = a.alloc(X.length * 4),
          Yp = a.alloc(Y.length * 4),
          G = a.alloc(dx * dx * 8),
          C = a.alloc(dx * dy * 8);
        a.f32(Xp, X.length).set(X);
        a.f32(Yp, Y.length).set(Y);
        gramAccumulate(k, Xp, dx, 0, 0, rows, G, PX, 0);
        k.symmetrize(G, dx);
        gramAccumulate(k, Xp, dx, Yp, dy, rows, C, PX, PY);
        const res = [a.f64(G, dx * dx).slice(), a.f64(C, dx * dy).slice()];
        a.release(mark);
        return res;
      });
      for (let t = 0; t < 2; t++) {
        expect(out[1][t]).toEqual(out[0][t]); // 2 threads: bit for bit
        out[0][t].forEach((v, i) => expect(Math.abs(v - out[2][t][i])).toBeLessThan(1e-4));
      }
    }
  });
});

describe('threads', () => {
  it('give bit-identical selections, objectives and re-fits for 1 and 2 threads (g = 1 and g = 9, asymmetric)', () => {
    for (const [seed, N, d, m, g, asym] of [
      [61, 400, 300, 200, 1, true],
      [62, 300, 270, 150, 9, false],
    ] as const) {
      const pr = problem(makeCase(seed, N, d, m, g, asym));
      const k = d / g - 3;
      const a = selectChannels(pr, k, { threads: 1 }),
        b = selectChannels(pr, k, { threads: 2 });
      expect(b.order).toEqual(a.order);
      expect(b.objective).toEqual(a.objective);
      expect(b.refit(k).W).toEqual(a.refit(k).W);
    }
  });

  it(
    'hand over 50,000 short jobs in a row without losing or repeating one (Gram updates, bit-identical to 1 ' +
      'thread)',
    () => {
      // Jobs of microseconds make hand-overs as frequent as they get: a worker that ran a job twice, or was counted
      // done before it was, would add a row block twice or read the next one's packed rows. (The rare race of the old
      // protocol needed heavy load and long jobs to show, about once per 30,000; this checks the protocol's contract.)
      const r = rng(64),
        RB = 128,
        d = 16,
        blocks = 64,
        jobs = 50_000;
      const X = Float32Array.from({ length: blocks * RB * d }, () => r() - 0.5);
      const [one, two] = [1, 2].map((threads) => {
        const k = getKernels('wasm', threads),
          a = k.arena,
          mark = a.mark();
        const Xp = a.alloc(X.length * 4),
          P = a.alloc(k.gramPackFloats(d) * 4),
          G = a.alloc(d * d * 8);
        a.f32(Xp, X.length).set(X);
        for (let j = 0; j < jobs; j++) {
          k.gramPack(Xp, d, (j % blocks) * RB, RB, d, P, 0, d >> 3);
          // no work estimate: always handed over
          k.par('gramTiles', { PA: P, da: d, PB: P, db: d, rb: RB, C: G, ldc: d, upper: 1, i0: 0, i1: d });
        }
        const out = a.f64(G, d * d).slice();
        a.release(mark);
        return out;
      });
      expect(two).toEqual(one);
    },
  );

  it('give bit-identical Gram matrices from the accumulator', () => {
    const r = rng(63),
      N = 700,
      d = 75;
    const B = Float32Array.from({ length: N * d }, () => r() - 0.5),
      A = B.map((v) => v + 0.01 * (r() - 0.5));
    const res = [1, 2].map((threads) => {
      const acc = new GramAccumulator(d, { asymmetric: true, kernels: getKernels('wasm', threads) });
      acc.add(B, A);
      const g = acc.result();
      acc.release();
      return g;
    });
    expect(res[1].G).toEqual(res[0].G);
    expect(res[1].C).toEqual(res[0].C);
    expect(res[1].H).toEqual(res[0].H);
  });
});

describe('f32 activations through the wasm Gram accumulator', () => {
  // f32 products are summed in f32 over blocks of 128 rows, then in f64: G is accurate to ~1e-6 relative,
  // so the objective matches the float64 oracle to ~1e-6 (not 1e-9), and the order where gains are not near-ties.
  it('matches float64 Gram matrices and the oracle greedy', () => {
    const r = rng(31),
      N = 1000,
      d = 36,
      m = 9;
    const B32 = Float32Array.from(matmul(randMat(N, d, r), randMat(d, d, r)).a);
    const A32 = B32.map((v) => v + 0.3 * (r() - 0.5));
    const B: Mat = { rows: N, cols: d, a: Float64Array.from(B32) },
      A: Mat = { rows: N, cols: d, a: Float64Array.from(A32) };
    const acc = new GramAccumulator(d, { asymmetric: true });
    for (let r0 = 0; r0 < N; r0 += 300)
      acc.add(B32.subarray(r0 * d, Math.min(N, r0 + 300) * d), A32.subarray(r0 * d, Math.min(N, r0 + 300) * d));
    const gm = acc.result();
    expect(gm.rows).toBe(N);
    const refs = [gramOf(B), gramOf(B, A), gramOf(A)];
    [gm.G, gm.C!, gm.H!].forEach((X, t) => {
      const s = Math.max(...refs[t].map(Math.abs));
      X.forEach((v, i) => expect(Math.abs(v - refs[t][i])).toBeLessThanOrEqual(2e-6 * s));
    });
    const W = randMat(d, m, r),
      T = matmul(A, W);
    const sel = selectChannels({ d, m, g: 1, G: gm.G, C: gm.C, H: gm.H, W: W.a }, 20);
    const ref = oracleGreedy(B, T, 1, 20);
    expect(sel.order).toEqual(ref.order);
    sel.objective.forEach((v, i) => expect(Math.abs(v - ref.objective[i])).toBeLessThan(1e-5));
  });
});

describe('a given order (baselines) goes through the same factorisation', () => {
  it('objective per step and re-fit equal the oracle least squares for that order', () => {
    const c = makeCase(51, 90, 18, 4, 1, true),
      T = matmul(c.A, c.W);
    const order = [17, 3, 9, 0, 12, 5];
    const sel = selectChannels(problem(c), 6, { order });
    expect(sel.order).toEqual(order);
    order.forEach((_, s) =>
      expect(Math.abs(sel.objective[s] - objective(c.B, T, order.slice(0, s + 1), 1))).toBeLessThan(1e-9),
    );
    checkRefit(c, T, sel, 6);
    expect(() => selectChannels(problem(c), 3, { order: [1, 1, 2] })).toThrow(/distinct/);
  });
});

describe('layer size limits', () => {
  it('refuses a layer whose selection needs more than 4 GiB of kernel memory, before allocating', () => {
    const tiny = new Float64Array(1);
    expect(() => selectChannels({ d: 16384, m: 4096, g: 1, G: tiny, W: tiny }, 8192)).toThrow(
      /needs \d+\.\d+ GiB of kernel memory, more than the 3\.94 GiB of WebAssembly's 4 GiB the kernels may plan for\./,
    );
    expect(selectionBytes(8192, 4096, 1, 4096)).toBeLessThan(2 ** 32 - (64 << 20)); // d = 8192 fits
  });
});

describe.each(['wasm', 'plain'] as const)(
  'a group read by several consumers (%s kernels) against the float64 oracle',
  (backend) => {
    // three consumers of the same 6 channels: a 3×3 conv (g = 9), a dense layer (g = 1) and an asymmetric one (g = 4)
    const cases = [
      makeCase(21, 150, 54, 5, 9, false),
      makeCase(22, 60, 6, 3, 1, false),
      makeCase(23, 90, 24, 4, 4, true),
    ];
    it('same order as the oracle, every objective (mean and per consumer) to 1e-9, and each consumer re-fitted', () => {
      const k = 6;
      const sel = selectGroup(cases.map(problem), k, { kernels: backend });
      const cs = cases.map((c) => ({ B: c.B, T: matmul(c.A, c.W), g: c.g }));
      const want = oracleGroupGreedy(cs, k);
      expect(sel.order).toEqual(want.order);
      sel.objective.forEach((v, s) => expect(Math.abs(v - want.objective[s]!)).toBeLessThanOrEqual(1e-9));
      for (let s = 0; s < k; s++) {
        const S = sel.order.slice(0, s + 1);
        cs.forEach((c, i) =>
          expect(Math.abs(sel.consumers[i]![s]! - objective(c.B, c.T, S, c.g))).toBeLessThanOrEqual(1e-9),
        );
        expect(Math.abs(sel.objective[s]! - groupObjective(cs, S))).toBeLessThanOrEqual(1e-9);
      }
      // re-fit of every consumer at a prefix: the oracle's least squares on its own columns
      const p = 3,
        { keep, W } = sel.refit(p);
      cases.forEach((c, i) => {
        const cols = keep.flatMap((ch) => Array.from({ length: c.g }, (_, a) => ch * c.g + a));
        const ref = leastSquares(c.B, cs[i]!.T, cols);
        const scale = Math.max(...ref.map(Math.abs));
        ref.forEach((v, j) => expect(Math.abs(W[i]![j]! - v)).toBeLessThanOrEqual(1e-7 * scale));
      });
    });

    it('with one consumer it is the single-layer greedy, bit for bit', () => {
      const c = makeCase(24, 100, 36, 5, 9, true);
      const one = selectGroup([problem(c)], 4, { kernels: backend }),
        single = selectChannels(problem(c), 4, { kernels: backend });
      expect(one.order).toEqual(single.order);
      expect(one.objective).toEqual(single.objective);
      expect(one.refit(4).W[0]).toEqual(single.refit(4).W);
    });
  },
);

describe("the ridge: its re-fit and that fit's own objective", () => {
  // the ridge toward W as the least squares of [B_S; √λ I] on [A W; √λ W_S], solved by QR in float64; with the
  // intercept, B_S gains a column of ones on the data rows (its coefficient, the bias change, takes no penalty)
  function ridgeOracle(c: Case, keep: number[], lambda: number, intercept = false) {
    const T = matmul(c.A, c.W),
      { rows: N, cols: d } = c.B,
      k = keep.length,
      m = c.W.cols,
      D = d + (intercept ? 1 : 0);
    const B = { rows: N + k, cols: D, a: new Float64Array((N + k) * D) },
      Y = { rows: N + k, cols: m, a: new Float64Array((N + k) * m) };
    const data = intercept ? withOnes(c.B) : c.B;
    B.a.set(data.a);
    Y.a.set(T.a);
    keep.forEach((ch, i) => {
      B.a[(N + i) * D + ch] = Math.sqrt(lambda);
      for (let j = 0; j < m; j++) Y.a[(N + i) * m + j] = Math.sqrt(lambda) * c.W.a[ch * m + j]!;
    });
    const sol = leastSquares(B, Y, intercept ? [...keep, d] : keep),
      Wk = sol.subarray(0, k * m),
      bias = intercept ? sol.subarray(k * m) : new Float64Array(m);
    // B_S W′ + 1 δᵀ − A W on the data rows only: the objective the fit reaches without the prior
    let err = 0,
      total = 0;
    for (let r = 0; r < N; r++)
      for (let j = 0; j < m; j++) {
        const v = keep.reduce((a, ch, i) => a + c.B.a[r * d + ch]! * Wk[i * m + j]!, 0) + bias[j]! - T.a[r * m + j]!;
        err += v * v;
        total += T.a[r * m + j]! ** 2;
      }
    return { Wk, bias, objective: 1 - err / total };
  }

  const sums = (X: Mat) =>
    Float64Array.from({ length: X.cols }, (_, j) => {
      let v = 0;
      for (let r = 0; r < X.rows; r++) v += X.a[r * X.cols + j]!;
      return v;
    });

  // the re-fit's ridge on the kept columns alone (what prune runs): the same W′, bias and objective as the oracle
  for (const asym of [false, true])
    for (const intercept of [false, true])
      it(`${asym ? 'asymmetric' : 'layerwise'}${intercept ? ', intercept' : ''}: ridgedKept fits as the oracle`, () => {
        const c = makeCase(asym ? 73 : 74, 20, 16, 3, 1, asym),
          keep = [0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
          lambda = 0.4,
          full = problem(c);
        const pr: LayerProblem = intercept
          ? { ...full, intercept: { sums: sums(c.B), ...(asym ? { targetSums: sums(c.A) } : {}), rows: c.B.rows } }
          : full;
        const plain = selectGroup([pr], 1, {}),
          kept = ridgedKept(pr, keep, lambda, plain.norm2[0]!, {}),
          sel = selectGroup([kept], keep.length, { order: keep.map((_, i) => i) }),
          fit = sel.refit(keep.length),
          want = ridgeOracle(c, keep, lambda, intercept);
        const close = (v: number, w: number) => Math.abs(v - w) < 1e-9 * (1 + Math.abs(w));
        expect(fit.W[0]!.every((v, i) => close(v, want.Wk[i]!))).toBe(true);
        if (intercept) expect(fit.bias[0]!.every((v, i) => close(v, want.bias[i]!))).toBe(true);
        else expect(fit.bias[0]).toBeUndefined();
        const o = sel.consumers[0]![keep.length - 1]!;
        const got = ridgeFitObjective(o, sel.norm2[0]!, plain.norm2[0]!, lambda, c.W.a, fit.W[0]!, keep, c.W.cols);
        expect(Math.abs(got - want.objective)).toBeLessThan(1e-9);
      });

  for (const asym of [false, true])
    it(`${asym ? 'asymmetric' : 'layerwise'}: W′ and the fit's own objective equal the float64 oracle`, () => {
      // fewer rows (20) than columns (14 kept of 16) per RIDGE_ROWS: the case the ridge is for
      const c = makeCase(asym ? 71 : 72, 20, 16, 3, 1, asym),
        keep = [0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        lambda = 0.4;
      const sel = selectGroup([ridged(problem(c), lambda)], keep.length, { order: keep }),
        fit = sel.refit(keep.length),
        want = ridgeOracle(c, keep, lambda);
      expect(fit.keep).toEqual(keep);
      const close = (v: number, w: number) => Math.abs(v - w) < 1e-9 * (1 + Math.abs(w));
      expect(fit.W[0]!.every((v, i) => close(v, want.Wk[i]!))).toBe(true);
      const plain = selectGroup([problem(c)], 1, {});
      const got = ridgeFitObjective(
        sel.consumers[0]![keep.length - 1]!,
        sel.norm2[0]!,
        plain.norm2[0]!,
        lambda,
        c.W.a,
        fit.W[0]!,
        keep,
        c.W.cols,
      );
      expect(Math.abs(got - want.objective)).toBeLessThan(1e-9);
      // the ridge costs the fit something on these rows: it is not the plain least squares'
      expect(want.objective).toBeLessThan(objective(c.B, matmul(c.A, c.W), keep, 1) - 1e-6);
    });
});
