// A second sweep of re-fits (issue 14). Sequential and asymmetric modes re-fit a group's consumers when that group is
// pruned; groups pruned later change the inputs of consumers fitted earlier (a ResNet's residual-stream group is read
// by every block and the classifier, and the blocks' inner groups, pruned later, change what is added into the
// stream). After every group is pruned, each consumer is re-fitted once more, in graph order, by least squares from
// the final pruned network's input to the original model's consumer output, keeping the selection. Optionally
// ReLU-aware: where a Relu follows (through a per-channel BatchNormalization and a residual Add), an entry whose
// original pre-activation and prediction are both ≤ 0 costs nothing, so its target becomes the prediction, and the
// consumer is fitted again.
import type { Model, GraphProto, NodeProto, TensorProto } from '../onnx/index.js';
import { tensorToFloat32, attrFloat } from '../onnx/index.js';
import type { Consumer, Group } from '../graph/types.js';
import { analyze, consumerWeightMatrix } from '../graph/analyze.js';
import { constantTensors } from '../graph/shapes.js';
import { patchGrid, patchSize, planar, planeDims, unfoldDepth } from '../geometry.js';
import { Calibration } from '../calibration.js';
import { CAPTURE_BATCH, Runner, tokenRows, type Activation, type RuntimeOptions } from '../capture/index.js';
import { GramAccumulator } from '../kernels/gram.js';
import { getKernels, type KernelOptions } from '../kernels/instances.js';
import { selectChannels } from '../select/greedy.js';
import { ridged, ridgeLambda, takesRidge } from '../select/ridge.js';
import { biasSite } from '../rewrite/bias.js';
import { layerOf } from '../graph/ops.js';
import { pruneGroups } from '../rewrite/index.js';

export interface SweepOptions extends RuntimeOptions, KernelOptions {
  /** Fit the consumer's bias too (the intercept), where it takes one. */
  intercept?: boolean;
  /** ReLU-aware fits after the first (0: plain least squares). */
  relu?: number;
  batch?: number;
  /** Only the consumers (node names) this accepts are re-fitted (default: all). */
  only?: (node: string) => boolean;
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
  /** Where a Relu follows: its input tensor, and the per-channel scale between them (BatchNormalization's). */
  relu?: { pre: string; scale: Float64Array };
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

/** The Relu after a consumer's output `y` (through a BatchNormalization and a residual Add), if any. */
function reluAfter(graph: GraphProto, consts: Map<string, TensorProto>, y: string, m: number) {
  let t = y,
    scale = new Float64Array(m).fill(1),
    next = readersOf(graph, t);
  if (next.length === 1 && next[0]!.opType === 'BatchNormalization') {
    const bn = next[0]!,
      get = (i: number) => consts.get(bn.input[i]!);
    const [gamma, variance] = [get(1), get(4)];
    if (!gamma || !variance) return undefined;
    const eps = attrFloat(bn, 'epsilon', 1e-5),
      g = tensorToFloat32(gamma).data,
      v = tensorToFloat32(variance).data;
    if (g.length !== m) return undefined;
    scale = Float64Array.from(g, (x, j) => x / Math.sqrt(v[j]! + eps));
    t = bn.output[0]!;
    next = readersOf(graph, t);
  }
  if (next.length === 1 && next[0]!.opType === 'Add') {
    t = next[0]!.output[0]!;
    next = readersOf(graph, t);
  }
  return next.length && next.every((n) => n.opType === 'Relu') ? { pre: t, scale } : undefined;
}

/**
 * Where consumer `name` of the pruned model is re-fitted from, or undefined where the sweep leaves it (a consumer of
 * several groups, a grouped conv, a layer whose output is not its product (an activation fused into it, a
 * transposed conv, a recurrent layer), outputs the original model's groups do not map, no bias where the intercept
 * needs one).
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
  if (opts.intercept && typeof post.bias === 'string') return undefined;
  const bias =
    typeof post.bias !== 'string' && post.bias.kind === 'constant'
      ? tensorToFloat32(consts.get(post.bias.tensor)!).data
      : new Float32Array(c.m);
  if (bias.length !== c.m) return undefined;
  const og = original.model.graph!,
    target = postBias(og, constantTensors(og), oc, oc.node).tensor;
  // the Relu's input must be a tensor of both models (not an Add the bias re-fit created)
  const relu = opts.relu ? reluAfter(graph, consts, post.tensor, c.m) : undefined,
    shared = relu && og.node.some((n) => n.output.includes(relu.pre));
  const W = consumerWeightMatrix(pruned, c);
  return { group, t, c, outs, post: { pruned: post.tensor, original: target }, bias, W, ...(shared ? { relu } : {}) };
}

/**
 * im2col: one row of d = C·kh·kw entries per output position of each sample (channel-major, zero padding); a 3-D
 * Conv's from its input unfolded along depth (unfoldDepth), rows in the order of its output's positions.
 */
function patches(c: Consumer, input: Activation): Float32Array {
  if (c.kind !== 'conv') return input.data;
  const depth = c.conv!.depth,
    geo = planar(c.conv!),
    X = depth ? unfoldDepth(input, depth) : input;
  const [b, C, H, W] = planeDims(X.dims),
    {
      kernel: [kh, kw],
      strides: [sh, sw],
      pads: [pt, pl],
      dilations: [dh, dw],
    } = geo;
  const [OH, OW] = patchGrid(geo, H, W),
    out = new Float32Array(b * OH * OW * c.d);
  let f = 0;
  for (let s = 0; s < b; s++)
    for (let oh = 0; oh < OH; oh++)
      for (let ow = 0; ow < OW; ow++)
        for (let ch = 0; ch < C; ch++)
          for (let i = 0; i < kh!; i++)
            for (let j = 0; j < kw!; j++) {
              const y = oh * sh! - pt! + i * dh!,
                z = ow * sw! - pl! + j * dw!;
              out[f++] = y >= 0 && y < H && z >= 0 && z < W ? X.data[((s * C + ch) * H + y) * W + z]! : 0;
            }
  return out;
}

/** Channels `chans` of Y (channel axis 1 of a conv output, the last axis of a dense one) as rows of m entries. */
function rows(c: Consumer, Y: Activation, chans: number[]): Float32Array {
  const m = chans.length,
    conv = c.kind === 'conv';
  const M = conv ? Y.dims[1]! : Y.dims[Y.dims.length - 1]!,
    inner = conv ? Y.dims.slice(2).reduce((a, b) => a * b, 1) : 1,
    outer = Y.data.length / (M * inner),
    out = new Float32Array(outer * inner * m);
  for (let s = 0; s < outer; s++)
    for (let j = 0; j < m; j++) {
      const src = (s * M + chans[j]!) * inner;
      for (let p = 0; p < inner; p++) out[(s * inner + p) * m + j] = Y.data[src + p]!;
    }
  return out;
}

/** Least squares of T (rows × m) on B (rows × d), with an intercept, from the Gram matrix of [B | T]. */
export class Fit {
  private readonly acc: GramAccumulator;
  private readonly D: number;

  constructor(
    private readonly d: number,
    private readonly m: number,
    opts: KernelOptions,
  ) {
    this.D = d + m;
    this.acc = new GramAccumulator(this.D, { kernels: getKernels(opts.kernels, opts.threads) });
  }

  /** Rows of `samples` samples, those `keep` leaves out left out (GramAccumulator.add's). */
  add(B: Float32Array, T: Float32Array, samples?: number, keep?: Uint8Array): void {
    const { d, m, D } = this,
      N = T.length / m,
      X = new Float32Array(N * D);
    for (let r = 0; r < N; r++) {
      X.set(B.subarray(r * d, r * d + d), r * D);
      X.set(T.subarray(r * m, r * m + m), r * D + d);
    }
    this.acc.add(X, undefined, samples, keep);
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
    const { d, m, D } = this;
    let g;
    try {
      g = this.acc.result();
    } finally {
      this.acc.release();
    }
    const G = new Float64Array(d * d),
      CW = new Float64Array(d * m);
    for (let i = 0; i < d; i++) {
      G.set(g.G.subarray(i * D, i * D + d), i * d);
      CW.set(g.G.subarray(i * D + d, i * D + D), i * m);
    }
    let targetNorm2 = 0;
    for (let j = d; j < D; j++) targetNorm2 += g.G[j * D + j]!;
    const ic = intercept
      ? { intercept: { sums: g.sums!.slice(0, d), targetSumsW: g.sums!.slice(d), rows: g.rows } }
      : {};
    // every column in order: the pivoted factor's re-fit, dependent columns getting no weight
    const order = Array.from({ length: d }, (_, i) => i);
    const pr = { d, m, g: 1, G, CW, targetNorm2, W: prior, ...ic };
    const ridge = takesRidge(d, Math.floor(g.rows * distinct));
    const fit = selectChannels(ridge ? ridged(pr, ridgeLambda(pr, order, g.rows)) : pr, d, {
      ...opts,
      order,
    }).refit(d);
    return { W: fit.W, ...(fit.bias ? { bias: fit.bias } : {}), rows: g.rows };
  }
}

/** B W + bias, rows × m. */
function predict(B: Float32Array, W: Float64Array, bias: Float64Array | undefined, d: number, m: number) {
  const N = B.length / d,
    out = new Float64Array(N * m);
  for (let r = 0; r < N; r++) {
    const o = r * m;
    if (bias) out.set(bias, o);
    for (let i = 0; i < d; i++) {
      const v = B[r * d + i]!;
      if (v) for (let j = 0, w = i * m; j < m; j++) out[o + j] += v * W[w + j]!;
    }
  }
  return out;
}

/**
 * One fit of a consumer over the calibration data: the target is its original output less its current bias (what
 * its weights and the bias change must make), or with `last` (the previous fit) ReLU-aware.
 */
async function fitOnce(
  pruned: Model,
  original: Model,
  s: Site,
  calib: Calibration,
  opts: SweepOptions,
  last?: { W: Float64Array; bias?: Float64Array },
) {
  const { c, relu } = s,
    all = Array.from({ length: c.m }, (_, i) => i);
  const pNames = [c.input, ...(last && relu ? [s.post.pruned, relu.pre] : [])],
    oNames = [s.post.original, ...(last && relu ? [relu.pre] : [])];
  // the two models' runs take turns
  const P = await Runner.open(pruned, pNames, { ...opts, spin: false }, true);
  const O = await Runner.open(original, oNames, { ...opts, spin: false }, true).catch(async (e) => {
    await P.release();
    throw e;
  });
  const fit = new Fit(c.d, c.m, opts);
  try {
    for (const b of calib.batches(opts.batch ?? CAPTURE_BATCH)) {
      const [p, o] = await Promise.all([P.run(b, pNames), O.run(b, oNames)]);
      const B = patches(c, p.get(c.input)!),
        T = rows(c, o.get(s.post.original)!, s.outs);
      for (let e = 0; e < T.length; e++) T[e] -= s.bias[e % c.m]!;
      if (last && relu) {
        // the pre-activation the fit predicts: the pruned model's, moved by the change of the consumer's output
        const pred = predict(B, last.W, last.bias, c.d, c.m),
          Yp = rows(c, p.get(s.post.pruned)!, all),
          Pp = rows(c, p.get(relu.pre)!, all),
          Po = rows(c, o.get(relu.pre)!, s.outs);
        for (let e = 0; e < T.length; e++) {
          const j = e % c.m,
            pre = Pp[e]! + relu.scale[j]! * (pred[e]! + s.bias[j]! - Yp[e]!);
          if (Po[e]! <= 0 && pre <= 0) T[e] = pred[e]!;
        }
      }
      fit.add(B, T, b.rows, tokenRows(c, p.get(c.input)!.dims, calib.tokenMask(b.start, b.rows)));
    }
    return fit.solve(!!opts.intercept, opts, s.W, calib.distinctSamples() / calib.rows);
  } finally {
    await P.release();
    await O.release();
  }
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
  const names = [...new Set(analyze(pruned).groups.flatMap((g) => g.consumers.map((c) => c.node.name)))]
    .filter((n) => opts.only?.(n) ?? true)
    .sort((a, b) => at.get(a)! - at.get(b)!);
  let model = pruned;
  for (const name of names) {
    const s = siteOf(model, orig, keeps, name, opts);
    if (!s) continue;
    let fit = await fitOnce(model, original, s, calib, opts);
    const relu = s.relu && fit.rows >= RELU_ROWS * s.c.d ? (opts.relu ?? 0) : 0;
    for (let i = 0; i < relu; i++) fit = await fitOnce(model, original, s, calib, opts, fit);
    const { group, t } = s;
    model = pruneGroups(model, [
      {
        group,
        keep: Array.from({ length: group.channels }, (_, i) => i),
        W: group.consumers.map((_, i) => (i === t ? fit.W : undefined)),
        ...(fit.bias ? { bias: group.consumers.map((_, i) => (i === t ? fit.bias : undefined)) } : {}),
      },
    ]);
  }
  return model;
}
