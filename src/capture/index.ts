// Activation capture: onnxruntime runs the model on calibration batches with the tensors we need added as graph
// outputs; each batch streams into the Gram accumulators and is dropped.
import { badInput, internal } from '../errors.js';
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import type { Unit } from '../graph/types.js';
import { consumerWeightMatrix } from '../graph/analyze.js';
import { Calibration } from '../calibration.js';
import { GramAccumulator, gramBytes } from '../kernels/gram.js';
import { getKernels, type KernelOptions } from '../kernels/instances.js';
import { availableMemory, fmtBytes, KERNEL_BYTES } from '../kernels/memory.js';
import { ChannelStatsAccumulator, type Captured, type StatsWanted } from './stats.js';
import { Runner, type Activation } from './runner.js';
import type { RuntimeOptions } from './runtime.js';

export { loadRuntime, type Backend, type RuntimeOptions } from './runtime.js';
export { Runner, type Activation } from './runner.js';

export interface CaptureOptions extends RuntimeOptions, Pick<KernelOptions, 'threads'> {
  /** The original model, for the asymmetric objective: its activations are the targets A (C = BᵀA, H = AᵀA). */
  target?: Model;
  /** Per-channel statistics of B to collect too (for the activation-norm and sampling baselines). */
  stats?: StatsWanted;
  /** Kernel memory one pass may use for its Gram matrices (default: all of WebAssembly's 4 GiB there is). */
  passBytes?: number;
  onBatch?: (done: number, total: number) => void;
}

/** Default calibration batch size for capture (a model with a fixed batch size uses its own). */
export const CAPTURE_BATCH = 64;

/**
 * Splits units into capture passes (forward passes over the calibration set) whose Gram matrices fit the kernels'
 * memory together: one pass unless they do not. Checked before any allocation: every unit must fit alone, and all
 * the Gram matrices together fit the host memory available (they are copied out after each pass and kept).
 */
export function capturePasses<U extends { id: string; d: number }>(
  units: readonly U[],
  asymmetric: boolean,
  passBytes = KERNEL_BYTES,
): U[][] {
  const passes: U[][] = [];
  let cur: U[] = [],
    used = 0,
    total = 0;
  for (const u of units) {
    const need = gramBytes(u.d, asymmetric);
    if (need > KERNEL_BYTES) {
      const what = `${fmtBytes(need)} of kernel memory for its Gram matrices (d = ${u.d})`;
      throw badInput(`capturing unit ${u.id} needs ${what}; WebAssembly allows 4 GiB`);
    }
    if (cur.length && used + need > passBytes) {
      passes.push(cur);
      cur = [];
      used = 0;
    }
    cur.push(u);
    used += need;
    total += need;
  }
  if (cur.length) passes.push(cur);
  // the kept Gram matrices on the host, plus one pass's worth in kernel memory
  const needed = total + Math.min(total, KERNEL_BYTES),
    free = availableMemory();
  if (needed > free) {
    const many = units.length > 1;
    const big = [...units]
      .sort((a, b) => b.d - a.d)
      .slice(0, 3)
      .map((u) => `${u.id} (d = ${u.d})`)
      .join(', ');
    const what = `capturing ${units.length} unit${many ? 's' : ''} needs ${fmtBytes(needed)} of memory`;
    const fix = many ? '; --mode sequential captures one unit at a time' : '';
    throw badInput(`${what} (largest: ${big}), ${fmtBytes(free)} is available${fix}`);
  }
  return passes;
}

// A capture holds kernel memory (a stack allocator) across awaits, so two at once (concurrent prune() calls) would free
// each other's Gram matrices: captures take turns.
let captures: Promise<unknown> = Promise.resolve();

/**
 * Gram matrices of each unit's consumer input over the calibration set, in one pass of `model` (and of `target`, for
 * the asymmetric objective), or in as few passes as the kernels' 4 GiB allow.
 */
export function captureGrams(
  model: Model,
  units: Unit[],
  data: NpyFile | Calibration,
  opts: CaptureOptions = {},
): Promise<Map<string, Captured>> {
  const calib = Calibration.of(model, data);
  const run = captures.then(() => captureInPasses(model, units, calib, opts));
  captures = run.catch(() => undefined);
  return run;
}

async function captureInPasses(model: Model, units: Unit[], calib: Calibration, opts: CaptureOptions) {
  const passes = capturePasses(units, !!opts.target, opts.passBytes),
    out = new Map<string, Captured>();
  for (const [p, pass] of passes.entries()) {
    const onBatch = opts.onBatch && ((d: number, n: number) => opts.onBatch!(p * n + d, passes.length * n));
    for (const [id, g] of await capturePass(model, pass, calib, { ...opts, onBatch })) out.set(id, g);
  }
  return out;
}

/** Adds one batch of a unit's consumer input (and target) to its accumulator: patches or rows, as the layer takes. */
function accumulate(unit: Unit, acc: GramAccumulator, B: Activation, A?: Activation): void {
  if (A && A.data.length !== B.data.length)
    throw internal(`target activation ${unit.consumerInput} has shape [${A.dims}], pruned model [${B.dims}]`);
  if (unit.consumerKind === 'conv') acc.addConv(B.data, B.dims, unit.conv!, A?.data);
  else acc.add(B.data, A?.data);
}

async function capturePass(
  model: Model,
  units: Unit[],
  calib: Calibration,
  opts: CaptureOptions,
): Promise<Map<string, Captured>> {
  const names = [...new Set(units.map((u) => u.consumerInput))];
  const run = await Runner.open(model, names, opts),
    tgt = opts.target ? await Runner.open(opts.target, names, opts) : undefined;
  const kernels = getKernels('wasm', opts.threads),
    mark = kernels.arena.mark();
  const acc = new Map(units.map((u) => [u.id, new GramAccumulator(u.d, { asymmetric: !!tgt, kernels })]));
  const want = opts.stats;
  const stats =
    want &&
    new Map(
      units.map((u) => {
        const W = want.sensitivity ? consumerWeightMatrix(model, u) : undefined;
        return [u.id, new ChannelStatsAccumulator(u, want, W)];
      }),
    );
  // onnxruntime computes batch i+1 while the kernels accumulate batch i.
  const forward = (b: { data: Float32Array; dims: number[] }) =>
    Promise.all([run.run(b.data, b.dims, names), tgt?.run(b.data, b.dims, names)]);
  let pending: ReturnType<typeof forward> | undefined;
  try {
    const it = calib.batches(opts.batch ?? CAPTURE_BATCH);
    let cur = it.next();
    pending = cur.done ? undefined : forward(cur.value);
    while (!cur.done) {
      const b = cur.value,
        [got, target] = await pending!;
      cur = it.next();
      pending = cur.done ? undefined : forward(cur.value);
      for (const u of units) {
        const B = got.get(u.consumerInput)!;
        accumulate(u, acc.get(u.id)!, B, target?.get(u.consumerInput));
        stats?.get(u.id)!.add(B.data, B.dims);
      }
      opts.onBatch?.(b.start + b.dims[0], calib.rows);
    }
    return new Map(
      [...acc].map(([id, a]) => [id, { ...a.result(), ...(stats ? { stats: stats.get(id)!.result() } : {}) }]),
    );
  } finally {
    kernels.arena.release(mark);
    await pending?.catch(() => {}); // after an error: a run still in flight must not outlive its session
    await run.release();
    await tgt?.release();
  }
}
