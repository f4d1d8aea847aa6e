import { describe, it, expect, afterAll } from 'vitest';
import * as ort from 'onnxruntime-node';
import { readModel, serializeModel, tensorDims, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { Calibration } from '../src/calibration.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { sizeModel } from '../src/budget/size.js';
import { compressionGoal } from '../src/budget/index.js';
import { allocateGlobal } from '../src/budget/allocate.js';
import { createdBiasParams } from '../src/rewrite/bias.js';
import { allocateBudget, allocateRanked } from '../src/prune/allocation.js';
import { rankGroup } from '../src/prune/rank.js';
import { captureGrams } from '../src/capture/index.js';
import { prune } from '../src/prune/index.js';
import { methodFlags } from '../src/cli/args.js';

// The search allocation on the bundled LeNet (exported by torch): the written model meets the compression (its
// initializers counted here), the score the search reports for it is what onnxruntime measures when run directly on
// the verification rows (KL, agreement and accuracy summed here in float64), and it never scores worse than the
// global allocation it starts from, measured the same independent way.

const lenet = readModel('models/lenet.onnx');
const calib = openNpy('models/calib.npy'),
  test = openNpy('models/test.npy'),
  labels = openNpy('models/test-labels.npy').readF64();
afterAll(() => [calib, test].forEach((f) => f.close()));

/** Parameters of a model as the compression counts them: every initializer's elements. */
const paramsOf = (m: Model) => m.graph!.initializer.reduce((a, t) => a + tensorDims(t).reduce((p, d) => p * d, 1), 0);

/** The rows the search measures on: n evenly spaced of total (row i is ⌊i·total/n⌋), all when n ≥ total. */
const evenRows = (total: number, n: number) =>
  Array.from({ length: Math.min(total, n) }, (_, i) => Math.floor((i * total) / Math.min(total, n)));

/** Class scores of `model` on rows of x, from onnxruntime-node directly. */
async function scores(model: Model, x: Float32Array, shape: number[], rows: number[]): Promise<Float32Array[]> {
  const s = await ort.InferenceSession.create(serializeModel(model));
  const per = shape.slice(1).reduce((a, b) => a * b, 1),
    out: Float32Array[] = [];
  for (const r of rows) {
    const feed = new ort.Tensor('float32', x.slice(r * per, (r + 1) * per), [1, ...shape.slice(1)]);
    out.push(Float32Array.from((await s.run({ [s.inputNames[0]!]: feed }))[s.outputNames[0]!]!.data as Float32Array));
  }
  await s.release();
  return out;
}

const logSoftmax = (y: Float32Array) => {
  const m = Math.max(...y),
    z = Math.log(y.reduce((a, v) => a + Math.exp(v - m), 0));
  return Array.from(y, (v) => v - m - z);
};
const argmax = (y: Float32Array) => y.indexOf(Math.max(...y));

/** Mean KL(softmax(ref) ‖ softmax(y)), top-1 agreement, and accuracy against `want` (label per row) if given. */
function oracle(ref: Float32Array[], ys: Float32Array[], want?: number[]) {
  let kl = 0,
    agree = 0,
    hit = 0;
  ys.forEach((y, i) => {
    const p = logSoftmax(ref[i]!),
      q = logSoftmax(y);
    kl += p.reduce((a, lp, j) => a + Math.exp(lp) * (lp - q[j]!), 0);
    if (argmax(y) === argmax(ref[i]!)) agree++;
    if (want && argmax(y) === want[i]) hit++;
  });
  return { kl: kl / ys.length, agreement: agree / ys.length, accuracy: hit / ys.length };
}

/** The goal prune sets for compression c (the biases the re-fit creates count), and its size function. */
function goalOf(c: number) {
  const data = Calibration.of(lenet, calib);
  const { groups } = analyze(lenet, data.shapes);
  const size = sizeModel(lenet, groups, data.shapes, 'params'),
    biases = createdBiasParams(lenet, groups, false);
  const sizeOf = (k: Map<string, number>) => size(k) + biases(k);
  return { data, groups, sizeOf, goal: compressionGoal(groups, c, sizeOf, modelStats(lenet, data.shapes).params) };
}

describe('search allocation', () => {
  it.each([8, 16])(
    'LeNet %i×, label-free: meets the budget, reports the KL onnxruntime measures, never worse than global',
    { timeout: 300_000 },
    async (c) => {
      const { data, groups, sizeOf, goal } = goalOf(c);
      const found = await allocateBudget(lenet, groups, data, [{ sizeOf, goal }], { allocation: 'search' });
      const s = found.search![0]!;
      const searched = await prune(lenet, calib, {
        budget: { compression: c },
        allocation: 'search',
        mode: 'layerwise',
      });
      const global = await prune(lenet, calib, { budget: { compression: c }, allocation: 'global', mode: 'layerwise' });
      // prune's search made the allocation allocateBudget reports
      expect(new Map(searched.report.groups.map((g) => [g.id, g.kept]))).toEqual(s.keeps);
      for (const m of [searched.model, global.model]) expect(paramsOf(m)).toBeLessThanOrEqual(paramsOf(lenet) / c);

      const x = calib.readF32(),
        rows = evenRows(calib.rows, 512);
      const ref = await scores(lenet, x, calib.shape, rows);
      const mine = oracle(ref, await scores(searched.model, x, calib.shape, rows));
      const start = oracle(ref, await scores(global.model, x, calib.shape, rows));
      expect(s.score.divergence).toBeCloseTo(mine.kl, 5);
      expect(s.score.agreement).toBeCloseTo(mine.agreement, 10);
      expect(s.start.divergence).toBeCloseTo(start.kl, 5);
      expect(searched.report.fidelity.kl).toBeCloseTo(mine.kl, 5);
      // the report carries the search's outcome: the scores the oracle measured on the two models
      expect(searched.report.search!.score.divergence).toBeCloseTo(mine.kl, 5);
      expect(searched.report.search!.start.divergence).toBeCloseTo(start.kl, 5);
      expect(searched.report.search!.evaluations).toBe(s.evaluations);
      expect(global.report.search).toBeUndefined();
      expect(mine.kl).toBeLessThanOrEqual(start.kl);
      expect(s.evaluations).toBeGreaterThan(1);
      expect(s.evaluations).toBeLessThanOrEqual(1 + 6 * groups.length);
    },
  );

  it('LeNet 16× with labels: scores accuracy on 512 evenly spaced verification rows, never below global', async () => {
    const c = 16,
      verify = { data: test, labels };
    const { data, groups, sizeOf, goal } = goalOf(c);
    const found = await allocateBudget(lenet, groups, data, [{ sizeOf, goal }], { allocation: 'search', verify });
    const s = found.search![0]!;
    const searched = await prune(lenet, calib, {
      budget: { compression: c },
      allocation: 'search',
      verify,
      mode: 'layerwise',
    });
    const global = await prune(lenet, calib, { budget: { compression: c }, allocation: 'global', mode: 'layerwise' });
    expect(new Map(searched.report.groups.map((g) => [g.id, g.kept]))).toEqual(s.keeps);
    expect(paramsOf(searched.model)).toBeLessThanOrEqual(paramsOf(lenet) / c);

    const x = test.readF32(),
      rows = evenRows(test.rows, 512),
      want = rows.map((r) => labels[r]!);
    expect(rows.length).toBe(512);
    const ref = await scores(lenet, x, test.shape, rows);
    const mine = oracle(ref, await scores(searched.model, x, test.shape, rows), want);
    const start = oracle(ref, await scores(global.model, x, test.shape, rows), want);
    expect(s.score.accuracy).toBeCloseTo(mine.accuracy, 10);
    expect(s.start.accuracy).toBeCloseTo(start.accuracy, 10);
    expect(s.score.divergence).toBeCloseTo(mine.kl, 5);
    expect(mine.accuracy).toBeGreaterThanOrEqual(start.accuracy);
  }, 300_000);

  it('every weighting of the global allocation meets the goal; unit weights are the global allocation', async () => {
    const { data, groups, sizeOf } = goalOf(8);
    const grams = await captureGrams(lenet, groups, data, {});
    const objectives = new Map(groups.map((u) => [u.id, rankGroup(lenet, u, grams.get(u.id)!).sel.objective]));
    const full = sizeOf(new Map(groups.map((u) => [u.id, u.channels])));
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 1;
    for (const c of [2, 8, 32]) {
      const goal = full / c;
      const ones = new Map(groups.map((u) => [u.id, 1]));
      expect(allocateGlobal(groups, objectives, sizeOf, goal, 0.5, ones)).toEqual(
        allocateGlobal(groups, objectives, sizeOf, goal, 0.5),
      );
      for (let t = 0; t < 20; t++) {
        const weights = new Map(groups.map((u) => [u.id, 2 ** (8 * rand() - 4)]));
        const keeps = allocateGlobal(groups, objectives, sizeOf, goal, 0.5, weights);
        expect(sizeOf(keeps)).toBeLessThanOrEqual(goal);
        for (const u of groups) expect(keeps.get(u.id)).toBeGreaterThanOrEqual(1);
        for (const u of groups) expect(keeps.get(u.id)).toBeLessThanOrEqual(u.channels);
        // the greedy stops only when no group can grow within the goal
        for (const u of groups)
          if (keeps.get(u.id)! < u.channels)
            expect(sizeOf(new Map(keeps).set(u.id, keeps.get(u.id)! + 1))).toBeGreaterThan(goal);
      }
    }
  }, 120_000);

  it('--verify goes with any allocation, --grid with sensitivity only', () => {
    // --verify with any allocation: the held-out inputs the fidelity is measured on
    const global = methodFlags({ allocation: 'global', verify: ['models/test.npy'] });
    expect(global.verify?.data).toBeDefined();
    global.opened.forEach((f) => f.close());
    expect(() => methodFlags({ allocation: 'search', grid: '0.1' })).toThrow(/--grid is for --allocation sensitivity/);
    const ok = methodFlags({ allocation: 'search', verify: ['models/test.npy'] });
    expect(ok.allocation).toBe('search');
    ok.opened.forEach((f) => f.close());
  });
});

describe('the global allocation ranks each group only as deep as it keeps', () => {
  it.each([
    ['lenet', [8, 16, 32]],
    ['mobilenet', [6]],
    ['vit', [2, 4]],
  ] as const)(
    '%s at %j×: the keeps of ranking every channel, from shallower rankings',
    { timeout: 300_000 },
    async (name, compressions) => {
      const model = readModel(`models/${name}.onnx`),
        data = Calibration.of(model, calib),
        { groups } = analyze(model, data.shapes);
      const size = sizeModel(model, groups, data.shapes, 'params'),
        biases = createdBiasParams(model, groups, false),
        sizeOf = (k: Map<string, number>) => size(k) + biases(k),
        params = modelStats(model, data.shapes).params;
      const goals = compressions.map((c) => ({ sizeOf, goal: compressionGoal(groups, c, sizeOf, params) }));
      const grams = await captureGrams(model, groups, data, {});
      const found = await allocateBudget(model, groups, data, goals, { allocation: 'global', grams });
      // the oracle: every group ranked whole, then the same greedy over the groups
      const whole = groups.map((u) => rankGroup(model, u, grams.get(u.id)!, {}));
      goals.forEach(({ goal }, i) => expect(found.keeps[i]).toEqual(allocateRanked('global', whole, sizeOf, goal)));
      // the rankings stop short where the allocation keeps few, and each is the whole ranking's prefix
      const depth = found.ranked.map((r) => r.sel.order.length);
      expect(depth.some((n, j) => n < groups[j]!.channels)).toBe(true);
      found.ranked.forEach((r, j) => {
        // deepened from where its greedy stopped: the whole ranking's prefix, objectives and re-fits bit for bit
        expect(r.sel.order).toEqual(whole[j]!.sel.order.slice(0, depth[j]));
        expect(r.sel.objective).toEqual(whole[j]!.sel.objective.slice(0, depth[j]));
        expect(r.sel.refit(depth[j]!)).toEqual(whole[j]!.sel.refit(depth[j]!));
        expect(r.sel.state).toBeUndefined(); // not kept past the allocation
        for (const k of found.keeps)
          expect(k.get(r.group.id)!).toBeLessThan(depth[j]! + (depth[j] === r.group.channels ? 1 : 0));
      });
    },
  );
});
