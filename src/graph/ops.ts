// The per-op table: everything subprune knows about how an ONNX op treats channels lives in this file.
// - LAYERS: the ops that can produce or consume a unit's channels (Conv, Gemm, MatMul): where the weight and
//   bias are, which weight axis holds output channels / input features.
// - CHAIN: the ops allowed between producer and consumer. A rule gets the channel layout of its input and
//   returns the layout of its output plus the parameter slices and shape-constant edits that pruning needs,
//   or a reason why the op couples channels. Analysis records those edits in the Unit; rewrite applies them
//   generically, so supporting a new op is one entry here plus a test.
import {
  attrFloat,
  attrInt,
  attrInts,
  DataType,
  tensorDims,
  tensorToInt64,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import { isViewFlatten } from './shapes.js';

/** Where a unit's channels sit in a tensor: along `axis`, channel c owning the entries [c·group, (c+1)·group). */
export interface ChannelLayout {
  axis: number;
  group: number;
}

/** Keep only the kept channels' entries of constant `tensor` along `axis` (blocks of `group` entries per channel). */
export interface ParamSlice {
  tensor: string;
  axis: number;
  group: number;
}

/** Set entry `index` of the INT64 shape constant `tensor` to (kept channels)·perChannel. */
export interface ShapeEdit {
  tensor: string;
  index: number;
  perChannel: number;
}

export interface ChainContext {
  node: NodeProto;
  /** The input slot of `node` that carries the channels. */
  input: number;
  /** The producer's channel count n. */
  channels: number;
  layout: ChannelLayout;
  inShape: number[];
  outShape: number[] | undefined;
  opset: number;
  /** A constant tensor (initializer or Constant node) by name; undefined if computed at run time. */
  constant(name: string): TensorProto | undefined;
  /** The node computing a tensor; undefined for graph inputs and initializers. */
  producer(name: string): NodeProto | undefined;
}

export type ChainStep = { layout: ChannelLayout; slices: ParamSlice[]; shapeEdits: ShapeEdit[] } | { refuse: string };
type ChainRule = (ctx: ChainContext) => ChainStep;

const label = (n: NodeProto) => `${n.opType} "${n.name}"`;
const normAxis = (a: number, rank: number) => (a < 0 ? a + rank : a);
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const pass = (ctx: ChainContext, slices: ParamSlice[] = []): ChainStep => ({
  layout: ctx.layout,
  slices,
  shapeEdits: [],
});

/**
 * A constant that broadcasts against the channel tensor (ONNX right-aligned broadcasting): no slice if it is 1 along
 * the channels (a scalar, or a per-position constant), a slice if it holds one entry (block) per channel.
 */
function broadcastParam(ctx: ChainContext, slot: number, what: string): ParamSlice[] | string {
  const name = ctx.node.input[slot];
  if (!name) return [];
  const t = ctx.constant(name);
  if (!t) return `${label(ctx.node)}: ${what} "${name}" is not a constant`;
  const dims = tensorDims(t);
  const rank = ctx.inShape.length;
  if (dims.length > rank) return `${label(ctx.node)}: ${what} "${name}" broadcasts the channels to a higher rank`;
  const k = ctx.layout.axis - (rank - dims.length);
  if (k < 0 || dims[k] === 1) return [];
  if (dims[k] !== ctx.channels * ctx.layout.group) {
    return `${label(ctx.node)}: ${what} "${name}" has ${dims[k]} entries along the channels, expected ${ctx.channels * ctx.layout.group}`;
  }
  return [{ tensor: name, axis: k, group: ctx.layout.group }];
}

const result = (ctx: ChainContext, s: ParamSlice[] | string): ChainStep =>
  typeof s === 'string' ? { refuse: s } : pass(ctx, s);

/** Element-wise ops with no per-channel parameters. */
const elementwise: ChainRule = (ctx) =>
  ctx.input === 0 ? pass(ctx) : { refuse: `${label(ctx.node)}: the channels enter as input ${ctx.input}` };

/** Add/Sub/Mul/Div: per channel only when the other operand is a constant; another branch couples channels. */
const arithmetic: ChainRule = (ctx) => {
  const other = ctx.node.input[1 - ctx.input];
  if (other && !ctx.constant(other)) {
    return {
      refuse: `${label(ctx.node)} combines the channels with another branch "${other}" (e.g. a residual connection); both branches would have to be pruned together`,
    };
  }
  return result(ctx, broadcastParam(ctx, 1 - ctx.input, 'constant'));
};

/** Normalisations whose parameters are per channel along axis 1 (BatchNormalization: scale, B, mean, var). */
function perChannelNorm(params: number[]): ChainRule {
  return (ctx) => {
    if (ctx.input !== 0) return { refuse: `${label(ctx.node)}: the channels enter as input ${ctx.input}` };
    if (ctx.layout.axis !== 1)
      return { refuse: `${label(ctx.node)} normalises along axis 1, but the channels are on axis ${ctx.layout.axis}` };
    if (ctx.node.opType === 'BatchNormalization' && attrInt(ctx.node, 'training_mode', 0) !== 0) {
      return {
        refuse: `${label(ctx.node)} is in training mode (batch statistics couple samples); export the model in eval mode`,
      };
    }
    const slices: ParamSlice[] = [];
    for (const slot of params) {
      const name = ctx.node.input[slot];
      if (!name) continue;
      const t = ctx.constant(name);
      if (!t) return { refuse: `${label(ctx.node)}: parameter "${name}" is not a constant` };
      const dims = tensorDims(t);
      if (dims.length !== 1 || dims[0] !== ctx.channels * ctx.layout.group) {
        return {
          refuse: `${label(ctx.node)}: parameter "${name}" has shape [${dims.join(', ')}], expected [${ctx.channels * ctx.layout.group}]`,
        };
      }
      slices.push({ tensor: name, axis: 0, group: ctx.layout.group });
    }
    return pass(ctx, slices);
  };
}

/** Pools act on axes ≥ 2 of an N×C×spatial tensor: per channel when the channels are axis 1. */
const pool: ChainRule = (ctx) =>
  ctx.layout.axis === 1 && ctx.input === 0
    ? pass(ctx)
    : { refuse: `${label(ctx.node)} pools over axis ${ctx.layout.axis}, which holds the channels` };

/** Flatten(axis=1) of N×C×spatial: channel c now owns the group·(spatial size) consecutive features. */
const flatten: ChainRule = (ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', 1), ctx.inShape.length);
  if (axis !== 1 || ctx.layout.axis !== 1) {
    return {
      refuse: `${label(ctx.node)} (axis=${axis}) mixes the channels on axis ${ctx.layout.axis} with other axes; only Flatten(axis=1) of channel-first data keeps each channel's features together`,
    };
  }
  return flattenAt1(ctx);
};

const flattenAt1 = (ctx: ChainContext): ChainStep => ({
  layout: { axis: 1, group: ctx.layout.group * prod(ctx.inShape.slice(2)) },
  slices: [],
  shapeEdits: [],
});

/**
 * Reshape to [batch, C·h·w] is a Flatten(axis=1); its constant shape entry C·h·w becomes kept·h·w. So is a Reshape to
 * [x.size(0), -1] computed from its own input (isViewFlatten). Anything else mixes channels.
 */
const reshape: ChainRule = (ctx) => {
  const shapeName = ctx.node.input[1] ?? '';
  const t = ctx.constant(shapeName);
  const x = ctx.inShape;
  const y = ctx.outShape;
  const mixes = {
    refuse: `${label(ctx.node)} to [${y?.join(', ') ?? '?'}] mixes the channels with other axes; only a reshape to [batch, channels·features] (a flatten) is supported`,
  };
  if (ctx.input !== 0) return mixes;
  if (!t && isViewFlatten(ctx.node, ctx.producer, ctx.constant)) {
    // torch's x.view(x.size(0), -1): a Flatten(axis=1) whose shape is computed from x at run time, so nothing to edit
    return ctx.layout.axis === 1 ? flattenAt1(ctx) : mixes;
  }
  if (!t)
    return {
      refuse: `${label(ctx.node)}: its shape "${shapeName}" is neither a constant nor [x.size(0), -1] computed from its own input x (torch's x.view(x.size(0), -1))`,
    };
  if (!y || y.length !== 2 || y[0] !== x[0] || ctx.layout.axis !== 1) return mixes;
  const group = ctx.layout.group * prod(x.slice(2));
  const spec = Array.from(tensorToInt64(t).data, Number);
  if (attrInt(ctx.node, 'allowzero', 0) === 1 && spec.includes(0)) return mixes;
  // spec[1] is either -1 (inferred, nothing to edit) or the feature count, which shrinks with the channels.
  const shapeEdits = spec[1] === ctx.channels * group ? [{ tensor: shapeName, index: 1, perChannel: group }] : [];
  if (spec[1] !== -1 && shapeEdits.length === 0) return mixes;
  return { layout: { axis: 1, group }, slices: [], shapeEdits };
};

/** Transpose keeps every channel's entries; it only moves the channel axis. */
const transpose: ChainRule = (ctx) => {
  const perm = attrInts(
    ctx.node,
    'perm',
    ctx.inShape.map((_, i) => ctx.inShape.length - 1 - i),
  );
  return { layout: { axis: perm.indexOf(ctx.layout.axis), group: ctx.layout.group }, slices: [], shapeEdits: [] };
};

function axesOf(ctx: ChainContext): number[] | undefined | 'computed' {
  if (ctx.node.attribute.some((a) => a.name === 'axes')) return attrInts(ctx.node, 'axes');
  const name = ctx.node.input[1];
  if (!name) return undefined;
  const t = ctx.constant(name);
  return t ? Array.from(tensorToInt64(t).data, Number) : 'computed';
}

/** Squeeze/Unsqueeze of other axes only renumber the channel axis. */
const squeeze: ChainRule = (ctx) => {
  const a = axesOf(ctx);
  if (a === 'computed') return { refuse: `${label(ctx.node)}: its axes are not a constant` };
  const rank = ctx.inShape.length;
  const axes = a?.map((x) => normAxis(x, rank)) ?? ctx.inShape.flatMap((d, i) => (d === 1 ? [i] : []));
  if (axes.includes(ctx.layout.axis)) return { refuse: `${label(ctx.node)} removes the channel axis` };
  return {
    layout: { axis: ctx.layout.axis - axes.filter((x) => x < ctx.layout.axis).length, group: ctx.layout.group },
    slices: [],
    shapeEdits: [],
  };
};

const unsqueeze: ChainRule = (ctx) => {
  const a = axesOf(ctx);
  if (a === 'computed' || a === undefined) return { refuse: `${label(ctx.node)}: its axes are not a constant` };
  const rank = ctx.inShape.length + a.length;
  const inserted = new Set(a.map((x) => normAxis(x, rank)));
  let axis = 0;
  for (let seen = -1; axis < rank; axis++) if (!inserted.has(axis) && ++seen === ctx.layout.axis) break;
  return { layout: { axis, group: ctx.layout.group }, slices: [], shapeEdits: [] };
};

/** Reductions over other axes (e.g. a spatial mean) stay per channel; over the channel axis they couple channels (LayerNorm-like). */
const reduce: ChainRule = (ctx) => {
  const a = axesOf(ctx);
  if (a === 'computed') return { refuse: `${label(ctx.node)}: its axes are not a constant` };
  const rank = ctx.inShape.length;
  const all = (a === undefined || a.length === 0) && attrInt(ctx.node, 'noop_with_empty_axes', 0) === 0;
  const axes = all ? ctx.inShape.map((_, i) => i) : (a ?? []).map((x) => normAxis(x, rank));
  if (axes.includes(ctx.layout.axis)) {
    return {
      refuse: `${label(ctx.node)} reduces over the channel axis (a mean/variance across channels, as in LayerNorm), which couples channels`,
    };
  }
  const drop = attrInt(ctx.node, 'keepdims', 1) === 0 ? axes.filter((x) => x < ctx.layout.axis).length : 0;
  return { layout: { axis: ctx.layout.axis - drop, group: ctx.layout.group }, slices: [], shapeEdits: [] };
};

/** Softmax-like ops normalise over `axis` (opset ≥ 13) or over all axes from `axis` on (older opsets). */
const softmax: ChainRule = (ctx) => {
  const rank = ctx.inShape.length;
  const axis = normAxis(attrInt(ctx.node, 'axis', ctx.opset >= 13 ? -1 : 1), rank);
  const couples = ctx.opset >= 13 ? axis === ctx.layout.axis : axis <= ctx.layout.axis;
  return couples ? { refuse: `${label(ctx.node)} normalises across the channels, which couples them` } : pass(ctx);
};

/** LayerNormalization normalises over all axes from `axis` on. */
const layerNorm: ChainRule = (ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', -1), ctx.inShape.length);
  return axis <= ctx.layout.axis
    ? { refuse: `${label(ctx.node)} normalises across the channels, which couples them` }
    : pass(ctx);
};

const FLOAT_TYPES = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE, DataType.BFLOAT16]);

const refuse =
  (why: string): ChainRule =>
  (ctx) => ({ refuse: `${label(ctx.node)} ${why}` });

/** The ops allowed between a producer and its consumer. Ops not listed here are refused as "not known to act per channel". */
export const CHAIN: Readonly<Record<string, ChainRule>> = {
  Relu: elementwise,
  LeakyRelu: elementwise,
  Sigmoid: elementwise,
  HardSigmoid: elementwise,
  HardSwish: elementwise,
  Tanh: elementwise,
  Elu: elementwise,
  Selu: elementwise,
  Celu: elementwise,
  Softplus: elementwise,
  Softsign: elementwise,
  Mish: elementwise,
  Gelu: elementwise,
  ThresholdedRelu: elementwise,
  Dropout: elementwise, // output 1 (the mask) must be unused: checked for every op by the analysis
  Identity: elementwise,
  Clip: elementwise, // min/max are scalars by the spec
  Cast: (ctx) =>
    FLOAT_TYPES.has(attrInt(ctx.node, 'to')) ? pass(ctx) : { refuse: `${label(ctx.node)} casts to a non-float type` },
  PRelu: (ctx) =>
    ctx.input === 0
      ? result(ctx, broadcastParam(ctx, 1, 'slope'))
      : { refuse: `${label(ctx.node)}: the channels enter as the slope` },
  Add: arithmetic,
  Sub: arithmetic,
  Mul: arithmetic,
  Div: arithmetic,
  BatchNormalization: perChannelNorm([1, 2, 3, 4]),
  InstanceNormalization: perChannelNorm([1, 2]),
  MaxPool: pool,
  AveragePool: pool,
  LpPool: pool,
  GlobalAveragePool: pool,
  GlobalMaxPool: pool,
  GlobalLpPool: pool,
  Flatten: flatten,
  Reshape: reshape,
  Transpose: transpose,
  Squeeze: squeeze,
  Unsqueeze: unsqueeze,
  ReduceMean: reduce,
  ReduceMax: reduce,
  ReduceMin: reduce,
  ReduceSum: reduce,
  Softmax: softmax,
  LogSoftmax: softmax,
  Hardmax: softmax,
  LayerNormalization: layerNorm,
  Concat: refuse('joins the channels with other tensors; the joined branches would have to be pruned together'),
  LRN: refuse('normalises across neighbouring channels, which couples them'),
  GroupNormalization: refuse('normalises over groups of channels, which couples them'),
};

// ---- producers and consumers ------------------------------------------------------------------

export const LAYER_OPS: ReadonlySet<string> = new Set(['Conv', 'Gemm', 'MatMul']);

/**
 * How a layer's weight maps to the d×m matrix W of "consumer output = B·W":
 * 'conv' [m, n, kh, kw] (W row c·kh·kw + i·kw + j); 'out-in' [m, d] (Gemm transB=1, W = weightᵀ); 'in-out' [d, m] (W = weight).
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

/**
 * Where a Conv/Gemm/MatMul keeps its weight, or why it cannot be a unit's producer or consumer. The layer's data
 * must be its first input and its weight a constant; grouped convs, transA, alpha/beta ≠ 1 and W·X are refused.
 */
export function layerInfo(
  node: NodeProto,
  constant: (name: string) => TensorProto | undefined,
): LayerInfo | { refuse: string } {
  const l = label(node);
  const [x, w, b] = [node.input[0] ?? '', node.input[1] ?? '', node.input[2] || undefined];
  if (node.opType === 'MatMul' && constant(x) && !constant(w)) {
    return {
      refuse: `${l} multiplies a constant on the left (W·X); only X·W with the constant on the right is supported`,
    };
  }
  const t = constant(w);
  if (!t) return { refuse: `${l}: its weight "${w}" is not a constant` };
  const dims = tensorDims(t);
  if (node.opType === 'Conv') {
    const group = attrInt(node, 'group', 1);
    if (group !== 1)
      return {
        refuse: `${l} is a grouped or depthwise convolution (group=${group}); its channels are coupled by the groups`,
      };
    if (b && !constant(b)) return { refuse: `${l}: its bias "${b}" is not a constant` };
    return { weight: w, weightDims: dims, ...(b ? { bias: b } : {}), layout: 'conv', outAxis: 0, inAxis: 1 };
  }
  if (dims.length !== 2) return { refuse: `${l}: its weight "${w}" has rank ${dims.length}, expected 2` };
  if (node.opType === 'Gemm') {
    if (attrInt(node, 'transA', 0) !== 0) return { refuse: `${l} has transA=1, which subprune does not support` };
    const alpha = attrFloat(node, 'alpha', 1);
    const beta = attrFloat(node, 'beta', 1);
    if (alpha !== 1 || (b && beta !== 1))
      return { refuse: `${l} has alpha=${alpha}, beta=${beta}; only alpha=beta=1 is supported` };
    if (b && !constant(b)) return { refuse: `${l}: its bias "${b}" is not a constant` };
    const transB = attrInt(node, 'transB', 0) !== 0;
    return {
      weight: w,
      weightDims: dims,
      ...(b ? { bias: b } : {}),
      layout: transB ? 'out-in' : 'in-out',
      outAxis: transB ? 0 : 1,
      inAxis: transB ? 1 : 0,
    };
  }
  if (node.opType === 'MatMul') return { weight: w, weightDims: dims, layout: 'in-out', outAxis: 1, inAxis: 0 };
  return { refuse: `${l} is not a Conv, Gemm or MatMul` };
}

/**
 * The bias slice of a producer with n output channels: Conv's B is [n]; Gemm's C broadcasts against [rows, n], so it is
 * per channel when its last axis has n entries and shared by all channels (no slice) when that axis is 1 or absent.
 */
export function biasSlice(bias: TensorProto, name: string, channels: number): ParamSlice[] {
  const dims = tensorDims(bias);
  const last = dims.length - 1;
  return last >= 0 && dims[last] === channels && channels !== 1 ? [{ tensor: name, axis: last, group: 1 }] : [];
}
