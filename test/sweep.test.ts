import { describe, it, expect, vi } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { expectFailure, runCli } from './cli-helpers.js';
import { readModel, tensorToFloat32, type Model } from '../src/onnx/index.js';
import { encodeNpy, npyFromBytes, openNpy } from '../src/npy.js';
import { Calibration } from '../src/calibration.js';
import { Runner, type Activation } from '../src/capture/index.js';
import { constantTensors } from '../src/graph/shapes.js';
import { prune } from '../src/prune/index.js';
import { Fit, refitSweep } from '../src/prune/sweep.js';
import { RIDGE } from '../src/select/ridge.js';
import { leastSquares, randMat, rng, withOnes, type Mat } from './oracle.js';

// The second sweep of re-fits against a float64 oracle: least squares by QR of the activations themselves (never a
// Gram matrix), with the oracle's own im2col, and the ReLU-aware rule written again here.

const relDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let num = 0,
    den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
};

/**
 * The oracle's weights (d×m) and bias (m) for min ‖B W + 1 bᵀ − T‖², intercept first; with a prior W₀, plus
 * λ‖W − W₀‖², λ = RIDGE · tr(BᵀB)/N (the ridge): rows [√λ I 0] on [√λ W₀] appended, the
 * intercept not penalised.
 */
function oracleFit(B: Mat, T: Mat, prior?: Float64Array): { W: Float64Array; bias: Float64Array } {
  const d = B.cols,
    m = T.cols,
    extra = prior ? d : 0;
  const X: Mat = { rows: B.rows + extra, cols: d, a: new Float64Array((B.rows + extra) * d) },
    Y: Mat = { rows: B.rows + extra, cols: m, a: new Float64Array((B.rows + extra) * m) };
  X.a.set(B.a);
  Y.a.set(T.a);
  if (prior) {
    const root = Math.sqrt((RIDGE * B.a.reduce((a, x) => a + x * x, 0)) / B.rows);
    for (let i = 0; i < d; i++) {
      X.a[(B.rows + i) * d + i] = root;
      for (let j = 0; j < m; j++) Y.a[(B.rows + i) * m + j] = root * prior[i * m + j]!;
    }
  }
  const ones = withOnes(X);
  for (let i = B.rows; i < X.rows; i++) ones.a[i * (d + 1) + d] = 0;
  const sol = leastSquares(ones, Y, [d, ...Array.from({ length: d }, (_, i) => i)]);
  return { W: sol.slice(m), bias: sol.slice(0, m) };
}

describe('Fit', () => {
  it('is the least-squares fit with an intercept', () => {
    const r = rng(7),
      B = randMat(300, 7, r),
      T = randMat(300, 4, r);
    for (let i = 0; i < T.a.length; i++) T.a[i] += 3 * (i % 4) + B.a[(Math.floor(i / 4) * 7) % B.a.length]!;
    const fit = new Fit(7, 4, { kernels: 'wasm' });
    fit.add(Float32Array.from(B.a), Float32Array.from(T.a));
    const got = fit.solve(true, { kernels: 'wasm' }, new Float64Array(7 * 4).fill(5)),
      want = oracleFit(
        { ...B, a: Float64Array.from(Float32Array.from(B.a)) },
        { ...T, a: Float64Array.from(Float32Array.from(T.a)) },
      );
    expect(relDiff(got.W, want.W)).toBeLessThan(1e-5);
    expect(relDiff(got.bias!, want.bias)).toBeLessThan(1e-5);
  });

  /** N random rows of 7 columns (f32 values), 3 targets, a prior, and Fit's solution with `distinct`. */
  const ridgeCase = (seed: number, N: number) => {
    const r = rng(seed),
      [d, m] = [7, 3];
    const f32 = (X: Mat) => ({ ...X, a: Float64Array.from(Float32Array.from(X.a)) });
    const B = f32(randMat(N, d, r)),
      T = f32(randMat(N, m, r)),
      prior = randMat(d, m, r).a;
    const solve = (distinct = 1) => {
      const fit = new Fit(d, m, { kernels: 'wasm' });
      fit.add(Float32Array.from(B.a), Float32Array.from(T.a));
      return fit.solve(true, { kernels: 'wasm' }, prior, distinct);
    };
    return { B, T, prior, solve };
  };

  it('with fewer than RIDGE_ROWS rows per column, takes the ridge toward the prior (the current weights)', () => {
    const { B, T, prior, solve } = ridgeCase(8, 40);
    const got = solve(),
      want = oracleFit(B, T, prior);
    expect(relDiff(got.W, want.W)).toBeLessThan(1e-5);
    expect(relDiff(got.bias!, want.bias)).toBeLessThan(1e-5);
    // and not the plain least squares, which it would be without the ridge
    expect(relDiff(got.W, oracleFit(B, T).W)).toBeGreaterThan(1e-2);
  });

  it('counts rows by distinct samples: 80 rows of 7 columns take the ridge when half repeat the others', () => {
    const { B, T, prior, solve } = ridgeCase(9, 80);
    expect(relDiff(solve(1).W, oracleFit(B, T).W)).toBeLessThan(1e-5);
    expect(relDiff(solve(0.5).W, oracleFit(B, T, prior).W)).toBeLessThan(1e-5);
  });
});

/** Tensors of a model on the calibration rows, concatenated over batches. */
async function tensors(model: Model, calib: Calibration, names: string[]): Promise<Map<string, Activation>> {
  const run = await Runner.open(model, names, {}, true),
    parts = new Map<string, Activation[]>(names.map((n) => [n, []]));
  try {
    for (const b of calib.batches(64)) for (const [n, a] of await run.run(b, names)) parts.get(n)!.push(a);
  } finally {
    await run.release();
  }
  return new Map(
    names.map((n) => {
      const ps = parts.get(n)!,
        data = new Float32Array(ps.reduce((a, p) => a + p.data.length, 0));
      ps.reduce((o, p) => (data.set(p.data, o), o + p.data.length), 0);
      return [n, { data, dims: [calib.rows, ...ps[0]!.dims.slice(1)] }];
    }),
  );
}

/** 3×3, stride 1, pad 1 patches of x [N, C, H, W]: a row per position, columns channel-major. */
function patches3(x: Activation): Mat {
  const [N, C, H, W] = x.dims as [number, number, number, number],
    d = C * 9,
    a = new Float64Array(N * H * W * d);
  let r = 0;
  for (let s = 0; s < N; s++)
    for (let h = 0; h < H; h++)
      for (let w = 0; w < W; w++, r++)
        for (let c = 0; c < C; c++)
          for (let i = 0; i < 3; i++)
            for (let j = 0; j < 3; j++) {
              const y = h + i - 1,
                z = w + j - 1;
              if (y >= 0 && y < H && z >= 0 && z < W)
                a[r * d + c * 9 + i * 3 + j] = x.data[((s * C + c) * H + y) * W + z]!;
            }
  return { rows: N * H * W, cols: d, a };
}

/** Channels `chans` of a conv output [N, M, H, W] as rows (one per position). */
function convRows(y: Activation, chans: number[]): Mat {
  const [N, M, H, W] = y.dims as [number, number, number, number],
    m = chans.length,
    a = new Float64Array(N * H * W * m);
  for (let s = 0; s < N; s++)
    for (let p = 0; p < H * W; p++)
      chans.forEach((c, j) => (a[(s * H * W + p) * m + j] = y.data[(s * M + c) * H * W + p]!));
  return { rows: N * H * W, cols: m, a };
}

/** A conv's weights as d×m (its [m, C, kh, kw] transposed) and its bias. */
function convWeights(model: Model, node: string): { W: Float64Array; bias: Float64Array } {
  const n = model.graph!.node.find((x) => x.name === node)!,
    consts = constantTensors(model.graph!);
  const { dims, data } = tensorToFloat32(consts.get(n.input[1]!)!),
    m = dims[0]!,
    d = data.length / m;
  const W = new Float64Array(d * m);
  for (let o = 0; o < m; o++) for (let i = 0; i < d; i++) W[i * m + o] = data[o * d + i]!;
  return { W, bias: Float64Array.from(tensorToFloat32(consts.get(n.input[2]!)!).data) };
}

const predict = (B: Mat, f: { W: Float64Array; bias: Float64Array }, m: number) => {
  const out = new Float64Array(B.rows * m);
  for (let r = 0; r < B.rows; r++)
    for (let j = 0; j < m; j++) {
      let v = f.bias[j]!;
      for (let i = 0; i < B.cols; i++) v += B.a[r * B.cols + i]! * f.W[i * m + j]!;
      out[r * m + j] = v;
    }
  return out;
};

describe('refitSweep', () => {
  it('is refused where it cannot re-fit', async () => {
    const data = openNpy('models/calib.npy');
    await expect(
      prune(readModel('models/lenet.onnx'), data, { budget: { compression: 2 }, refit: false, sweep: 0 }),
    ).rejects.toThrow(/--sweep .* --no-refit/);
    data.close();
  });

  it("re-fits ResNet-20's consumers to the original outputs from the pruned inputs, ReLU-aware if asked", async () => {
    const file = openNpy('models/calib.npy'),
      data = npyFromBytes(encodeNpy(file.readF32(0, 64), [64, 1, 28, 28]), 'calib64.npy');
    file.close();
    const original = readModel('models/resnet20.onnx');
    // layerwise: every consumer fitted to the original model's inputs, so the pruned inputs differ from what it saw
    const { model: pruned, report } = await prune(original, data, { budget: { keepRatio: 0.5 }, mode: 'layerwise' });
    const keeps = new Map(report.groups.map((g) => [g.id, [...g.order].sort((a, b) => a - b)]));
    const calib = Calibration.of(pruned, data);
    const conv1 = '/layer3/layer3.2/conv1/Conv', // → BatchNormalization → Relu: ReLU-aware
      conv2 = '/layer3/layer3.2/conv2/Conv', // → BatchNormalization → Add → Relu, one of the residual stream's
      fc = '/fc/Gemm';
    // conv1 ReLU-aware, then conv2 and fc by least squares (conv2 has a Relu after its residual Add, too)
    const once = await refitSweep(original, pruned, keeps, calib, {
      intercept: true,
      relu: 1,
      only: (n) => n === conv1,
    });
    const only = (n: string) => [conv2, fc].includes(n);
    const swept = await refitSweep(original, once, keeps, calib, { intercept: true, only });

    const node = (m: Model, name: string) => m.graph!.node.find((n) => n.name === name)!;
    const inOf = (name: string) => node(pruned, name).input[0]!,
      outOf = (name: string) => node(pruned, name).output[0]!;
    const bnOut = (name: string) => pruned.graph!.node.find((n) => n.input.includes(outOf(name)))!.output[0]!;

    // conv1: least squares, then once more with the entries whose pre-activation the ReLU clips in both models freed
    const p = await tensors(pruned, calib, [inOf(conv1), outOf(conv1), bnOut(conv1)]),
      o = await tensors(original, calib, [outOf(conv1), bnOut(conv1)]);
    const kept1 = keeps.get(conv1)!,
      m1 = kept1.length,
      all = Array.from({ length: m1 }, (_, i) => i);
    const B1 = patches3(p.get(inOf(conv1))!),
      T1 = convRows(o.get(outOf(conv1))!, kept1);
    const first = oracleFit(B1, T1),
      pred = predict(B1, first, m1);
    const bn = node(pruned, pruned.graph!.node.find((n) => n.input.includes(outOf(conv1)))!.name),
      consts = constantTensors(pruned.graph!);
    const gamma = tensorToFloat32(consts.get(bn.input[1]!)!).data,
      variance = tensorToFloat32(consts.get(bn.input[4]!)!).data,
      eps = bn.attribute.find((a) => a.name === 'epsilon')?.f ?? 1e-5;
    const Yp = convRows(p.get(outOf(conv1))!, all),
      Pp = convRows(p.get(bnOut(conv1))!, all),
      Po = convRows(o.get(bnOut(conv1))!, kept1);
    const T1r = { ...T1, a: T1.a.slice() };
    let freed = 0;
    for (let e = 0; e < T1r.a.length; e++) {
      const j = e % m1,
        pre = Pp.a[e]! + (gamma[j]! / Math.sqrt(variance[j]! + eps)) * (pred[e]! - Yp.a[e]!);
      if (Po.a[e]! <= 0 && pre <= 0) ((T1r.a[e] = pred[e]!), freed++);
    }
    expect(freed / T1r.a.length).toBeGreaterThan(0.2); // the rule frees entries: the second fit differs
    const want1 = oracleFit(B1, T1r),
      got1 = convWeights(swept, conv1);
    expect(relDiff(got1.W, want1.W)).toBeLessThan(2e-3);
    expect(relDiff(got1.bias, want1.bias)).toBeLessThan(2e-3);
    expect(relDiff(got1.W, first.W)).toBeGreaterThan(1e-2);

    // conv2 and fc: least squares from the swept model's inputs (conv1's re-fit changed conv2's)
    const s = await tensors(swept, calib, [inOf(conv2), inOf(fc)]),
      o2 = await tensors(original, calib, [outOf(conv2), outOf(fc)]);
    const stream = report.groups.find((g) => g.producers.includes(conv2))!.id;
    const want2 = oracleFit(patches3(s.get(inOf(conv2))!), convRows(o2.get(outOf(conv2))!, keeps.get(stream)!)),
      got2 = convWeights(swept, conv2);
    expect(relDiff(got2.W, want2.W)).toBeLessThan(2e-3);
    expect(relDiff(got2.bias, want2.bias)).toBeLessThan(2e-3);
    expect(relDiff(got2.W, convWeights(pruned, conv2).W)).toBeGreaterThan(1e-2); // the sweep changed it

    // fc: 64 rows for its d columns, fewer than RIDGE_ROWS each: the ridge toward its weights in the pruned model,
    // from the original output less its current bias
    const X = s.get(inOf(fc))!,
      Z = o2.get(outOf(fc))!;
    const fcOf = (m: Model) => {
      const n = node(m, fc),
        consts = constantTensors(m.graph!),
        w = tensorToFloat32(consts.get(n.input[1]!)!), // [10, d] (transB)
        [mo, d] = w.dims as [number, number];
      const W = new Float64Array(d * mo);
      for (let j = 0; j < mo; j++) for (let i = 0; i < d; i++) W[i * mo + j] = w.data[j * d + i]!;
      return { W, bias: tensorToFloat32(consts.get(n.input[2]!)!).data, mo, d };
    };
    const before = fcOf(pruned),
      after = fcOf(swept);
    expect(X.dims[0]! < 10 * before.d).toBe(true);
    const T3 = Float64Array.from(Z.data, (v, e) => v - before.bias[e % before.mo]!);
    const want3 = oracleFit(
      { rows: X.dims[0]!, cols: X.dims[1]!, a: Float64Array.from(X.data) },
      { rows: Z.dims[0]!, cols: Z.dims[1]!, a: T3 },
      before.W,
    );
    expect(relDiff(after.W, want3.W)).toBeLessThan(2e-3);
    expect(
      relDiff(
        after.bias,
        before.bias.map((b, j) => b + want3.bias[j]!),
      ),
    ).toBeLessThan(2e-3);
    expect(relDiff(after.W, before.W)).toBeGreaterThan(1e-3); // the sweep changed it
  }, 300_000);
});

describe('the default sweep', () => {
  const weight = (m: Model, node: string) => {
    const n = m.graph!.node.find((v) => v.name === node)!;
    return tensorToFloat32(constantTensors(m.graph!).get(n.input[1]!)!).data;
  };

  it('in asymmetric mode: consumers whose input is the original one keep their weights; none elsewhere', async () => {
    const data = openNpy('models/calib.npy');
    try {
      const model = readModel('models/mobilenet.onnx'),
        shape = [1, 1, 28, 28];
      const swept = await prune(model, data, { budget: { compression: 2 } }),
        plain = await prune(model, data, { budget: { compression: 2 }, sweep: false });
      expect([swept.report.sweep, plain.report.sweep]).toEqual([1, false]);
      expect(swept.report.seconds.sweep).toBeGreaterThan(0);
      expect(swept.report.groups.map((g) => g.order)).toEqual(plain.report.groups.map((g) => g.order));
      expect(modelStats(swept.model, shape).params).toBe(modelStats(plain.model, shape).params);
      // consumers that come before the first cut group's producers in the graph read the original's input (but where a
      // consumer produces a cut group's channels, its rows are cut), so the sweep leaves them; after the cut it re-fits
      const groups = analyze(model, shape).groups,
        reports = swept.report.groups,
        first = reports.findIndex((g) => g.kept < g.channels);
      expect(first).toBeGreaterThan(0);
      const at = new Map(model.graph!.node.map((n, i) => [n.name, i])),
        edge = Math.min(...groups[first]!.producers.map((p) => at.get(p.name)!));
      const cut = new Set(
        groups.flatMap((u, i) => (reports[i]!.kept < u.channels ? u.producers.map((p) => p.name) : [])),
      );
      const before = groups
        .flatMap((u) => u.consumers)
        .filter((c) => at.get(c.node.name)! < edge && !cut.has(c.node.name));
      expect(before.length).toBeGreaterThan(0);
      for (const c of before) expect(weight(swept.model, c.node.name)).toEqual(weight(model, c.node.name));
      const after = groups.slice(first).flatMap((u) => u.consumers.map((c) => c.node.name));
      expect(after.some((n) => relDiff(weight(swept.model, n), weight(plain.model, n)) > 1e-4)).toBe(true);
      // layerwise (the paper's) and without the re-fit: none
      const lenet = readModel('models/lenet.onnx');
      const layerwise = await prune(lenet, data, { budget: { compression: 2 }, mode: 'layerwise' });
      const sliced = await prune(lenet, data, { budget: { compression: 2 }, refit: false });
      expect([layerwise.report.sweep, sliced.report.sweep]).toEqual([false, false]);
    } finally {
      data.close();
    }
  }, 300_000);

  it('the CLI: the summary names it, --no-sweep leaves it out, and not with --sweep', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'subprune-sweep-'));
    try {
      const args = ['prune', 'models/lenet.onnx', '--calib', 'models/calib.npy', '--compression', '4'];
      const on = await runCli(...args, '-o', join(dir, 'a.onnx'));
      expect(on.code, on.err).toBe(0);
      expect(on.out).toMatch(/mode asymmetric, re-fit, sweep 1, .*select [\d.]+, sweep [\d.]+, rewrite/);
      const off = await runCli(...args, '--no-sweep', '-o', join(dir, 'b.onnx'), '--report', join(dir, 'b.json'));
      expect(off.code, off.err).toBe(0);
      expect(off.out).toMatch(/mode asymmetric, re-fit, onnxruntime/);
      expect(JSON.parse(readFileSync(join(dir, 'b.json'), 'utf8')).sweep).toBe(false);
      expectFailure(await runCli(...args, '--sweep', '2', '--no-sweep', '-o', join(dir, 'c.onnx')), 2, /give one/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe("the sweep's runs", () => {
  it('run the original once, and each part of the pruned model from tensors the fit before cached', async () => {
    const data = openNpy('models/calib.npy'),
      original = readModel('models/mobilenet.onnx');
    const open = vi.spyOn(Runner, 'open');
    try {
      const { model: pruned, report } = await prune(original, data, { budget: { compression: 4 }, sweep: false });
      const keeps = new Map(report.groups.map((g) => [g.id, [...g.order].sort((a, b) => a - b)]));
      open.mockClear();
      await refitSweep(original, pruned, keeps, Calibration.of(pruned, data), { intercept: true, relu: 1 });
      const calls = open.mock.calls,
        parts = calls.filter(([m]) => m !== original);
      expect(calls.filter(([m]) => m === original).length).toBe(1);
      // MobileNet's consumers (but those the sweep leaves): a part or two each, all but the first fed cached tensors
      expect(parts.length).toBeGreaterThan(20);
      expect(parts.every(([, , , only]) => only)).toBe(true);
      expect(parts.slice(1).filter(([, , , , given]) => !given?.size)).toEqual([]);
    } finally {
      open.mockRestore();
      data.close();
    }
  }, 300_000);
});
