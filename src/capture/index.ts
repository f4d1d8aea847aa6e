// Activation capture: onnxruntime runs the model on calibration batches with the tensors we need added as graph
// outputs; each batch streams into the Gram accumulators and is dropped.
import { badInput, internal } from '../errors.js';
import type { Model, NodeProto } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import type { Consumer, Group } from '../graph/types.js';
import { consumerWeightMatrix } from '../graph/analyze.js';
import { layerOf } from '../graph/ops.js';
import { constantTensors } from '../graph/shapes.js';
import { tensorDims, tensorToFloat32, type TensorProto } from '../onnx/index.js';
import { Calibration, modelInputs, type Batch, type InputData, type TokenMask } from '../calibration.js';
import { GramAccumulator, gramBytes, projects } from '../kernels/gram.js';
import { depthMajor, patchGrid, patchSize, planar, unfoldDepth, type ConvGeometry } from '../geometry.js';
import { getKernels, type KernelOptions } from '../kernels/instances.js';
import { availableMemory, fmtBytes, KERNEL_BYTES, KERNEL_LIMIT } from '../kernels/memory.js';
import { ChannelStatsAccumulator, type Captured, type StatsWanted } from './stats.js';
import { activations, Runner, type Activation, type OrtTensor } from './runner.js';
import type { RuntimeOptions } from './runtime.js';
import type { ChannelRun, Frontier, Slicing, StepPlan } from './frontier.js';
import type { Reference } from '../eval/index.js';

export { loadRuntime, type Backend, type RuntimeOptions } from './runtime.js';
export { Runner, type Activation } from './runner.js';

export interface CaptureOptions extends RuntimeOptions, Pick<KernelOptions, 'threads'> {
  /**
   * The original model and its groups, for the asymmetric objective: its activations are the targets A (C = BᵀA,
   * H = AᵀA), each consumer's part of them where the original model has the group's channels.
   */
  target?: { model: Model; groups: Group[] };
  /** Per-channel statistics of B to collect too (for the activation-norm and sampling baselines). */
  stats?: StatsWanted;
  /** Kernel memory one pass may use for its Gram matrices (default: all of WebAssembly's 4 GiB there is). */
  passBytes?: number;
  /**
   * Sequential and asymmetric captures, group by group: the tensors cached by the previous group's capture for the
   * model (and the target), the groups captured after this one (in the model), and the tensors their captures will
   * want from the target (frontier.ts).
   */
  frontier?: { model: Frontier; later: Group[]; target?: Frontier; targetLater?: string[] };
  /**
   * Tensors of this model the capture's run computes too, for a frontier of it: asymmetric mode's frontier on the
   * original, filled by a capture of the original (the allocation's, or the first group's) with later targets.
   */
  fill?: Fill;
  /**
   * The original model's reference for verification: a capture of that model hands it the model's outputs on each
   * batch (computed with the capture's tensors, at little cost), so that verification need not run the model again.
   */
  reference?: Reference;
  onBatch?: (done: number, total: number) => void;
}

/** Default calibration batch size for capture (a model with a fixed batch size uses its own). */
export const CAPTURE_BATCH = 64;

/**
 * Bytes of consumer inputs one capture batch may fetch: past this, onnxruntime's runs slow down per sample as their
 * activations leave the caches (a whole-model run fetching every consumer input, ms per sample at batch 2 / 8 / 64:
 * ResNet-50 at 224×224, 36 MB a sample, 68 / 79 / 228; MobileNetV3-Large, 7.9 MB, 14 / 15 / 22). The bundled
 * models (at most 0.6 MB a sample) keep batches of 64.
 */
const BATCH_BYTES = 96 << 20;

/** The default batch size for a model whose capture fetches `inputBytes` per sample (Analysis.inputBytes). */
export const captureBatch = (inputBytes?: number) =>
  inputBytes ? Math.max(1, Math.min(CAPTURE_BATCH, Math.floor(BATCH_BYTES / inputBytes))) : CAPTURE_BATCH;

/** The outputs an asymmetric capture of a consumer projects its target on (projects()), or none: C and H. */
const projectionOf = (c: { d: number; m?: number }, asymmetric: boolean) =>
  asymmetric && c.m !== undefined && projects(c.d, c.m) ? c.m : undefined;

/**
 * The tensor whose values, less the consumer's bias, are its projected target T = A·W in an asymmetric capture:
 * its own output, for a layer whose output is B·W + bias (the layer table's `product`) that reads only the group's
 * channels, where T's d·m multiply-adds a row cost less than C's and H's 1.5·d² (m < 1.5·d); onnxruntime computes
 * it in the original model's run anyway. Undefined otherwise: the target is the consumer's input A.
 */
export function targetOutput(c: Consumer): string | undefined {
  return layerOf(c.node)?.product && c.d === c.dTotal && 2 * c.m < 3 * c.d ? c.node.output[0] : undefined;
}

/** The tensor an asymmetric capture wants of the original model for consumer c. */
export const targetTensor = (c: Consumer) => targetOutput(c) ?? c.input;

/** The bias of a consumer as one value per output (none: zeros), or undefined if it is not that. */
function biasOf(c: Consumer, consts: ReadonlyMap<string, TensorProto>): Float32Array | undefined {
  const at = layerOf(c.node)?.biasInput?.input,
    name = at === undefined ? '' : (c.node.input[at] ?? '');
  if (!name) return new Float32Array(c.m);
  const t = consts.get(name),
    dims = t && tensorDims(t);
  return dims && dims.every((x, i) => x === (i === dims.length - 1 ? c.m : 1)) ? tensorToFloat32(t!).data : undefined;
}

/** A projected target read off the original model: its consumer's output, bias, and the outputs c still has. */
interface Projected {
  output: string;
  bias: Float32Array;
  outs: number[];
}

/**
 * Where the original model's consumer `target` gives the projected target T of consumer c of `model` (targetOutput):
 * its output and bias, and which of its outputs are c's. c's weights must be the original's, but for the output
 * channels a group pruned before cut (in order): the projection is on c's weights. Undefined: the capture reads the
 * consumer's input.
 */
function projectedTarget(
  model: Model,
  c: Consumer,
  original: Model,
  target: Consumer,
  consts: ReadonlyMap<string, TensorProto>,
): Projected | undefined {
  const output = targetOutput(target),
    bias = output && c.d === target.d ? biasOf(target, consts) : undefined;
  if (!bias) return undefined;
  const W = consumerWeightMatrix(model, c),
    W0 = consumerWeightMatrix(original, target),
    { d, m } = c,
    m0 = target.m;
  const same = (j: number, o: number) => {
    for (let i = 0; i < d; i++) if (W[i * m + j] !== W0[i * m0 + o]) return false;
    return true;
  };
  const outs: number[] = [];
  for (let j = 0, o = 0; j < m; j++, o++) {
    while (o < m0 && !same(j, o)) o++;
    if (o === m0) return undefined;
    outs.push(o);
  }
  return { output: output!, bias, outs };
}

/**
 * The projected target T of a batch: the original consumer's output Y less its bias, at the outputs `outs` (axis 1 of
 * a conv's output, the last axis of a dense layer's); Y itself when that is all of it and there is no bias.
 */
const projectedRows = (Y: Activation, p: Projected, conv: boolean): Float32Array =>
  outputChannels(
    Y,
    p.outs,
    conv,
    Float32Array.from(p.outs, (o) => p.bias[o]!),
  );

/**
 * Channels `outs` of a layer's output Y (axis 1 of a conv's, the last axis of a dense layer's), in that order, less
 * `minus[j]` each (default 0), laid out as Y is: what GramAccumulator takes as a given target T. Y's own values when
 * that is all of Y.
 */
export function outputChannels(
  Y: Activation,
  outs: readonly number[],
  conv: boolean,
  minus: Float32Array = new Float32Array(outs.length),
): Float32Array {
  const m0 = conv ? Y.dims[1]! : Y.dims[Y.dims.length - 1]!,
    m = outs.length;
  if (m === m0 && outs.every((o, j) => o === j) && minus.every((x) => x === 0)) return Y.data;
  const inner = conv ? Y.dims.slice(2).reduce((x, y) => x * y, 1) : 1,
    outer = Y.data.length / (m0 * inner),
    T = new Float32Array(outer * m * inner);
  if (!conv) {
    for (let s = 0; s < outer; s++) for (let j = 0; j < m; j++) T[s * m + j] = Y.data[s * m0 + outs[j]!]! - minus[j]!;
    return T;
  }
  for (let s = 0; s < outer; s++)
    for (let j = 0; j < m; j++) {
      const from = (s * m0 + outs[j]!) * inner,
        to = (s * m + j) * inner,
        bj = minus[j]!;
      for (let q = 0; q < inner; q++) T[to + q] = Y.data[from + q]! - bj;
    }
  return T;
}

/** Kernel memory to capture a group: every consumer's Gram matrices. */
export const groupGramBytes = (
  g: { consumers: { d: number; m?: number; conv?: ConvGeometry }[] },
  asymmetric: boolean,
) =>
  g.consumers.reduce(
    (a, c) => a + gramBytes(c.d, asymmetric, projectionOf(c, asymmetric), c.conv && planar(c.conv)),
    0,
  );

/**
 * Splits groups into capture passes (forward passes over the calibration set) whose Gram matrices fit the kernels'
 * memory together: one pass unless they do not. Checked before any allocation: every group must fit alone, and all
 * the Gram matrices together fit the host memory available (they are copied out after each pass and kept).
 */
export function capturePasses<U extends { id: string; consumers: { d: number; m?: number }[] }>(
  groups: readonly U[],
  asymmetric: boolean,
  passBytes = KERNEL_BYTES,
): U[][] {
  const passes: U[][] = [];
  let cur: U[] = [],
    used = 0,
    total = 0;
  const dOf = (u: U) => u.consumers.map((c) => c.d).join(' + ');
  for (const u of groups) {
    const need = groupGramBytes(u, asymmetric);
    if (need > KERNEL_BYTES) {
      const what = `${fmtBytes(need)} of kernel memory for its Gram matrices (d = ${dOf(u)})`;
      throw badInput(`capturing group ${u.id} needs ${what}, more than ${KERNEL_LIMIT}`);
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
    const many = groups.length > 1;
    const big = [...groups]
      .sort((a, b) => groupGramBytes(b, asymmetric) - groupGramBytes(a, asymmetric))
      .slice(0, 3)
      .map((u) => `${u.id} (d = ${dOf(u)})`)
      .join(', ');
    const what = `capturing ${groups.length} group${many ? 's' : ''} needs ${fmtBytes(needed)} of memory`;
    const fix = many ? '; --mode sequential captures one group at a time' : '';
    throw badInput(`${what} (largest: ${big}), ${fmtBytes(free)} is available${fix}`);
  }
  return passes;
}

// A capture holds kernel memory (a stack allocator) across awaits, so two at once (concurrent prune() calls) would free
// each other's Gram matrices: captures take turns.
let captures: Promise<unknown> = Promise.resolve();

/**
 * Gram matrices of each group's consumers' inputs (their part for the group's channels) over the calibration set, in
 * one pass of `model` (and of the target model, for the asymmetric objective), or in as few passes as the kernels'
 * 4 GiB allow. One Captured per consumer, in the group's consumer order.
 */
export function captureGrams(
  model: Model,
  groups: Group[],
  data: InputData,
  opts: CaptureOptions = {},
): Promise<Map<string, Captured[]>> {
  const calib = Calibration.of(model, data);
  const run = captures.then(() => captureInPasses(model, groups, calib, opts));
  captures = run.catch(() => undefined);
  return run;
}

async function captureInPasses(model: Model, groups: Group[], calib: Calibration, opts: CaptureOptions) {
  const passes = capturePasses(groups, !!opts.target, opts.passBytes),
    out = new Map<string, Captured[]>();
  for (const [p, pass] of passes.entries()) {
    const onBatch = opts.onBatch && ((d: number, n: number) => opts.onBatch!(p * n + d, passes.length * n));
    // the first pass fills what is to be filled, and hands the reference its outputs
    const [fill, reference] = p === 0 ? [opts.fill, opts.reference] : [];
    for (const [id, g] of await capturePass(model, pass, calib, { ...opts, onBatch, fill, reference })) out.set(id, g);
  }
  return out;
}

/** Entries of a consumer's input channel axis that hold the group's channels. */
const spanOf = (c: Consumer) => (c.kind === 'conv' ? c.d / patchSize(c.conv!) : c.d);

/**
 * Where a group's channels lie in the activations its rewrite cuts down and a frontier may keep, cut down too: its
 * consumers' inputs (so that the next group's capture runs on from the consumers, not from the producers), and the
 * other activations that carry the channels in one run (not a fused q/k/v's parts).
 */
function channelRuns(group: Group): Map<string, ChannelRun> {
  const runs = new Map<string, ChannelRun>(),
    count = new Map<string, number>();
  for (const t of group.tensors) count.set(t.tensor, (count.get(t.tensor) ?? 0) + 1);
  for (const t of group.tensors) if (count.get(t.tensor) === 1 && !t.stacked) runs.set(t.tensor, t);
  // a consumer input that holds the channels more than once (YOLO's SPPF: Concat(x, pool(x), pool²(x), ...)) is left
  // out: one run cannot say where to cut it, so the next capture computes it again
  const reads = new Map<string, number>();
  for (const c of group.consumers) reads.set(c.input, (reads.get(c.input) ?? 0) + 1);
  for (const c of group.consumers) {
    const per = spanOf(c) / group.channels;
    if (reads.get(c.input) === 1)
      runs.set(c.input, { axis: c.kind === 'conv' ? 1 : -1, offset: c.offset, per, entries: c.entries });
  }
  return runs;
}

/**
 * How a group's rewrite cuts down the activations a frontier keeps (channelRuns); the region (every tensor that
 * carries the channels) is what compareTensors checks that the rewrite only cut down.
 */
export function slicingOf(group: Group, keep: readonly number[]): Slicing {
  const region = new Set(group.tensors.map((t) => t.tensor));
  return { region, slices: group.slices, runs: channelRuns(group), channels: group.channels, keep };
}

/**
 * The group's part of a consumer's input: entries [offset, offset + span) of its channel axis (axis 1 of a Conv's
 * input, the last axis of a dense layer's); the activation itself when the group has the whole axis.
 */
function part(x: Activation, c: Consumer): Activation {
  const span = spanOf(c);
  if (c.offset === 0 && span === c.entries) return x;
  const axis = c.kind === 'conv' ? 1 : x.dims.length - 1;
  const inner = x.dims.slice(axis + 1).reduce((a, b) => a * b, 1),
    outer = x.dims.slice(0, axis).reduce((a, b) => a * b, 1);
  const out = new Float32Array(outer * span * inner);
  for (let o = 0; o < outer; o++) {
    const from = (o * c.entries + c.offset) * inner;
    out.set(x.data.subarray(from, from + span * inner), o * span * inner);
  }
  return { data: out, dims: x.dims.map((d, i) => (i === axis ? span : d)) };
}

/**
 * Which rows of a batch of dense consumer c's input (`dims`) are real tokens, by the batch's token mask: the input
 * [b, T, features] or [T, b, features], as its analysis shape ([1, T, …] or [T, 1, …]) says. Undefined where every
 * row counts: no padding in the batch, or an input whose rows do not map to tokens by its shape alone (a row per
 * sample; [b · T, features], which torch's attention also orders token-major).
 */
export function tokenRows(c: Consumer, dims: readonly number[], mask?: TokenMask): Uint8Array | undefined {
  const at = c.inputDims;
  if (!mask || c.kind !== 'dense' || !at || at.length !== 3 || dims.length !== 3) return undefined;
  const { data, rows: b, T } = mask;
  if (!data.includes(0)) return undefined;
  if (at[1] === T && at[0] !== T && dims[0] === b && dims[1] === T) return data;
  if (at[0] === T && at[1] !== T && dims[0] === T && dims[1] === b) {
    const keep = new Uint8Array(b * T);
    for (let t = 0; t < T; t++) for (let s = 0; s < b; s++) keep[t * b + s] = data[s * T + t]!;
    return keep;
  }
  return undefined;
}

/** The rows of X (d values each) that `keep` flags. */
function keptRows(X: Float32Array, d: number, keep: Uint8Array): Float32Array {
  const out = new Float32Array(keep.reduce((n, k) => n + k, 0) * d);
  for (let r = 0, at = 0; r < keep.length; r++) if (keep[r]) out.set(X.subarray(r * d, (r + 1) * d), d * at++);
  return out;
}

/**
 * Adds one batch of `samples` samples of a consumer's input (and target: its input A, or the projected T) to its
 * accumulator: patches or rows, as the layer takes them; a dense layer's rows but for those `keep` leaves out.
 */
export function accumulate(
  c: Consumer,
  acc: GramAccumulator,
  samples: number,
  B: Activation,
  A?: Activation | Float32Array,
  keep?: Uint8Array,
): void {
  if (A && !(A instanceof Float32Array) && A.data.length !== B.data.length)
    throw internal(`target activation ${c.input} has shape [${A.dims}], pruned model [${B.dims}]`);
  const a = A instanceof Float32Array ? A : A?.data;
  if (c.kind !== 'conv') acc.add(B.data, a, samples, keep);
  else if (!c.conv!.depth) acc.addConv(B.data, B.dims, c.conv!, a);
  else {
    // a 3-D Conv: its planes' patches, of the input unfolded along depth; a given target's rows in their order
    const depth = c.conv!.depth,
      geo = planar(c.conv!),
      b = B.dims[0]!,
      Bu = unfoldDepth(B, depth),
      OD = Bu.dims[0]! / b,
      plane = patchGrid(geo, B.dims[3]!, B.dims[4]!).reduce((x, y) => x * y);
    const Au =
      A instanceof Float32Array
        ? depthMajor(A, b, A.length / (b * OD * plane), OD, plane)
        : A && unfoldDepth(A, depth).data;
    acc.addConv(Bu.data, Bu.dims, geo, Au);
  }
}

/** One model's runs in a capture pass: the named tensors of each batch. */
export interface Source {
  run(b: Batch): Promise<Map<string, Activation>>;
  /** After the pass: `ok` when it completed (the frontier then keeps what it staged). */
  release(ok: boolean): Promise<void>;
}

/** A copy of an onnxruntime tensor, of its own class. */
function copyOf(t: OrtTensor): OrtTensor {
  const Tensor = t.constructor as new (type: string, data: unknown, dims: readonly number[]) => OrtTensor;
  return new Tensor(t.type, (t.data as Float32Array).slice(), t.dims);
}

/** The nodes a group's pruning rewrites: its producers and consumers and every node reading a constant it slices. */
function rewritten(model: Model, groups: Group[]): NodeProto[] {
  const consts = new Set(
    groups.flatMap((g) => [
      ...g.slices.map((s) => s.tensor),
      ...g.edits.flatMap((e) => ('tensor' in e ? [e.tensor] : [])),
    ]),
  );
  const named = new Set(groups.flatMap((g) => g.edits.flatMap((e) => ('node' in e ? [e.node] : []))));
  const nodes = new Set(groups.flatMap((g) => [...g.producers, ...g.consumers.map((c) => c.node)]));
  return model.graph!.node.filter((n) => nodes.has(n) || named.has(n.name) || n.input.some((x) => consts.has(x)));
}

/** Tensors a capture's runs of a model compute for a frontier of that model, and the frontier. */
export interface Fill {
  f: Frontier;
  names: string[];
}

/**
 * Runs of `model` computing `names`: only the nodes they need, and with a frontier, only those after its cached
 * tensors (keeping, for the later captures, what it says to keep). `fill`: tensors the same runs compute for another
 * frontier of this model (the original's, in asymmetric mode), to stage there.
 */
export async function openSource(
  model: Model,
  names: string[],
  opts: RuntimeOptions & { spin?: boolean },
  batches: number,
  frontier?: { f: Frontier; plan: StepPlan },
  fill?: Fill,
): Promise<Source> {
  const step = frontier?.f.step(names, frontier.plan);
  const filled = fill?.names ?? [];
  if (!frontier || !step) {
    const fetch = [...new Set([...names, ...filled])];
    const runner = await Runner.open(model, fetch, opts, true);
    const fixed = modelInputs(model)[0]?.dims[0] ?? null;
    return {
      async run(b) {
        const out = await runner.runRaw(b, fetch);
        for (const t of filled) fill!.f.stage(t, b.start, out[t]!, batches);
        return activations(b, out, names, fixed);
      },
      async release(ok) {
        frontier?.f.commit(false); // nothing was staged: later captures start from the inputs
        fill?.f.commit(ok);
        await runner.release();
      },
    };
  }
  const f = frontier.f,
    fetch = [...new Set([...names, ...step.keep, ...filled])].filter((t) => !f.has(t));
  const runner = fetch.length ? await Runner.open(model, fetch, opts, true, step.given) : undefined;
  const fixed = modelInputs(model)[0]?.dims[0] ?? null;
  return {
    async run(b) {
      const given = Object.fromEntries([...step.given.keys()].map((t) => [t, f.get(t, b.start)]));
      const out: Record<string, OrtTensor> = runner ? await runner.runRaw(b, fetch, given) : {};
      for (const t of [...names, ...step.keep, ...filled]) out[t] ??= f.get(t, b.start);
      for (const t of step.keep) f.stage(t, b.start, out[t]!, batches);
      // a tensor both frontiers keep is copied: the model's cuts its tensors in place as groups are pruned
      for (const t of filled) fill!.f.stage(t, b.start, step.keep.includes(t) ? copyOf(out[t]!) : out[t]!, batches);
      return activations(b, out, names, fixed);
    },
    async release(ok) {
      f.commit(ok);
      fill?.f.commit(ok);
      await runner?.release();
    },
  };
}

async function capturePass(
  model: Model,
  groups: Group[],
  calib: Calibration,
  opts: CaptureOptions,
): Promise<Map<string, Captured[]>> {
  const reference = opts.reference?.model === model && !opts.reference.seeded ? opts.reference : undefined,
    outputs = reference?.outputNames ?? [],
    names = [...new Set([...groups.flatMap((g) => g.consumers.map((c) => c.input)), ...outputs])];
  const targets = opts.target && new Map(opts.target.groups.map((g) => [g.id, g])),
    consts = opts.target && constantTensors(opts.target.model.graph!);
  const pairs = groups.flatMap((g) =>
    g.consumers.map((c, i) => {
      const target = targets?.get(g.id)?.consumers[i];
      if (targets && (!target || target.node.name !== c.node.name))
        throw internal(`group ${g.id}: consumer ${c.node.name} is not in the original model's group`);
      const projected = target && projectedTarget(model, c, opts.target!.model, target, consts!);
      return { group: g.id, c, target, projected };
    }),
  );
  const fr = opts.frontier,
    batches = Math.ceil(calib.rows / calib.batchSize(opts.batch ?? CAPTURE_BATCH));
  const run = await openSource(
    model,
    names,
    opts,
    batches,
    fr && {
      f: fr.model,
      plan: {
        later: fr.later.flatMap((g) => g.consumers.map((c) => c.input)),
        changing: rewritten(model, groups),
        sliceable: groups.flatMap((g) => [...channelRuns(g).keys()]),
        laterChanging: rewritten(model, fr.later),
      },
    },
    opts.fill,
  );
  const tgt = opts.target
    ? await openSource(
        opts.target.model,
        [...new Set(pairs.map((p) => p.projected?.output ?? p.c.input))],
        opts,
        batches,
        fr?.target && { f: fr.target, plan: { later: fr.targetLater ?? [] } },
      ).catch(async (e) => {
        await run.release(false);
        throw e;
      })
    : undefined;
  let ok = false;
  const kernels = getKernels('wasm', opts.threads),
    mark = kernels.arena.mark();
  const want = opts.stats;
  const channels = new Map(groups.map((g) => [g.id, g.channels]));
  const terms = pairs.map(({ group, c, target, projected }) => {
    const W = want?.sensitivity ? consumerWeightMatrix(model, c) : undefined;
    // the target projected on the weights the selection fits (the consumer's in `model`), where that is cheaper:
    // read off the original model's output, or computed from its input
    const m = projectionOf(c, !!tgt),
      project = projected ? { m: c.m } : m === undefined ? undefined : { W: W ?? consumerWeightMatrix(model, c), m };
    return {
      group,
      c,
      target,
      projected,
      acc: new GramAccumulator(c.d, { asymmetric: !!tgt, kernels, project }),
      stats: want && new ChannelStatsAccumulator(c, channels.get(group)!, want, W),
    };
  });
  // Batch i+1 is asked for before batch i is accumulated. Only a backend that runs off this thread computes it
  // meanwhile: onnxruntime-node runs it here, synchronously, once the accumulation yields (a 570 ms VGG run blocked
  // this thread's timers throughout).
  const forward = (b: Batch) => Promise.all([run.run(b), tgt?.run(b)]);
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
      const mask = calib.tokenMask(b.start, b.rows);
      for (const t of terms) {
        const B = part(got.get(t.c.input)!, t.c),
          p = t.projected,
          keep = tokenRows(t.c, B.dims, mask);
        const A = p
          ? projectedRows(target!.get(p.output)!, p, t.c.kind === 'conv')
          : t.target && part(target!.get(t.c.input)!, t.target);
        accumulate(t.c, t.acc, b.rows, B, A, keep);
        t.stats?.add(keep ? keptRows(B.data, t.c.d, keep) : B.data, B.dims);
      }
      reference?.seed(b, new Map(outputs.map((o) => [o, got.get(o)!])));
      opts.onBatch?.(b.start + b.rows, calib.rows);
    }
    const out = new Map<string, Captured[]>(groups.map((g) => [g.id, []]));
    for (const t of terms)
      out.get(t.group)!.push({ ...t.acc.result(), ...(t.stats ? { stats: t.stats.result() } : {}) });
    ok = true;
    return out;
  } finally {
    kernels.arena.release(mark);
    await pending?.catch(() => {}); // after an error: a run still in flight must not outlive its session
    await run.release(ok);
    await tgt?.release(ok);
  }
}
