import { describe, it, expect } from 'vitest';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readModel, tensorToFloat32, initializerMap, replaceInitializerData, type Model } from '../src/onnx/index.js';
import { openNpy, encodeNpy, npyFromBytes, type NpyFile } from '../src/npy.js';
import { intAttr, intsAttr, makeNode } from '../src/onnx/index.js';
import { captureBatch } from '../src/capture/index.js';
import { randn, randTensor, run, smallModel } from './graph-helpers.js';
import { rng } from './oracle.js';
import { prune, type Mode } from '../src/prune/index.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { measuredObjective, measuredObjectives } from './objective.js';
import { serializeModel } from '../src/onnx/index.js';
import * as ort from 'onnxruntime-node';

// End to end on the bundled models, checked with onnxruntime: the pruned model runs, its parameter count is the
// report's, and each group's reported objective is the relative error of its consumers' inputs measured by running
// the original and the pruned model (test/objective.ts).

const MODELS = ['lenet', 'vgg', 'resnet20'].filter((m) => existsSync(`models/${m}.onnx`));
// The larger models use the first 256 calibration inputs (a prune takes seconds each on 2 cores); VGG's last conv
// consumer has d = 2304 columns and 9 rows per sample, so 256 is the fewest that keep its re-fit determined.
const fullCalib = 'models/calib.npy';
const firstCalib = (() => {
  const f = openNpy(fullCalib),
    path = join(mkdtempSync(join(tmpdir(), 'subprune-prune-')), 'calib256.npy');
  writeFileSync(path, encodeNpy(f.readF32(0, 256), [256, ...f.shape.slice(1)]));
  f.close();
  return path;
})();

async function outputs(model: Model, calib: NpyFile): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(serializeModel(model));
  const n = Math.min(256, calib.rows),
    x = calib.readF32(0, n);
  const r = await s.run({ [s.inputNames[0]]: new ort.Tensor('float32', x, [n, ...calib.shape.slice(1)]) });
  const y = r[s.outputNames[0]].data as Float32Array;
  await s.release();
  return y;
}

const relDiff = (a: Float32Array, b: Float32Array) =>
  Math.sqrt(a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0) / b.reduce((s, v) => s + v * v, 0));

describe.each(MODELS)('%s end to end', (name) => {
  const model = readModel(`models/${name}.onnx`);
  const shape = [1, 1, 28, 28];
  const small = name === 'lenet';
  const calibPath = small ? fullCalib : firstCalib;

  it('keeping every channel reproduces the original outputs', async () => {
    const calib = openNpy(calibPath);
    for (const mode of (small ? ['layerwise', 'asymmetric'] : ['layerwise']) as Mode[]) {
      const { model: pruned, report } = await prune(model, calib, { budget: { keepRatio: 1 }, mode });
      expect(report.params.after).toBe(report.params.before);
      expect(relDiff(await outputs(pruned, calib), await outputs(model, calib))).toBeLessThan(1e-4);
    }
    calib.close();
  });

  it.each([2, 4, 8])(
    'compression %i: every mode runs, params match the report, objectives match onnxruntime (and without re-fit)',
    { timeout: 900_000 },
    async (c) => {
      const calib = openNpy(calibPath);
      const { groups } = analyze(model, shape);
      for (const mode of ['layerwise', 'sequential', 'asymmetric'] as Mode[]) {
        const steps: Model[] = []; // sequential modes: the model after each group
        const { model: pruned, report } = await prune(model, calib, {
          budget: { compression: c },
          mode,
          onGroupPruned: (_, m) => steps.push(m),
        });
        expect(modelStats(pruned, shape).params).toBe(report.params.after);
        expect(report.params.after).toBeLessThanOrEqual(report.params.before / c);
        const y = await outputs(pruned, calib);
        expect(y.every(Number.isFinite)).toBe(true);
        expect(report.fidelity.agreement).toBeGreaterThan(0.1);
        // Objective of a group, measured by running two models in onnxruntime: the one that group's selection saw, and
        // the one with that group pruned. Layerwise: the last group pruned alone. Sequential modes: every group, from
        // the run's own steps; the target is the original model (asymmetric) or the model pruned up to the group before
        // (sequential). The pruned model measures a group's first consumer exactly; later consumers of a residual
        // stream also see the first ones' re-fits (each consumer's own objective: test/structure.test.ts,
        // test/groups.test.ts).
        if (mode === 'layerwise') {
          const i = groups.length - 1;
          const part = await prune(model, calib, { budget: { keep: { [groups[i].id]: report.groups[i].kept } }, mode });
          expect(part.report.groups[i].order).toEqual(report.groups[i].order);
          expect(
            Math.abs(report.groups[i].objective - (await measuredObjective(model, part.model, groups[i], calib))),
          ).toBeLessThan(1e-3);
        } else {
          expect(steps.length).toBe(groups.length);
          // asymmetric: the original model's consumer has all its outputs; compare those an earlier group kept
          const earlier = (i: number) => (node: string) => {
            const j = groups.findIndex((g, at) => at < i && g.producers.some((p) => p.name === node));
            return mode === 'asymmetric' && j >= 0 ? [...report.groups[j]!.order].sort((a, b) => a - b) : undefined;
          };
          for (let i = 0; i < groups.length; i++) {
            const ref = mode === 'sequential' && i > 0 ? steps[i - 1] : model;
            const [first] = await measuredObjectives(ref, steps[i], groups[i], calib, earlier(i));
            expect(Math.abs(report.groups[i].consumers[0]!.objective - first!), groups[i].id).toBeLessThan(1e-3);
          }
        }
      }
      // Without re-fit (the consumer's weights only sliced): the last unit's objective, measured the same way
      const i = groups.length - 1;
      const { report } = await prune(model, calib, { budget: { compression: c }, refit: false, mode: 'layerwise' });
      const part = await prune(model, calib, {
        budget: { keep: { [groups[i].id]: report.groups[i].kept } },
        refit: false,
        mode: 'layerwise',
      });
      expect(
        Math.abs(report.groups[i].objective - (await measuredObjective(model, part.model, groups[i], calib))),
      ).toBeLessThan(1e-3);
      calib.close();
    },
  );
});

describe('lenet: a channel that is always zero', () => {
  it('is pruned first and changes nothing', async () => {
    const model = readModel('models/lenet.onnx');
    const { groups } = analyze(model, [1, 1, 28, 28]);
    const u = groups[0]; // conv1 → conv2
    const inits = initializerMap(model.graph!);
    const [weight, bias] = [u.producers[0]!.input[1]!, u.producers[0]!.input[2]!];
    const w = tensorToFloat32(inits.get(weight)!),
      b = tensorToFloat32(inits.get(bias)!);
    const per = w.data.length / u.channels,
      dead = 3;
    w.data.fill(0, dead * per, (dead + 1) * per);
    b.data[dead] = -1; // ReLU(−1) = 0 everywhere
    replaceInitializerData(model.graph!, weight, w.dims, w.data);
    replaceInitializerData(model.graph!, bias, b.dims, b.data);
    const calib = openNpy(fullCalib);
    const { model: pruned, report } = await prune(model, calib, { budget: { keep: { [u.id]: u.channels - 1 } } });
    expect(report.groups[0].order.indexOf(dead)).toBe(-1);
    expect(relDiff(await outputs(pruned, calib), await outputs(model, calib))).toBeLessThan(1e-4);
    calib.close();
  });
});

// Large activations: the default batch shrinks so that a batch's consumer inputs stay within captureBatch's bytes, the
// report records it, and the result is the one batches of 32 give (the Gram matrices add rows every 64 samples,
// whatever the batch: FLUSH_SAMPLES).
describe('the default batch size follows the activations', () => {
  const r = rng(5);
  const model = smallModel(
    [
      makeNode('Conv', ['x', 'w1', 'b1'], ['t1'], [intsAttr('pads', [1, 1, 1, 1])], 'conv1'),
      makeNode('Relu', ['t1'], ['t2'], [], 'relu1'),
      makeNode('Conv', ['t2', 'w2', 'b2'], ['t3'], [], 'conv2'),
      makeNode('Relu', ['t3'], ['t4'], [], 'relu2'),
      makeNode('GlobalAveragePool', ['t4'], ['t5'], [], 'pool'),
      makeNode('Flatten', ['t5'], ['t6'], [], 'flatten'),
      makeNode('Gemm', ['t6', 'w3', 'b3'], ['y'], [intAttr('transB', 1)], 'fc'),
    ],
    [
      randTensor('w1', [16, 3, 3, 3], r),
      randTensor('b1', [16], r),
      randTensor('w2', [8, 16, 1, 1], r),
      randTensor('b2', [8], r),
      randTensor('w3', [4, 8], r),
      randTensor('b3', [4], r),
    ],
    ['N', 3, 256, 256],
  );
  const X = randn(32 * 3 * 256 * 256, r);

  it("sizes batches by the consumer inputs' bytes that onnxruntime gives", async () => {
    const { groups, inputBytes } = analyze(model, [1, 3, 256, 256]);
    const out = await run(model, { data: X.subarray(0, 3 * 256 * 256), dims: [1, 3, 256, 256] }, [
      ...new Set(groups.flatMap((g) => g.consumers.map((c) => c.input))),
    ]);
    const fetched = [...out.entries()].filter(([k]) => k !== 'y').reduce((a, [, t]) => a + 4 * t.data.length, 0);
    expect(inputBytes).toBe(fetched); // conv2's input, 16 × 256 × 256 floats, and fc's, 8
    expect(captureBatch(inputBytes)).toBe(Math.floor((96 << 20) / fetched)); // 23
    expect(captureBatch(analyze(readModel('models/lenet.onnx'), [1, 1, 28, 28]).inputBytes)).toBe(64);
    expect(captureBatch(undefined)).toBe(64);
    expect(captureBatch(1e12)).toBe(1);
  });

  it('prunes with it as with batches of 32', async () => {
    const calib = npyFromBytes(encodeNpy(X, [32, 3, 256, 256]), 'calib.npy');
    const opts = { budget: { keepRatio: 0.5 }, threads: 1 } as const;
    const auto = await prune(model, calib, opts),
      fixed = await prune(model, calib, { ...opts, batch: 32 });
    expect(auto.report.calibration.batch).toBe(23);
    expect(fixed.report.calibration.batch).toBe(32);
    auto.report.groups.forEach((g, i) => {
      expect(g.order).toEqual(fixed.report.groups[i]!.order);
      expect(Math.abs(g.objective - fixed.report.groups[i]!.objective)).toBeLessThan(1e-9);
    });
  });
});
