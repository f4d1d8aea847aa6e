// An onnxruntime session of a model that also outputs intermediate tensors: what capture, verification and
// evaluation run models with.
import { clone } from '@bufbuild/protobuf';
import type { InferenceSession } from 'onnxruntime-web';
import {
  ModelProtoSchema,
  DataType,
  makeTensorValueInfo,
  serializeModel,
  float16BitsToFloat32,
  float32ToFloat16Bits,
  type Model,
} from '../onnx/index.js';
import { badInput } from '../errors.js';
import { modelInput, type ModelInput } from '../calibration.js';
import { loadRuntime, type Backend, type Ort, type RuntimeOptions } from './runtime.js';

export interface Activation {
  data: Float32Array;
  dims: number[];
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
  static async open(model: Model, extra: string[] = [], opts: RuntimeOptions = {}): Promise<Runner> {
    const { ort, backend } = await loadRuntime(opts.backend);
    const m = clone(ModelProtoSchema, model),
      g = m.graph!;
    const have = new Set(g.output.map((o) => o.name));
    const input = modelInput(model);
    for (const name of extra.filter((x) => !have.has(x))) {
      g.output.push(makeTensorValueInfo(name, input.elemType));
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
      const bad = v.findIndex((x) => !Number.isFinite(x));
      if (bad >= 0) {
        const where = `${v[bad]} on the calibration data (sample ${Math.floor(bad / (v.length / n))})`;
        throw badInput(`tensor ${name} has ${where}; the model or the data is broken`);
      }
      res.set(name, { data: v, dims: d });
    }
    return res;
  }

  release(): Promise<void> {
    return this.session.release();
  }
}
