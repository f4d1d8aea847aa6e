import { describe, it, expect } from 'vitest';
import { clone, equals } from '@bufbuild/protobuf';
import {
  DataType,
  ModelProtoSchema,
  float32Tensor,
  makeNode,
  readModel,
  tensorToFloat32,
  type Model,
} from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import { Calibration, type InputData } from '../src/calibration.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { captureGrams, Runner } from '../src/capture/index.js';
import { planOf, rankGroup } from '../src/prune/rank.js';
import { pruneGroups, type PrunePlan } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { withConsumerMatrix } from './graph-helpers.js';
import { copiedUnchanged } from './fixture-suite.js';
import { measuredObjectives, relDiff } from './objective.js';

// The intercept through capture, selection and rewrite, against onnxruntime: the pruned model computes what the
// original computes with each consumer's re-fitted weights (zero for the removed channels) and its bias change added
// (written here independently of src/rewrite/bias.ts: into the layer's bias, or by a new Add after it), and a group
// pruned alone has the objective its selection reports.

const FIX = 'test/fixtures';
const CASES: { path: string; data: () => InputData }[] = [
  { path: 'models/lenet.onnx', data: () => openNpy('models/calib.npy') }, // Conv B and Gemm C present
  { path: 'models/resnet20.onnx', data: () => openNpy('models/calib.npy') }, // convs without bias, residual groups
  { path: `${FIX}/tf-swiglu.onnx`, data: () => openNpy(`${FIX}/tf-seq.calib.npy`) }, // MatMul without an Add
  { path: `${FIX}/tf-bert-tiny-opset17.onnx`, data: () => openNpz(`${FIX}/tf-bert-tiny.calib.npz`) }, // MatMul + Add
];

const close = (data: InputData) =>
  data instanceof Map ? data.forEach((f) => f.close()) : 'close' in data ? data.close() : undefined;

/** The model's first output on the first n samples. */
async function outputs(model: Model, data: InputData, n = 64): Promise<Float32Array> {
  const run = await Runner.open(model);
  try {
    const name = model.graph!.output[0]!.name;
    return (await run.run(Calibration.of(model, data).batches(n).next().value!, [name])).get(name)!.data.slice();
  } finally {
    await run.release();
  }
}

/** `model` with `delta` added to node's output channels: into its bias input (created if absent), else by an Add. */
function withBias(model: Model, node: string, delta: Float64Array): Model {
  const out = clone(ModelProtoSchema, model),
    g = out.graph!;
  const n = g.node.find((x) => x.name === node)!;
  const name = `${node}__test_bias`;
  if (n.opType === 'Conv' || n.opType === 'Gemm') {
    const b = n.input[2] ? g.initializer.find((t) => t.name === n.input[2]) : undefined;
    const old = b ? tensorToFloat32(b).data : new Float32Array(delta.length);
    const beta = n.attribute.find((a) => a.name === 'beta')?.f ?? 1;
    g.initializer.push(
      float32Tensor(
        name,
        [delta.length],
        old.map((v, i) => v + delta[i]! / beta),
      ),
    );
    n.input[2] = name;
  } else {
    const y = n.output[0]!;
    n.output[0] = `${y}__test_unbiased`;
    g.initializer.push(float32Tensor(name, [delta.length], Float32Array.from(delta)));
    g.node.splice(g.node.indexOf(n) + 1, 0, makeNode('Add', [n.output[0], name], [y], [], name));
  }
  return out;
}

/** The original model with every plan's re-fitted weights padded with zero rows and every bias change added. */
function reference(model: Model, plans: PrunePlan[]): Model {
  let ref = model;
  const sums = new Map<string, Float64Array>();
  for (const p of plans)
    p.group.consumers.forEach((c, i) => {
      if (p.W?.[i]) ref = withConsumerMatrix(ref, c, p.keep, p.W[i]!);
      const b = p.bias?.[i];
      if (!b) return;
      const s = sums.get(c.node.name) ?? new Float64Array(b.length);
      b.forEach((v, j) => (s[j] += v));
      sums.set(c.node.name, s);
    });
  for (const [node, delta] of sums) ref = withBias(ref, node, delta);
  return ref;
}

describe.each(CASES)('$path with the intercept', ({ path, data: open }) => {
  it(
    'every group at half its channels at once: the pruned model is the original with re-fitted weights and biases',
    { timeout: 300_000 },
    async () => {
      const data = open(),
        m = readModel(path);
      const calib = Calibration.of(m, data);
      const { groups } = analyze(m, calib.shapes);
      const grams = await captureGrams(m, groups, calib);
      const plans = groups.map((g) => {
        const k = Math.ceil(g.channels / 2);
        return planOf(rankGroup(m, g, grams.get(g.id)!, {}, k), k, true);
      });
      // every consumer here can take a bias: each has a bias change
      for (const p of plans) expect(p.bias?.every((b, i) => b?.length === p.group.consumers[i]!.m)).toBe(true);
      const before = clone(ModelProtoSchema, m),
        pruned = pruneGroups(m, plans);
      // new biases, new Adds and re-fitted weights go into the copy: the model it was made from is as it was, and
      // shares every node the rewrite left alone
      expect(equals(ModelProtoSchema, m, before)).toBe(true);
      expect(copiedUnchanged(m, pruned)).toEqual([]);
      const [got, want] = [await outputs(pruned, data), await outputs(reference(m, plans), data)];
      expect(relDiff(got, want)).toBeLessThan(1e-4);
      // without the bias changes the outputs differ: the biases are not zero
      const bare = pruneGroups(
        m,
        plans.map(({ bias: _, ...p }) => p),
      );
      expect(relDiff(await outputs(bare, data), want)).toBeGreaterThan(1e-3);
      close(data);
    },
  );
});

describe('a group pruned alone: the objective onnxruntime measures is the one the selection reports', () => {
  it.each(['models/lenet.onnx', 'models/resnet20.onnx'])('%s', { timeout: 300_000 }, async (path) => {
    const data = openNpy('models/calib.npy'),
      m = readModel(path);
    const { groups } = analyze(m, [1, 1, 28, 28]);
    // single-consumer groups (each pruned alone, its consumer's input is what the selection saw), at most four
    const picked = groups.filter((g) => g.consumers.length === 1).slice(0, 4);
    const grams = await captureGrams(m, picked, data);
    for (const g of picked) {
      const k = Math.ceil(g.channels / 3);
      const r = rankGroup(m, g, grams.get(g.id)!, {}, k),
        plan = planOf(r, k, true);
      const pruned = pruneGroups(m, [plan]);
      const [measured] = await measuredObjectives(m, pruned, g, data);
      expect(Math.abs(measured! - r.sel.consumers[0]![k - 1]!), g.id).toBeLessThan(1e-3);
      // the consumer has a bias now (resnet20's convs had none)
      const node = pruned.graph!.node.find((n) => n.name === g.consumers[0]!.node.name)!;
      expect(node.input[2]).toBeTruthy();
      // without the intercept: no bias change
      expect(planOf(rankGroup(m, g, grams.get(g.id)!, { biasRefit: false }, k), k, true).bias).toBeUndefined();
    }
    data.close();
  });
});

describe('prune() with created biases', () => {
  it(
    'resnet20 at 4×: the budget counts the new biases; --no-bias-refit creates none',
    { timeout: 600_000 },
    async () => {
      const data = openNpy('models/calib.npy'),
        m = readModel('models/resnet20.onnx');
      const biased = (x: Model) => x.graph!.node.filter((n) => n.opType === 'Conv' && n.input[2]).length;
      expect(biased(m)).toBe(0);
      for (const biasRefit of [true, false]) {
        // layerwise: a group kept whole keeps its weights (asymmetric mode re-fits it, with a bias)
        const { model: pruned, report } = await prune(m, data, {
          budget: { compression: 4 },
          biasRefit,
          mode: 'layerwise',
        });
        expect(modelStats(pruned, [1, 1, 28, 28]).params).toBe(report.params.after);
        expect(report.params.after).toBeLessThanOrEqual(report.params.before / 4);
        expect((await outputs(pruned, data)).every(Number.isFinite)).toBe(true);
        // a bias is created where a group lost channels (the global allocation may keep a group whole)
        const cut = new Set(report.groups.filter((g) => g.kept < g.channels).map((g) => g.id));
        if (biasRefit) expect(biased(pruned)).toBe(new Set(consumersOf(m, cut)).size);
        else expect(biased(pruned)).toBe(0);
        expect(pruned.graph!.initializer.every((t) => t.dataType === DataType.FLOAT)).toBe(true);
      }
      data.close();
    },
  );
});

/** Names of the Conv layers that consume one of the groups `ids` of the model. */
function consumersOf(m: Model, ids: Set<string>): string[] {
  return analyze(m, [1, 1, 28, 28])
    .groups.filter((g) => ids.has(g.id))
    .flatMap((g) => g.consumers.map((c) => c.node.name))
    .filter((n) => {
      const node = m.graph!.node.find((x) => x.name === n)!;
      return node.opType === 'Conv';
    });
}
