import { describe, it, expect } from 'vitest';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readModel, makeNode, intsAttr, intAttr, type Model } from '../src/onnx/index.js';
import { openNpy, writeNpy } from '../src/npy.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { evaluate } from '../src/eval/index.js';
import { prune } from '../src/prune/index.js';
import { sizeModel } from '../src/budget/size.js';
import {
  monotone,
  commonLevel,
  spendLeftover,
  allocateGlobal,
  allocateByLevel,
  gridKeeps,
  type AllocGroup as AllocUnit,
  type Curve,
} from '../src/budget/allocate.js';
import { captureOriginal, sensitivityCurves } from '../src/prune/allocation.js';
import { autoStep, conv2d, keepStep, nextKeep, resolveBudget } from '../src/budget/index.js';
import { rankGroup, planOf } from '../src/prune/rank.js';
import type { Group } from '../src/graph/types.js';
import { rng } from './oracle.js';
import { randTensor, randn, smallModel } from './graph-helpers.js';

// Budgets: the size model against modelStats of rewritten models; the allocations' logic against brute force on
// synthetic curves; the measured curves against onnxruntime runs of the pruned model.

const MODELS = ['lenet', 'vgg', 'resnet20'].filter((m) => existsSync(`models/${m}.onnx`));
const shape = [1, 1, 28, 28];

/** The model with the first keeps[id] channels of every unit, as the rewrite makes it. */
const firstChannels = (model: Model, groups: Group[], keeps: Map<string, number>) =>
  pruneGroups(
    model,
    groups.map((unit) => ({ group: unit, keep: Array.from({ length: keeps.get(unit.id)! }, (_, i) => i) })),
  );

describe.each(MODELS)('%s: the size model', (name) => {
  it('equals modelStats of the rewritten model, for params and FLOPs, at random channel counts', () => {
    const model = readModel(`models/${name}.onnx`),
      { groups } = analyze(model, shape),
      r = rng(7);
    const fp = sizeModel(model, groups, shape, 'params'),
      ff = sizeModel(model, groups, shape, 'flops');
    const full = modelStats(model, shape);
    expect(fp(new Map(groups.map((u) => [u.id, u.channels])))).toBe(full.params);
    expect(ff(new Map(groups.map((u) => [u.id, u.channels])))).toBe(full.flops);
    for (let t = 0; t < 6; t++) {
      const keeps = new Map(groups.map((u) => [u.id, 1 + Math.floor(r() * u.channels)]));
      const s = modelStats(firstChannels(model, groups, keeps), shape);
      expect(fp(keeps)).toBe(s.params);
      expect(ff(keeps)).toBe(s.flops);
    }
  });
});

describe('lenet: every allocation meets the target as modelStats counts it, and leaves no unit room to grow', () => {
  const model = readModel('models/lenet.onnx'),
    { groups } = analyze(model, shape),
    full = modelStats(model, shape);
  it.each([
    ['sensitivity', 'params', 8],
    ['sensitivity', 'flops', 3],
    ['global', 'params', 32],
    ['global', 'flops', 2],
    ['uniform', 'params', 16],
  ] as const)('%s allocation, %s ÷ %i', async (allocation, target, c) => {
    const calib = openNpy('models/calib.npy');
    const { model: pruned, report } = await prune(model, calib, { budget: { compression: c, target }, allocation });
    calib.close();
    const goal = full[target] / c,
      keeps = new Map(report.groups.map((u) => [u.id, u.kept]));
    expect(modelStats(pruned, shape)[target]).toBeLessThanOrEqual(goal);
    expect(modelStats(pruned, shape).params).toBe(report.params.after);
    if (allocation === 'uniform') return; // one fraction for all groups: rounding leaves room by design
    for (const u of groups) {
      if (keeps.get(u.id)! === u.channels) continue;
      const more = new Map(keeps).set(u.id, keeps.get(u.id)! + 1);
      expect(modelStats(firstChannels(model, groups, more), shape)[target]).toBeGreaterThan(goal);
    }
  });
});

/**
 * Synthetic groups and a size that grows with every k: per-channel costs plus a coupling of neighbours (like a consumer
 * weight).
 */
function synthetic(seed: number) {
  const r = rng(seed),
    U = 2 + Math.floor(r() * 3);
  const groups: AllocUnit[] = Array.from({ length: U }, (_, i) => ({ id: `u${i}`, channels: 1 + Math.floor(r() * 7) }));
  const cost = groups.map(() => 1 + Math.floor(r() * 9)),
    pair = groups.map(() => Math.floor(r() * 4));
  const sizeOf = (k: Map<string, number>) =>
    groups.reduce(
      (s, u, i) => s + cost[i] * k.get(u.id)! + (i ? pair[i] * k.get(u.id)! * k.get(groups[i - 1].id)! : 0),
      5,
    );
  // curves on a grid with gaps (like the 1 %-grid of a wide unit); values noisy, not monotone
  const curves = new Map<string, Curve>(
    groups.map((u) => {
      const ks = [
        ...new Set([1, ...Array.from({ length: u.channels }, (_, i) => i + 1).filter(() => r() < 0.7), u.channels]),
      ].sort((a, b) => a - b);
      return [u.id, { ks, values: ks.map(() => Math.round(r() * 20) / 20) }];
    }),
  );
  return { groups, sizeOf, curves };
}

describe('the sensitivity allocation on synthetic curves', () => {
  it('monotone: running maximum, capped at the value with every channel', () => {
    expect(monotone([0.3, 0.2, 0.5, 0.4, 0.45])).toEqual([0.3, 0.3, 0.45, 0.45, 0.45]);
    expect(monotone([0.9, 0.1, 0.8])).toEqual([0.8, 0.8, 0.8]);
  });

  it('the common level is the highest level some allocation meets (brute force over every level)', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const { groups, sizeOf, curves } = synthetic(seed);
      const least = sizeOf(new Map(groups.map((u) => [u.id, 1]))),
        most = sizeOf(new Map(groups.map((u) => [u.id, u.channels])));
      const goal = least + rng(seed + 1000)() * (most - least);
      // brute force: for every candidate level, the fewest channels whose running max (capped) reaches it
      const reach = (u: AllocUnit, tau: number) => {
        const { ks, values } = curves.get(u.id)!;
        for (let i = 0; i < ks.length; i++)
          if (Math.min(values[values.length - 1], Math.max(...values.slice(0, i + 1))) >= tau) return ks[i];
        return u.channels;
      };
      let best = -Infinity,
        bestKeeps: Map<string, number> | undefined;
      for (const tau of [...curves.values()].flatMap((c) => c.values)) {
        const keeps = new Map(groups.map((u) => [u.id, reach(u, tau)]));
        if (sizeOf(keeps) <= goal && tau > best) {
          best = tau;
          bestKeeps = keeps;
        }
      }
      const got = commonLevel(groups, curves, sizeOf, goal);
      if (bestKeeps) {
        expect(got.keeps).toEqual(bestKeeps);
        // the level reported is one whose keeps are these (levels between two curve values give the same keeps)
        expect(new Map(groups.map((u) => [u.id, reach(u, got.level)]))).toEqual(bestKeeps);
      } else {
        expect(got.keeps).toEqual(new Map(groups.map((u) => [u.id, 1]))); // only all-ones fits
      }
    }
  });

  it('the leftover goes to the largest fractions first, until no unit can grow', () => {
    // a: 2 of 4 (0.5), b: 3 of 4 (0.75); each channel costs 1, goal leaves 1: b grows
    const groups = [
      { id: 'a', channels: 4 },
      { id: 'b', channels: 4 },
    ];
    const sizeOf = (k: Map<string, number>) => k.get('a')! + k.get('b')!;
    expect(
      spendLeftover(
        groups,
        new Map([
          ['a', 2],
          ['b', 3],
        ]),
        sizeOf,
        6,
      ),
    ).toEqual(
      new Map([
        ['a', 2],
        ['b', 4],
      ]),
    );
    // b is full: the rest goes to a
    expect(
      spendLeftover(
        groups,
        new Map([
          ['a', 2],
          ['b', 3],
        ]),
        sizeOf,
        8,
      ),
    ).toEqual(
      new Map([
        ['a', 4],
        ['b', 4],
      ]),
    );
    // b's channel costs more than what is left: a grows instead
    const costly = (k: Map<string, number>) => k.get('a')! + 5 * k.get('b')!;
    expect(
      spendLeftover(
        groups,
        new Map([
          ['a', 2],
          ['b', 3],
        ]),
        costly,
        20,
      ),
    ).toEqual(
      new Map([
        ['a', 4],
        ['b', 3],
      ]),
    );
    for (let seed = 1; seed <= 100; seed++) {
      const { groups: us, sizeOf: s, curves } = synthetic(seed);
      const goal = s(new Map(us.map((u) => [u.id, u.channels]))) * 0.6;
      if (s(new Map(us.map((u) => [u.id, 1]))) > goal) continue;
      const start = commonLevel(us, curves, s, goal).keeps,
        out = spendLeftover(us, start, s, goal);
      expect(s(out)).toBeLessThanOrEqual(goal);
      for (const u of us) {
        expect(out.get(u.id)!).toBeGreaterThanOrEqual(start.get(u.id)!);
        if (out.get(u.id)! < u.channels) expect(s(new Map(out).set(u.id, out.get(u.id)! + 1))).toBeGreaterThan(goal);
      }
    }
  });

  it('the grid: every count from 1 to n for a narrow unit, about 100 for a wide one', () => {
    expect(gridKeeps({ id: 'u', channels: 6 })).toEqual([1, 2, 3, 4, 5, 6]);
    const g = gridKeeps({ id: 'u', channels: 256 });
    expect(g[0]).toBe(1);
    expect(g[g.length - 1]).toBe(256);
    expect(g.length).toBe(101); // 1 and round(0.01·i·256) for i = 1 … 100 (3 is round(0.01·256))
  });
});

/** Concave objective curves: partial sums of decreasing random gains, normalised to end at 1. */
const concaveCurves = (groups: AllocUnit[], r: () => number) =>
  new Map(
    groups.map((u) => {
      const gains = Array.from({ length: u.channels }, () => r()).sort((a, b) => b - a),
        tot = gains.reduce((a, b) => a + b, 0);
      let s = 0;
      return [u.id, gains.map((x) => (s += x) / tot)];
    }),
  );

/** The best Σ objectives over every choice of counts (step, 2·step, … per group) whose channels sum to ≤ goal. */
function bruteForceBest(groups: AllocUnit[], objectives: Map<string, number[]>, goal: number, step = 1): number {
  const size = (k: Map<string, number>) => groups.reduce((a, u) => a + k.get(u.id)!, 0);
  const value = (k: Map<string, number>) => groups.reduce((a, u) => a + objectives.get(u.id)![k.get(u.id)! - 1], 0);
  let best = -Infinity;
  const rec = (i: number, k: Map<string, number>) => {
    if (i === groups.length) {
      if (size(k) <= goal) best = Math.max(best, value(k));
      return;
    }
    for (let c = step; c <= groups[i].channels; c += step) rec(i + 1, new Map(k).set(groups[i].id, c));
  };
  rec(0, new Map());
  return best;
}

describe('the global allocation', () => {
  it('concave objectives, one unit of size per channel: it reaches the brute-force optimum of Σ objectives', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const r = rng(seed),
        groups: AllocUnit[] = Array.from({ length: 2 + Math.floor(r() * 2) }, (_, i) => ({
          id: `u${i}`,
          channels: 1 + Math.floor(r() * 5),
        }));
      const objectives = concaveCurves(groups, r);
      const sizeOf = (k: Map<string, number>) => groups.reduce((a, u) => a + k.get(u.id)!, 0);
      const total = groups.reduce((a, u) => a + u.channels, 0),
        goal = groups.length + Math.floor(r() * (total - groups.length + 1));
      const value = (k: Map<string, number>) => groups.reduce((a, u) => a + objectives.get(u.id)![k.get(u.id)! - 1], 0);
      const got = allocateGlobal(groups, objectives, sizeOf, goal);
      expect(sizeOf(got)).toBe(Math.min(goal, total));
      expect(value(got)).toBeCloseTo(bruteForceBest(groups, objectives, goal), 12);
    }
  });

  it('with a floor, every group starts at that share of the uniform keep (none is starved) and fits the goal', () => {
    // "heads": 4 channels of large gains; "ffn": 64 channels whose gains are small one by one
    const groups: AllocUnit[] = [
      { id: 'heads', channels: 4 },
      { id: 'ffn', channels: 64 },
    ];
    const concave = (n: number, first: number) => Array.from({ length: n }, (_, i) => 1 - (1 - first) ** (i + 1));
    const objectives = new Map([
      ['heads', concave(4, 0.6)],
      ['ffn', concave(64, 0.005)],
    ]);
    const sizeOf = (k: Map<string, number>) => 16 * k.get('heads')! + k.get('ffn')!; // a head costs 16 neurons
    const goal = 72;
    const plain = allocateGlobal(groups, objectives, sizeOf, goal),
      floored = allocateGlobal(groups, objectives, sizeOf, goal, 0.5);
    // the uniform allocation keeps 2 heads and 40 neurons at this goal: half that share starts at 1 head, 20 neurons;
    // from one channel each, the heads' gains take every head and leave the FFN 8 neurons
    expect([plain.get('heads'), plain.get('ffn')]).toEqual([4, 8]);
    expect(floored.get('heads')).toBeGreaterThanOrEqual(1);
    expect(floored.get('ffn')).toBeGreaterThanOrEqual(20);
    for (const k of [plain, floored]) expect(sizeOf(k)).toBeLessThanOrEqual(goal);
  });
});

describe('--round-to: groups keep a multiple of their step of channels, or all', () => {
  const allowed = (u: AllocUnit, k: number) => k === u.channels || (k >= 1 && k % (u.step ?? 1) === 0);
  const stepped = (r: () => number): AllocUnit[] =>
    Array.from({ length: 2 + Math.floor(r() * 3) }, (_, i) => {
      const step = [1, 2, 4, 8][Math.floor(r() * 4)]!;
      return { id: `u${i}`, channels: 1 + Math.floor(r() * 40), step };
    });

  it("keepStep: a conv's channels take the step whole; channels of several entries (heads) a share of it", () => {
    const group = (per: number[]) =>
      ({ slices: per.map((p) => ({ tensor: 'w', axis: 0, offset: 0, per: p })), tensors: [] }) as unknown as Group;
    expect(keepStep(group([1, 1]), 8)).toBe(8);
    expect(keepStep(group([64]), 8)).toBe(1); // heads of 64 entries: any count of heads is a multiple of 8 entries
    expect(keepStep(group([4, 4]), 8)).toBe(2);
    expect(keepStep(group([4, 1]), 8)).toBe(8); // the tensor of one entry per channel decides
    expect(keepStep(group([1]), 1)).toBe(1);
    // the ViT's heads (16 entries each in q, k, v and the output projection; one on the scores' head axis) and FFN
    const { groups } = analyze(readModel('models/vit.onnx'));
    const heads = groups.filter((u) => u.channels === 4),
      ffn = groups.filter((u) => u.channels === 128);
    expect(heads.length).toBe(6);
    expect(ffn.length).toBe(6);
    for (const u of heads) expect([keepStep(u, 8), keepStep(u, 32)]).toEqual([1, 2]);
    for (const u of ffn) expect(keepStep(u, 8)).toBe(8);
  });

  it("autoStep ('auto', the default): 8 in groups of 32+ channels a 2-D Conv produces or reads, else 1", () => {
    const steps = (file: string) => {
      const model = readModel(file);
      return analyze(model).groups.map((u) => [u.channels, autoStep(u, conv2d(model.graph!))]);
    };
    // the ViT's heads and FFN neurons: dense layers only, whatever their size
    expect(steps('models/vit.onnx').every(([, s]) => s === 1)).toBe(true);
    // LeNet: convs of 6 and 16 channels (too few), fully connected layers of 120 and 84 (dense)
    expect(steps('models/lenet.onnx')).toEqual([
      [6, 1],
      [16, 1],
      [120, 1],
      [84, 1],
    ]);
    // ResNet-20: the first stage's 16-channel groups alone take any count
    expect(steps('models/resnet20.onnx')).toEqual([
      ...Array(4).fill([16, 1]),
      ...Array(4).fill([32, 8]),
      ...Array(4).fill([64, 8]),
    ]);
    // QuartzNet's 1-D convs (test/fixtures/make-more-speech7.py): onnxruntime does not block them, so its group of
    // 32 channels takes any count
    const quartznet = steps('test/fixtures/speech7-quartznet.onnx');
    expect(quartznet).toContainEqual([32, 1]);
    expect(quartznet.every(([, s]) => s === 1)).toBe(true);
  });

  it('uniform, global (also with a floor), level and leftover: allowed counts, within the goal, maximal', () => {
    for (let seed = 1; seed <= 150; seed++) {
      const r = rng(seed),
        groups = stepped(r),
        objectives = concaveCurves(groups, r);
      const cost = new Map(groups.map((u) => [u.id, 1 + Math.floor(r() * 4)]));
      const sizeOf = (k: Map<string, number>) => groups.reduce((a, u) => a + cost.get(u.id)! * k.get(u.id)!, 0);
      const least = sizeOf(new Map(groups.map((u) => [u.id, Math.min(u.step!, u.channels)]))),
        full = sizeOf(new Map(groups.map((u) => [u.id, u.channels])));
      const goal = least + Math.floor(r() * (full - least + 1));
      const curves = new Map(
        groups.map((u) => {
          const ks = gridKeeps(u, 0.1);
          return [u.id, { ks, values: ks.map((k) => objectives.get(u.id)![k - 1]!) }];
        }),
      );
      const results = {
        uniform: resolveBudget(groups as Group[], { compression: full / goal }, sizeOf, full),
        global: allocateGlobal(groups, objectives, sizeOf, goal),
        floored: allocateGlobal(groups, objectives, sizeOf, goal, 0.5),
        level: allocateByLevel(groups, curves, sizeOf, goal),
      };
      for (const u of groups) for (const k of curves.get(u.id)!.ks) expect(allowed(u, k)).toBe(true);
      for (const [name, keeps] of Object.entries(results)) {
        expect(sizeOf(keeps), name).toBeLessThanOrEqual(goal + 1e-9);
        for (const u of groups) expect(allowed(u, keeps.get(u.id)!), `${name} ${u.id}`).toBe(true);
      }
      // the global greedy and the leftover stop only where no group's next step fits
      for (const name of ['global', 'level'] as const)
        for (const u of groups) {
          const k = results[name].get(u.id)!;
          if (k < u.channels) expect(sizeOf(new Map(results[name]).set(u.id, nextKeep(u, k)))).toBeGreaterThan(goal);
        }
    }
  });

  it('global, groups of one step and channels in whole steps: the brute-force optimum over the allowed counts', () => {
    for (let seed = 1; seed <= 150; seed++) {
      const r = rng(seed),
        step = 2 + Math.floor(r() * 3);
      const groups: AllocUnit[] = Array.from({ length: 2 + Math.floor(r() * 2) }, (_, i) => ({
        id: `u${i}`,
        channels: step * (1 + Math.floor(r() * 4)),
        step,
      }));
      const objectives = concaveCurves(groups, r);
      const sizeOf = (k: Map<string, number>) => groups.reduce((a, u) => a + k.get(u.id)!, 0);
      const total = groups.reduce((a, u) => a + u.channels, 0),
        goal = step * groups.length + Math.floor(r() * (total - step * groups.length + 1));
      const value = (k: Map<string, number>) => groups.reduce((a, u) => a + objectives.get(u.id)![k.get(u.id)! - 1], 0);
      expect(value(allocateGlobal(groups, objectives, sizeOf, goal))).toBeCloseTo(
        bruteForceBest(groups, objectives, goal, step),
        12,
      );
    }
  });

  it('a budget file with a count off the step is refused, naming the step', () => {
    const u = { id: 'g', channels: 20, step: 8, producers: [] } as unknown as Group;
    expect(resolveBudget([u], { keep: { g: 16 } }, () => 0).get('g')).toBe(16);
    expect(resolveBudget([u], { keep: { g: 20 } }, () => 0).get('g')).toBe(20);
    expect(() => resolveBudget([u], { keep: { g: 12 } }, () => 0)).toThrow(/multiple of 8 or all 20/);
  });
});

describe('lenet: the sensitivity curves measure the model with one unit pruned', () => {
  it(
    'each measured point equals the top-1 agreement of that pruned model run whole in onnxruntime; stopping ' +
      'early changes no monotone curve',
    async () => {
      const model = readModel('models/lenet.onnx'),
        { groups } = analyze(model, shape),
        calib = openNpy('models/calib.npy');
      const grams = await captureOriginal(model, groups, calib, ['greedy']);
      // the probe measures consumer weights only (no bias change): rank without the intercept
      // the probe measures consumer weights only (no bias change): rank without the intercept
      const ranked = groups.map((u) => rankGroup(model, u, grams.get(u.id)!, { biasRefit: false }));
      for (const refit of [true, false]) {
        const curves = await sensitivityCurves(model, ranked, refit, { data: calib });
        const full = await sensitivityCurves(model, ranked, refit, { data: calib }, { full: true });
        for (const r of ranked) {
          const { ks, values, measured } = curves.get(r.group.id)!,
            all = full.get(r.group.id)!;
          expect(ks).toEqual(gridKeeps(r.group));
          expect(all.measured).toBe(ks.length - 1);
          expect(values[values.length - 1]).toBe(1); // every channel kept: the original model
          expect(values.slice(0, measured)).toEqual(all.values.slice(0, measured));
          expect(monotone(values)).toEqual(monotone(all.values));
          for (const i of [0, measured! >> 1, ks.length - 2].filter((x) => x >= 0)) {
            const pruned = pruneGroups(model, [planOf(r, ks[i], refit)]);
            const { agreement } = await evaluate(pruned, calib, { reference: model });
            // a tie may break either way in float32
            expect(Math.abs(all.values[i] - agreement!)).toBeLessThanOrEqual(1 / 512);
          }
        }
      }
      calib.close();
    },
  );
});

describe('a residual block: the tail measured from the first consumer on also reads the skip connection', () => {
  it('each point is the agreement of the pruned model run whole, for the block and the residual stream', async () => {
    const r = rng(3);
    // x → conv0 → relu ─┬→ conv1 → relu → conv2 → add → relu → GAP → flatten → gemm
    // └──────────────────────────────↗ (conv1's group,
    // and the stream: conv0 and conv2 → conv1, fc)
    const model = smallModel(
      [
        makeNode('Conv', ['x', 'w0', 'b0'], ['a0'], [intsAttr('pads', [1, 1, 1, 1])], 'conv0'),
        makeNode('Relu', ['a0'], ['r0'], [], 'relu0'),
        makeNode('Conv', ['r0', 'w1', 'b1'], ['a1'], [intsAttr('pads', [1, 1, 1, 1])], 'conv1'),
        makeNode('Relu', ['a1'], ['r1'], [], 'relu1'),
        makeNode('Conv', ['r1', 'w2'], ['a2'], [intsAttr('pads', [1, 1, 1, 1])], 'conv2'),
        makeNode('Add', ['a2', 'r0'], ['s'], [], 'add'),
        makeNode('Relu', ['s'], ['rs'], [], 'relu2'),
        makeNode('GlobalAveragePool', ['rs'], ['p'], [], 'gap'),
        makeNode('Flatten', ['p'], ['f'], [intAttr('axis', 1)], 'flatten'),
        makeNode('Gemm', ['f', 'wf', 'bf'], ['y'], [intAttr('transB', 1)], 'fc'),
      ],
      [
        randTensor('w0', [4, 2, 3, 3], r),
        randTensor('b0', [4], r),
        randTensor('w1', [6, 4, 3, 3], r),
        randTensor('b1', [6], r),
        randTensor('w2', [4, 6, 3, 3], r),
        randTensor('wf', [5, 4], r, 2),
        randTensor('bf', [5], r),
      ],
      ['N', 2, 6, 6],
    );
    const inShape = [1, 2, 6, 6],
      { groups } = analyze(model, inShape);
    expect(groups.map((u) => [u.id, u.producers.map((p) => p.name), u.consumers.map((c) => c.node.name)])).toEqual([
      ['conv0', ['conv0', 'conv2'], ['conv1', 'fc']],
      ['conv1', ['conv1'], ['conv2']],
    ]);
    const path = join(mkdtempSync(join(tmpdir(), 'subprune-')), 'x.npy');
    writeNpy(path, randn(200 * 72, r), [200, 2, 6, 6]);
    const data = openNpy(path);
    const full = modelStats(model, inShape),
      size = sizeModel(model, groups, inShape, 'params');
    for (let k0 = 1; k0 <= 4; k0++)
      for (let k = 1; k <= 6; k++) {
        const keeps = new Map([
          ['conv0', k0],
          ['conv1', k],
        ]);
        expect(size(keeps)).toBe(modelStats(firstChannels(model, groups, keeps), inShape).params);
      }
    expect(
      size(
        new Map([
          ['conv0', 4],
          ['conv1', 6],
        ]),
      ),
    ).toBe(full.params);
    const grams = await captureOriginal(model, groups, data, ['greedy']);
    const ranked = groups.map((u) => rankGroup(model, u, grams.get(u.id)!, { biasRefit: false }));
    for (const refit of [true, false]) {
      const curves = await sensitivityCurves(model, ranked, refit, { data }, { full: true });
      for (const [j, id] of ['conv0', 'conv1'].entries()) {
        const c = curves.get(id)!;
        expect(c.ks).toEqual(j ? [1, 2, 3, 4, 5, 6] : [1, 2, 3, 4]);
        for (const [i, k] of c.ks.entries()) {
          const { agreement } = await evaluate(pruneGroups(model, [planOf(ranked[j]!, k, refit)]), data, {
            reference: model,
          });
          expect(Math.abs(c.values[i] - agreement!)).toBeLessThanOrEqual(1 / 200);
        }
        expect(new Set(c.values).size).toBeGreaterThan(1); // the points differ: the measurement sees the pruning
      }
    }
    data.close();
  });
});
