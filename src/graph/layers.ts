// The layer table: everything subprune knows about the layers whose channels it prunes (Conv, Gemm, MatMul), one
// entry each, in the spirit of Torch-Pruning's registry of per-layer pruners. An entry says where the layer keeps its
// weight and bias and which weight axes hold output channels and input features, which axis of its output holds the
// channels, its output shape and multiply-accumulates, and how its input becomes the matrix B of "output = B·W" when
// it consumes a group's channels (im2col patches for Conv, rows for dense layers). Analysis, shape inference, capture,
// rewrite and evaluation ask this table; none of them names a layer op. A new layer type is one entry here and a test.
import {
  attrFloat,
  attrInt,
  attrInts,
  attrString,
  numel,
  tensorDims,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import { broadcastShapes, convGeometry, patchSize, windowGeometry, type ConvGeometry } from '../geometry.js';

/**
 * How a layer's weight maps to the d×m matrix W of "consumer output = B·W": 'conv' [m, n, kh, kw] (W row
 * c·kh·kw + i·kw + j; a 1-D Conv's [m, n, k] is kh = 1); 'out-in' [m, d] (Gemm transB=1, W = weightᵀ); 'in-out'
 * [d, m] (W = weight).
 */
export type WeightLayout = 'conv' | 'out-in' | 'in-out';

export interface LayerInfo {
  weight: string;
  weightDims: number[];
  /** Bias input (Conv B, Gemm C), if any. */
  bias?: string;
  layout: WeightLayout;
  /** Weight axis of the output channels and of the input features. */
  outAxis: number;
  inAxis: number;
}

/** How a consumer's input becomes rows of B: its im2col patches (a Conv) or its rows as they are (dense layers). */
export type ConsumerInput = { kind: 'conv'; conv: ConvGeometry } | { kind: 'dense' };

/** Channels arriving on a layer's input: along `axis`, n channels of `per` entries each from entry `offset` on. */
export interface Arrival {
  axis: number;
  offset: number;
  n: number;
  per: number;
}

/** What a layer makes of channels arriving on its input: B's rows, columns per channel, and its rows of W. */
export interface ConsumerShape {
  input: ConsumerInput;
  /** Columns of B per channel, and d = n·g. */
  g: number;
  d: number;
  /** The channels' first row in the layer's whole dTotal × m weight matrix. */
  row: number;
  dTotal: number;
}

type Constant = (name: string) => TensorProto | undefined;
type Refusal = { refuse: string };

export interface Layer {
  /** Where the node keeps its weight and bias, or why it cannot produce or consume a group's channels. */
  read(node: NodeProto, constant: Constant): LayerInfo | Refusal;
  /** The axis of the layer's output (of rank `rank`) that holds its output channels. */
  channelAxis(rank: number): number;
  /** Output shapes from the input shapes, or undefined if unknown. */
  shape(node: NodeProto, ins: (number[] | undefined)[]): number[][] | undefined;
  /** Multiply-accumulates of one run on input x, weight w, output y. */
  macs(node: NodeProto, x: number[], w: number[], y: number[]): number;
  /** What the layer makes of channels arriving on its input (of shape inShape), or why it cannot consume them. */
  consume(node: NodeProto, info: LayerInfo, inShape: number[], at: Arrival): ConsumerShape | string;
  /** Its bias input (a re-fit's intercept goes there) and the attribute that scales it; none: an Add after it. */
  biasInput?: { input: number; scale?: string };
  /** Why its output channels cannot be pruned, if they cannot (a recurrent layer's hidden units feed back). */
  fixedOutputs?: string;
  /**
   * Its output is B·W plus its bias (B as `consume` makes it from the whole input, W the whole weight matrix),
   * laid out as its input is: a row per output position of axis 1's channels (Conv), or of the last axis (dense
   * layers). Not ConvTranspose, whose windows overlap, nor recurrent layers.
   */
  product?: true;
}

/**
 * The op name the tables know a node by: its op type in ONNX's own domain, `domain::opType` in any other (onnxruntime's
 * com.microsoft contrib ops, custom ops), so that an op of another domain never takes the rule of a namesake.
 */
export function opOf(n: NodeProto): string {
  return n.domain === '' || n.domain === 'ai.onnx' ? n.opType : `${n.domain}::${n.opType}`;
}

const label = (n: NodeProto) => `${opOf(n)} "${n.name}"`;

/** The node's weight and bias inputs, or why they are not constants. */
function weightAndBias(node: NodeProto, constant: Constant): { w: string; dims: number[]; b?: string } | Refusal {
  const [w, b] = [node.input[1] ?? '', node.input[2] || undefined];
  const t = constant(w);
  if (!t) return { refuse: `${label(node)}: its weight "${w}" is not a constant` };
  if (b && !constant(b)) return { refuse: `${label(node)}: its bias "${b}" is not a constant` };
  return { w, dims: tensorDims(t), ...(b ? { b } : {}) };
}

/** A dense consumer (Gemm, MatMul) multiplies along the last axis: B's rows are the input's rows. */
function denseConsume(node: NodeProto, info: LayerInfo, inShape: number[], at: Arrival): ConsumerShape | string {
  if (at.axis !== inShape.length - 1)
    return `consumer ${label(node)} multiplies along the last axis, but the channels are on axis ${at.axis}`;
  const dTotal = inShape[at.axis]!;
  const have = info.weightDims[info.inAxis];
  if (have !== dTotal) return `consumer ${label(node)} weight has ${have} input features, its input has ${dTotal}`;
  return { input: { kind: 'dense' }, g: at.per, d: at.n * at.per, row: at.offset, dTotal };
}

const Conv: Layer = {
  biasInput: { input: 2 },
  product: true,
  read(node, constant) {
    const wb = weightAndBias(node, constant);
    if ('refuse' in wb) return wb;
    const group = attrInt(node, 'group', 1);
    if (group !== 1)
      return {
        refuse:
          `${label(node)} is a grouped or depthwise convolution (group=${group}); its channels are coupled by ` +
          'the groups',
      };
    return {
      weight: wb.w,
      weightDims: wb.dims,
      ...(wb.b ? { bias: wb.b } : {}),
      layout: 'conv',
      outAxis: 0,
      inAxis: 1,
    };
  },
  channelAxis: () => 1,
  shape(node, [x, w]) {
    if (!x || !w) return undefined;
    return [[x[0]!, w[0]!, ...windowGeometry(node, x.slice(2), w.slice(2)).out]];
  },
  macs: (_node, _x, w, y) => numel(y) * numel(w.slice(1)), // each output: (C/group)·kernel MACs
  consume(node, info, inShape, at) {
    const w = info.weightDims;
    if (at.axis !== 1 || inShape.length !== w.length)
      return at.axis >= 2 && inShape.length === w.length
        ? `consumer ${label(node)} slides over the channels (on its axis ${at.axis}), which couples neighbouring ` +
            "channels (ECA-Net's Conv1d over the pooled channels)"
        : `consumer ${label(node)} receives the channels on axis ${at.axis}, not as its input channels`;
    if (w[1] !== inShape[1])
      return `consumer ${label(node)} expects ${w[1]} input channels, its input has ${inShape[1]}`;
    const conv = convGeometry(node, inShape.slice(2), w.slice(2));
    if (!conv) return `consumer ${label(node)} is a ${w.length - 2}-D convolution; only 1-D to 3-D ones are supported`;
    const kk = patchSize(conv); // a channel of `per` input channels owns per·(kd·)kh·kw consecutive columns
    return {
      input: { kind: 'conv', conv },
      g: at.per * kk,
      d: at.n * at.per * kk,
      row: at.offset * kk,
      dTotal: w[1]! * kk,
    };
  },
};

const Gemm: Layer = {
  biasInput: { input: 2, scale: 'beta' },
  product: true,
  read(node, constant) {
    const wb = weightAndBias(node, constant);
    if ('refuse' in wb) return wb;
    const l = label(node);
    if (wb.dims.length !== 2) return { refuse: `${l}: its weight "${wb.w}" has rank ${wb.dims.length}, expected 2` };
    if (attrInt(node, 'transA', 0) !== 0) return { refuse: `${l} has transA=1, which subprune does not support` };
    const alpha = attrFloat(node, 'alpha', 1);
    const beta = attrFloat(node, 'beta', 1);
    if (alpha !== 1 || (wb.b && beta !== 1))
      return { refuse: `${l} has alpha=${alpha}, beta=${beta}; only alpha=beta=1 is supported` };
    const transB = attrInt(node, 'transB', 0) !== 0;
    return {
      weight: wb.w,
      weightDims: wb.dims,
      ...(wb.b ? { bias: wb.b } : {}),
      layout: transB ? 'out-in' : 'in-out',
      outAxis: transB ? 0 : 1,
      inAxis: transB ? 1 : 0,
    };
  },
  channelAxis: (rank) => rank - 1,
  shape(node, [x, b]) {
    if (!x || !b || x.length !== 2 || b.length !== 2) return undefined;
    const M = attrInt(node, 'transA', 0) ? x[1]! : x[0]!;
    const N = attrInt(node, 'transB', 0) ? b[0]! : b[1]!;
    return [[M, N]];
  },
  macs: (node, x, _w, y) => numel(y) * (attrInt(node, 'transA', 0) ? x[0]! : x[1]!),
  consume: denseConsume,
};

const MatMul: Layer = {
  product: true,
  read(node, constant) {
    const [x, w] = [node.input[0] ?? '', node.input[1] ?? ''];
    if (constant(x) && !constant(w))
      return {
        refuse:
          `${label(node)} multiplies a constant on the left (W·X); only X·W with the constant on the right is ` +
          'supported',
      };
    const wb = weightAndBias(node, constant);
    if ('refuse' in wb) return wb;
    if (wb.dims.length !== 2)
      return { refuse: `${label(node)}: its weight "${w}" has rank ${wb.dims.length}, expected 2` };
    return { weight: w, weightDims: wb.dims, layout: 'in-out', outAxis: 1, inAxis: 0 };
  },
  channelAxis: (rank) => rank - 1,
  shape(_node, [x, b]) {
    if (!x || !b) return undefined;
    const a2 = x.length === 1 ? [1, x[0]!] : x;
    const b2 = b.length === 1 ? [b[0]!, 1] : b;
    const batch = broadcastShapes([a2.slice(0, -2), b2.slice(0, -2)]);
    const y = [...batch, a2[a2.length - 2]!, b2[b2.length - 1]!];
    if (x.length === 1) y.splice(y.length - 2, 1);
    if (b.length === 1) y.pop();
    return [y];
  },
  macs: (_node, x, _w, y) => numel(y) * x[x.length - 1]!,
  consume: denseConsume,
};

/**
 * ConvTranspose (group 1): weight [C_in, C_out, kh, kw] (1-D: [C_in, C_out, k]). Each input pixel's C_in values
 * times the weight as a C_in × (C_out·kh·kw) matrix give that pixel's contributions to the output, which overlapping
 * windows then add up: as a consumer, B's rows are its input pixels (a 1×1 im2col), g = 1 per input channel, W the
 * weight as it is stored; the objective is the error of those contributions, exact for the output when stride ≥
 * kernel (no overlap, as in DBNet's heads), and an upper bound on it (times the overlap) otherwise.
 */
const ConvTranspose: Layer = {
  biasInput: { input: 2 },
  read(node, constant) {
    const wb = weightAndBias(node, constant);
    if ('refuse' in wb) return wb;
    const group = attrInt(node, 'group', 1);
    if (group !== 1) return { refuse: `${label(node)} is a grouped transposed convolution (group=${group})` };
    const axes = wb.dims.length - 2;
    if (axes < 1 || axes > 3)
      return { refuse: `${label(node)} is a ${axes}-D transposed convolution; only 1-D to 3-D ones are supported` };
    return {
      weight: wb.w,
      weightDims: wb.dims,
      ...(wb.b ? { bias: wb.b } : {}),
      layout: 'in-out',
      outAxis: 1,
      inAxis: 0,
    };
  },
  channelAxis: () => 1,
  shape(node, [x, w]) {
    if (!x || !w || x.length !== w.length) return undefined;
    const k = w.slice(2),
      r = k.length, // spatial axes
      given = attrInts(node, 'output_shape', []),
      ones = new Array<number>(r).fill(1),
      zeros = new Array<number>(r).fill(0);
    const cout = w[1]! * attrInt(node, 'group', 1); // the weight holds C_out/group outputs per group
    if (given.length) return [[x[0]!, cout, ...given.slice(-r)]];
    const strides = attrInts(node, 'strides', ones),
      dil = attrInts(node, 'dilations', ones),
      outPad = attrInts(node, 'output_padding', zeros),
      auto = attrString(node, 'auto_pad', 'NOTSET');
    // SAME_UPPER / SAME_LOWER: the output is the input times the strides (tf2onnx's Conv2DTranspose, padding='same')
    if (auto === 'SAME_UPPER' || auto === 'SAME_LOWER')
      return [[x[0]!, cout, ...k.map((_, i) => x[i + 2]! * strides[i]!)]];
    if (auto !== 'NOTSET' && auto !== 'VALID') return undefined;
    const pads = auto === 'VALID' ? [...zeros, ...zeros] : attrInts(node, 'pads', [...zeros, ...zeros]);
    const out = k.map(
      (ki, i) => (x[i + 2]! - 1) * strides[i]! - pads[i]! - pads[i + r]! + dil[i]! * (ki - 1) + outPad[i]! + 1,
    );
    return [[x[0]!, cout, ...out]];
  },
  macs: (_node, x, w) => numel(x) * numel(w.slice(1)), // each input value times (C_out/group)·kh·kw weights
  consume(node, info, inShape, at) {
    if (at.axis !== 1 || inShape.length !== info.weightDims.length)
      return `consumer ${label(node)} receives the channels on axis ${at.axis}, not as its input channels`;
    const cin = info.weightDims[0]!;
    if (cin !== inShape[1]) return `consumer ${label(node)} expects ${cin} input channels, its input has ${inShape[1]}`;
    // its rows are the input's pixels (voxels of a 3-D one: its depth unfolded with a kernel of 1)
    const pixels: ConvGeometry = {
      kernel: [1, 1],
      strides: [1, 1],
      pads: [0, 0, 0, 0],
      dilations: [1, 1],
      ...(inShape.length === 5 ? { depth: { kernel: 1, stride: 1, pads: [0, 0], dilation: 1 } } : {}),
    };
    return { input: { kind: 'conv', conv: pixels }, g: at.per, d: at.n * at.per, row: at.offset, dTotal: cin };
  },
};

/**
 * LSTM, GRU and RNN as consumers (a CRNN's recognizer reads the conv features as a sequence): the input weight W
 * [directions, gates·hidden, input] is an 'out-in' matrix of m = directions·gates·hidden outputs, B's rows are every
 * time step of every sample (X [seq, batch, input], or [batch, seq, input] with layout=1). The objective is the error
 * of the input projections X·Wᵀ, which is all the input changes. Their own hidden units are not pruned: they feed
 * back through the recurrence weights.
 */
const Recurrent: Layer = {
  fixedOutputs: 'its hidden units feed back through its recurrence, which subprune does not prune',
  read(node, constant) {
    const w = node.input[1] ?? '',
      t = constant(w);
    if (!t) return { refuse: `${label(node)}: its weight "${w}" is not a constant` };
    const dims = tensorDims(t);
    if (dims.length !== 3) return { refuse: `${label(node)}: its weight "${w}" has rank ${dims.length}, expected 3` };
    return { weight: w, weightDims: dims, layout: 'out-in', outAxis: 1, inAxis: 2 };
  },
  channelAxis: (rank) => rank - 1,
  shape(node, [x]) {
    if (!x || x.length !== 3) return undefined;
    const hidden = attrInt(node, 'hidden_size', 0),
      dirs = attrString(node, 'direction', 'forward') === 'bidirectional' ? 2 : 1;
    const batchFirst = attrInt(node, 'layout', 0) === 1,
      [seq, batch] = batchFirst ? [x[1]!, x[0]!] : [x[0]!, x[1]!];
    if (!hidden) return undefined;
    const y = batchFirst ? [batch, seq, dirs, hidden] : [seq, dirs, batch, hidden],
      state = batchFirst ? [batch, dirs, hidden] : [dirs, batch, hidden];
    return [y, state, state];
  },
  // per step and direction: the input and recurrence projections of every gate
  macs: (node, x, w) => {
    const steps = x[0]! * x[1]!,
      hidden = attrInt(node, 'hidden_size', 0);
    return steps * w[0]! * w[1]! * (w[2]! + hidden);
  },
  consume: denseConsume,
};

// ---- onnxruntime's fused layers (com.microsoft), as its graph optimizer writes them ------------------------------

/**
 * Activations onnxruntime fuses into FusedConv and FusedGemm (attribute `activation`, scalar parameters in
 * `activation_params` or `activation_alpha`/`_beta`): each acts on every entry alone, so the layer's output channels
 * stay its channels.
 */
const FUSED_ACTIVATIONS = new Set(['Relu', 'Tanh', 'Sigmoid', 'LeakyRelu', 'HardSigmoid', 'Clip', 'Elu', 'Selu']);

/** Why a fused layer's activation is none subprune knows to act per entry, if it is not. */
function unknownActivation(node: NodeProto): Refusal | undefined {
  const a = attrString(node, 'activation', '');
  return a === '' || FUSED_ACTIVATIONS.has(a)
    ? undefined
    : { refuse: `${label(node)} applies the activation "${a}", which subprune does not know to act per entry` };
}

/**
 * Why a FusedConv is no Conv followed by an element-wise activation, if it is not: a 4th input Z, a residual added
 * before the activation (onnxruntime's Conv + Add + activation fusion), or an activation subprune does not know.
 */
export function fusedConvRefusal(node: NodeProto): Refusal | undefined {
  if (node.input[3])
    return {
      refuse:
        `${label(node)} adds "${node.input[3]}" to the convolution before its activation (a residual fused into ` +
        'the layer), which subprune does not prune',
    };
  return unknownActivation(node);
}

/** FusedConv: Conv, then its activation. As Conv, but its output is past the activation (no `product`). */
const FusedConv: Layer = {
  ...Conv,
  product: undefined,
  read: (node, constant) => fusedConvRefusal(node) ?? Conv.read(node, constant),
};

/** FusedGemm: Gemm, then its activation. */
const FusedGemm: Layer = {
  ...Gemm,
  product: undefined,
  read: (node, constant) => unknownActivation(node) ?? Gemm.read(node, constant),
};

/**
 * FusedMatMul: alpha · op(A) · op(B), op a transpose of the last two axes (transA, transB) or of the batch axes too
 * (transBatchA, transBatchB). A layer when B is a constant matrix, A untransposed and alpha 1: transB=1 stores the
 * weight [m, d], as Gemm's transB.
 */
const FusedMatMul: Layer = {
  ...MatMul,
  read(node, constant) {
    const l = label(node),
      trans = ['transA', 'transBatchA', 'transBatchB'].find((a) => attrInt(node, a, 0) !== 0);
    if (trans) return { refuse: `${l} has ${trans}=1; subprune supports only transB` };
    const alpha = attrFloat(node, 'alpha', 1);
    if (alpha !== 1) return { refuse: `${l} scales its product by alpha=${alpha}; subprune supports alpha=1` };
    const info = MatMul.read(node, constant);
    if ('refuse' in info || !attrInt(node, 'transB', 0)) return info;
    return { ...info, layout: 'out-in', outAxis: 0, inAxis: 1 };
  },
  shape(node, [x, b]) {
    const t = (s: number[] | undefined, attr: string) =>
      s && s.length >= 2 && attrInt(node, attr, 0) ? [...s.slice(0, -2), s[s.length - 1]!, s[s.length - 2]!] : s;
    if (['transBatchA', 'transBatchB'].some((a) => attrInt(node, a, 0) !== 0)) return undefined;
    return MatMul.shape(node, [t(x, 'transA'), t(b, 'transB')]);
  },
  macs: (node, x, _w, y) => numel(y) * x[x.length - (attrInt(node, 'transA', 0) ? 2 : 1)]!,
};

/** The layers, keyed by op name (opOf: the op type in ai.onnx, `domain::opType` in another domain). */
export const LAYERS: Readonly<Record<string, Layer>> = {
  Conv,
  ConvTranspose,
  Gemm,
  MatMul,
  LSTM: Recurrent,
  GRU: Recurrent,
  RNN: Recurrent,
  'com.microsoft::FusedConv': FusedConv,
  'com.microsoft::FusedGemm': FusedGemm,
  'com.microsoft::FusedMatMul': FusedMatMul,
};

/**
 * The axis of a producer's bias that holds one entry per output channel, if any: Conv's B is [n]; Gemm's C broadcasts
 * against [rows, n], so it is per channel when its last axis has n entries and shared by all channels (nothing to
 * slice) when that axis is 1 or absent.
 */
export function biasAxis(bias: TensorProto, channels: number): number | undefined {
  const dims = tensorDims(bias);
  const last = dims.length - 1;
  return last >= 0 && dims[last] === channels && channels !== 1 ? last : undefined;
}

// ---- the weight as a matrix -----------------------------------------------------------------------------------

/**
 * The weight `data` (of a layer with this layout, d×m as a matrix) as W, row-major d×m, with consumer output = B·W
 * (bias aside), B's columns channel-major (column c·g + j). Conv [m, n, kh, kw]: W[c·kh·kw + i·kw + j][o] =
 * w[o][c][i][j]; Gemm transB=1 [m, d]: the transpose; Gemm transB=0 and MatMul [d, m]: as stored.
 * `rows`: only W's rows from..from+count (a group's part of a consumer that reads several: DenseNet's concatenations).
 */
export function weightToMatrix(
  layout: WeightLayout,
  data: ArrayLike<number>,
  d: number,
  m: number,
  rows = { from: 0, count: d },
): Float64Array {
  const { from, count } = rows;
  if (layout === 'in-out') return Float64Array.from(sliceOf(data, from * m, (from + count) * m));
  const W = new Float64Array(count * m); // 'conv' and 'out-in' are both [m, d] row-major
  for (let o = 0; o < m; o++) {
    const at = o * d + from;
    for (let r = 0; r < count; r++) W[r * m + o] = data[at + r]!;
  }
  return W;
}

/** Entries begin..end of `data` (a typed array's view, else a copy). */
const sliceOf = (data: ArrayLike<number>, begin: number, end: number): ArrayLike<number> =>
  begin === 0 && end === data.length
    ? data
    : ArrayBuffer.isView(data)
      ? (data as unknown as Float32Array).subarray(begin, end)
      : Array.prototype.slice.call(data, begin, end);

/**
 * W (rows × cols, row-major) back into the layer's own layout: data and dims. `dims`: the weight's current dims,
 * whose kernel axes (Conv) carry over.
 */
export function matrixToWeight(
  layout: WeightLayout,
  W: ArrayLike<number>,
  rows: number,
  cols: number,
  dims: readonly number[],
): { dims: number[]; data: Float32Array } {
  const data = new Float32Array(rows * cols);
  if (layout === 'in-out') {
    data.set(W);
    // ConvTranspose: [C_in, C_out, kh, kw]
    return { dims: dims.length > 2 ? [rows, ...dims.slice(1)] : [rows, cols], data };
  }
  for (let o = 0; o < cols; o++) for (let r = 0; r < rows; r++) data[o * rows + r] = W[r * cols + o]!; // [m, d]
  if (layout === 'conv') {
    const kernel = dims.slice(2); // [kh, kw], or [k] for a 1-D Conv
    return { dims: [cols, rows / numel(kernel), ...kernel], data };
  }
  // a recurrent layer's [directions, gates·hidden, input]
  return { dims: dims.length === 3 ? [dims[0]!, cols / dims[0]!, rows] : [cols, rows], data };
}

/** Where entry (row r, column o) of W (dTotal × m, see weightToMatrix) sits in the layer's own weight data. */
export function weightIndex(layout: WeightLayout, dTotal: number, m: number): (r: number, o: number) => number {
  return layout === 'in-out' ? (r, o) => r * m + o : (r, o) => o * dTotal + r;
}
