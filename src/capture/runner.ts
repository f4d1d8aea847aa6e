// An onnxruntime session of a model that also outputs intermediate tensors: what capture, verification and
// evaluation run models with.
import type { InferenceSession } from 'onnxruntime-web';
import { create } from '@bufbuild/protobuf';
import {
  ValueInfoProtoSchema,
  DataType,
  makeTensorValueInfo,
  modelSource,
  float16BitsToFloat32,
  float32ToFloat16Bits,
  type GraphProto,
  type Model,
  type NodeProto,
  type Written,
} from '../onnx/index.js';
import { badInput, internal } from '../errors.js';
import { firstNonFinite, modelInputs, type Batch, type Feed, type ModelInput } from '../calibration.js';
import { loadRuntime, type Backend, type Ort, type RuntimeOptions } from './runtime.js';

/** Whether a node holds a subgraph (If, Loop, Scan), whose reads of outer tensors are not among its inputs. */
export const holdsSubgraph = (n: NodeProto) => n.attribute.some((a) => a.g || a.graphs.length);

/**
 * The nodes that `names` depend on, in graph order, stopping at the tensors in `given` (fed to the session instead);
 * undefined when one of them holds a subgraph (a detector's post-processing after the layers captured does not).
 */
export function neededNodes(
  g: GraphProto,
  names: string[],
  given: ReadonlySet<string> = new Set(),
): NodeProto[] | undefined {
  const producer = new Map(g.node.flatMap((n) => n.output.map((o) => [o, n] as const)));
  const need = new Set<NodeProto>(),
    stack = [...names];
  for (let t = stack.pop(); t !== undefined; t = stack.pop()) {
    const n = producer.get(t);
    if (!n || need.has(n) || given.has(t)) continue;
    need.add(n);
    stack.push(...n.input.filter((x) => x));
  }
  return [...need].some(holdsSubgraph) ? undefined : g.node.filter((n) => need.has(n));
}

/** A tensor as onnxruntime gives it. */
export type OrtTensor = InstanceType<Ort['Tensor']>;

export interface Activation {
  data: Float32Array;
  dims: number[];
}

/**
 * An onnxruntime session of a model's bytes or of its files: onnxruntime-node finds the data file next to the .onnx
 * (and takes externalData only as buffers), onnxruntime-web is told where it is.
 */
export function openSession(
  ort: Ort,
  backend: Backend,
  model: Uint8Array | Written,
  opts: InferenceSession.SessionOptions,
): Promise<InferenceSession> {
  if (model instanceof Uint8Array) return ort.InferenceSession.create(model, opts);
  const data = backend === 'web' ? model.data : undefined;
  const externalData = data ? { externalData: [{ path: data.location, data: data.file }] } : {};
  return ort.InferenceSession.create(model.onnx, { ...opts, ...externalData });
}

/** Session config entries for threads that sleep as soon as a run ends (Runner.open's `spin: false`). */
const NO_SPIN = { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } };

/** An onnxruntime session of `model` that also outputs the named intermediate tensors. */
export class Runner {
  private constructor(
    private readonly ort: Ort,
    private readonly session: InferenceSession,
    readonly backend: Backend,
    readonly inputs: ModelInput[],
    readonly outputs: string[],
    /** The model inputs the session reads (a part of the model may read none: its runs then read no data). */
    private readonly fed: ReadonlySet<string>,
  ) {}

  /**
   * `backend`: see loadRuntime (default: onnxruntime-node if it loads, else onnxruntime-web). With `only`, the session
   * computes just the `extra` tensors: onnxruntime runs every node of a graph whatever outputs are fetched, so a
   * capture of an early group would otherwise pay for the whole model. `given`: intermediate tensors (with their data
   * types) that runs feed instead of computing them (a capture's cached frontier, frontier.ts); only with `only`.
   * `optimize: false` runs the graph as ONNX defines it: onnxruntime's fusions can run a graph its semantics refuse
   * (a Reshape fused with the Shape arithmetic before it ignores a wrong entry). `spin: false` for a session whose
   * runs take turns with another's: onnxruntime's threads spin after each run, taking the cores the other run needs
   * (a sequential prune's verification, which runs the original beside the pruned model, took 0.74–1.07 s on
   * MobileNet with spinning and 0.44–0.56 s without).
   */
  static async open(
    model: Model,
    extra: string[] = [],
    opts: RuntimeOptions & { optimize?: boolean; spin?: boolean } = {},
    only = false,
    given: ReadonlyMap<string, DataType> = new Map(),
  ): Promise<Runner> {
    const { ort, backend } = await loadRuntime(opts.backend);
    // a copy of the graph's node and output lists only: the weights are shared, not copied (a large model would need
    // twice as much)
    const g = { ...model.graph!, output: [...model.graph!.output] },
      m: Model = { ...model, graph: g };
    const needed = only ? neededNodes(g, extra, new Set(given.keys())) : undefined;
    if (needed) {
      const read = new Set([...needed.flatMap((n) => n.input), ...extra]);
      g.node = needed;
      g.output = g.output.filter((o) => extra.includes(o.name));
      // only the inputs and constants the nodes read, so that a part of a large model is small
      g.initializer = g.initializer.filter((t) => read.has(t.name));
      g.input = [
        ...g.input.filter((x) => read.has(x.name)),
        ...[...given].filter(([name]) => read.has(name)).map(([name, type]) => makeTensorValueInfo(name, type)),
      ];
    } else if (given.size) throw new Error('Runner.open: given tensors need `only` and a graph without subgraphs');
    const have = new Set(g.output.map((o) => o.name));
    const inputs = modelInputs(model);
    // outputs declared without a type: onnxruntime takes the producing node's (activations are float or float16, a
    // frontier's tensors may be shapes)
    for (const name of extra.filter((x) => !have.has(x))) {
      g.output.push(create(ValueInfoProtoSchema, { name }));
      have.add(name);
    }
    let session;
    const source = modelSource(m); // a model past protobuf's 2 GB goes through files with external data
    try {
      // logSeverityLevel 3: onnxruntime's warnings would break the CLI's one-line messages; its errors are thrown
      session = await openSession(ort, backend, 'bytes' in source ? source.bytes : source.written, {
        graphOptimizationLevel: opts.optimize === false ? 'disabled' : 'basic',
        logSeverityLevel: 3,
        ...(opts.spin === false ? { extra: NO_SPIN } : {}),
      });
    } catch (e) {
      throw badInput(`onnxruntime cannot load the model: ${(e as Error).message.split('\n')[0]}`, e);
    } finally {
      if ('dispose' in source) source.dispose();
    }
    const fed = new Set(g.input.map((x) => x.name).filter((x) => !given.has(x)));
    return new Runner(ort, session, backend, inputs, [...g.output.map((o) => o.name)], fed);
  }

  /** An input's feed as an onnxruntime tensor, padded to the model's fixed batch size (copies of its first sample). */
  tensor(input: ModelInput, feed: Feed, n: number) {
    const fixed = input.dims[0];
    let { data, dims } = feed;
    if (fixed !== null && fixed !== n) {
      const per = data.length / n,
        padded = new (data.constructor as new (k: number) => typeof data)(fixed * per);
      for (let i = 0; i < fixed; i++) padded.set(data.subarray((i % n) * per, ((i % n) + 1) * per) as never, i * per);
      [data, dims] = [padded, [fixed, ...dims.slice(1)]];
    }
    const ort = this.ort;
    if (input.elemType === DataType.FLOAT16)
      return new ort.Tensor('float16', Uint16Array.from(data as Float32Array, float32ToFloat16Bits), dims);
    if (data instanceof BigInt64Array) return new ort.Tensor('int64', data, dims);
    if (data instanceof Int32Array) return new ort.Tensor('int32', data, dims);
    return new ort.Tensor('float32', data, dims);
  }

  /**
   * Runs one batch and returns the requested tensors as onnxruntime gives them (any type; with the model's fixed batch
   * size, padded); requested graph inputs come from the batch itself, `given` tensors from `given`.
   */
  async runRaw(
    batch: Batch,
    names: string[],
    given: Record<string, OrtTensor> = {},
  ): Promise<Record<string, OrtTensor>> {
    const fed = this.inputs.filter((x) => this.fed.has(x.name));
    const feeds = {
      ...Object.fromEntries(fed.map((x) => [x.name, this.tensor(x, batch.feeds.get(x.name)!, batch.rows)])),
      ...given,
    };
    const computed = names.filter((name) => !(name in feeds));
    let out;
    try {
      out = computed.length ? await this.session.run(feeds, computed) : {};
    } catch (e) {
      const why = (e as Error).message.split('\n')[0];
      // fed cached tensors, the part ran on what earlier runs of the same data computed: the fault is subprune's
      if (Object.keys(given).length)
        throw internal(`onnxruntime cannot run a part of the model fed cached tensors (a bug in subprune): ${why}`, e);
      throw badInput(`onnxruntime cannot run the model on the data: ${why}`, e);
    }
    return Object.fromEntries(names.map((name) => [name, (feeds[name] ?? out[name])!]));
  }

  /** Runs one batch and returns the requested tensors as f32 (the batch's own samples, without padding). */
  async run(batch: Batch, names: string[]): Promise<Map<string, Activation>> {
    return activations(batch, await this.runRaw(batch, names), names, this.inputs[0]?.dims[0] ?? null);
  }

  release(): Promise<void> {
    return this.session.release();
  }
}

/**
 * The named tensors of one batch's run as f32 (the batch's own samples, without the padding to a fixed batch size),
 * checked to be finite.
 */
export function activations(
  batch: Batch,
  out: Record<string, OrtTensor>,
  names: string[],
  fixed: number | null,
): Map<string, Activation> {
  const n = batch.rows;
  const res = new Map<string, Activation>();
  for (const name of names) {
    const t = out[name];
    let v =
      t.type === 'float16'
        ? Float32Array.from(t.data as Uint16Array, float16BitsToFloat32)
        : t.type === 'float32'
          ? (t.data as Float32Array)
          : Float32Array.from(t.data as ArrayLike<number | bigint>, Number); // int64 outputs hold BigInts
    const d = [...t.dims];
    if (d[0] !== n && fixed !== null) {
      v = v.subarray(0, (v.length / d[0]) * n);
      d[0] = n;
    }
    const bad = firstNonFinite(v);
    if (bad >= 0) {
      const where = `${v[bad]} on the calibration data (sample ${batch.start + Math.floor(bad / (v.length / n))})`;
      throw badInput(`tensor ${name} has ${where}; the model or the data is broken`);
    }
    res.set(name, { data: v, dims: d });
  }
  return res;
}
