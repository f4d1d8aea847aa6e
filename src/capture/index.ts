import { clone, create } from '@bufbuild/protobuf';
import {
  ModelProtoSchema,
  TypeProtoSchema,
  TypeProto_TensorSchema,
  ValueInfoProtoSchema,
  DataType,
  serializeModel,
  float16BitsToFloat32,
  float32ToFloat16Bits,
  initializerMap,
  type Model,
} from '../onnx/index.js';
import { badInput } from '../errors.js';
import type { NpyFile } from '../npy.js';
import type { Unit } from '../graph/types.js';
import { GramAccumulator, type Gram } from '../kernels/gram.js';
import { consumerWeightMatrix } from '../graph/analyze.js';
import { ChannelStatsAccumulator, type Captured, type StatsWanted } from './stats.js';
import { getKernels } from '../kernels/instances.js';
import { loadRuntime, type Backend, type Ort } from './runtime.js';
import type { InferenceSession } from 'onnxruntime-web';
import { capturePasses } from '../limits.js';

export { loadRuntime, type Backend } from './runtime.js';

// Activation capture: onnxruntime runs the model on calibration batches with the tensors we need added as graph
// outputs; each batch streams into the Gram accumulators and is dropped.

export interface Activation {
  data: Float32Array;
  dims: number[];
}

export interface ModelInput {
  name: string;
  dims: (number | null)[];
  elemType: number;
}

/** The model's one data input (inputs that are initializers do not count). */
export function modelInput(model: Model): ModelInput {
  const g = model.graph!,
    inits = initializerMap(g);
  const inputs = g.input.filter((i) => !inits.has(i.name));
  if (inputs.length !== 1)
    throw badInput(
      `the model has ${inputs.length} data inputs (${inputs.map((i) => i.name).join(', ')}); subprune handles models with exactly one`,
    );
  const t = inputs[0].type?.value;
  if (t?.case !== 'tensorType') throw badInput(`input ${inputs[0].name} is not a tensor`);
  const elemType = t.value.elemType;
  if (elemType !== DataType.FLOAT && elemType !== DataType.FLOAT16)
    throw badInput(
      `input ${inputs[0].name} has data type ${DataType[elemType] ?? elemType}; subprune needs float32 or float16 inputs`,
    );
  const dims = (t.value.shape?.dim ?? []).map((d) =>
    d.value.case === 'dimValue' && d.value.value > 0n ? Number(d.value.value) : null,
  );
  return { name: inputs[0].name, dims, elemType };
}

/** Checks calibration data against the model input; returns the batch size to run with. */
export function checkData(model: Model, data: NpyFile, batch = 64): number {
  const inp = modelInput(model);
  const shape = data.shape;
  if (data.rows === 0) throw badInput(`${data.path} holds no samples`);
  if (data.dtype !== 'f4' && data.dtype !== 'f8')
    throw badInput(
      `${data.path} holds ${data.dtype === 'u1' ? 'uint8' : data.dtype === 'i4' ? 'int32' : 'int64'} values; model inputs must be float32 (numpy: x.astype('float32'), after the model's own preprocessing)`,
    );
  if (shape.length !== inp.dims.length)
    throw badInput(
      `${data.path} has shape [${shape}] (rank ${shape.length}); the model input ${inp.name} has rank ${inp.dims.length} ([${inp.dims.map((d) => d ?? '?')}]), first axis = samples`,
    );
  inp.dims.forEach((d, i) => {
    if (i > 0 && d !== null && d !== shape[i])
      throw badInput(
        `${data.path} has shape [${shape}] but the model input ${inp.name} needs [${inp.dims.map((x) => x ?? '?')}]`,
      );
  });
  return inp.dims[0] ?? batch;
}

/** An onnxruntime session of `model` that also outputs the named intermediate tensors. */
export class Runner {
  private constructor(
    private readonly ort: Ort,
    private readonly session: InferenceSession,
    readonly backend: Backend,
    readonly input: ModelInput,
    readonly outputs: string[],
  ) {}

  /** `backend`: see loadRuntime (default: onnxruntime-node if it loads, else onnxruntime-web). */
  static async open(model: Model, extra: string[] = [], opts: { backend?: Backend } = {}): Promise<Runner> {
    const { ort, backend } = await loadRuntime(opts.backend);
    const m = clone(ModelProtoSchema, model),
      g = m.graph!;
    const have = new Set(g.output.map((o) => o.name));
    const input = modelInput(model);
    for (const name of extra) {
      if (have.has(name)) continue;
      const tensor = create(TypeProto_TensorSchema, { elemType: input.elemType });
      g.output.push(
        create(ValueInfoProtoSchema, {
          name,
          type: create(TypeProtoSchema, { value: { case: 'tensorType', value: tensor } }),
        }),
      );
      have.add(name);
    }
    let session;
    try {
      // logSeverityLevel 3: onnxruntime's warnings would break the CLI's one-line messages; its errors are thrown
      session = await ort.InferenceSession.create(serializeModel(m), {
        graphOptimizationLevel: 'basic',
        logSeverityLevel: 3,
      });
    } catch (e) {
      throw badInput(`onnxruntime cannot load the model: ${(e as Error).message.split('\n')[0]}`, e);
    }
    return new Runner(ort, session, backend, input, [...g.output.map((o) => o.name)]);
  }

  /** Runs one batch (f32 data, dims with the batch first) and returns the requested tensors as f32. */
  async run(data: Float32Array, dims: number[], names: string[]): Promise<Map<string, Activation>> {
    const fixed = this.input.dims[0],
      n = dims[0];
    let feedData = data,
      feedDims = dims;
    if (fixed !== null && fixed !== n) {
      // a model with a fixed batch size: pad the last batch with copies of its first sample, then drop them
      const per = data.length / n;
      feedData = new Float32Array(fixed * per);
      for (let i = 0; i < fixed; i++) feedData.set(data.subarray((i % n) * per, ((i % n) + 1) * per), i * per);
      feedDims = [fixed, ...dims.slice(1)];
    }
    const ort = this.ort;
    const tensor =
      this.input.elemType === DataType.FLOAT16
        ? new ort.Tensor('float16', Uint16Array.from(feedData, float32ToFloat16Bits), feedDims)
        : new ort.Tensor('float32', feedData, feedDims);
    let out;
    try {
      out = await this.session.run({ [this.input.name]: tensor }, names);
    } catch (e) {
      throw badInput(`onnxruntime cannot run the model on the data: ${(e as Error).message.split('\n')[0]}`, e);
    }
    const res = new Map<string, Activation>();
    for (const name of names) {
      const t = out[name];
      let v =
        t.type === 'float16'
          ? Float32Array.from(t.data as Uint16Array, float16BitsToFloat32)
          : (t.data as Float32Array);
      const d = [...t.dims];
      if (d[0] !== n && fixed !== null) {
        v = v.subarray(0, (v.length / d[0]) * n);
        d[0] = n;
      }
      for (let i = 0; i < v.length; i++) {
        if (!Number.isFinite(v[i]))
          throw badInput(
            `tensor ${name} has ${v[i]} on the calibration data (sample ${Math.floor(i / (v.length / n))}); the model or the data is broken`,
          );
      }
      res.set(name, { data: v, dims: d });
    }
    return res;
  }

  release(): Promise<void> {
    return this.session.release();
  }
}

/** Iterates the samples of an .npy file in batches, checking that they are finite. */
export function* batches(
  data: NpyFile,
  batch: number,
): Generator<{ data: Float32Array; dims: number[]; start: number }> {
  for (let r0 = 0; r0 < data.rows; r0 += batch) {
    const r1 = Math.min(data.rows, r0 + batch),
      x = data.readF32(r0, r1);
    for (let i = 0; i < x.length; i++) {
      if (!Number.isFinite(x[i]))
        throw badInput(
          `${data.path}: ${x[i]} in sample ${r0 + Math.floor(i / data.rowSize)}; calibration data must be finite`,
        );
    }
    yield { data: x, dims: [r1 - r0, ...data.shape.slice(1)], start: r0 };
  }
}

// A capture holds kernel memory (a stack allocator) across awaits, so two at once (concurrent prune() calls) would free
// each other's Gram matrices: captures take turns.
let captures: Promise<unknown> = Promise.resolve();

/**
 * Gram matrices of each unit's consumer input over the calibration set, in one pass of `model` (and of `target`, for
 * the asymmetric objective: its activations are A), or in as few passes as the kernels' 4 GiB allow.
 */
export function captureGrams(...args: Parameters<typeof captureOnce>): ReturnType<typeof captureOnce> {
  const run = captures.then(() => capturePassesOf(...args));
  captures = run.catch(() => undefined);
  return run;
}

async function capturePassesOf(
  ...[model, units, data, opts = {}]: Parameters<typeof captureOnce>
): ReturnType<typeof captureOnce> {
  const passes = capturePasses(units, !!opts.target, opts.passBytes),
    out = new Map<string, Captured>();
  if (!passes.length) return captureOnce(model, units, data, opts); // still checks the data
  for (const [p, pass] of passes.entries()) {
    const onBatch = opts.onBatch && ((d: number, n: number) => opts.onBatch!(p * n + d, passes.length * n));
    for (const [id, g] of await captureOnce(model, pass, data, { ...opts, onBatch })) out.set(id, g);
  }
  return out;
}

async function captureOnce(
  model: Model,
  units: Unit[],
  data: NpyFile,
  opts: {
    target?: Model;
    batch?: number;
    backend?: Backend;
    threads?: number;
    onBatch?: (done: number, total: number) => void;
    /** Per-channel statistics of B to collect too (for the activation-norm and sampling baselines). */
    stats?: StatsWanted;
    /** Kernel memory one pass may use for its Gram matrices (default: all of WebAssembly's 4 GiB there is). */
    passBytes?: number;
  } = {},
): Promise<Map<string, Captured>> {
  const batch = checkData(model, data, opts.batch);
  if (!units.length) return new Map();
  const names = [...new Set(units.map((u) => u.consumerInput))];
  const run = await Runner.open(model, names, opts),
    tgt = opts.target ? await Runner.open(opts.target, names, opts) : undefined;
  const kernels = getKernels('wasm', opts.threads),
    mark = kernels.arena.mark();
  const acc = new Map(units.map((u) => [u.id, new GramAccumulator(u.d, { asymmetric: !!tgt, kernels })]));
  const want = opts.stats,
    st =
      want &&
      new Map(
        units.map((u) => [
          u.id,
          new ChannelStatsAccumulator(u, want, want.sensitivity ? consumerWeightMatrix(model, u) : undefined),
        ]),
      );
  // onnxruntime computes batch i+1 while the kernels accumulate batch i.
  const forward = (b: { data: Float32Array; dims: number[] }) =>
    Promise.all([run.run(b.data, b.dims, names), tgt?.run(b.data, b.dims, names)]);
  let pending: ReturnType<typeof forward> | undefined;
  try {
    const it = batches(data, batch);
    let cur = it.next();
    pending = cur.done ? undefined : forward(cur.value);
    while (!cur.done) {
      const b = cur.value,
        [got, want] = await pending!;
      cur = it.next();
      pending = cur.done ? undefined : forward(cur.value);
      for (const u of units) {
        const B = got.get(u.consumerInput)!,
          A = want?.get(u.consumerInput);
        const a = acc.get(u.id)!;
        if (A && A.data.length !== B.data.length)
          throw new Error(`target activation ${u.consumerInput} has shape [${A.dims}], pruned model [${B.dims}]`);
        if (u.consumerKind === 'conv') a.addConv(B.data, B.dims, u.conv!, A?.data);
        else a.add(B.data, A?.data);
        st?.get(u.id)!.add(B.data, B.dims);
      }
      opts.onBatch?.(b.start + b.dims[0], data.rows);
    }
    return new Map([...acc].map(([id, a]) => [id, { ...a.result(), ...(st ? { stats: st.get(id)!.result() } : {}) }]));
  } finally {
    kernels.arena.release(mark);
    await pending?.catch(() => {}); // after an error: a run still in flight must not outlive its session
    await run.release();
    await tgt?.release();
  }
}
