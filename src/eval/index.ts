// Running a model over a data set: top-1 accuracy against labels, agreement with, relative error against and KL
// divergence from a reference model.
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import { Calibration, modelInputs, type Batch, type InputData } from '../calibration.js';
import { Runner, type Activation, type RuntimeOptions } from '../capture/index.js';
import { badInput } from '../errors.js';

export interface Fidelity {
  samples: number;
  /** Top-1 accuracy against labels, when given. */
  accuracy?: number;
  /**
   * Top-1 agreement with the reference model, when given: the share of rows of the output's last axis whose largest
   * entry is at the same place (per sample for a classifier, per position for a sequence's scores).
   */
  agreement?: number;
  /** ‖y − y_ref‖ / ‖y_ref‖ over all outputs, when a reference is given. */
  relError?: number;
  /** Mean KL(softmax(y_ref) ‖ softmax(y)) over the output's rows of its last axis, when a reference is given. */
  kl?: number;
  /** Shape of the first output for one batch, for the record. */
  outputDims: number[];
}

export interface EvaluateOptions extends RuntimeOptions {
  labels?: ArrayLike<number>;
  reference?: Model;
  onBatch?: (done: number, total: number) => void;
}

/**
 * Default batch size for evaluation (a model with a fixed batch size uses its own): the capture's. Batches of 256 ran
 * slower in onnxruntime (their activations leave the caches): evaluate() of 512 rows against the model itself took
 * 0.69 s on MobileNet, 0.60 on ResNet-20, 0.74 on VGG at 256, and 0.31, 0.39, 0.42 s at 64.
 */
export const EVAL_BATCH = 64;

/** The top-1 class of each of the `rows` rows of y. */
export function argmaxRows(y: Float32Array, rows: number): Int32Array {
  const c = y.length / rows,
    out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let j = 1; j < c; j++) if (y[r * c + j] > y[r * c + best]) best = j;
    out[r] = best;
  }
  return out;
}

/**
 * Σ over the rows of the last axis (`classes` values each) of KL(softmax(ref) ‖ softmax(y)), in float64: a smooth
 * measure of how far y's class scores moved from the reference's, where top-1 agreement only counts flips.
 */
export function klSum(ref: Float32Array, y: Float32Array, classes: number): number {
  let sum = 0;
  for (let r = 0; r < ref.length; r += classes) {
    let mr = -Infinity,
      my = -Infinity;
    for (let j = r; j < r + classes; j++) {
      mr = Math.max(mr, ref[j]!);
      my = Math.max(my, y[j]!);
    }
    let zr = 0,
      zy = 0;
    for (let j = r; j < r + classes; j++) {
      zr += Math.exp(ref[j]! - mr);
      zy += Math.exp(y[j]! - my);
    }
    // KL = Σ p (log p − log q) with log p = ref − mr − log zr, log q = y − my − log zy
    const shift = my + Math.log(zy) - mr - Math.log(zr);
    let kl = 0;
    for (let j = r; j < r + classes; j++) kl += (Math.exp(ref[j]! - mr) / zr) * (ref[j]! - y[j]! + shift);
    sum += kl;
  }
  return sum;
}

/** Bytes of a reference's outputs a Reference keeps for the next model compared with it. */
export const REFERENCE_BYTES = 256 * 2 ** 20;

/**
 * A reference model to compare models with: its outputs on the batches run so far, kept while they fit
 * `REFERENCE_BYTES` (a prune measures every size it makes on the same sample), and its session, opened when a batch
 * is asked for that no capture of the model handed over (seed).
 */
export class Reference {
  private kept = new Map<string, Map<string, Activation>>();
  private bytes = 0;
  private runner?: Promise<Runner>;
  /** Rows of the batches a capture handed over: comparisons then run batches of that size, to find them. */
  private seedRows?: number;

  private constructor(
    readonly model: Model,
    private readonly opts: RuntimeOptions,
    /** The reference's own fixed batch size, if any. */
    private readonly fixed: number | null,
  ) {}

  static of(model: Model, opts: RuntimeOptions = {}): Reference {
    return new Reference(model, opts, modelInputs(model)[0]?.dims[0] ?? null);
  }

  get outputNames(): string[] {
    return this.model.graph!.output.map((o) => o.name);
  }

  /** The batch size to run with: that of the batches handed over, else `preferred`, at most the fixed batch size. */
  batchSize(preferred: number): number {
    return this.seedRows ?? Math.min(preferred, this.fixed ?? Infinity);
  }

  /** Every output of the reference on a batch. */
  async outputs(b: Batch): Promise<Map<string, Activation>> {
    const hit = this.kept.get(`${b.start}+${b.rows}`);
    if (hit) return hit;
    this.runner ??= Runner.open(this.model, [], this.opts);
    const out = await (await this.runner).run(b, this.outputNames);
    this.keep(b, out);
    return out;
  }

  /**
   * The reference's outputs on a batch, computed by someone else: a capture running the whole model anyway (prune's
   * first run of the original). Later comparisons run batches of the same size.
   */
  seed(b: Batch, out: Map<string, Activation>): void {
    if (b.start === 0) this.seedRows = b.rows;
    this.keep(b, out);
  }

  /** Whether a capture handed outputs over already (another would only repeat them). */
  get seeded(): boolean {
    return this.seedRows !== undefined;
  }

  private keep(b: Batch, out: Map<string, Activation>): void {
    const key = `${b.start}+${b.rows}`,
      bytes = [...out.values()].reduce((n, x) => n + x.data.byteLength, 0);
    if (this.kept.has(key) || this.bytes + bytes > REFERENCE_BYTES) return;
    this.kept.set(key, out);
    this.bytes += bytes;
  }

  async release(): Promise<void> {
    const runner = this.runner;
    this.runner = undefined;
    await (await runner?.catch(() => undefined))?.release();
  }
}

export interface MeasureOptions {
  labels?: ArrayLike<number>;
  reference?: Reference;
  batch?: number;
  onBatch?: (done: number, total: number) => void;
}

/** Runs `model` over the data (first output = class scores) against labels and/or a reference model. */
export async function evaluate(model: Model, data: InputData, opts: EvaluateOptions = {}): Promise<Fidelity> {
  const calib = Calibration.of(model, data);
  if (opts.reference) Calibration.of(opts.reference, calib); // the reference must take the same inputs
  if (opts.labels && opts.labels.length !== calib.rows)
    throw badInput(`${opts.labels.length} labels for ${calib.rows} samples`);
  const run = await Runner.open(model, [], opts),
    reference = opts.reference && Reference.of(opts.reference, opts);
  try {
    return await measure(run, model.graph!.output[0]!.name, calib, { ...opts, reference });
  } finally {
    await run.release();
    await reference?.release();
  }
}

/** The loop of evaluate, on a session already open (`out`: its output of class scores). */
export async function measure(run: Runner, out: string, calib: Calibration, opts: MeasureOptions): Promise<Fidelity> {
  const ref = opts.reference;
  let correct = 0,
    agree = 0,
    err = 0,
    norm = 0,
    kl = 0,
    agreeRows = 0,
    dims: number[] = [];
  // a reference with a fixed batch size of its own runs batches no larger than that
  const size = Math.min(calib.batchSize(opts.batch ?? EVAL_BATCH), ref?.batchSize(Infinity) ?? Infinity);
  for (const b of calib.batches(size)) {
    const y = (await run.run(b, [out])).get(out)!;
    dims = y.dims;
    const n = b.rows;
    if (opts.labels) {
      const top = argmaxRows(y.data, n);
      for (let i = 0; i < n; i++) if (top[i] === Number(opts.labels[b.start + i])) correct++;
    }
    if (ref) {
      const r = (await ref.outputs(b)).get(ref.outputNames[0]!)!;
      if (r.data.length !== y.data.length)
        throw badInput(`the reference model's output has shape [${r.dims}], this model's [${y.dims}]`);
      // per row of the last axis: a sample's class, or each position's of a sequence ([B, T, V], [T, B, C])
      const classes = y.dims[y.dims.length - 1] ?? 1,
        rows = y.data.length / classes;
      const top = argmaxRows(y.data, rows),
        rt = argmaxRows(r.data, rows);
      for (let i = 0; i < rows; i++) if (rt[i] === top[i]) agree++;
      agreeRows += rows;
      for (let i = 0; i < y.data.length; i++) {
        err += (y.data[i] - r.data[i]) ** 2;
        norm += r.data[i] ** 2;
      }
      kl += klSum(r.data, y.data, classes);
    }
    opts.onBatch?.(b.start + n, calib.rows);
  }
  const n = calib.rows;
  return {
    samples: n,
    outputDims: dims,
    ...(opts.labels ? { accuracy: correct / n } : {}),
    ...(ref
      ? { agreement: agree / (agreeRows || 1), relError: Math.sqrt(err / (norm || 1)), kl: kl / (agreeRows || 1) }
      : {}),
  };
}
