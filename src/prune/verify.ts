// The check a pruned model passes before anyone writes it: onnxruntime loads it and runs it on a calibration batch, and
// every output is finite and has the shape of the original model's output on the same batch. A model that fails is a
// bug in subprune (the original passed the same run), so the failure is an internal error, never a file on disk.
import { badInput, internal } from '../errors.js';
import { modelInputs } from '../calibration.js';
import { writeModelChecked, type Model, type WriteOptions, type Written } from '../onnx/index.js';
import { loadRuntime } from '../capture/runtime.js';
import { openSession } from '../capture/runner.js';
import type { NpyFile } from '../npy.js';
import { Calibration, type Batch, type InputData } from '../calibration.js';
import { Runner, type Activation, type Backend, type RuntimeOptions } from '../capture/index.js';
import { EVAL_BATCH, measure, Reference, type Fidelity } from '../eval/index.js';

const broken = (what: string, cause?: unknown) =>
  internal(`the pruned model failed verification: ${what}; nothing was written (please report this)`, cause);

/** A session of the pruned model, which must have the original's outputs. */
async function openPruned(pruned: Model, outputs: string[], opts: RuntimeOptions): Promise<Runner> {
  const got = pruned.graph?.output.map((o) => o.name) ?? [];
  if (got.join('\n') !== outputs.join('\n')) throw broken(`its outputs are [${got}], the original's [${outputs}]`);
  try {
    // as ONNX defines the graph, so that no fusion of onnxruntime's hides a wrong shape (a pruned GPT-2's head_dim)
    return await Runner.open(pruned, [], { ...opts, optimize: false });
  } catch (e) {
    throw broken((e as Error).message, e);
  }
}

/** The pruned model's outputs on a batch: finite, and shaped as the reference's (whose own failures stay bad input). */
async function checkOutputs(run: Runner, reference: Reference, b: Batch): Promise<void> {
  const names = reference.outputNames,
    want = await reference.outputs(b);
  let have: Map<string, Activation>;
  try {
    have = await run.run(b, names);
  } catch (e) {
    throw broken((e as Error).message, e);
  }
  const shaped = new Set(reference.axes.filter((o) => o.uncompared === 'data-shaped').map((o) => o.name));
  for (const name of names) {
    const a = have.get(name)!,
      w = want.get(name)!;
    if (!shaped.has(name) && a.dims.join() !== w.dims.join())
      throw broken(`output ${name} has shape [${a.dims}], the original's [${w.dims}]`);
    const bad = a.data.findIndex((v) => !Number.isFinite(v));
    // Runner.run refuses these too; this check must not depend on it
    if (bad >= 0) throw broken(`output ${name} holds ${a.data[bad]}`);
  }
}

/**
 * Rows of the batch the check runs on: enough to show a shape that holds only for one batch size (the batch merged
 * with the heads), few because the session runs without onnxruntime's optimizations (several times slower).
 */
const CHECK_ROWS = 16;

/** The check: the pruned model's session as ONNX defines it (openPruned) on the first CHECK_ROWS rows of `calib`. */
async function checkPruned(reference: Reference, pruned: Model, calib: Calibration, opts: RuntimeOptions) {
  const run = await openPruned(pruned, reference.outputNames, opts);
  try {
    await checkOutputs(run, reference, calib.batches(reference.batchSize(CHECK_ROWS)).next().value!);
  } finally {
    await run.release();
  }
}

/** The check alone. */
export async function verifyPruned(
  original: Model,
  pruned: Model,
  data: InputData,
  opts: RuntimeOptions = {},
): Promise<void> {
  const reference = Reference.of(original, opts);
  try {
    await checkPruned(reference, pruned, Calibration.of(original, data), opts);
  } finally {
    await reference.release();
  }
}

/** The calibration rows the report's fidelity uses by default (prune's `fidelityRows`, the CLI's --fidelity-rows). */
export const FIDELITY_ROWS = 512;

/**
 * The rows of the fidelity sample: `n` rows evenly spaced over `total` (row i of the sample is ⌊i·total/n⌋, so the
 * first row is always in and a calibration set sorted by class is still covered), or every row when n ≥ total.
 */
export function fidelitySampleRows(total: number, n: number): number[] {
  const k = Math.min(total, n);
  return Array.from({ length: k }, (_, i) => Math.floor((i * total) / k));
}

/** An .npy file seen through a list of its rows: row i of the view is row rows[i] of `a`. */
function rowsOf(a: NpyFile, rows: number[]): NpyFile {
  const gather =
    <T extends Float32Array | Float64Array>(read: (r0: number, r1: number) => T, make: new (n: number) => T) =>
    (r0 = 0, r1 = rows.length): T => {
      const out = new make((r1 - r0) * a.rowSize);
      for (let i = r0; i < r1; i++) out.set(read(rows[i]!, rows[i]! + 1), (i - r0) * a.rowSize);
      return out;
    };
  return {
    ...a,
    shape: [rows.length, ...a.shape.slice(1)],
    rows: rows.length,
    readF32: gather((r0, r1) => a.readF32(r0, r1), Float32Array),
    readF64: gather((r0, r1) => a.readF64(r0, r1), Float64Array),
    close: () => {}, // the view does not own the file
  };
}

/** The fidelity sample size asked for, checked (before any work): a whole number ≥ 1 or Infinity. */
export function checkFidelityRows(n = FIDELITY_ROWS): number {
  if (!(n >= 1) || (Number.isFinite(n) && !Number.isInteger(n)))
    throw badInput(`fidelity rows ${n}: use a whole number ≥ 1, or Infinity (CLI: all) to measure on every row`);
  return n;
}

export interface FidelityOptions extends RuntimeOptions {
  onBatch?: (done: number, total: number) => void;
}

/** Which inputs a fidelity was measured on: the held-out `verify` set, or the calibration data (the fit's own). */
export interface Verification {
  inputs: 'verify' | 'calibration';
  /** Rows of that set (the fidelity samples up to fidelityRows of them). */
  rows: number;
}

/** The rows a pruned model's fidelity is measured on, with their labels when given, and the set they come from. */
export interface FidelitySample {
  calib: Calibration;
  labels?: number[];
  verification: Verification;
}

/**
 * The fidelity sample: `rows` rows, evenly spaced (see fidelitySampleRows), of the held-out `verify` set when given,
 * else of the calibration data (`data`, which the fit has seen: it flatters a model fitted from few samples).
 */
export function fidelitySample(
  original: Model,
  data: InputData,
  rows?: number,
  verify?: { data: InputData; labels?: ArrayLike<number> },
): FidelitySample {
  const n = checkFidelityRows(rows);
  const calib = Calibration.of(original, verify?.data ?? data),
    labels = verify?.labels;
  if (labels && labels.length !== calib.rows)
    throw badInput(`--verify-labels: ${labels.length} labels for ${calib.rows} --verify samples`);
  const picked = fidelitySampleRows(calib.rows, n),
    verification: Verification = { inputs: verify ? 'verify' : 'calibration', rows: calib.rows },
    sample = (c: Calibration) => ({
      calib: c,
      verification,
      ...(labels ? { labels: picked.map((i) => Number(labels[i])) } : {}),
    });
  if (picked.length === calib.rows) return sample(calib);
  return sample(
    Calibration.of(original, new Map(calib.inputs.map((x, i) => [x.name, rowsOf(calib.arrays[i]!, picked)]))),
  );
}

/**
 * The check before a pruned model is written (checkPruned), then the report's fidelity: the pruned model against the
 * original on a bounded, evenly spaced sample of the calibration inputs (a whole extra pass over a large calibration
 * set would cost as much as the capture), on a session with onnxruntime's optimizations, as the model will be run.
 * `reference`: the original's, shared by every size of a prune.
 */
export async function verifiedFidelity(
  reference: Reference,
  pruned: Model,
  { calib: sample, labels }: FidelitySample,
  opts: FidelityOptions = {},
): Promise<Fidelity> {
  await checkPruned(reference, pruned, sample, opts);
  const run = await Runner.open(pruned, [], { ...opts, spin: false }); // its runs take turns with the reference's
  try {
    const batch = opts.batch ?? EVAL_BATCH;
    return await measure(run, reference.outputNames[0]!, sample, { reference, labels, batch, onBatch: opts.onBatch });
  } finally {
    await run.release();
  }
}

/**
 * Relative output error past which a pruned model is probably unusable: its outputs are then further from the
 * original's than those are from zero.
 */
export const BROKEN_ERROR = 1;

/**
 * What a pruned model's fidelity says to check: nothing; that its outputs are too far off (BROKEN_ERROR); or that an
 * output of the original was 0 on every input measured, where the figures compare nothing (an untrained
 * torchvision ViT's head is initialised to zeros: its prune reported agreement 100 % and relative error 0). `inputs`:
 * those measured.
 */
export function fidelityWarnings(f: Fidelity, inputs: Verification['inputs'] = 'calibration'): string[] {
  const on = inputs === 'verify' ? 'the --verify inputs' : 'the calibration data';
  const zero = (f.outputs ?? []).filter((o) => o.zeroReference).map((o) => `"${o.name}"`);
  const warnings = zero.length
    ? [
        `the original model's output ${zero.join(', ')} is 0 for every input measured (${on}), so the fidelity ` +
          "compares nothing there (its relative error is the pruned output's norm, its agreement compares ties): " +
          'check the original model (trained weights?) and its calibration inputs',
      ]
    : [];
  if (f.relError === undefined || f.relError <= BROKEN_ERROR) return warnings;
  return [
    ...warnings,
    `the pruned model's relative output error on ${on} is ${f.relError.toPrecision(3)}: its outputs ` +
      "are further from the original's than those are from zero, so it is probably unusable; prune less, or give " +
      'more (and more varied) calibration inputs',
  ];
}

/**
 * Writes the pruned model (with its weights in a data file when it is large or when asked, see WriteOptions) and
 * renames the files into place only after onnxruntime has loaded them from disk, data file and all, and found the
 * model's inputs and outputs. The model itself passed verifyPruned before this.
 */
export async function writeVerified(
  model: Model,
  file: string,
  opts: WriteOptions & { backend?: Backend } = {},
): Promise<Written> {
  const { ort, backend } = await loadRuntime(opts.backend);
  const inputs = modelInputs(model).map((x) => x.name),
    outputs = model.graph!.output.map((o) => o.name);
  return writeModelChecked(
    model,
    file,
    async (written) => {
      let session;
      try {
        session = await openSession(ort, backend, written, { logSeverityLevel: 3 });
      } catch (e) {
        throw broken(`onnxruntime cannot load the written files: ${(e as Error).message.split('\n')[0]}`, e);
      }
      try {
        const have = [session.inputNames.join(), session.outputNames.join()],
          want = [inputs.join(), outputs.join()];
        if (have.join('|') !== want.join('|'))
          throw broken(
            `the written model has inputs [${have[0]}] and outputs [${have[1]}], not [${want[0]}], [${want[1]}]`,
          );
      } finally {
        await session.release();
      }
    },
    opts,
  );
}
