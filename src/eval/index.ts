// Running a model over a data set: top-1 accuracy against labels, agreement with, relative error against and KL
// divergence from a reference model.
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import { Calibration, type InputData } from '../calibration.js';
import { Runner, type RuntimeOptions } from '../capture/index.js';
import { badInput } from '../errors.js';

export interface Fidelity {
  samples: number;
  /** Top-1 accuracy against labels, when given. */
  accuracy?: number;
  /** Top-1 agreement with the reference model, when given. */
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

/** Default batch size for evaluation (a model with a fixed batch size uses its own). */
export const EVAL_BATCH = 256;

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

/** Runs `model` over the data (first output = class scores) against labels and/or a reference model. */
export async function evaluate(model: Model, data: InputData, opts: EvaluateOptions = {}): Promise<Fidelity> {
  const calib = Calibration.of(model, data),
    ref = opts.reference;
  const refCalib = ref && Calibration.of(ref, calib); // the reference must take the same inputs
  if (opts.labels && opts.labels.length !== calib.rows)
    throw badInput(`${opts.labels.length} labels for ${calib.rows} samples`);
  const out = model.graph!.output[0].name;
  const run = await Runner.open(model, [], opts),
    refRun = ref ? await Runner.open(ref, [], opts) : undefined;
  let correct = 0,
    agree = 0,
    err = 0,
    norm = 0,
    kl = 0,
    klRows = 0,
    dims: number[] = [];
  // a reference with a fixed batch size of its own runs batches no larger than that
  const size = Math.min(calib.batchSize(opts.batch ?? EVAL_BATCH), refCalib?.batchSize(Infinity) ?? Infinity);
  try {
    for (const b of calib.batches(size)) {
      const y = (await run.run(b, [out])).get(out)!;
      dims = y.dims;
      const n = b.rows,
        top = argmaxRows(y.data, n);
      if (opts.labels) for (let i = 0; i < n; i++) if (top[i] === Number(opts.labels[b.start + i])) correct++;
      if (refRun) {
        const r = (await refRun.run(b, [ref!.graph!.output[0].name])).values().next().value!;
        if (r.data.length !== y.data.length)
          throw badInput(`the reference model's output has shape [${r.dims}], this model's [${y.dims}]`);
        const rt = argmaxRows(r.data, n);
        for (let i = 0; i < n; i++) if (rt[i] === top[i]) agree++;
        for (let i = 0; i < y.data.length; i++) {
          err += (y.data[i] - r.data[i]) ** 2;
          norm += r.data[i] ** 2;
        }
        const classes = y.dims[y.dims.length - 1] ?? 1;
        kl += klSum(r.data, y.data, classes);
        klRows += y.data.length / classes;
      }
      opts.onBatch?.(b.start + n, calib.rows);
    }
  } finally {
    await run.release();
    await refRun?.release();
  }
  const n = calib.rows;
  return {
    samples: n,
    outputDims: dims,
    ...(opts.labels ? { accuracy: correct / n } : {}),
    ...(ref ? { agreement: agree / n, relError: Math.sqrt(err / (norm || 1)), kl: kl / (klRows || 1) } : {}),
  };
}
