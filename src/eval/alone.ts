// The quality of the model with one group pruned alone, for many channel counts, cheaply. Pruning group u alone leaves
// every tensor before its consumer unchanged (kept channels keep their values), and the consumer with kept rows W'
// computes exactly what the full consumer computes with W' padded by zero rows for the pruned channels. So one
// session of the model's tail (from the consumer on, its weight a graph input) fed with the verification set's
// activations at the cut, cached once, measures any k: a run of the tail per measurement, no model rewrite.
import { clone } from '@bufbuild/protobuf';
import {
  DataType,
  ModelProtoSchema,
  makeTensorValueInfo,
  serializeModel,
  tensorDims,
  tensorToFloat32,
  type Model,
} from '../onnx/index.js';
import { badInput, internal } from '../errors.js';
import type { NpyFile } from '../npy.js';
import type { Group, OutputAxis } from '../graph/types.js';
import { matrixToWeight, weightToMatrix } from '../graph/layers.js';
import { constantTensors } from '../graph/shapes.js';
import { Calibration, modelInputs, type InputData } from '../calibration.js';
import { Runner, loadRuntime, type RuntimeOptions } from '../capture/index.js';
import type { OrtTensor } from '../capture/runner.js';

const ORT_TYPES: Record<string, number> = {
  float32: DataType.FLOAT,
  float16: DataType.FLOAT16,
  int64: DataType.INT64,
  int32: DataType.INT32,
  bool: DataType.BOOL,
};
import { argmaxAxis, classesOf, EVAL_BATCH } from './index.js';
import { outputAxesOf } from '../graph/analyze.js';

export interface VerifySet {
  data: InputData;
  /** Labels: quality = top-1 accuracy. Absent: top-1 agreement with the original model (no labels needed). */
  labels?: ArrayLike<number>;
}

/**
 * Measures one group pruned alone: `quality(Ws)` with Ws each consumer's d×m weights for the group, zero rows for
 * pruned channels.
 */
export interface GroupProbe {
  quality(Ws: Float64Array[]): Promise<number>;
  release(): Promise<void>;
}

/**
 * What a group pruned alone is measured against: the class each verification sample should get (its label: the first
 * output's largest entry per sample), or without labels the original model's top-1 class at each position of its
 * first output with class scores (OutputAxis).
 */
export interface Targets {
  output: string;
  /** The output's class axis (none: one class per sample, over all its values). */
  classAxis?: number;
  classes: Int32Array;
}

/**
 * The output the sensitivity allocation measures without labels: the first with class scores (OutputAxis). A model
 * without one is refused, before any capture (prune checks it first).
 */
export function scoresOutput(model: Model): OutputAxis & { classAxis: number } {
  const scores = outputAxesOf(model).find((o) => o.classAxis !== undefined);
  if (!scores)
    throw badInput(
      'the sensitivity allocation measures top-1 agreement with the original model, and none of its outputs holds ' +
        'class scores (a map of one channel, probabilities of a Sigmoid, boxes next to scores): use --allocation ' +
        'global or search, which compare any outputs',
    );
  return scores as OutputAxis & { classAxis: number };
}

/** The verification set's targets (see Targets). */
export async function verifyTargets(model: Model, v: VerifySet, opts: RuntimeOptions = {}): Promise<Targets> {
  const data = Calibration.of(model, v.data);
  if (v.labels) {
    if (v.labels.length !== data.rows)
      throw badInput(`${v.labels.length} verification labels for ${data.rows} samples`);
    return { output: model.graph!.output[0]!.name, classes: Int32Array.from(v.labels, Number) };
  }
  const scores = scoresOutput(model);
  const run = await Runner.open(model, [], opts),
    tops: Int32Array[] = [];
  try {
    for (const b of data.batches(opts.batch ?? EVAL_BATCH)) {
      const y = (await run.run(b, [scores.name])).get(scores.name)!,
        { classes, inner } = classesOf(y.dims, scores.classAxis);
      tops.push(argmaxAxis(y.data, classes, inner));
    }
  } finally {
    await run.release();
  }
  const classes = new Int32Array(tops.reduce((a, t) => a + t.length, 0));
  tops.reduce((at, t) => (classes.set(t, at), at + t.length), 0);
  return { output: scores.name, classAxis: scores.classAxis, classes };
}

/**
 * The model from the group's first consumer on: its inputs are the tensors computed before that consumer (the cut) and
 * the weights of every consumer of the group.
 */
export function tailModel(
  model: Model,
  group: Group,
  output: string,
  types: Map<string, number> = new Map(),
): { tail: Model; cut: string[]; weights: string[] } {
  const m = clone(ModelProtoSchema, model),
    g = m.graph!;
  const names = new Set(group.consumers.map((c) => c.node.name));
  const at = g.node.findIndex((n) => names.has(n.name));
  if (at < 0) throw internal(`the consumers of ${group.id} are not in the model`);
  const head = g.node.slice(0, at).filter((n) => n.opType !== 'Constant'); // constants move to the tail
  const tailNodes = g.node.filter((n, i) => i >= at || n.opType === 'Constant');
  if (g.node.some((n) => n.attribute.some((a) => a.g || a.graphs.length)))
    throw badInput('measuring groups alone needs a model without subgraphs (If/Loop/Scan)');
  const made = new Set([...modelInputs(model).map((x) => x.name), ...head.flatMap((n) => n.output)]);
  const cut = [...new Set(tailNodes.flatMap((n) => n.input).filter((x) => made.has(x)))];
  const weights = [...new Set(group.consumers.map((c) => c.weight))];
  const wdims = weights.map((w) => {
    const t = g.initializer.find((x) => x.name === w);
    if (!t) throw badInput(`consumer weight ${w} of ${group.id} is not an initializer`);
    return tensorDims(t);
  });
  g.initializer = g.initializer.filter((t) => !weights.includes(t.name));
  const input = (name: string, dims?: number[]) => makeTensorValueInfo(name, types.get(name) ?? DataType.FLOAT, dims);
  g.node = tailNodes;
  const used = new Set(tailNodes.flatMap((n) => n.input));
  g.initializer = g.initializer.filter((t) => used.has(t.name)); // the head's weights are not needed
  g.input = [...cut.map((n) => input(n)), ...weights.map((w, i) => input(w, wdims[i]))];
  g.output = g.output.filter((o) => o.name === output);
  g.valueInfo = [];
  return { tail: m, cut, weights };
}

/** Opens the tail session of `group` and caches the verification set's activations at its cut. */
export async function openGroupProbe(
  model: Model,
  group: Group,
  v: VerifySet,
  targets: Targets,
  opts: RuntimeOptions = {},
): Promise<GroupProbe> {
  if (modelInputs(model).some((x) => x.elemType === DataType.FLOAT16))
    throw badInput('measuring groups alone (--allocation sensitivity) needs a float32 model');
  const { cut } = tailModel(model, group, targets.output);
  const data = Calibration.of(model, v.data);
  const { ort } = await loadRuntime(opts.backend);
  const feeds: Record<string, OrtTensor>[] = [];
  const run = await Runner.open(model, cut, opts);
  try {
    for (const b of data.batches(opts.batch ?? EVAL_BATCH)) feeds.push(await run.runRaw(b, cut));
  } finally {
    await run.release();
  }
  // the cut's element types as onnxruntime gave them (token ids and masks are integers)
  const types = new Map(cut.map((c) => [c, ORT_TYPES[feeds[0]![c]!.type] ?? DataType.FLOAT]));
  const { tail, weights } = tailModel(model, group, targets.output, types);
  // logSeverityLevel 3: the tail keeps constants it no longer reads, which onnxruntime would warn about on every load
  const session = await ort.InferenceSession.create(serializeModel(tail), {
    graphOptimizationLevel: 'basic',
    logSeverityLevel: 3,
  });
  const out = tail.graph!.output[0].name;
  // each consumer weight as the whole dTotal × m matrix; the group's rows are replaced per measurement
  const consts = constantTensors(model.graph!);
  const full = weights.map((w) => {
    const c = group.consumers.find((x) => x.weight === w)!,
      t = consts.get(w)!;
    return { c, dims: tensorDims(t), W: weightToMatrix(c.layout, tensorToFloat32(t).data, c.dTotal, c.m) };
  });
  return {
    async quality(Ws: Float64Array[]) {
      const tensors = full.map(({ c, dims, W }, i) => {
        const M = W.slice();
        group.consumers.forEach((t, k) => {
          if (t.weight !== weights[i]) return;
          if (Ws[k]!.length !== t.d * t.m)
            throw new RangeError(`W has ${Ws[k]!.length} values, expected ${t.d}×${t.m}`);
          M.set(Ws[k]!, t.row * t.m);
        });
        return [weights[i]!, new ort.Tensor('float32', matrixToWeight(c.layout, M, c.dTotal, c.m, dims).data, dims)];
      });
      const w = Object.fromEntries(tensors);
      let hit = 0,
        at = 0;
      for (const f of feeds) {
        const y = (await session.run({ ...f, ...w }, [out]))[out]!,
          { classes, inner } = classesOf(y.dims as number[], targets.classAxis),
          top = argmaxAxis(y.data as Float32Array, classes, inner);
        top.forEach((c, i) => (hit += c === targets.classes[at + i] ? 1 : 0));
        at += top.length;
      }
      return hit / targets.classes.length;
    },
    release: () => session.release(),
  };
}
