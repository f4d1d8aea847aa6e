// A second sweep of re-fits (issue 14). Sequential and asymmetric modes re-fit a group's consumers when that group is
// pruned; groups pruned later change the inputs of consumers fitted earlier (a ResNet's residual-stream group is read
// by every block and the classifier, and the blocks' inner groups, pruned later, change what is added into the
// stream). After every group is pruned, each consumer is re-fitted once more, in graph order, by least squares from
// the final pruned network's input to the original model's consumer output, keeping the selection. Optionally
// ReLU-aware: where a Relu follows (through a per-channel BatchNormalization and a residual Add), an entry whose
// original pre-activation and prediction are both ≤ 0 costs nothing, so its target becomes the prediction, and the
// consumer is fitted again. The prediction and the pre-activation it makes are read off a run of the model with the
// last fit in place. Each fit accumulates as a capture does (GramAccumulator: a conv's patches in the kernels, its
// BᵀB from shifted inputs).
import type { Model, GraphProto, NodeProto, TensorProto } from '../onnx/index.js';
import { tensorToFloat32 } from '../onnx/index.js';
import type { Consumer, Group } from '../graph/types.js';
import { analyze, consumerWeightMatrix } from '../graph/analyze.js';
import { constantTensors } from '../graph/shapes.js';
import { patchSize } from '../geometry.js';
import { Calibration } from '../calibration.js';
import {
  accumulate,
  CAPTURE_BATCH,
  openSource,
  outputChannels,
  tokenRows,
  type Activation,
  type RuntimeOptions,
} from '../capture/index.js';
import { Frontier, frontierBytes, unchangedTensors } from '../capture/frontier.js';
import { GramAccumulator } from '../kernels/gram.js';
import { getKernels, type KernelOptions } from '../kernels/instances.js';
import { selectChannels } from '../select/greedy.js';
import { ridged, ridgeLambda, takesRidge } from '../select/ridge.js';
import { biasSite } from '../rewrite/bias.js';
import { layerOf } from '../graph/ops.js';
import { pruneGroups } from '../rewrite/index.js';

export interface SweepOptions extends RuntimeOptions, KernelOptions {
  /**
   * Fit the consumer's bias too (the intercept), where it has one: a bias the sweep created would be parameters past
   * the budget, which counted those the prune's own re-fit made.
   */
  intercept?: boolean;
  /** ReLU-aware fits after the first (0: plain least squares). */
  relu?: number;
  batch?: number;
  /** Only the consumers (node names) this accepts are re-fitted (default: all). */
  only?: (node: string) => boolean;
  /** Progress: consumers done of all. */
  onStep?: (done: number, total: number) => void;
}

/** What one consumer's re-fit reads: its input in the pruned model, its output there and in the original model. */
interface Site {
  group: Group;
  /** The consumer's index in the group. */
  t: number;
  c: Consumer;
  /** The original model's output channels the pruned consumer still has, in order. */
  outs: number[];
  /** The consumer's output after its bias, in each model; the pruned model's current bias. */
  post: { pruned: string; original: string };
  bias: Float32Array;
  /** The consumer's current weights (d × m): the ridge's prior (Fit.solve). */
  W: Float64Array;
  /** Whether its fit takes the intercept (SweepOptions.intercept, and a bias of its own). */
  intercept: boolean;
  /** Where a Relu follows: its input tensor (of both models). */
  relu?: { pre: string };
}

// The ReLU-aware fit frees about half the entries of its target (30–55 % on the bundled models), so it needs
// many more rows than columns: on LeNet's fc1 (512 rows, d = 100–350) it lost up to 0.01 test accuracy (16×,
// 32×); left out there (and on fc2 at 2×, d = 74), LeNet lost nothing at 2–32×, and VGG at 16× and 32× gained as
// much as with it everywhere.
const RELU_ROWS = 10;

const readersOf = (g: GraphProto, t: string) => g.node.filter((n) => n.input.includes(t));

/** The consumer's output after its bias: its own output, or that of the Add holding its bias constant. */
function postBias(graph: GraphProto, consts: Map<string, TensorProto>, c: Consumer, node: NodeProto) {
  const site = biasSite(graph, consts, c),
    y = node.output[0]!;
  if (typeof site === 'string' || site.kind !== 'constant' || node.input.includes(site.tensor))
    return { tensor: y, bias: site };
  const add = readersOf(graph, y).find((n) => n.opType === 'Add' && n.input.includes(site.tensor));
  return { tensor: add ? add.output[0]! : y, bias: site };
}

/** The Relu after a consumer's output `y` (through a per-channel BatchNormalization and a residual Add), if any. */
function reluAfter(graph: GraphProto, consts: Map<string, TensorProto>, y: string, m: number) {
  let t = y,
    next = readersOf(graph, t);
  if (next.length === 1 && next[0]!.opType === 'BatchNormalization') {
    const gamma = consts.get(next[0]!.input[1]!);
    if (!gamma || tensorToFloat32(gamma).data.length !== m) return undefined;
    t = next[0]!.output[0]!;
    next = readersOf(graph, t);
  }
  if (next.length === 1 && next[0]!.opType === 'Add') {
    t = next[0]!.output[0]!;
    next = readersOf(graph, t);
  }
  return next.length && next.every((n) => n.opType === 'Relu') ? { pre: t } : undefined;
}

/**
 * Where consumer `name` of the pruned model is re-fitted from, or undefined where the sweep leaves it (a consumer of
 * several groups, a grouped conv, a layer whose output is not its product (an activation fused into it, a
 * transposed conv, a recurrent layer), outputs the original model's groups do not map).
 */
function siteOf(
  pruned: Model,
  original: { model: Model; groups: Group[] },
  keeps: Map<string, number[]>,
  name: string,
  opts: SweepOptions,
): Site | undefined {
  const group = analyze(pruned).groups.find((g) => g.consumers.some((c) => c.node.name === name));
  const oc = original.groups.flatMap((g) => g.consumers).find((o) => o.node.name === name);
  if (!group || !oc) return undefined;
  const t = group.consumers.findIndex((c) => c.node.name === name),
    c = group.consumers[t]!;
  if (c.d !== c.dTotal || (c.kind === 'conv' && c.d !== c.entries * patchSize(c.conv!))) return undefined;
  // its output must be B·W + bias, which the fit targets (not a FusedConv's past its activation)
  if (!layerOf(c.node)?.product) return undefined;
  const made = original.groups.find((g) => g.producers.some((p) => p.name === name));
  const outs = made ? keeps.get(made.id) : Array.from({ length: c.m }, (_, i) => i);
  if (outs?.length !== c.m) return undefined;
  const graph = pruned.graph!,
    consts = constantTensors(graph),
    post = postBias(
      graph,
      consts,
      c,
      graph.node.find((n) => n.name === name)!,
    );
  const own = typeof post.bias !== 'string' && post.bias.kind === 'constant' ? post.bias.tensor : undefined,
    bias = own ? tensorToFloat32(consts.get(own)!).data : new Float32Array(c.m);
  if (bias.length !== c.m) return undefined;
  const og = original.model.graph!,
    target = postBias(og, constantTensors(og), oc, oc.node).tensor;
  // the Relu's input must be a tensor of both models (not an Add the bias re-fit created)
  const relu = opts.relu ? reluAfter(graph, consts, post.tensor, c.m) : undefined,
    shared = relu && og.node.some((n) => n.output.includes(relu.pre));
  const W = consumerWeightMatrix(pruned, c);
  const intercept = !!opts.intercept && own !== undefined;
  return {
    ...{ group, t, c, outs, post: { pruned: post.tensor, original: target }, bias, W, intercept },
    ...(shared ? { relu } : {}),
  };
}

/** Least squares of a target T on B (rows × d), with an intercept, from their Gram matrices (GramAccumulator's). */
export class Fit {
  private readonly acc: GramAccumulator;

  constructor(
    private readonly d: number,
    private readonly m: number,
    opts: KernelOptions,
  ) {
    const kernels = getKernels(opts.kernels, opts.threads);
    this.acc = new GramAccumulator(d, { asymmetric: true, kernels, project: { m } });
  }

  /** Rows B (rows × d) and T (rows × m) of `samples` samples, those `keep` leaves out left out. */
  add(B: Float32Array, T: Float32Array, samples?: number, keep?: Uint8Array): void {
    this.acc.add(B, T, samples, keep);
  }

  /** A batch of consumer c's input and its target T laid out as c's output (a conv's [b, m, …]), as captures take. */
  addLayer(c: Consumer, samples: number, B: Activation, T: Float32Array, keep?: Uint8Array): void {
    accumulate(c, this.acc, samples, B, T, keep);
  }

  /**
   * The weights (d × m) and, with the intercept, the bias; frees the accumulator. With fewer than RIDGE_ROWS rows per
   * column, the least squares takes the ridge toward `prior` (the consumer's current weights), as prune's re-fit does;
   * `distinct`: the share of the rows from distinct samples (repeated samples add rows, not information).
   */
  solve(
    intercept: boolean,
    opts: KernelOptions,
    prior: Float64Array,
    distinct = 1,
  ): { W: Float64Array; bias?: Float64Array; rows: number } {
    const { d, m } = this;
    let g;
    try {
      g = this.acc.result();
    } finally {
      this.acc.release();
    }
    const ic = intercept ? { intercept: { sums: g.sums!, targetSumsW: g.targetSumsW!, rows: g.rows } } : {};
    // every column in order: the pivoted factor's re-fit, dependent columns getting no weight
    const order = Array.from({ length: d }, (_, i) => i);
    const pr = { d, m, g: 1, G: g.G, CW: g.CW!, targetNorm2: g.targetNorm2!, W: prior, ...ic };
    const ridge = takesRidge(d, Math.floor(g.rows * distinct));
    const fit = selectChannels(ridge ? ridged(pr, ridgeLambda(pr, order, g.rows)) : pr, d, {
      ...opts,
      order,
    }).refit(d);
    return { W: fit.W, ...(fit.bias ? { bias: fit.bias } : {}), rows: g.rows };
  }
}

/**
 * The runs of both models between fits, each from where the last left off (frontier.ts): the pruned model's, which
 * changes consumer by consumer, from the input of the one fitted last; the original's, computed once as far as the
 * cache holds it. `later`: what this consumer's fits and those after them want of each, and the consumers after it.
 */
interface Lines {
  pruned: Frontier;
  original: Frontier;
  later: { pruned: string[]; original: string[]; consumers: ReadonlySet<string> };
}

/**
 * One fit of a consumer over the calibration data: the target is its original output less its current bias (what
 * its weights and the bias change must make). ReLU-aware with `relu`: `pruned` then has the last fit in place (which
 * changes constants only: the sweep creates no bias, so its tensors keep their names).
 */
async function fitOnce(
  pruned: Model,
  original: Model,
  s: Site,
  calib: Calibration,
  opts: SweepOptions,
  lines: Lines,
  relu = false,
) {
  const { c } = s,
    conv = c.kind === 'conv',
    all = Array.from({ length: c.m }, (_, i) => i);
  const pNames = [c.input, ...(relu ? [s.post.pruned, s.relu!.pre] : [])],
    oNames = [s.post.original, ...(relu ? [s.relu!.pre] : [])];
  const size = calib.batchSize(opts.batch ?? CAPTURE_BATCH),
    batches = Math.ceil(calib.rows / size),
    nodes = pruned.graph!.node;
  lines.pruned.advance(pruned);
  // the two models' runs take turns
  const P = await openSource(pruned, pNames, { ...opts, spin: false }, batches, {
    f: lines.pruned,
    plan: {
      later: lines.later.pruned,
      changing: nodes.filter((n) => n.name === c.node.name),
      laterChanging: nodes.filter((n) => lines.later.consumers.has(n.name)),
    },
  });
  const O = await openSource(original, oNames, { ...opts, spin: false }, batches, {
    f: lines.original,
    plan: { later: lines.later.original },
  }).catch(async (e) => {
    await P.release(false);
    throw e;
  });
  let ok = false;
  const fit = new Fit(c.d, c.m, opts);
  try {
    for (const b of calib.batches(size)) {
      const [p, o] = await Promise.all([P.run(b), O.run(b)]);
      const Y = o.get(s.post.original)!,
        B = p.get(c.input)!;
      let T = outputChannels(Y, s.outs, conv, s.bias);
      if (relu) {
        // where the Relu clips both the original's pre-activation and the last fit's, the target is the fit's own
        // prediction (its output less the bias the target is measured from)
        const pred = outputChannels(p.get(s.post.pruned)!, all, conv, s.bias),
          pre = outputChannels(p.get(s.relu!.pre)!, all, conv),
          Po = outputChannels(o.get(s.relu!.pre)!, s.outs, conv);
        if (T === Y.data) T = T.slice();
        for (let e = 0; e < T.length; e++) if (Po[e]! <= 0 && pre[e]! <= 0) T[e] = pred[e]!;
      }
      fit.addLayer(c, b.rows, B, T, tokenRows(c, B.dims, calib.tokenMask(b.start, b.rows)));
    }
    const solved = fit.solve(s.intercept, opts, s.W, calib.distinctSamples() / calib.rows);
    ok = true;
    return solved;
  } finally {
    await P.release(ok);
    await O.release(ok);
  }
}

/** The original model's tensors a consumer's fits read: its output after the bias, and its Relu's input, if any. */
function originalTensors(original: { model: Model; groups: Group[] }, name: string): string[] {
  const oc = original.groups.flatMap((g) => g.consumers).find((o) => o.node.name === name);
  if (!oc) return [];
  const og = original.model.graph!,
    consts = constantTensors(og),
    post = postBias(og, consts, oc, oc.node).tensor,
    relu = reluAfter(og, consts, post, oc.m);
  return relu ? [post, relu.pre] : [post];
}

/** The model with consumer s's weights (and bias change) from `fit`, its channels all kept. */
function withFit(model: Model, s: Site, fit: { W: Float64Array; bias?: Float64Array }): Model {
  const { group, t } = s;
  return pruneGroups(model, [
    {
      group,
      keep: Array.from({ length: group.channels }, (_, i) => i),
      W: group.consumers.map((_, i) => (i === t ? fit.W : undefined)),
      ...(fit.bias ? { bias: group.consumers.map((_, i) => (i === t ? fit.bias : undefined)) } : {}),
    },
  ]);
}

/**
 * Re-fits every consumer of `pruned` once more, in graph order, to `original`'s consumer outputs (see the top of the
 * file). `keeps`: each of the original model's groups' kept channels (ascending). Returns the re-fitted model.
 */
export async function refitSweep(
  original: Model,
  pruned: Model,
  keeps: Map<string, number[]>,
  calib: Calibration,
  opts: SweepOptions = {},
): Promise<Model> {
  const orig = { model: original, groups: analyze(original).groups },
    at = new Map(pruned.graph!.node.map((n, i) => [n.name, i]));
  const consumers = analyze(pruned).groups.flatMap((g) => g.consumers),
    inputs = new Map(consumers.map((c) => [c.node.name, c.input]));
  const names = [...inputs.keys()].filter((n) => opts.only?.(n) ?? true).sort((a, b) => at.get(a)! - at.get(b)!);
  const originals = new Map(names.map((n) => [n, originalTensors(orig, n)]));
  const frontiers = {
    pruned: new Frontier(pruned, frontierBytes()),
    original: new Frontier(original, frontierBytes(), true),
  };
  let model = pruned;
  for (const [k, name] of names.entries()) {
    opts.onStep?.(k, names.length);
    // a consumer whose input the model computes as the original does has the original's weights (no group before it
    // was cut): its fit would give them back
    if (unchangedTensors(original, model, [inputs.get(name)!]).size) continue;
    const s = siteOf(model, orig, keeps, name, opts);
    if (!s) continue;
    // this consumer's tensors too: its ReLU-aware fits read them again
    const from = names.slice(k),
      lines: Lines = {
        ...frontiers,
        later: {
          pruned: from.map((n) => inputs.get(n)!),
          original: from.flatMap((n) => originals.get(n)!),
          consumers: new Set(from.slice(1)),
        },
      };
    let fit = await fitOnce(model, original, s, calib, opts, lines);
    const relu = s.relu && fit.rows >= RELU_ROWS * s.c.d ? (opts.relu ?? 0) : 0;
    for (let i = 0; i < relu; i++) fit = await fitOnce(withFit(model, s, fit), original, s, calib, opts, lines, true);
    model = withFit(model, s, fit);
  }
  opts.onStep?.(names.length, names.length);
  return model;
}
