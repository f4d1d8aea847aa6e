// Running a model over a data set: top-1 accuracy against labels, agreement with, relative error against and KL
// divergence from a reference model.
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import { Calibration, modelInputs, type Batch, type InputData } from '../calibration.js';
import { Runner, type Activation, type RuntimeOptions } from '../capture/index.js';
import { badInput } from '../errors.js';
import { outputAxesOf } from '../graph/analyze.js';
import type { OutputAxis } from '../graph/types.js';

export interface Fidelity {
  samples: number;
  /** Top-1 accuracy against labels, when given (the first output's largest entry per sample). */
  accuracy?: number;
  /**
   * Top-1 agreement with the reference model, when given and an output holds class scores (OutputAxis): the share of
   * the first such output's positions whose largest score is the reference's (per sample for a classifier, per
   * position for a sequence's or a pixel's scores).
   */
  agreement?: number;
  /** The largest relative error ‖y − y_ref‖ / ‖y_ref‖ of a float output, when a reference is given. */
  relError?: number;
  /** Mean KL(softmax(y_ref) ‖ softmax(y)) over the positions of the output `agreement` measures. */
  kl?: number;
  /** Each compared output's own figures, when a reference is given. */
  outputs?: OutputFidelity[];
  /** The outputs not compared (OutputAxis.uncompared: integers, shapes that depend on the values), if any. */
  uncompared?: string[];
  /** Shape of the first output for one batch, for the record. */
  outputDims: number[];
}

/** One output against the reference's: its relative error, and agreement and KL if it holds class scores. */
export interface OutputFidelity {
  name: string;
  relError: number;
  /**
   * ‖y − y_ref‖ / ‖y_ref − mean(y_ref)‖ for an output without class scores (the mean over all its
   * entries of the rows measured): the error against how much the reference varies. relError flatters
   * an output whose values sit far from 0 (a click probability near its base rate, a depth map): DLRM
   * pruned 2× by FLOPs had a relError of 0.0001 and this 0.10. Absent when the reference is constant.
   */
  centeredRelError?: number;
  agreement?: number;
  kl?: number;
  /**
   * The reference's top-1 class, when it is the same at every position measured (2 or more): agreement then says
   * only whether that class stays on top, not whether the scores follow the input (random weights, or inputs a model
   * cannot tell apart: a real-size EfficientNetV2 and ViT of random weights agreed 100 % on noise with one class).
   */
  oneClass?: number;
  /**
   * With oneClass: ‖y − y_ref‖ / ‖y_ref − ȳ_ref‖, ȳ_ref each score's mean over the inputs measured (per
   * class and position): the error against how much the scores follow the input. relError flatters scores that barely
   * do (of random weights, a constant per class and a little of the input): SKNet-50 pruned 2× had a relError of
   * 0.0026 and this 0.92. Absent when the scores do not vary over the inputs, or their shape does between batches.
   */
  spreadRelError?: number;
  /** The reference's output was 0 at every position: relError is then ‖y‖ and agreement compares ties. */
  zeroReference?: true;
}

export { flattered } from './notes.js';

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

/**
 * The top-1 class at each position of y, whose classes lie along an axis of `classes` entries with `inner` positions
 * after it (a stride of `inner`): position o·inner + i has its scores at (o·classes + c)·inner + i.
 */
export function argmaxAxis(y: Float32Array, classes: number, inner = 1): Int32Array {
  const outer = y.length / (classes * inner),
    out = new Int32Array(outer * inner);
  for (let o = 0; o < outer; o++)
    for (let i = 0; i < inner; i++) {
      const at = o * classes * inner + i;
      let best = 0;
      for (let c = 1; c < classes; c++) if (y[at + c * inner]! > y[at + best * inner]!) best = c;
      out[o * inner + i] = best;
    }
  return out;
}

/** The top-1 class of each of the `rows` rows of y (all of a row's values its scores). */
export const argmaxRows = (y: Float32Array, rows: number): Int32Array => argmaxAxis(y, y.length / rows);

/**
 * Σ over the positions of y (classes along an axis of `classes` entries, `inner` positions after it) of
 * KL(softmax(ref) ‖ softmax(y)), in float64: a smooth measure of how far y's class scores moved from the reference's,
 * where top-1 agreement only counts flips.
 */
export function klSum(ref: Float32Array, y: Float32Array, classes: number, inner = 1): number {
  let sum = 0;
  for (let o = 0; o < ref.length; o += classes * inner)
    for (let i = o; i < o + inner; i++) {
      const end = i + classes * inner;
      let mr = -Infinity,
        my = -Infinity;
      for (let j = i; j < end; j += inner) {
        mr = Math.max(mr, ref[j]!);
        my = Math.max(my, y[j]!);
      }
      let zr = 0,
        zy = 0;
      for (let j = i; j < end; j += inner) {
        zr += Math.exp(ref[j]! - mr);
        zy += Math.exp(y[j]! - my);
      }
      // KL = Σ p (log p − log q) with log p = ref − mr − log zr, log q = y − my − log zy
      const shift = my + Math.log(zy) - mr - Math.log(zr);
      for (let j = i; j < end; j += inner) sum += (Math.exp(ref[j]! - mr) / zr) * (ref[j]! - y[j]! + shift);
    }
  return sum;
}

/**
 * An output's classes and the positions after its class axis (see argmaxAxis); without an axis, all of a sample's
 * values are its scores.
 */
export function classesOf(dims: number[], axis?: number): { classes: number; inner: number } {
  const size = (d: number[]) => d.reduce((a, b) => a * b, 1);
  return axis === undefined
    ? { classes: size(dims.slice(1)), inner: 1 }
    : { classes: dims[axis]!, inner: size(dims.slice(axis + 1)) };
}

/**
 * spreadRelError from the squared error `err`, the reference's Σ r² `norm`, and its sums over `rows` rows per
 * entry of a row: Σ (r − ȳ)² = Σ r² − Σ_entries (Σ_rows r)² / rows, in float64 (a spread lost in its
 * rounding counts as none).
 */
function acrossInputs(err: number, norm: number, rowSum: Float64Array | undefined, rows: number) {
  if (!rowSum || !(rows > 1)) return {};
  const spread = norm - rowSum.reduce((a, v) => a + v * v, 0) / rows;
  return spread > 1e-12 * norm ? { spreadRelError: Math.sqrt(err / spread) } : {};
}

/**
 * A model's outputs against the reference's, summed over batches: each output's squared error and norm, and for an
 * output with class scores (OutputAxis) its positions, agreements and KL.
 */
export class OutputComparison {
  private readonly sums: {
    err: number;
    norm: number;
    sum: number;
    n: number;
    positions: number;
    agree: number;
    kl: number;
    /** The reference's top-1 class at every position so far, or -1 once two differ (undefined before any). */
    top?: number;
    /** Of class scores: the reference's sum over the rows at each entry of a row, and the rows (spreadRelError). */
    rowSum?: Float64Array;
    rows: number;
  }[];
  readonly axes: readonly OutputAxis[];
  private readonly skipped: string[];
  constructor(outputs: readonly OutputAxis[]) {
    this.axes = outputs.filter((o) => !o.uncompared);
    this.skipped = outputs.filter((o) => o.uncompared).map((o) => o.name);
    this.sums = this.axes.map(() => ({ err: 0, norm: 0, sum: 0, n: 0, positions: 0, agree: 0, kl: 0, rows: 0 }));
  }

  /** Adds a batch: the model's outputs `y` and the reference's `ref`, by name. */
  add(y: Map<string, Activation>, ref: Map<string, Activation>): void {
    this.axes.forEach(({ name, classAxis }, k) => {
      const a = y.get(name)!,
        r = ref.get(name)!,
        s = this.sums[k]!;
      if (a.data.length !== r.data.length)
        throw badInput(`the reference model's output ${name} has shape [${r.dims}], this model's [${a.dims}]`);
      for (let i = 0; i < a.data.length; i++) {
        s.err += (a.data[i]! - r.data[i]!) ** 2;
        s.norm += r.data[i]! ** 2;
        s.sum += r.data[i]!;
      }
      s.n += a.data.length;
      if (classAxis === undefined) return;
      const { classes, inner } = classesOf(r.dims, classAxis);
      const top = argmaxAxis(a.data, classes, inner),
        rt = argmaxAxis(r.data, classes, inner);
      for (let i = 0; i < top.length; i++) {
        if (top[i] === rt[i]) s.agree++;
        s.top = s.top === undefined || s.top === rt[i] ? rt[i] : -1;
      }
      s.positions += top.length;
      s.kl += klSum(r.data, a.data, classes, inner);
      // NaN once a batch's rows have another length (free axes): then no spread
      const row = r.data.length / (r.dims[0] || 1);
      s.rowSum ??= new Float64Array(row);
      if (s.rowSum.length !== row) s.rows = NaN;
      else for (let i = 0; i < r.data.length; i++) s.rowSum[i % row] += r.data[i]!;
      s.rows += r.dims[0]!;
    });
  }

  /** Each output's figures (OutputFidelity). */
  outputs(): OutputFidelity[] {
    return this.axes.map(({ name, classAxis }, k) => {
      const s = this.sums[k]!;
      const relError = Math.sqrt(s.err / (s.norm || 1)),
        zero = s.norm === 0 ? { zeroReference: true as const } : {};
      // Σ (r − mean)² = Σ r² − (Σ r)² / n, in float64; a spread lost in the rounding of Σ r² counts as none
      const spread = s.norm - (s.sum * s.sum) / (s.n || 1),
        centered = spread > 1e-12 * s.norm ? { centeredRelError: Math.sqrt(s.err / spread) } : {};
      return classAxis === undefined
        ? { name, relError, ...centered, ...zero }
        : {
            ...{ name, relError, agreement: s.agree / (s.positions || 1), kl: s.kl / (s.positions || 1) },
            ...(s.positions > 1 && s.top !== undefined && s.top >= 0
              ? { oneClass: s.top, ...acrossInputs(s.err, s.norm, s.rowSum, s.rows) }
              : {}),
            ...zero,
          };
    });
  }

  /** The headline figures: the first class-score output's agreement and KL, the largest relative error. */
  summary(): Pick<Fidelity, 'agreement' | 'relError' | 'kl' | 'outputs' | 'uncompared'> {
    const outputs = this.outputs(),
      scores = outputs.find((o) => o.agreement !== undefined);
    return {
      ...(scores ? { agreement: scores.agreement, kl: scores.kl } : {}),
      ...(outputs.length ? { relError: Math.max(...outputs.map((o) => o.relError)) } : {}),
      outputs,
      ...(this.skipped.length ? { uncompared: this.skipped } : {}),
    };
  }

  /**
   * One number for how far the outputs moved, 0 when they are the reference's: the mean over outputs of the KL per
   * position for class scores, of the squared relative error for other values.
   */
  divergence(): number {
    const each = this.outputs().map((o) => o.kl ?? o.relError ** 2);
    return each.reduce((a, b) => a + b, 0) / (each.length || 1);
  }
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
    /** How its outputs compare (outputAxesOf). */
    readonly axes: OutputAxis[],
  ) {}

  static of(model: Model, opts: RuntimeOptions = {}): Reference {
    return new Reference(model, opts, modelInputs(model)[0]?.dims[0] ?? null, outputAxesOf(model));
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
    this.runner ??= Runner.open(this.model, [], { ...this.opts, spin: false }); // its runs take turns with a model's
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

/**
 * Runs `model` over the data against labels (its first output's largest entry per sample) and/or a reference model
 * (every output, compared as OutputAxis says).
 */
export async function evaluate(model: Model, data: InputData, opts: EvaluateOptions = {}): Promise<Fidelity> {
  const calib = Calibration.of(model, data);
  if (opts.reference) {
    Calibration.of(opts.reference, calib); // the reference must take the same inputs, and have the same outputs
    const names = (m: Model) => m.graph!.output.map((o) => o.name);
    if (names(model).join('\n') !== names(opts.reference).join('\n'))
      throw badInput(`the model's outputs are [${names(model)}], the reference model's [${names(opts.reference)}]`);
  }
  if (opts.labels && opts.labels.length !== calib.rows)
    throw badInput(`${opts.labels.length} labels for ${calib.rows} samples`);
  // with a reference, the two models' runs take turns
  const run = await Runner.open(model, [], { ...opts, spin: !opts.reference }),
    reference = opts.reference && Reference.of(opts.reference, opts);
  try {
    return await measure(run, model.graph!.output[0]!.name, calib, { ...opts, reference });
  } finally {
    await run.release();
    await reference?.release();
  }
}

/**
 * The loop of evaluate, on a session already open (`first`: its first output, which labels are for; a reference's
 * outputs must be the model's).
 */
export async function measure(run: Runner, first: string, calib: Calibration, opts: MeasureOptions): Promise<Fidelity> {
  const ref = opts.reference,
    names = [...new Set([first, ...(ref?.outputNames ?? [])])],
    compared = ref && new OutputComparison(ref.axes);
  let correct = 0,
    dims: number[] = [];
  // a reference with a fixed batch size of its own runs batches no larger than that
  const size = Math.min(calib.batchSize(opts.batch ?? EVAL_BATCH), ref?.batchSize(Infinity) ?? Infinity);
  for (const b of calib.batches(size)) {
    const ys = await run.run(b, names),
      y = ys.get(first)!;
    dims = y.dims;
    if (opts.labels) {
      const top = argmaxRows(y.data, b.rows);
      for (let i = 0; i < b.rows; i++) if (top[i] === Number(opts.labels[b.start + i])) correct++;
    }
    if (ref) compared!.add(ys, await ref.outputs(b));
    opts.onBatch?.(b.start + b.rows, calib.rows);
  }
  const n = calib.rows;
  return {
    samples: n,
    outputDims: dims,
    ...(opts.labels ? { accuracy: correct / n } : {}),
    ...(compared ? compared.summary() : {}),
  };
}
