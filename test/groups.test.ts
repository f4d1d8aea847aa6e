import { describe, it, expect } from 'vitest';
import { readModel, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { sizeModel } from '../src/budget/size.js';
import { prune } from '../src/prune/index.js';
import { captureGrams } from '../src/capture/index.js';
import { planOf, rankGroup } from '../src/prune/rank.js';
import { maxAbsDiff, randomKeep, rng, zeroDroppedInputs } from './graph-helpers.js';
import { consumerObjectives, relDiff } from './objective.js';
import * as ortNode from 'onnxruntime-node';
import * as ortWeb from 'onnxruntime-web';
import { serializeModel } from '../src/onnx/index.js';

// Channel groups on real exports (torchvision's architectures exported by Debian's python3-torch, and the bundled
// MobileNetV3-style model): what is prunable, and that pruning any channels of every group gives exactly the model
// the analysis promises, checked in onnxruntime against the original with those channels' consumer weights zeroed.

const FIX = 'test/fixtures';
const CALIB = `${FIX}/tv-calib.npy`;

/** Runs a model in onnxruntime (node or web) on the first n calibration inputs: its first output. */
async function outputs(model: Model, n = 8, ort: typeof ortNode | typeof ortWeb = ortNode): Promise<Float32Array> {
  const calib = openNpy(CALIB),
    x = calib.readF32(0, n);
  calib.close();
  const s = await ort.InferenceSession.create(serializeModel(model), { logSeverityLevel: 3 });
  try {
    const r = await s.run({ [s.inputNames[0]!]: new ort.Tensor('float32', x, [n, ...calib.shape.slice(1)]) });
    return r[s.outputNames[0]!]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

const MODELS = [
  'tv-resnet18-narrow',
  'tv-mobilenet-v2',
  'tv-mobilenet-v3-small',
  'tv-mobilenet-v3-small-opset17',
  'tv-squeezenet1-1',
  'tv-regnet-tiny', // grouped 3x3 convs pass blocks of 8 channels (whole conv groups), like a depthwise conv
];

describe.each(MODELS)('%s', (name) => {
  const path = `${FIX}/${name}.onnx`;
  const shape = [1, 3, 64, 64];

  it(
    'every layer is in a group: each (but a grouped conv, which passes channels) produces one, all but the ' +
      'first consume',
    () => {
      const m = readModel(path);
      const { groups, refused } = analyze(m, shape);
      const layers = m.graph!.node.filter((n) => ['Conv', 'Gemm'].includes(n.opType));
      const depthwise = layers.filter((n) => n.attribute.some((a) => a.name === 'group' && a.i > 1n));
      const last = layers[layers.length - 1]!;
      expect(refused).toEqual([{ node: last.name, reason: 'output layer: no consumer' }]);
      const produced = groups.flatMap((g) => g.producers.map((p) => p.name));
      expect(produced.sort()).toEqual(
        layers
          .filter((n) => n !== last && !depthwise.includes(n))
          .map((n) => n.name)
          .sort(),
      );
      const consumed = new Set(groups.flatMap((g) => g.consumers.map((c) => c.node.name)));
      expect([...consumed].sort()).toEqual(
        layers
          .slice(1)
          .filter((n) => !depthwise.includes(n))
          .map((n) => n.name)
          .sort(),
      );
      // so everything that computes shrinks with some group
      const flops = sizeModel(m, groups, shape, 'flops'),
        full = new Map(groups.map((g) => [g.id, g.channels])),
        none = new Map(groups.map((g) => [g.id, 0]));
      expect(flops(full) - flops(none)).toBe(modelStats(m, shape).flops);
    },
  );

  it('random channels of every group: the pruned model is the original with consumer weights zeroed', async () => {
    const m = readModel(path);
    const { groups } = analyze(m, shape);
    const r = rng(5);
    const plans = groups.map((group) => ({
      group,
      keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
    }));
    const pruned = pruneGroups(m, plans);
    const [got, want] = [await outputs(pruned), await outputs(zeroDroppedInputs(m, plans))];
    expect(maxAbsDiff(got, want) / Math.max(...want.map(Math.abs))).toBeLessThan(1e-4);
    // sizes: the size model is exact
    const keeps = new Map(plans.map((p) => [p.group.id, p.keep.length]));
    for (const target of ['params', 'flops'] as const)
      expect(sizeModel(m, groups, shape, target)(keeps)).toBe(modelStats(pruned, shape)[target]);
    // and onnxruntime-web runs it to the same outputs
    expect(relDiff(await outputs(pruned, 8, ortWeb), got)).toBeLessThan(1e-4);
  });
});

describe('prune() on real exports', () => {
  it('keeping every channel keeps the outputs (mobilenet_v3_small: residuals, SE, decomposed HardSwish)', async () => {
    const m = readModel(`${FIX}/tv-mobilenet-v3-small.onnx`),
      calib = openNpy(CALIB);
    const { model: pruned, report } = await prune(m, calib, { budget: { keepRatio: 1 }, refit: false });
    calib.close();
    expect(report.params.after).toBe(report.params.before);
    expect(relDiff(await outputs(pruned), await outputs(m))).toBeLessThan(1e-4);
  });

  it("each consumer's objective is what onnxruntime measures with its re-fitted weights (resnet18)", async () => {
    const m = readModel(`${FIX}/tv-resnet18-narrow.onnx`),
      calib = openNpy(CALIB);
    const { groups } = analyze(m, [1, 3, 64, 64]);
    // a residual stream (several producers and consumers) and a block's inner group; 64 samples give enough rows
    const picked = [groups.find((g) => g.consumers.length > 2)!, groups.find((g) => g.consumers.length === 1)!];
    const grams = await captureGrams(m, picked, calib);
    for (const g of picked) {
      const k = Math.ceil(g.channels / 2),
        r = rankGroup(m, g, grams.get(g.id)!, {}, k),
        plan = planOf(r, k, true);
      const each = await consumerObjectives(m, g, plan.keep, plan.W!, calib, plan.bias);
      each.forEach((v, i) => expect(Math.abs(r.sel.consumers[i]![k - 1]! - v), `${g.id} ${i}`).toBeLessThan(1e-3));
    }
    calib.close();
  });
});
