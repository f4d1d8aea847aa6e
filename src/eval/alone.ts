// The quality of the model with one unit pruned alone, for many channel counts, cheaply. Pruning unit u alone leaves
// every tensor before its consumer unchanged (kept channels keep their values), and the consumer with kept rows W'
// computes exactly what the full consumer computes with W' padded by zero rows for the pruned channels. So one
// session of the model's tail (from the consumer on, its weight a graph input) fed with the verification set's
// activations at the cut, cached once, measures any k: a run of the tail per measurement, no model rewrite.
import { clone, create } from '@bufbuild/protobuf';
import {
  DataType,
  ModelProtoSchema,
  TypeProtoSchema,
  TypeProto_TensorSchema,
  ValueInfoProtoSchema,
  serializeModel,
  tensorDims,
  type Model,
} from '../onnx/index.js';
import { badInput } from '../errors.js';
import type { NpyFile } from '../npy.js';
import type { Unit } from '../graph/types.js';
import { Runner, batches, checkData, modelInput, loadRuntime, type Backend } from '../capture/index.js';

export interface VerifySet {
  data: NpyFile;
  /** Labels: quality = top-1 accuracy. Absent: top-1 agreement with the original model (no labels needed). */
  labels?: ArrayLike<number>;
}

/** Measures one unit pruned alone: `quality(W)` with W the consumer's d×m weights, zero rows for pruned channels. */
export interface UnitProbe {
  quality(W: Float64Array): Promise<number>;
  release(): Promise<void>;
}

const argmax = (y: Float32Array, r: number, c: number) => {
  let b = 0;
  for (let j = 1; j < c; j++) if (y[r * c + j] > y[r * c + b]) b = j;
  return b;
};

/** The class each verification sample should get: its label, or the original model's top-1. */
export async function verifyTargets(
  model: Model,
  v: VerifySet,
  opts: { batch?: number; backend?: Backend } = {},
): Promise<Int32Array> {
  if (v.labels) {
    if (v.labels.length !== v.data.rows)
      throw badInput(`${v.labels.length} verification labels for ${v.data.rows} samples`);
    return Int32Array.from(v.labels, Number);
  }
  const out = model.graph!.output[0].name,
    run = await Runner.open(model, [], opts),
    top = new Int32Array(v.data.rows);
  try {
    for (const b of batches(v.data, checkData(model, v.data, opts.batch ?? 256))) {
      const y = (await run.run(b.data, b.dims, [out])).get(out)!,
        c = y.data.length / b.dims[0];
      for (let r = 0; r < b.dims[0]; r++) top[b.start + r] = argmax(y.data, r, c);
    }
  } finally {
    await run.release();
  }
  return top;
}

/** The model from `unit`'s consumer on: inputs are the tensors computed before it (the cut) and the consumer's weight. */
export function tailModel(model: Model, unit: Unit): { tail: Model; cut: string[] } {
  const m = clone(ModelProtoSchema, model),
    g = m.graph!;
  const at = g.node.findIndex((n) => n.name === unit.consumer.name);
  if (at < 0) throw new Error(`consumer ${unit.consumer.name} of ${unit.id} is not in the model`);
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
  const input = (name: string, dims?: number[]) =>
    create(ValueInfoProtoSchema, {
      name,
      type: create(TypeProtoSchema, {
        value: {
          case: 'tensorType',
          value: create(TypeProto_TensorSchema, {
            elemType: DataType.FLOAT,
            ...(dims
              ? { shape: { dim: dims.map((d) => ({ value: { case: 'dimValue' as const, value: BigInt(d) } })) } }
              : {}),
          }),
        },
      }),
    });
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
  opts: { batch?: number; backend?: Backend } = {},
): Promise<UnitProbe> {
  if (modelInput(model).elemType !== DataType.FLOAT)
    throw badInput('measuring units alone (--allocation sensitivity) needs a float32 model');
  const { tail, cut } = tailModel(model, unit);
  const { ort } = await loadRuntime(opts.backend);
  const feeds: { n: number; start: number; x: Record<string, InstanceType<typeof ort.Tensor>> }[] = [];
  const run = await Runner.open(model, cut, opts);
  try {
    for (const b of batches(v.data, checkData(model, v.data, opts.batch ?? 256))) {
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
      // back to the consumer's layout: [d, m] as is; Gemm transB and Conv store [m, d]
      const w = new Float32Array(d * m);
      if (unit.consumerLayout === 'in-out') w.set(W);
      else for (let r = 0; r < d; r++) for (let o = 0; o < m; o++) w[o * d + r] = W[r * m + o];
      const wt = new ort.Tensor('float32', w, wdims);
      let hit = 0;
      for (const f of feeds) {
        const y = (await session.run({ ...f.x, [unit.consumerWeight]: wt }, [out]))[out].data as Float32Array,
          c = y.length / f.n;
        for (let r = 0; r < f.n; r++) if (argmax(y, r, c) === targets[f.start + r]) hit++;
      }
      return hit / v.data.rows;
    },
    release: () => session.release(),
  };
}
