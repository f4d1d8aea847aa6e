// The quality of the model with one unit pruned alone, for many channel counts, cheaply. Pruning unit u alone leaves
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
  type Model,
} from '../onnx/index.js';
import { badInput, internal } from '../errors.js';
import type { NpyFile } from '../npy.js';
import type { Unit } from '../graph/types.js';
import { matrixToWeight } from '../graph/layers.js';
import { Calibration, modelInput } from '../calibration.js';
import { Runner, loadRuntime, type RuntimeOptions } from '../capture/index.js';
import { argmaxRows, EVAL_BATCH } from './index.js';

export interface VerifySet {
  data: NpyFile | Calibration;
  /** Labels: quality = top-1 accuracy. Absent: top-1 agreement with the original model (no labels needed). */
  labels?: ArrayLike<number>;
}

/** Measures one unit pruned alone: `quality(W)` with W the consumer's d×m weights, zero rows for pruned channels. */
export interface UnitProbe {
  quality(W: Float64Array): Promise<number>;
  release(): Promise<void>;
}

/** The class each verification sample should get: its label, or the original model's top-1. */
export async function verifyTargets(model: Model, v: VerifySet, opts: RuntimeOptions = {}): Promise<Int32Array> {
  const data = Calibration.of(model, v.data);
  if (v.labels) {
    if (v.labels.length !== data.rows)
      throw badInput(`${v.labels.length} verification labels for ${data.rows} samples`);
    return Int32Array.from(v.labels, Number);
  }
  const out = model.graph!.output[0].name,
    run = await Runner.open(model, [], opts),
    top = new Int32Array(data.rows);
  try {
    for (const b of data.batches(opts.batch ?? EVAL_BATCH)) {
      const y = (await run.run(b.data, b.dims, [out])).get(out)!;
      top.set(argmaxRows(y.data, b.dims[0]), b.start);
    }
  } finally {
    await run.release();
  }
  return top;
}

/**
 * The model from `unit`'s consumer on: inputs are the tensors computed before it (the cut) and the consumer's weight.
 */
export function tailModel(model: Model, unit: Unit): { tail: Model; cut: string[] } {
  const m = clone(ModelProtoSchema, model),
    g = m.graph!;
  const at = g.node.findIndex((n) => n.name === unit.consumer.name);
  if (at < 0) throw internal(`consumer ${unit.consumer.name} of ${unit.id} is not in the model`);
  const head = g.node.slice(0, at).filter((n) => n.opType !== 'Constant'); // constants move to the tail
  const tailNodes = g.node.filter((n, i) => i >= at || n.opType === 'Constant');
  if (g.node.some((n) => n.attribute.some((a) => a.g || a.graphs.length)))
    throw badInput('measuring units alone needs a model without subgraphs (If/Loop/Scan)');
  const made = new Set([modelInput(model).name, ...head.flatMap((n) => n.output)]);
  const cut = [...new Set(tailNodes.flatMap((n) => n.input).filter((x) => made.has(x)))];
  const wi = g.initializer.findIndex((t) => t.name === unit.consumerWeight);
  if (wi < 0) throw badInput(`consumer weight ${unit.consumerWeight} of ${unit.id} is not an initializer`);
  const wdims = tensorDims(g.initializer[wi]);
  g.initializer.splice(wi, 1);
  const input = (name: string, dims?: number[]) => makeTensorValueInfo(name, DataType.FLOAT, dims);
  g.node = tailNodes;
  const used = new Set(tailNodes.flatMap((n) => n.input));
  g.initializer = g.initializer.filter((t) => used.has(t.name)); // the head's weights are not needed
  g.input = [...cut.map((n) => input(n)), input(unit.consumerWeight, wdims)];
  g.output = [g.output[0]];
  g.valueInfo = [];
  return { tail: m, cut };
}

/** Opens the tail session of `unit` and caches the verification set's activations at its cut. */
export async function openUnitProbe(
  model: Model,
  unit: Unit,
  v: VerifySet,
  targets: Int32Array,
  opts: RuntimeOptions = {},
): Promise<UnitProbe> {
  if (modelInput(model).elemType !== DataType.FLOAT)
    throw badInput('measuring units alone (--allocation sensitivity) needs a float32 model');
  const { tail, cut } = tailModel(model, unit);
  const data = Calibration.of(model, v.data),
    rows = data.rows;
  const { ort } = await loadRuntime(opts.backend);
  const feeds: { n: number; start: number; x: Record<string, InstanceType<typeof ort.Tensor>> }[] = [];
  const run = await Runner.open(model, cut, opts);
  try {
    for (const b of data.batches(opts.batch ?? EVAL_BATCH)) {
      const got = await run.run(b.data, b.dims, cut);
      feeds.push({
        n: b.dims[0],
        start: b.start,
        x: Object.fromEntries(
          cut.map((c) => {
            const a = got.get(c)!;
            return [c, new ort.Tensor('float32', a.data, a.dims)];
          }),
        ),
      });
    }
  } finally {
    await run.release();
  }
  const session = await ort.InferenceSession.create(serializeModel(tail), { graphOptimizationLevel: 'basic' });
  const out = tail.graph!.output[0].name,
    { d, m } = unit;
  const wdims = tensorDims(model.graph!.initializer.find((t) => t.name === unit.consumerWeight)!);
  return {
    async quality(W: Float64Array) {
      if (W.length !== d * m) throw new RangeError(`W has ${W.length} values, expected ${d}×${m}`);
      const w = matrixToWeight(unit.consumerLayout, W, d, m, wdims, unit.g).data;
      const wt = new ort.Tensor('float32', w, wdims);
      let hit = 0;
      for (const f of feeds) {
        const y = (await session.run({ ...f.x, [unit.consumerWeight]: wt }, [out]))[out].data as Float32Array;
        argmaxRows(y, f.n).forEach((c, r) => (hit += c === targets[f.start + r] ? 1 : 0));
      }
      return hit / rows;
    },
    release: () => session.release(),
  };
}
