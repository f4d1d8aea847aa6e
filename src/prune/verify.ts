// The check a pruned model passes before anyone writes it: onnxruntime loads it and runs it on a calibration batch, and
// every output is finite and has the shape of the original model's output on the same batch. A model that fails is a
// bug in subprune (the original passed the same run), so the failure is an internal error, never a file on disk.
import { internal } from '../errors.js';
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import { Calibration, type Batch, type InputData } from '../calibration.js';
import { CAPTURE_BATCH, Runner, type Activation, type Backend, type RuntimeOptions } from '../capture/index.js';

const broken = (what: string, cause?: unknown) =>
  internal(`the pruned model failed verification: ${what}; nothing was written (please report this)`, cause);

async function outputsOf(model: Model, names: string[], x: Batch, backend?: Backend): Promise<Map<string, Activation>> {
  const run = await Runner.open(model, [], { backend });
  try {
    return await run.run(x, names);
  } finally {
    await run.release();
  }
}

export async function verifyPruned(
  original: Model,
  pruned: Model,
  data: InputData,
  opts: RuntimeOptions = {},
): Promise<void> {
  const calib = Calibration.of(original, data);
  const names = original.graph!.output.map((o) => o.name);
  const got = pruned.graph?.output.map((o) => o.name) ?? [];
  if (got.join('\n') !== names.join('\n')) throw broken(`its outputs are [${got}], the original's [${names}]`);
  const first = calib.batches(opts.batch ?? CAPTURE_BATCH).next().value!;
  const want = await outputsOf(original, names, first, opts.backend); // the original's own failures stay bad input
  let have: Map<string, Activation>;
  try {
    have = await outputsOf(pruned, names, first, opts.backend);
  } catch (e) {
    throw broken((e as Error).message, e);
  }
  for (const name of names) {
    const a = have.get(name)!,
      b = want.get(name)!;
    if (a.dims.join() !== b.dims.join())
      throw broken(`output ${name} has shape [${a.dims}], the original's [${b.dims}]`);
    const bad = a.data.findIndex((v) => !Number.isFinite(v));
    // Runner.run refuses these too; this check must not depend on it
    if (bad >= 0) throw broken(`output ${name} holds ${a.data[bad]}`);
  }
}
