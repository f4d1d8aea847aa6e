// The op table: everything subprune knows about how an ONNX op treats shapes and channels, one entry per op type.
// - `shape`: the op's output shapes from its input shapes (and constant inputs), for FLOPs, the consumers' geometry
//   and g after a Flatten/Reshape. An op without one leaves its outputs unknown; callers refuse or report that.
// - `chain`: how the op passes a group's channels between producer and consumer. A chain rule gets the channel layout
//   of its input and returns the layout of its output plus the parameter slices and shape-constant edits that
//   pruning needs, or a reason why the op couples channels. Ops without one are refused as "not known to act per
//   channel". Analysis records the edits in the Group; rewrite applies them generically.
// - `layer`: Conv, Gemm and MatMul, which produce and consume channels: their entry in the layer table (layers.ts).
// Supporting a new op is one entry here plus a test. The opsets this table is written for, and the op name a node is
// known by (opOf), live here too.
import {
  attrInt,
  attrInts,
  DataType,
  opsetVersion,
  tensorDims,
  tensorToInt64,
  tensorToFloat32,
  numel,
  type Model,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import { badInput } from '../errors.js';
import { broadcastShapes, windowGeometry } from '../geometry.js';
import { LAYERS, type Layer } from './layers.js';

// ---- opsets and op names --------------------------------------------------------------------------------------

/**
 * ai.onnx opsets subprune accepts: onnxruntime 1.30 guarantees opset 7 and later and loads up to 26
 * (test/structure.test.ts checks both ends against onnxruntime). The table's rules follow the semantics of every opset
 * in this range.
 */
export const OPSETS = { min: 7, max: 26 } as const;

export function checkOpset(model: Model): void {
  const v = opsetVersion(model);
  if (v === undefined)
    throw badInput('the model imports no ai.onnx operator set (opset_import); it is not a model subprune can read.');
  if (v < OPSETS.min || v > OPSETS.max) {
    const fix = 'Re-export the model with an opset in that range (e.g. torch.onnx.export(..., opset_version=17)).';
    throw badInput(
      `the model uses ai.onnx opset ${v}; subprune supports opsets ${OPSETS.min} to ${OPSETS.max}. ${fix}`,
    );
  }
}

/** The op name the table knows a node by: ops of other domains (custom or vendor ops) never match a chain rule. */
export function opOf(n: NodeProto): string {
  return n.domain === '' || n.domain === 'ai.onnx' ? n.opType : `${n.domain}::${n.opType}`;
}

const label = (n: NodeProto) => `${n.opType} "${n.name}"`;
const normAxis = (a: number, rank: number) => (a < 0 ? a + rank : a);

// ---- channel layouts and what pruning changes ---------------------------------------------------------------------

/**
 * A run of channels along a tensor's channel axis: `n` channels of the channel space `space`, `per` consecutive
 * entries each. Space −1 marks entries that belong to no group (n entries, per 1): channels subprune leaves alone.
 */
export interface Segment {
  space: number;
  n: number;
  per: number;
}

/** Where channels sit in a tensor: along `axis`, in runs (a Concat's output has one run per part). */
export interface Layout {
  axis: number;
  segments: Segment[];
}

/** Entries of a layout's axis. */
export const entriesOf = (l: Layout) => l.segments.reduce((a, s) => a + s.n * s.per, 0);

/** The constant `tensor`'s axis `axis` holds the entries of the step's output channel axis, one block per channel. */
export interface ParamSlice {
  tensor: string;
  axis: number;
}

/** Entry `index` of the INT64 shape constant `tensor` counts the entries of the step's output channel axis. */
export interface ShapeEdit {
  tensor: string;
  index: number;
}

export interface ChainContext {
  node: NodeProto;
  /** The input slot of `node` that carries the channels. */
  input: number;
  layout: Layout;
  /** Entries along the channel axis (Σ n·per over the layout's runs). */
  entries: number;
  inShape: number[];
  outShape: number[] | undefined;
  opset: number;
  /** A constant tensor (initializer or Constant node) by name; undefined if computed at run time. */
  constant(name: string): TensorProto | undefined;
  /** The node computing a tensor; undefined for graph inputs and initializers. */
  producer(name: string): NodeProto | undefined;
  /** The nodes (and input slots) that read a tensor; slot −1: read inside a subgraph. */
  readers(name: string): { node: NodeProto; slot: number }[];
  /** Whether a tensor is a graph output. */
  isOutput(name: string): boolean;
}

/**
 * How a node passes the channels on: the channel axis of its output, the factor by which each channel's entries grow
 * (a Flatten of h·w positions: h·w), the constants to slice (laid out like the output's channel axis), the shape
 * constants to edit, the node's INT attributes that count the channels (a depthwise conv's group), and whether every
 * output carries the channels (a Split along another axis); or why it couples channels.
 */
export type ChainStep =
  | {
      axis: number;
      scale?: number;
      slices?: ParamSlice[];
      shapeEdits?: ShapeEdit[];
      attributes?: string[];
      allOutputs?: boolean;
    }
  | { none: true }
  | { refuse: string };
type ChainRule = (ctx: ChainContext) => ChainStep;

// ---- shape rules ----------------------------------------------------------------------------------------------

export interface ShapeContext {
  node: NodeProto;
  /** Input shapes (undefined: unknown or absent). */
  ins: (number[] | undefined)[];
  constant(name: string): TensorProto | undefined;
  producer(name: string): NodeProto | undefined;
  /** The values of a small integer tensor (a constant, or computed from shapes), if known. */
  value(name: string): number[] | undefined;
}

/**
 * The values of a node's first output when it computes a shape from shapes (Shape, Gather, Concat, …: what exporters
 * emit for x.view(x.size(0), …)), so that a Reshape whose shape is computed still has a known output shape.
 */
type ValueRule = (ctx: ShapeContext) => number[] | undefined;

/** The value of input `slot` as the rules see it. */
const valueOf = (ctx: ShapeContext, slot: number) =>
  ctx.node.input[slot] ? ctx.value(ctx.node.input[slot]!) : undefined;

/** Output shapes (one entry per output the rule knows; often only the first), or undefined if unknown. */
type ShapeRule = (ctx: ShapeContext) => (number[] | undefined)[] | undefined;

/** An INT64 constant's values, or undefined if the tensor is computed or of another type. */
function int64Values(t: TensorProto | undefined): number[] | undefined {
  return t?.dataType === DataType.INT64 ? Array.from(tensorToInt64(t).data, Number) : undefined;
}

/** Axes as an attribute (older opsets) or as a constant second input (newer ones); undefined if absent/computed. */
function axesOf(node: NodeProto, constant: (name: string) => TensorProto | undefined): number[] | undefined {
  if (node.attribute.some((a) => a.name === 'axes')) return attrInts(node, 'axes');
  const t = node.input[1] ? constant(node.input[1]) : undefined;
  return t ? Array.from(tensorToInt64(t).data, Number) : undefined;
}

/** A rule that needs the first input's shape. */
const withX =
  (rule: (x: number[], ctx: ShapeContext) => (number[] | undefined)[] | undefined): ShapeRule =>
  (ctx) =>
    ctx.ins[0] ? rule(ctx.ins[0], ctx) : undefined;

const sameShape: ShapeRule = withX((x, { node }) => node.output.map(() => [...x])); // e.g. Dropout's mask, BN's extras
const broadcast: ShapeRule = ({ ins }) =>
  ins.length && ins.every((s) => s) ? [broadcastShapes(ins as number[][])] : undefined;
const poolShape: ShapeRule = withX((x, { node }) => {
  const y = [x[0]!, x[1]!, ...windowGeometry(node, x.slice(2), attrInts(node, 'kernel_shape')).out];
  return [y, y];
});
const globalPoolShape: ShapeRule = withX((x) => [[x[0]!, x[1]!, ...x.slice(2).map(() => 1)]]);
const flattenShape: ShapeRule = withX((x, { node }) => {
  const axis = normAxis(attrInt(node, 'axis', 1), x.length);
  return [[numel(x.slice(0, axis)), numel(x.slice(axis))]];
});
const reshapeShape: ShapeRule = withX((x, ctx) => {
  if (x.length >= 1 && isViewFlatten(ctx.node, ctx.producer, ctx.constant)) return [[x[0]!, numel(x.slice(1))]];
  const spec = valueOf(ctx, 1);
  if (!spec) return undefined;
  const allowZero = attrInt(ctx.node, 'allowzero', 0) === 1;
  const y = spec.map((d, i) => (d === 0 && !allowZero ? x[i]! : d));
  const free = y.indexOf(-1);
  if (free >= 0) y[free] = numel(x) / numel(y.filter((_, i) => i !== free));
  return [y];
});
const transposeShape: ShapeRule = withX((x, { node }) => {
  const perm = attrInts(
    node,
    'perm',
    x.map((_, i) => x.length - 1 - i),
  );
  return [perm.map((p) => x[p]!)];
});
const squeezeShape: ShapeRule = withX((x, { node, constant }) => {
  const axes = axesOf(node, constant)?.map((a) => normAxis(a, x.length)) ?? x.flatMap((d, i) => (d === 1 ? [i] : []));
  return [x.filter((_, i) => !axes.includes(i))];
});
const unsqueezeShape: ShapeRule = withX((x, { node, constant }) => {
  const axes = axesOf(node, constant);
  if (!axes) return undefined;
  const rank = x.length + axes.length;
  const at = new Set(axes.map((a) => normAxis(a, rank)));
  const y: number[] = [];
  let j = 0;
  for (let i = 0; i < rank; i++) y.push(at.has(i) ? 1 : x[j++]!);
  return [y];
});
const reduceShape: ShapeRule = withX((x, { node, constant }) => {
  let axes = axesOf(node, constant);
  if (!axes || axes.length === 0) {
    if (attrInt(node, 'noop_with_empty_axes', 0) === 1) return [[...x]];
    axes = x.map((_, i) => i);
  }
  const set = new Set(axes.map((a) => normAxis(a, x.length)));
  const keep = attrInt(node, 'keepdims', 1) === 1;
  return [x.flatMap((d, i) => (set.has(i) ? (keep ? [1] : []) : [d]))];
});
const concatShape: ShapeRule = withX((x, { node, ins }) => {
  if (!ins.every((s) => s)) return undefined;
  const axis = normAxis(attrInt(node, 'axis'), x.length);
  const y = [...x];
  y[axis] = (ins as number[][]).reduce((a, s) => a + s[axis]!, 0);
  return [y];
});
const shapeShape: ShapeRule = withX((x) => [[x.length]]);
const constantShape: ShapeRule = ({ node, constant }) => {
  const t = constant(node.output[0] ?? '');
  return t ? [tensorDims(t)] : undefined;
};
/** The INT64 values of input `slot` (newer opsets) or of attribute `attr` (older ones); undefined if computed. */
function intsOf(ctx: ShapeContext, slot: number, attr: string): number[] | undefined {
  if (ctx.node.attribute.some((a) => a.name === attr)) return attrInts(ctx.node, attr);
  return valueOf(ctx, slot);
}
const resizeShape: ShapeRule = withX((x, ctx) => {
  const { node, constant } = ctx;
  const sizes = node.opType === 'Resize' ? int64Values(constant(node.input[3] ?? '')) : undefined;
  if (sizes?.length === x.length) return [sizes];
  const slot = node.opType === 'Resize' && Number(node.input.length) > 2 ? 2 : 1;
  const t = constant(node.input[slot] ?? '');
  const scales = node.attribute.some((a) => a.name === 'scales')
    ? node.attribute.find((a) => a.name === 'scales')!.floats
    : t && t.dataType === DataType.FLOAT && tensorDims(t)[0] === x.length
      ? Array.from(tensorToFloat32(t).data)
      : undefined;
  return scales ? [x.map((d, i) => Math.floor(d * scales[i]!))] : undefined;
});
const padShape: ShapeRule = withX((x, ctx) => {
  const pads = intsOf(ctx, 1, 'pads');
  const axesName = ctx.node.input[3];
  const axes = axesName ? int64Values(ctx.constant(axesName))?.map((a) => normAxis(a, x.length)) : x.map((_, i) => i);
  if (!pads || !axes) return undefined;
  const y = [...x];
  axes.forEach((a, i) => (y[a] = x[a]! + pads[i]! + pads[i + axes.length]!));
  return [y];
});
const sliceShape: ShapeRule = withX((x, ctx) => {
  const starts = intsOf(ctx, 1, 'starts'),
    ends = intsOf(ctx, 2, 'ends');
  const axes = intsOf(ctx, 3, 'axes') ?? starts?.map((_, i) => i),
    steps = ctx.node.input[4] ? valueOf(ctx, 4) : starts?.map(() => 1);
  if (!starts || !ends || !axes || !steps) return undefined;
  const y = [...x];
  axes.forEach((a0, i) => {
    const a = normAxis(a0, x.length),
      d = x[a]!,
      step = steps[i]!;
    const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v < 0 ? v + d : v, lo), hi);
    const s = step > 0 ? clamp(starts[i]!, 0, d) : clamp(starts[i]!, -1, d - 1);
    const e = step > 0 ? clamp(ends[i]!, 0, d) : clamp(ends[i]!, -1, d - 1);
    y[a] = Math.max(0, Math.ceil((e - s) / step));
  });
  return [y];
});
const splitShape: ShapeRule = withX((x, ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', 0), x.length);
  const outs = ctx.node.output.length;
  const sizes =
    intsOf(ctx, 1, 'split') ??
    x
      .map(() => 0)
      .slice(0, outs)
      .map(() => Math.ceil(x[axis]! / outs));
  if (sizes.length !== outs) return undefined;
  sizes[outs - 1] = x[axis]! - sizes.slice(0, -1).reduce((a, b) => a + b, 0);
  return sizes.map((s) => x.map((d, i) => (i === axis ? s : d)));
});
const gatherShape: ShapeRule = withX((x, { node, ins }) => {
  const idx = ins[1];
  if (!idx) return undefined;
  const axis = normAxis(attrInt(node, 'axis', 0), x.length);
  return [[...x.slice(0, axis), ...idx, ...x.slice(axis + 1)]];
});
/** A layer's shape rule: the layer table's. */
const layerShape =
  (layer: Layer): ShapeRule =>
  ({ node, ins }) =>
    ins[0] ? layer.shape(node, ins) : undefined;

// ---- value rules ----------------------------------------------------------------------------------------------

const shapeValue: ValueRule = ({ node, ins }) => {
  const x = ins[0];
  if (!x) return undefined;
  const norm = (a: number) => Math.min(Math.max(a < 0 ? a + x.length : a, 0), x.length);
  return x.slice(norm(attrInt(node, 'start', 0)), norm(attrInt(node, 'end', x.length)));
};
const sameValue: ValueRule = (ctx) => valueOf(ctx, 0);
const gatherValue: ValueRule = (ctx) => {
  const v = valueOf(ctx, 0),
    idx = valueOf(ctx, 1);
  if (!v || !idx || attrInt(ctx.node, 'axis', 0) !== 0) return undefined;
  return idx.map((i) => v[i < 0 ? i + v.length : i]!);
};
const concatValue: ValueRule = (ctx) => {
  const parts = ctx.node.input.map((_, i) => valueOf(ctx, i));
  return parts.every((p) => p) ? (parts as number[][]).flat() : undefined;
};
const sliceValue: ValueRule = (ctx) => {
  const v = valueOf(ctx, 0),
    y = sliceShape(ctx)?.[0];
  const starts = ctx.node.input[1] ? valueOf(ctx, 1) : attrInts(ctx.node, 'starts', []);
  if (!v || !y || !starts || starts.length !== 1) return undefined;
  const s0 = starts[0]! < 0 ? Math.max(0, starts[0]! + v.length) : Math.min(starts[0]!, v.length);
  const step = ctx.node.input[4] ? (valueOf(ctx, 4)?.[0] ?? 1) : 1;
  return Array.from({ length: y[0]! }, (_, i) => v[s0 + i * step]!);
};
const arithmeticValue =
  (f: (a: number, b: number) => number): ValueRule =>
  (ctx) => {
    const [a, b] = [valueOf(ctx, 0), valueOf(ctx, 1)];
    if (!a || !b || (a.length !== b.length && a.length !== 1 && b.length !== 1)) return undefined;
    return Array.from({ length: Math.max(a.length, b.length) }, (_, i) =>
      f(a[a.length === 1 ? 0 : i]!, b[b.length === 1 ? 0 : i]!),
    );
  };

// ---- the view-flatten pattern ---------------------------------------------------------------------------------

/** The index a Gather on axis 0 takes with a constant INT64 index, and whether that index is a scalar (else [i]). */
export function gatherIndex(
  gather: NodeProto,
  constant: (name: string) => TensorProto | undefined,
): { index: number; scalar: boolean } | undefined {
  const t = constant(gather.input[1] ?? '');
  const v = int64Values(t);
  const axis = attrInt(gather, 'axis', 0);
  // axis -1 is 0 on a rank-1 shape
  if (opOf(gather) !== 'Gather' || !v || v.length !== 1 || (axis !== 0 && axis !== -1)) return undefined;
  const rank = tensorDims(t!).length;
  return rank <= 1 ? { index: v[0]!, scalar: rank === 0 } : undefined;
}

/**
 * Whether Reshape `node` reshapes its data input x to [x.size(0), -1] with the shape computed at run time from x
 * itself, as torch exports x.view(x.size(0), -1) with a dynamic batch: Concat(Unsqueeze(Gather(Shape(x), 0), axes [0]),
 * [-1]) on axis 0 (Unsqueeze axes as attribute before opset 13, as input from 13; or Gather of index [0] without the
 * Unsqueeze; [-1] an INT64 initializer or Constant). Such a Reshape is a Flatten(axis=1), and its shape follows x's
 * channels by itself. Anything else (another index, another tensor's Shape, a Shape with start ≠ 0) is not recognised.
 */
export function isViewFlatten(
  node: NodeProto,
  producer: (name: string) => NodeProto | undefined,
  constant: (name: string) => TensorProto | undefined,
): boolean {
  const is = (n: NodeProto | undefined, op: string) => (n && opOf(n) === op ? n : undefined);
  const concat = is(producer(node.input[1] ?? ''), 'Concat');
  if (opOf(node) !== 'Reshape' || !concat || concat.input.length !== 2) return false;
  const axis = attrInt(concat, 'axis', 1); // axis is required; without it this is not the pattern
  const minus1 = constant(concat.input[1]!),
    rest = int64Values(minus1);
  if ((axis !== 0 && axis !== -1) || rest?.length !== 1 || rest[0] !== -1 || tensorDims(minus1!).length !== 1)
    return false;
  let gather = is(producer(concat.input[0]!), 'Gather');
  const unsqueeze = is(producer(concat.input[0]!), 'Unsqueeze');
  if (unsqueeze) {
    const axes = unsqueeze.attribute.some((a) => a.name === 'axes')
      ? attrInts(unsqueeze, 'axes')
      : int64Values(constant(unsqueeze.input[1] ?? ''));
    if (axes?.length !== 1 || (axes[0] !== 0 && axes[0] !== -1)) return false;
    gather = is(producer(unsqueeze.input[0]!), 'Gather');
  }
  const g = gather && gatherIndex(gather, constant);
  // a scalar is unsqueezed to [1], an [i] index is [1] already
  if (!g || g.index !== 0 || g.scalar !== Boolean(unsqueeze)) return false;
  const shape = is(producer(gather!.input[0]!), 'Shape');
  return !!shape && shape.input[0] === node.input[0] && attrInt(shape, 'start', 0) === 0;
}

// ---- chain rules ----------------------------------------------------------------------------------------------

const pass = (ctx: ChainContext, slices: ParamSlice[] = []): ChainStep => ({ axis: ctx.layout.axis, slices });
const refusal = (ctx: ChainContext, why: string): ChainStep => ({
  refuse: `${label(ctx.node)}${why.startsWith(':') ? '' : ' '}${why}`,
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
  if (dims[k] !== ctx.entries)
    return `${label(ctx.node)}: ${what} "${name}" has ${dims[k]} entries along the channels, expected ${ctx.entries}`;
  return [{ tensor: name, axis: k }];
}

const result = (ctx: ChainContext, s: ParamSlice[] | string): ChainStep =>
  typeof s === 'string' ? { refuse: s } : pass(ctx, s);

/** Element-wise ops with no per-channel parameters. */
const elementwise: ChainRule = (ctx) =>
  ctx.input === 0 ? pass(ctx) : refusal(ctx, `: the channels enter as input ${ctx.input}`);

/**
 * Add/Sub/Mul/Div/Pow/Max/Min with a constant: its entries along the channels are sliced. (With another branch the
 * analysis joins the two branches' channels instead.)
 */
const arithmetic: ChainRule = (ctx) => result(ctx, broadcastParam(ctx, 1 - ctx.input, 'constant'));

/** Normalisations whose parameters are per channel along axis 1 (BatchNormalization: scale, B, mean, var). */
function perChannelNorm(params: number[]): ChainRule {
  return (ctx) => {
    if (ctx.input !== 0) return refusal(ctx, `: the channels enter as input ${ctx.input}`);
    if (ctx.layout.axis !== 1)
      return refusal(ctx, `normalises along axis 1, but the channels are on axis ${ctx.layout.axis}`);
    if (ctx.node.opType === 'BatchNormalization' && attrInt(ctx.node, 'training_mode', 0) !== 0)
      return refusal(ctx, 'is in training mode (batch statistics couple samples); export the model in eval mode');
    const slices: ParamSlice[] = [];
    for (const slot of params) {
      const name = ctx.node.input[slot];
      if (!name) continue;
      const t = ctx.constant(name);
      if (!t) return refusal(ctx, `: parameter "${name}" is not a constant`);
      const dims = tensorDims(t);
      if (dims.length !== 1 || dims[0] !== ctx.entries)
        return refusal(ctx, `: parameter "${name}" has shape [${dims.join(', ')}], expected [${ctx.entries}]`);
      slices.push({ tensor: name, axis: 0 });
    }
    return pass(ctx, slices);
  };
}

/** Ops that act on axes ≥ 2 of an N×C×spatial tensor (pools, resizing): per channel when the channels are axis 1. */
const spatial: ChainRule = (ctx) =>
  ctx.layout.axis === 1 && ctx.input === 0
    ? pass(ctx)
    : refusal(ctx, `works over axis ${ctx.layout.axis}, which holds the channels`);

/**
 * A depthwise convolution (group = input channels, each output channel from one input channel) passes every channel
 * through its own filter: the filters (weight axis 0) and bias follow the channels, and so does `group`. A channel
 * multiplier M (M output channels per input channel) makes each channel M entries on the output.
 */
const depthwise: ChainRule = (ctx) => {
  const [, w, b] = ctx.node.input;
  const weight = ctx.constant(w ?? '');
  const group = attrInt(ctx.node, 'group', 1);
  const cin = ctx.inShape[1] ?? 0;
  if (!weight) return refusal(ctx, `: its weight "${w}" is not a constant`);
  const dims = tensorDims(weight);
  if (ctx.input !== 0 || ctx.layout.axis !== 1)
    return refusal(ctx, `receives the channels on axis ${ctx.layout.axis}, not as its input channels`);
  if (group !== cin || dims[1] !== 1 || dims[0]! % cin !== 0)
    return refusal(ctx, `is a grouped convolution (group=${group}); its channels are coupled within each group`);
  if (b && !ctx.constant(b)) return refusal(ctx, `: its bias "${b}" is not a constant`);
  const slices = [{ tensor: w!, axis: 0 }, ...(b ? [{ tensor: b, axis: 0 }] : [])];
  return { axis: 1, scale: dims[0]! / cin, slices, attributes: ['group'] };
};

/** Flatten(axis=1) of N×C×spatial: channel c now owns its entries times the spatial size, consecutively. */
const flatten: ChainRule = (ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', 1), ctx.inShape.length);
  if (axis !== 1 || ctx.layout.axis !== 1) {
    return refusal(
      ctx,
      `(axis=${axis}) mixes the channels on axis ${ctx.layout.axis} with other axes; ` +
        "only Flatten(axis=1) of channel-first data keeps each channel's features together",
    );
  }
  return { axis: 1, scale: numel(ctx.inShape.slice(2)) };
};

/**
 * Reshape to [batch, C·h·w] is a Flatten(axis=1); its constant shape entry C·h·w follows the channels. So is a Reshape
 * to [x.size(0), -1] computed from its own input (isViewFlatten). Anything else mixes channels.
 */
const reshape: ChainRule = (ctx) => {
  const shapeName = ctx.node.input[1] ?? '';
  const t = ctx.constant(shapeName);
  const x = ctx.inShape;
  const y = ctx.outShape;
  const mixes = refusal(
    ctx,
    `to [${y?.join(', ') ?? '?'}] mixes the channels with other axes; ` +
      'only a reshape to [batch, channels·features] (a flatten) is supported',
  );
  if (ctx.input !== 0) return mixes;
  if (!t && isViewFlatten(ctx.node, ctx.producer, ctx.constant)) {
    // torch's x.view(x.size(0), -1): a Flatten(axis=1) whose shape is computed from x at run time, so nothing to edit
    return ctx.layout.axis === 1 ? { axis: 1, scale: numel(x.slice(2)) } : mixes;
  }
  if (!t)
    return refusal(
      ctx,
      `: its shape "${shapeName}" is neither a constant nor [x.size(0), -1] computed from ` +
        "its own input x (torch's x.view(x.size(0), -1))",
    );
  if (!y || y.length !== 2 || y[0] !== x[0] || ctx.layout.axis !== 1) return mixes;
  const scale = numel(x.slice(2));
  const spec = Array.from(tensorToInt64(t).data, Number);
  if (attrInt(ctx.node, 'allowzero', 0) === 1 && spec.includes(0)) return mixes;
  // spec[1] is either -1 (inferred, nothing to edit) or the feature count, which shrinks with the channels.
  const shapeEdits = spec[1] === ctx.entries * scale ? [{ tensor: shapeName, index: 1 }] : [];
  if (spec[1] !== -1 && shapeEdits.length === 0) return mixes;
  return { axis: 1, scale, shapeEdits };
};

/** Transpose keeps every channel's entries; it only moves the channel axis. */
const transpose: ChainRule = (ctx) => {
  const perm = attrInts(
    ctx.node,
    'perm',
    ctx.inShape.map((_, i) => ctx.inShape.length - 1 - i),
  );
  return { axis: perm.indexOf(ctx.layout.axis) };
};

function chainAxes(ctx: ChainContext): number[] | undefined | 'computed' {
  if (ctx.node.attribute.some((a) => a.name === 'axes')) return attrInts(ctx.node, 'axes');
  const name = ctx.node.input[1];
  if (!name) return undefined;
  const t = ctx.constant(name);
  return t ? Array.from(tensorToInt64(t).data, Number) : 'computed';
}

/** Squeeze/Unsqueeze of other axes only renumber the channel axis. */
const squeeze: ChainRule = (ctx) => {
  const a = chainAxes(ctx);
  if (a === 'computed') return refusal(ctx, ': its axes are not a constant');
  const rank = ctx.inShape.length;
  const axes = a?.map((x) => normAxis(x, rank)) ?? ctx.inShape.flatMap((d, i) => (d === 1 ? [i] : []));
  if (axes.includes(ctx.layout.axis)) return refusal(ctx, 'removes the channel axis');
  return { axis: ctx.layout.axis - axes.filter((x) => x < ctx.layout.axis).length };
};

const unsqueeze: ChainRule = (ctx) => {
  const a = chainAxes(ctx);
  if (a === 'computed' || a === undefined) return refusal(ctx, ': its axes are not a constant');
  const rank = ctx.inShape.length + a.length;
  const inserted = new Set(a.map((x) => normAxis(x, rank)));
  let axis = 0;
  for (let seen = -1; axis < rank; axis++) if (!inserted.has(axis) && ++seen === ctx.layout.axis) break;
  return { axis };
};

/**
 * Reductions over other axes (e.g. a spatial mean) stay per channel; over the channel axis they couple channels
 * (LayerNorm-like).
 */
const reduce: ChainRule = (ctx) => {
  const a = chainAxes(ctx);
  if (a === 'computed') return refusal(ctx, ': its axes are not a constant');
  const rank = ctx.inShape.length;
  const all = (a === undefined || a.length === 0) && attrInt(ctx.node, 'noop_with_empty_axes', 0) === 0;
  const axes = all ? ctx.inShape.map((_, i) => i) : (a ?? []).map((x) => normAxis(x, rank));
  if (axes.includes(ctx.layout.axis)) {
    return refusal(
      ctx,
      'reduces over the channel axis (a mean/variance across channels, as in LayerNorm), which couples channels',
    );
  }
  const drop = attrInt(ctx.node, 'keepdims', 1) === 0 ? axes.filter((x) => x < ctx.layout.axis).length : 0;
  return { axis: ctx.layout.axis - drop };
};

/** Softmax-like ops normalise over `axis` (opset ≥ 13) or over all axes from `axis` on (older opsets). */
const softmax: ChainRule = (ctx) => {
  const rank = ctx.inShape.length;
  const axis = normAxis(attrInt(ctx.node, 'axis', ctx.opset >= 13 ? -1 : 1), rank);
  const couples = ctx.opset >= 13 ? axis === ctx.layout.axis : axis <= ctx.layout.axis;
  return couples ? refusal(ctx, 'normalises across the channels, which couples them') : pass(ctx);
};

/** LayerNormalization normalises over all axes from `axis` on. */
const layerNorm: ChainRule = (ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', -1), ctx.inShape.length);
  return axis <= ctx.layout.axis ? refusal(ctx, 'normalises across the channels, which couples them') : pass(ctx);
};

/** Resize/Upsample scale the spatial axes: per channel when the channel axis keeps its size. */
const resize: ChainRule = (ctx) => {
  if (ctx.input !== 0 || !ctx.outShape) return refusal(ctx, ': the channels enter as another input');
  const a = ctx.layout.axis;
  if (ctx.outShape[a] !== ctx.inShape[a]) return refusal(ctx, 'resizes the channel axis');
  // a constant `sizes` input names the channel count: it follows the channels
  const sizes = ctx.node.opType === 'Resize' ? ctx.node.input[3] : undefined;
  const t = sizes ? ctx.constant(sizes) : undefined;
  if (sizes && !t) return refusal(ctx, `: its sizes "${sizes}" are not a constant`);
  return { axis: a, ...(t ? { shapeEdits: [{ tensor: sizes!, index: a }] } : {}) };
};

/** Pad with no padding along the channel axis. */
const pad: ChainRule = (ctx) => {
  if (ctx.input !== 0) return refusal(ctx, ': the channels enter as another input');
  const rank = ctx.inShape.length;
  const pads = ctx.node.attribute.some((x) => x.name === 'pads')
    ? attrInts(ctx.node, 'pads')
    : int64Values(ctx.constant(ctx.node.input[1] ?? ''));
  const axesName = ctx.node.input[3];
  if (!pads || (axesName && !ctx.constant(axesName))) return refusal(ctx, ': its pads are not a constant');
  const axes = axesName ? int64Values(ctx.constant(axesName))!.map((x) => normAxis(x, rank)) : [...Array(rank).keys()];
  const at = axes.indexOf(ctx.layout.axis);
  if (at >= 0 && (pads[at] !== 0 || pads[at + axes.length] !== 0)) return refusal(ctx, 'pads the channel axis');
  return pass(ctx);
};

/** Slice, Split and Gather along other axes keep the channels (Gather of a scalar index removes its axis). */
const slice: ChainRule = (ctx) => {
  if (ctx.input !== 0) return refusal(ctx, ': the channels enter as another input');
  const a = ctx.layout.axis;
  if (!ctx.outShape || ctx.outShape[a] !== ctx.inShape[a] || ctx.outShape.length !== ctx.inShape.length)
    return refusal(ctx, 'slices the channel axis');
  return { axis: a };
};
const split: ChainRule = (ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', 0), ctx.inShape.length);
  if (ctx.input !== 0 || axis === ctx.layout.axis) return refusal(ctx, 'splits the channel axis');
  return { axis: ctx.layout.axis, allOutputs: true };
};
const gather: ChainRule = (ctx) => {
  const rank = ctx.inShape.length,
    axis = normAxis(attrInt(ctx.node, 'axis', 0), rank),
    a = ctx.layout.axis;
  const indices = ctx.constant(ctx.node.input[1] ?? '');
  if (ctx.input !== 0 || axis === a) return refusal(ctx, 'gathers along the channel axis');
  if (!indices) return refusal(ctx, ': its indices are not a constant');
  const r = tensorDims(indices).length; // the gathered axis becomes r axes
  return { axis: a < axis ? a : a + r - 1 };
};

/**
 * A Shape of the channels' tensor whose output is only used to take dimension 0 (one Gather of index 0 on axis 0:
 * torch's x.size(0), the batch size) does not change with the channels: its output carries none. Any other use of the
 * shape might see the channel count.
 */
const shapeOf: ChainRule = (ctx) => {
  const S = ctx.node,
    t = S.input[0],
    out = S.output[0] ?? '',
    uses = ctx.readers(out);
  if (ctx.layout.axis === 0)
    return {
      refuse: `tensor "${t}" is read by ${label(S)} while its channels are on dimension 0, so the shape changes with them`,
    };
  const only =
    "only taking dimension 0 of it (a Gather of index 0 on axis 0, as torch's x.size(0)) is known not to " +
    'change with the channels';
  const why = (what: string): ChainStep => ({ refuse: `tensor "${t}" is read by ${label(S)}, ${what}; ${only}` });
  if (attrInt(S, 'start', 0) !== 0) return why(`which takes the shape from dimension ${attrInt(S, 'start', 0)} on`);
  if (ctx.isOutput(out)) return why('whose output is a graph output');
  if (uses.length !== 1)
    return why(`whose output is read by ${uses.length} nodes (${uses.map((u) => u.node.name).join(', ')})`);
  const { node: U, slot } = uses[0]!;
  const g = slot === 0 ? gatherIndex(U, ctx.constant) : undefined;
  if (!g) return why(`whose output is read by ${label(U)}`);
  if (g.index !== 0) return why(`whose dimension ${g.index} is taken by ${label(U)}`);
  return { none: true };
};

const FLOAT_TYPES = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE, DataType.BFLOAT16]);

const refuse =
  (why: string): ChainRule =>
  (ctx) =>
    refusal(ctx, why);

// ---- the table --------------------------------------------------------------------------------------------------

/**
 * How the analysis treats a node with several inputs that carry channels: 'join' ops (element-wise with
 * broadcasting: Add, Mul, …) make the channels of their inputs the same channels (a residual Add; x·sigmoid(x); an SE
 * gate's product); 'concat' lays its inputs' channels end to end along its axis.
 */
export type Merge = 'join' | 'concat';

export interface OpRule {
  shape?: ShapeRule;
  value?: ValueRule;
  chain?: ChainRule;
  layer?: Layer;
  merge?: Merge;
}

const op = (shape?: ShapeRule, chain?: ChainRule, merge?: Merge, value?: ValueRule): OpRule => ({
  ...(shape ? { shape } : {}),
  ...(chain ? { chain } : {}),
  ...(merge ? { merge } : {}),
  ...(value ? { value } : {}),
});
const unary = op(sameShape, elementwise);
const joining = op(broadcast, arithmetic, 'join');

/** Every op subprune knows, keyed by op type. Ops of other domains are looked up as `domain::op` and never match. */
export const OPS: Readonly<Record<string, OpRule>> = {
  ...Object.fromEntries(Object.entries(LAYERS).map(([name, layer]) => [name, { shape: layerShape(layer), layer }])),
  Conv: { shape: layerShape(LAYERS.Conv!), layer: LAYERS.Conv!, chain: depthwise }, // a depthwise Conv passes channels
  Constant: op(constantShape),
  Shape: op(shapeShape, shapeOf, undefined, shapeValue),
  // element-wise, one input
  ...Object.fromEntries(
    ['Relu', 'LeakyRelu', 'Sigmoid', 'HardSigmoid', 'HardSwish', 'Tanh', 'Elu', 'Selu', 'Celu', 'Softplus']
      .concat(['Softsign', 'Mish', 'Gelu', 'ThresholdedRelu', 'Identity', 'Erf', 'Abs', 'Neg', 'Exp', 'Log', 'Sqrt'])
      .concat(['Reciprocal', 'Floor', 'Ceil', 'Round', 'Sign', 'Sin', 'Cos'])
      .map((n) => [n, unary]),
  ),
  Identity: op(sameShape, elementwise, undefined, sameValue),
  Dropout: unary, // output 1 (the mask) must be unused: checked for every op by the analysis
  Clip: unary, // min/max are scalars by the spec
  Not: op(sameShape),
  Cast: op(
    sameShape,
    (ctx) => (FLOAT_TYPES.has(attrInt(ctx.node, 'to')) ? pass(ctx) : refusal(ctx, 'casts to a non-float type')),
    undefined,
    sameValue,
  ),
  PRelu: op(sameShape, (ctx) =>
    ctx.input === 0 ? result(ctx, broadcastParam(ctx, 1, 'slope')) : refusal(ctx, ': the channels enter as the slope'),
  ),
  // element-wise, broadcasting
  ...Object.fromEntries(['Pow', 'Max', 'Min', 'Sum', 'Mean'].map((n) => [n, joining])),
  Add: { ...joining, value: arithmeticValue((a, b) => a + b) },
  Sub: { ...joining, value: arithmeticValue((a, b) => a - b) },
  Mul: { ...joining, value: arithmeticValue((a, b) => a * b) },
  Div: { ...joining, value: arithmeticValue((a, b) => Math.trunc(a / b)) },
  ...Object.fromEntries(
    ['Where', 'Equal', 'Less', 'Greater', 'LessOrEqual', 'GreaterOrEqual', 'And', 'Or', 'Xor'].map((n) => [
      n,
      op(broadcast),
    ]),
  ),
  // normalisations
  BatchNormalization: op(sameShape, perChannelNorm([1, 2, 3, 4])),
  InstanceNormalization: op(sameShape, perChannelNorm([1, 2])),
  LayerNormalization: op(sameShape, layerNorm),
  Softmax: op(sameShape, softmax),
  LogSoftmax: op(sameShape, softmax),
  Hardmax: op(sameShape, softmax),
  LRN: op(sameShape, refuse('normalises across neighbouring channels, which couples them')),
  GroupNormalization: op(undefined, refuse('normalises over groups of channels, which couples them')),
  // pools and resizing
  ...Object.fromEntries(['MaxPool', 'AveragePool', 'LpPool'].map((n) => [n, op(poolShape, spatial)])),
  ...Object.fromEntries(
    ['GlobalAveragePool', 'GlobalMaxPool', 'GlobalLpPool'].map((n) => [n, op(globalPoolShape, spatial)]),
  ),
  Resize: op(resizeShape, resize),
  Upsample: op(resizeShape, resize),
  Pad: op(padShape, pad),
  // shape ops
  Flatten: op(flattenShape, flatten),
  Reshape: op(reshapeShape, reshape),
  Transpose: op(transposeShape, transpose),
  Squeeze: op(squeezeShape, squeeze, undefined, sameValue),
  Unsqueeze: op(unsqueezeShape, unsqueeze, undefined, sameValue),
  Slice: op(sliceShape, slice, undefined, sliceValue),
  Split: op(splitShape, split),
  Gather: op(gatherShape, gather, undefined, gatherValue),
  Concat: op(concatShape, undefined, 'concat', concatValue),
  // reductions
  ...Object.fromEntries(['ReduceMean', 'ReduceMax', 'ReduceMin', 'ReduceSum'].map((n) => [n, op(reduceShape, reduce)])),
  ...Object.fromEntries(
    ['ReduceProd', 'ReduceL1', 'ReduceL2', 'ReduceLogSum', 'ReduceLogSumExp', 'ReduceSumSquare'].map((n) => [
      n,
      op(reduceShape),
    ]),
  ),
};
