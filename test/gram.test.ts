import { describe, it, expect } from 'vitest';
import { FLUSH_SAMPLES, GramAccumulator } from '../src/kernels/gram.js';
import { ShiftGram } from '../src/kernels/shift-gram.js';
import { getKernels } from '../src/kernels/instances.js';
import { rng, gramOf, matmul, type Mat } from './oracle.js';
import { BUILDS } from './relaxed-simd.js';

// Conv patches straight from the definition of a convolution, one row per output position.
function patches(
  X: Float32Array,
  [b, C, H, W]: number[],
  kh: number,
  kw: number,
  sh: number,
  sw: number,
  pads: number[],
  dh: number,
  dw: number,
): Mat {
  const [pt, pl, pb, pr] = pads;
  const OH = Math.floor((H + pt + pb - dh * (kh - 1) - 1) / sh) + 1,
    OW = Math.floor((W + pl + pr - dw * (kw - 1) - 1) / sw) + 1;
  const d = C * kh * kw,
    rows: number[] = [];
  for (let s = 0; s < b; s++)
    for (let oy = 0; oy < OH; oy++)
      for (let ox = 0; ox < OW; ox++)
        for (let c = 0; c < C; c++)
          for (let i = 0; i < kh; i++)
            for (let j = 0; j < kw; j++) {
              const y = oy * sh - pt + i * dh,
                x = ox * sw - pl + j * dw;
              rows.push(y >= 0 && y < H && x >= 0 && x < W ? X[((s * C + c) * H + y) * W + x] : 0);
            }
  return { rows: rows.length / d, cols: d, a: Float64Array.from(rows) };
}

describe('Gram accumulation of conv patches (im2col)', () => {
  it.each([...BUILDS.flatMap((b) => [1, 2].map((t) => ['wasm', b, t] as const)), ['plain', 'plain', 1] as const])(
    '%s kernels (%s), %i thread(s): match patches built from the convolution definition',
    (kind, build, threads) => {
      const r = rng(41);
      for (const [dims, kh, kw, sh, sw, pads, dh, dw] of [
        [[3, 4, 7, 6], 3, 2, 2, 1, [1, 0, 1, 1], 1, 2],
        [[5, 2, 9, 9], 3, 3, 1, 1, [1, 1, 1, 1], 1, 1],
        [[2, 3, 5, 8], 1, 1, 1, 2, [0, 0, 0, 0], 1, 1],
        [[3, 2, 9, 11], 5, 5, 1, 2, [2, 1, 2, 1], 1, 1],
        [[2, 3, 6, 6], 3, 3, 1, 1, [0, 0, 0, 0], 1, 1],
      ] as [number[], number, number, number, number, number[], number, number][]) {
        const n = dims.reduce((a, b) => a * b),
          X = Float32Array.from({ length: n }, () => r() - 0.5);
        const A = X.map((v) => v * 2 + 0.1);
        const kernels = kind === 'plain' ? getKernels('plain') : getKernels('wasm', threads, build);
        const acc = new GramAccumulator(dims[1] * kh * kw, { asymmetric: true, kernels });
        const geo = { kernel: [kh, kw], strides: [sh, sw], pads, dilations: [dh, dw] } as Parameters<
          GramAccumulator['addConv']
        >[2];
        const one = n / dims[0]; // stream as two batches: the first sample, then the rest
        acc.addConv(X.subarray(0, one), [1, ...dims.slice(1)], geo, A.subarray(0, one));
        acc.addConv(X.subarray(one), [dims[0] - 1, ...dims.slice(1)], geo, A.subarray(one));
        const g = acc.result();
        acc.release();
        const P = patches(X, dims, kh, kw, sh, sw, pads, dh, dw),
          Q = patches(A, dims, kh, kw, sh, sw, pads, dh, dw);
        expect(g.rows).toBe(P.rows);
        // f32 products summed in f32 within a block of rows: ~1e-7 relative to the largest entry
        [
          [g.G, gramOf(P)],
          [g.C!, gramOf(P, Q)],
          [g.H!, gramOf(Q)],
        ].forEach(([got, ref]) => {
          const scale = Math.max(...ref.map(Math.abs));
          ref.forEach((v, i) => expect(Math.abs(got[i] - v)).toBeLessThan(1e-6 * scale));
        });
      }
    },
  );
});

// A stride-1 Conv's G from products of its input with itself shifted (ShiftGram), not from the patches: the same
// G = BᵀB and Bᵀ1 as the patches built from the convolution's definition, for symmetric and projected captures.
describe('Gram accumulation of stride-1 conv inputs from shifts', () => {
  it.each([...BUILDS.flatMap((b) => [1, 2].map((t) => ['wasm', b, t] as const)), ['plain', 'plain', 1] as const])(
    '%s kernels (%s), %i thread(s): G and the column sums match the patches',
    (kind, build, threads) => {
      const r = rng(43);
      const kernels = kind === 'plain' ? getKernels('plain') : getKernels('wasm', threads, build);
      for (const [dims, kh, kw, pads] of [
        [[3, 3, 12, 12], 3, 3, [1, 1, 1, 1]],
        [[2, 2, 10, 11], 5, 5, [2, 2, 2, 2]],
        [[3, 4, 1, 40], 1, 5, [0, 2, 0, 2]],
        [[2, 3, 14, 16], 3, 5, [1, 2, 1, 1]],
        [[2, 2, 16, 16], 3, 3, [2, 0, 1, 2]],
        // more samples than the buffer holds at once (3 of 64×64×16): 7 after the first, in 3 products
        [[8, 16, 64, 64], 3, 3, [1, 1, 1, 1]],
      ] as [number[], number, number, number[]][]) {
        const geo = { kernel: [kh, kw], strides: [1, 1], pads, dilations: [1, 1] } as Parameters<
          GramAccumulator['addConv']
        >[2];
        expect(ShiftGram.suits(geo, dims[2]!, dims[3]!)).toBe(true);
        const n = dims.reduce((a, b) => a * b),
          X = Float32Array.from({ length: n }, () => r() - 0.5),
          Y = X.map((v) => v * 0.5 - 0.2),
          d = dims[1]! * kh * kw,
          m = 2,
          W = Float64Array.from({ length: d * m }, () => Math.fround(r() - 0.5));
        const one = n / dims[0]!;
        const P = patches(X, dims, kh, kw, 1, 1, pads, 1, 1),
          G = gramOf(P),
          scale = Math.max(...G.map(Math.abs));
        // one at a time: release frees all kernel memory allocated after the accumulator's
        for (const projected of [false, true]) {
          const acc = projected
              ? new GramAccumulator(d, { asymmetric: true, kernels, project: { W, m } })
              : new GramAccumulator(d, { kernels }),
            A = projected ? Y : undefined;
          acc.addConv(X.subarray(0, one), [1, ...dims.slice(1)], geo, A?.subarray(0, one));
          acc.addConv(X.subarray(one), [dims[0]! - 1, ...dims.slice(1)], geo, A?.subarray(one));
          const g = acc.result();
          acc.release();
          expect(g.rows).toBe(P.rows);
          G.forEach((v, i) => expect(Math.abs(g.G[i]! - v)).toBeLessThan(1e-6 * scale));
          for (let j = 0; j < d; j++) {
            let s = 0;
            for (let i = 0; i < P.rows; i++) s += P.a[i * d + j]!;
            expect(Math.abs(g.sums![j]! - s)).toBeLessThan(1e-9 * (1 + Math.abs(s)));
          }
          if (projected) {
            const T = matmul(patches(Y, dims, kh, kw, 1, 1, pads, 1, 1), { rows: d, cols: m, a: W }),
              CW = gramOf(P, T),
              top = Math.max(...CW.map(Math.abs));
            CW.forEach((v, i) => expect(Math.abs(g.CW![i]! - v)).toBeLessThan(1e-5 * top));
          }
        }
      }
    },
  );

  // The products take the samples 2 at a time here (320 KB each): the same groups whatever batches bring them, as
  // the patches' rows are summed FLUSH_SAMPLES at a time, so a capture's batch size does not change its sums.
  it('sums the same, bit for bit, whatever the batches that bring the samples', () => {
    const r = rng(44),
      dims = [9, 32, 48, 48],
      geo = { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] } as Parameters<
        GramAccumulator['addConv']
      >[2];
    const one = dims.slice(1).reduce((a, b) => a * b),
      X = Float32Array.from({ length: 9 * one }, () => r() - 0.5);
    const grams = [[9], [4, 5], [1, 1, 7], [3, 3, 3]].map((batches) => {
      const acc = new GramAccumulator(32 * 9, { kernels: getKernels('wasm', 2) });
      let at = 0;
      for (const b of batches) {
        acc.addConv(X.subarray(at * one, (at + b) * one), [b, ...dims.slice(1)], geo);
        at += b;
      }
      const g = acc.result();
      acc.release();
      return g;
    });
    expect(grams[0]!.rows).toBe(9 * 48 * 48);
    for (const g of grams.slice(1)) {
      expect(g.G).toEqual(grams[0]!.G);
      expect(g.sums).toEqual(grams[0]!.sums);
    }
  });
});

// The asymmetric capture projected on the consumer's weights W (d×m): CW = BᵀA W, ‖A W‖² and Wᵀ Aᵀ1,
// from A or from T = A·W given, against the same products in float64 from the rows (and from conv patches
// built from the convolution's definition).
describe('Gram accumulation projected on the weights', () => {
  const close = (got: ArrayLike<number>, ref: ArrayLike<number>, tol: number) => {
    const scale = Math.max(...Array.from(ref, Math.abs));
    Array.from(ref).forEach((v, i) => expect(Math.abs(got[i]! - v)).toBeLessThan(tol * scale));
  };
  const check = (g: ReturnType<GramAccumulator['result']>, P: Mat, Q: Mat, Wm: Mat) => {
    const T = matmul(Q, Wm);
    expect(g.C).toBeUndefined();
    expect(g.H).toBeUndefined();
    close(g.G, gramOf(P), 1e-6);
    // T = A·W rounded to f32 once before BᵀT: ~1e-7 relative
    close(g.CW!, gramOf(P, T), 1e-5);
    const norm2 = T.a.reduce((a, v) => a + v * v, 0);
    expect(Math.abs(g.targetNorm2! - norm2)).toBeLessThan(1e-6 * norm2);
    const sums = Array.from({ length: Wm.cols }, (_, j) => {
      let s = 0;
      for (let r = 0; r < T.rows; r++) s += T.a[r * T.cols + j]!;
      return s;
    });
    close(g.targetSumsW!, sums, 1e-6);
  };
  const kernelsOf = (kind: string, build: string, threads: number) =>
    kind === 'plain' ? getKernels('plain') : getKernels('wasm', threads, build as (typeof BUILDS)[number]);

  it.each([...BUILDS.flatMap((b) => [1, 2].map((t) => ['wasm', b, t] as const)), ['plain', 'plain', 1] as const])(
    '%s kernels (%s), %i thread(s): rows and conv patches match float64 products',
    (kind, build, threads) => {
      const r = rng(7);
      const kernels = kernelsOf(kind, build, threads);
      // rows: d = 150 spans two 128-term blocks of the product, m = 37 a part of a panel
      const [N, d, m] = [300, 150, 37];
      const B = Float32Array.from({ length: N * d }, () => r() - 0.5),
        A = B.map((v) => v * 0.7 + 0.2 * (r() - 0.5));
      const W = Float64Array.from({ length: d * m }, () => Math.fround(r() - 0.5));
      const acc = new GramAccumulator(d, { asymmetric: true, kernels, project: { W, m } });
      acc.add(B.subarray(0, 17 * d), A.subarray(0, 17 * d));
      acc.add(B.subarray(17 * d), A.subarray(17 * d));
      const g = acc.result();
      acc.release();
      const mat = (x: Float32Array, cols: number): Mat => ({ rows: x.length / cols, cols, a: Float64Array.from(x) });
      check(g, mat(B, d), mat(A, d), { rows: d, cols: m, a: W });

      const dims = [3, 4, 7, 6],
        n = dims.reduce((a, b) => a * b);
      const X = Float32Array.from({ length: n }, () => r() - 0.5),
        Y = X.map((v) => v * 2 + 0.1);
      const dc = 4 * 9,
        mc = 5,
        Wc = Float64Array.from({ length: dc * mc }, () => Math.fround(r() - 0.5));
      const conv = new GramAccumulator(dc, { asymmetric: true, kernels, project: { W: Wc, m: mc } });
      const geo = { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] } as Parameters<
        GramAccumulator['addConv']
      >[2];
      conv.addConv(X, dims, geo, Y);
      const gc = conv.result();
      conv.release();
      const P = patches(X, dims, 3, 3, 1, 1, [1, 1, 1, 1], 1, 1),
        Q = patches(Y, dims, 3, 3, 1, 1, [1, 1, 1, 1], 1, 1);
      check(gc, P, Q, { rows: dc, cols: mc, a: Wc });

      // the target given projected, T = A·W in f32 (as the original model's consumer output gives it): rows, and a
      // conv's output layout [b, m, OH, OW]
      const given = new GramAccumulator(d, { asymmetric: true, kernels, project: { m } }),
        T = Float32Array.from(matmul(mat(A, d), { rows: d, cols: m, a: W }).a);
      given.add(B.subarray(0, 17 * d), T.subarray(0, 17 * m));
      given.add(B.subarray(17 * d), T.subarray(17 * m));
      check(given.result(), mat(B, d), mat(A, d), { rows: d, cols: m, a: W });
      given.release();
      const Tc = matmul(Q, { rows: dc, cols: mc, a: Wc }),
        per = dims[2]! * dims[3]!,
        out = new Float32Array(dims[0]! * mc * per);
      for (let s = 0; s < dims[0]!; s++)
        for (let p = 0; p < per; p++)
          for (let j = 0; j < mc; j++) out[(s * mc + j) * per + p] = Tc.a[(s * per + p) * mc + j]!;
      const givenConv = new GramAccumulator(dc, { asymmetric: true, kernels, project: { m: mc } });
      givenConv.addConv(X, dims, geo, out);
      check(givenConv.result(), P, Q, { rows: dc, cols: mc, a: Wc });
      givenConv.release();
      expect(() => new GramAccumulator(d, { asymmetric: true, kernels, project: { m } }).add(B, A)).toThrow(/values/);
    },
  );
});

// Rows wait in the buffers across calls and are added every FLUSH_SAMPLES samples: batches of any size sum as
// batches of 64 do, bit for bit, and the sums stay the float64 products.
describe('Gram accumulation of small batches', () => {
  it.each([...BUILDS.flatMap((b) => [1, 2].map((t) => ['wasm', b, t] as const)), ['plain', 'plain', 1] as const])(
    '%s kernels (%s), %i thread(s): batches of 7 samples sum as batches of 64, bit for bit',
    (kind, build, threads) => {
      const r = rng(53),
        kernels = kind === 'plain' ? getKernels('plain') : getKernels('wasm', threads, build);
      // 100 samples of 2 rows (a token axis), d = 40, m = 7
      const [N, per, d, m] = [100, 2, 40, 7];
      const B = Float32Array.from({ length: N * per * d }, () => r() - 0.5),
        A = B.map((v) => v * 0.6 + 0.3 * (r() - 0.5)),
        W = Float64Array.from({ length: d * m }, () => Math.fround(r() - 0.5));
      const rows = (s0: number, s1: number, X: Float32Array) => X.subarray(s0 * per * d, s1 * per * d);
      for (const project of [undefined, { W, m }]) {
        const big = new GramAccumulator(d, { asymmetric: true, kernels, project });
        for (const [s0, s1] of [
          [0, FLUSH_SAMPLES],
          [FLUSH_SAMPLES, N],
        ])
          big.add(rows(s0!, s1!, B), rows(s0!, s1!, A));
        const want = big.result();
        big.release();
        const small = new GramAccumulator(d, { asymmetric: true, kernels, project });
        for (let s0 = 0; s0 < N; s0 += 7) {
          const s1 = Math.min(N, s0 + 7);
          small.add(rows(s0, s1, B), rows(s0, s1, A), s1 - s0);
        }
        const got = small.result();
        small.release();
        expect(got.rows).toBe(N * per);
        for (const key of ['G', 'C', 'H', 'CW', 'sums', 'targetSums', 'targetSumsW'] as const)
          expect(got[key] && Array.from(got[key]!)).toEqual(want[key] && Array.from(want[key]!));
        expect(got.targetNorm2).toBe(want.targetNorm2);
        const ref = gramOf({ rows: N * per, cols: d, a: Float64Array.from(B) }),
          scale = Math.max(...ref.map(Math.abs));
        ref.forEach((v, i) => expect(Math.abs(got.G[i]! - v)).toBeLessThan(1e-6 * scale));
      }
    },
  );

  it.each([...BUILDS.map((b) => ['wasm', b] as const), ['plain', 'plain'] as const])(
    '%s kernels (%s): rows that keep leaves out (padding tokens) are not summed, with or without a target',
    (kind, build) => {
      const r = rng(61),
        kernels = kind === 'plain' ? getKernels('plain') : getKernels('wasm', 2, build);
      // 90 samples of 5 tokens, the later tokens of some samples padding; batches of 7 samples
      const [N, per, d, m] = [90, 5, 24, 6];
      const B = Float32Array.from({ length: N * per * d }, () => r() - 0.5),
        A = B.map((v) => v * 0.6 + 0.3 * (r() - 0.5)),
        W = Float64Array.from({ length: d * m }, () => Math.fround(r() - 0.5)),
        keep = Uint8Array.from({ length: N * per }, (_, i) => +(i % per < 1 + (Math.floor(i / per) % per)));
      const kept = (X: Float32Array, cols: number): Mat => {
        const a = Array.from(keep).flatMap((k, i) => (k ? Array.from(X.subarray(i * cols, (i + 1) * cols)) : []));
        return { rows: a.length / cols, cols, a: Float64Array.from(a) };
      };
      const T = Float32Array.from(
        matmul({ rows: N * per, cols: d, a: Float64Array.from(A) }, { rows: d, cols: m, a: W }).a,
      );
      const [Bk, Ak, Tk] = [kept(B, d), kept(A, d), kept(T, m)];
      const near = (got: ArrayLike<number> | undefined, ref: ArrayLike<number>) => {
        const scale = Math.max(...Array.from(ref, Math.abs));
        Array.from(ref).forEach((v, i) => expect(Math.abs(got![i]! - v)).toBeLessThan(1e-5 * scale));
      };
      const sums = (X: Mat) =>
        Array.from({ length: X.cols }, (_, j) => X.a.filter((_, e) => e % X.cols === j).reduce((a, b) => a + b));
      for (const how of ['symmetric', 'C and H', 'projected', 'given T'] as const) {
        const acc = new GramAccumulator(d, {
          asymmetric: how !== 'symmetric',
          kernels,
          ...(how === 'projected' ? { project: { W, m } } : how === 'given T' ? { project: { m } } : {}),
        });
        for (let s0 = 0; s0 < N; s0 += 7) {
          const s1 = Math.min(N, s0 + 7),
            target =
              how === 'symmetric'
                ? undefined
                : how === 'given T'
                  ? T.subarray(s0 * per * m, s1 * per * m)
                  : A.subarray(s0 * per * d, s1 * per * d);
          acc.add(B.subarray(s0 * per * d, s1 * per * d), target, s1 - s0, keep.subarray(s0 * per, s1 * per));
        }
        const g = acc.result();
        acc.release();
        expect(g.rows).toBe(Bk.rows);
        near(g.G, gramOf(Bk));
        near(g.sums!, sums(Bk));
        if (how === 'C and H') {
          near(g.C, gramOf(Bk, Ak));
          near(g.H, gramOf(Ak));
          near(g.targetSums!, sums(Ak));
        } else if (how !== 'symmetric') {
          near(g.CW, gramOf(Bk, Tk));
          near(g.targetSumsW!, sums(Tk));
        }
      }
      expect(() => new GramAccumulator(d, { kernels }).add(B.subarray(0, per * d), undefined, 1, keep)).toThrow(
        /flags/,
      );
    },
  );

  it.each([...BUILDS.map((b) => ['wasm', b] as const), ['plain', 'plain'] as const])(
    '%s kernels (%s): conv samples one call each sum as one call, and calls of uneven sizes match the convolution',
    (kind, build) => {
      const r = rng(59),
        kernels = kind === 'plain' ? getKernels('plain') : getKernels('wasm', 2, build);
      const dims = [6, 3, 5, 5],
        size = 3 * 5 * 5,
        X = Float32Array.from({ length: 6 * size }, () => r() - 0.5);
      const geo = { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] } as Parameters<
        GramAccumulator['addConv']
      >[2];
      const one = new GramAccumulator(27, { kernels });
      one.addConv(X, dims, geo);
      const whole = one.result();
      one.release();
      const small = new GramAccumulator(27, { kernels });
      for (let s = 0; s < 6; s++) small.addConv(X.subarray(s * size, (s + 1) * size), [1, 3, 5, 5], geo);
      const got = small.result();
      small.release();
      expect(Array.from(got.G)).toEqual(Array.from(whole.G));
      const uneven = new GramAccumulator(27, { kernels });
      for (const [s0, s1] of [
        [0, 1],
        [1, 4],
        [4, 6],
      ])
        uneven.addConv(X.subarray(s0! * size, s1! * size), [s1! - s0!, 3, 5, 5], geo);
      const g = uneven.result();
      uneven.release();
      expect(g.rows).toBe(6 * 25);
      const ref = gramOf(patches(X, dims, 3, 3, 1, 1, [1, 1, 1, 1], 1, 1)),
        scale = Math.max(...ref.map(Math.abs));
      ref.forEach((v, i) => expect(Math.abs(g.G[i]! - v)).toBeLessThan(1e-6 * scale));
    },
  );
});

describe('im2col', () => {
  it.each([...BUILDS.map((b) => ['wasm', b] as const), ['plain', 'plain'] as const])(
    '%s kernels (%s): patches as defined, nothing written past them but the 16 bytes of slack',
    (kind, build) => {
      const r = rng(43),
        k = kind === 'plain' ? getKernels('plain') : getKernels('wasm', 1, build);
      for (const [C, H, W, kh, kw] of [
        [2, 6, 7, 3, 3],
        [3, 5, 5, 5, 5],
        [1, 4, 9, 2, 6],
      ]) {
        const OH = H - kh + 1,
          OW = W - kw + 1,
          n = OH * OW * C * kh * kw;
        const mark = k.arena.mark(),
          X = k.arena.alloc(C * H * W * 4 + 16),
          out = k.arena.alloc(n * 4 + 16 + 64);
        const x = Float32Array.from({ length: C * H * W }, () => r() - 0.5);
        k.arena.f32(X, x.length).set(x);
        k.arena.f32(out, n + 4 + 16).fill(7);
        k.im2col(X, C, H, W, kh, kw, 1, 1, 0, 0, 1, 1, OH, OW, out);
        const got = k.arena.f32(out, n + 4 + 16);
        expect(Float64Array.from(got.subarray(0, n))).toEqual(
          patches(x, [1, C, H, W], kh, kw, 1, 1, [0, 0, 0, 0], 1, 1).a,
        );
        expect([...got.subarray(n + 4)]).toEqual(Array(16).fill(7));
        k.arena.release(mark);
      }
    },
  );
});
