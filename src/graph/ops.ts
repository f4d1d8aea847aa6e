// The op table: everything subprune knows about how an ONNX op treats shapes and channels, one entry per op type.
// - `shape`: the op's output shapes from its input shapes (and constant inputs), for FLOPs, the consumers' geometry
//   and g after a Flatten/Reshape. An op without one leaves its outputs unknown; callers refuse or report that.
// - `chain`: how the op passes a unit's channels between producer and consumer. A chain rule gets the channel layout
//   of its input and returns the layout of its output plus the parameter slices and shape-constant edits that
//   pruning needs, or a reason why the op couples channels. Ops without one are refused as "not known to act per
//   channel". Analysis records the edits in the Unit; rewrite applies them generically.
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

// ---- shape rules ----------------------------------------------------------------------------------------------

export interface ShapeContext {
  node: NodeProto;
  /** Input shapes (undefined: unknown or absent). */
  ins: (number[] | undefined)[];
  constant(name: string): TensorProto | undefined;
  producer(name: string): NodeProto | undefined;
}

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
  const t = ctx.constant(ctx.node.input[1] ?? '');
  if (!t && x.length >= 1 && isViewFlatten(ctx.node, ctx.producer, ctx.constant)) return [[x[0]!, numel(x.slice(1))]];
  if (!t) return undefined;
  const spec = Array.from(tensorToInt64(t).data, Number);
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
/** A layer's shape rule: the layer table's. */
const layerShape =
  (layer: Layer): ShapeRule =>
  ({ node, ins }) =>
    ins[0] ? layer.shape(node, ins) : undefined;

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
    const want = ctx.channels * ctx.layout.group;
    return `${label(ctx.node)}: ${what} "${name}" has ${dims[k]} entries along the channels, expected ${want}`;
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
      refuse:
        `${label(ctx.node)} combines the channels with another branch "${other}" (e.g. a residual connection); ` +
        'both branches would have to be pruned together',
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
        refuse:
          `${label(ctx.node)} is in training mode (batch statistics couple samples); ` +
          'export the model in eval mode',
      };
    }
    const slices: ParamSlice[] = [],
      want = ctx.channels * ctx.layout.group;
    for (const slot of params) {
      const name = ctx.node.input[slot];
      if (!name) continue;
      const t = ctx.constant(name);
      if (!t) return { refuse: `${label(ctx.node)}: parameter "${name}" is not a constant` };
      const dims = tensorDims(t);
      if (dims.length !== 1 || dims[0] !== ctx.channels * ctx.layout.group) {
        return {
          refuse: `${label(ctx.node)}: parameter "${name}" has shape [${dims.join(', ')}], expected [${want}]`,
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
      refuse:
        `${label(ctx.node)} (axis=${axis}) mixes the channels on axis ${ctx.layout.axis} with other axes; ` +
        "only Flatten(axis=1) of channel-first data keeps each channel's features together",
    };
  }
  return flattenAt1(ctx);
};

const flattenAt1 = (ctx: ChainContext): ChainStep => ({
  layout: { axis: 1, group: ctx.layout.group * numel(ctx.inShape.slice(2)) },
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
    refuse:
      `${label(ctx.node)} to [${y?.join(', ') ?? '?'}] mixes the channels with other axes; ` +
      'only a reshape to [batch, channels·features] (a flatten) is supported',
  };
  if (ctx.input !== 0) return mixes;
  if (!t && isViewFlatten(ctx.node, ctx.producer, ctx.constant)) {
    // torch's x.view(x.size(0), -1): a Flatten(axis=1) whose shape is computed from x at run time, so nothing to edit
    return ctx.layout.axis === 1 ? flattenAt1(ctx) : mixes;
  }
  if (!t)
    return {
      refuse:
        `${label(ctx.node)}: its shape "${shapeName}" is neither a constant nor [x.size(0), -1] computed from ` +
        "its own input x (torch's x.view(x.size(0), -1))",
    };
  if (!y || y.length !== 2 || y[0] !== x[0] || ctx.layout.axis !== 1) return mixes;
  const group = ctx.layout.group * numel(x.slice(2));
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
  const a = chainAxes(ctx);
  if (a === 'computed' || a === undefined) return { refuse: `${label(ctx.node)}: its axes are not a constant` };
  const rank = ctx.inShape.length + a.length;
  const inserted = new Set(a.map((x) => normAxis(x, rank)));
  let axis = 0;
  for (let seen = -1; axis < rank; axis++) if (!inserted.has(axis) && ++seen === ctx.layout.axis) break;
  return { layout: { axis, group: ctx.layout.group }, slices: [], shapeEdits: [] };
};

/**
 * Reductions over other axes (e.g. a spatial mean) stay per channel; over the channel axis they couple channels
 * (LayerNorm-like).
 */
const reduce: ChainRule = (ctx) => {
  const a = chainAxes(ctx);
  if (a === 'computed') return { refuse: `${label(ctx.node)}: its axes are not a constant` };
  const rank = ctx.inShape.length;
  const all = (a === undefined || a.length === 0) && attrInt(ctx.node, 'noop_with_empty_axes', 0) === 0;
  const axes = all ? ctx.inShape.map((_, i) => i) : (a ?? []).map((x) => normAxis(x, rank));
  if (axes.includes(ctx.layout.axis)) {
    return {
      refuse:
        `${label(ctx.node)} reduces over the channel axis ` +
        '(a mean/variance across channels, as in LayerNorm), which couples channels',
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

// ---- the table --------------------------------------------------------------------------------------------------

export interface OpRule {
  shape?: ShapeRule;
  chain?: ChainRule;
  layer?: Layer;
}

const op = (shape?: ShapeRule, chain?: ChainRule): OpRule => ({
  ...(shape ? { shape } : {}),
  ...(chain ? { chain } : {}),
});
const unary = op(sameShape, elementwise);
const coupling = (why: string) => op(sameShape, refuse(why));

/** Every op subprune knows, keyed by op type. Ops of other domains are looked up as `domain::op` and never match. */
export const OPS: Readonly<Record<string, OpRule>> = {
  ...Object.fromEntries(Object.entries(LAYERS).map(([name, layer]) => [name, { shape: layerShape(layer), layer }])),
  Constant: op(constantShape),
  Shape: op(shapeShape),
  // element-wise, one input
  Relu: unary,
  LeakyRelu: unary,
  Sigmoid: unary,
  HardSigmoid: unary,
  HardSwish: unary,
  Tanh: unary,
  Elu: unary,
  Selu: unary,
  Celu: unary,
  Softplus: unary,
  Softsign: unary,
  Mish: unary,
  Gelu: unary,
  ThresholdedRelu: unary,
  Dropout: unary, // output 1 (the mask) must be unused: checked for every op by the analysis
  Identity: unary,
  Clip: unary, // min/max are scalars by the spec
  Cast: op(sameShape, (ctx) =>
    FLOAT_TYPES.has(attrInt(ctx.node, 'to')) ? pass(ctx) : { refuse: `${label(ctx.node)} casts to a non-float type` },
  ),
  ...Object.fromEntries(
    ['Abs', 'Neg', 'Exp', 'Log', 'Sqrt', 'Reciprocal', 'Erf', 'Floor', 'Ceil', 'Round', 'Sign', 'Not'].map((n) => [
      n,
      op(sameShape),
    ]),
  ),
  PRelu: op(sameShape, (ctx) =>
    ctx.input === 0
      ? result(ctx, broadcastParam(ctx, 1, 'slope'))
      : { refuse: `${label(ctx.node)}: the channels enter as the slope` },
  ),
  // element-wise, broadcasting
  Add: op(broadcast, arithmetic),
  Sub: op(broadcast, arithmetic),
  Mul: op(broadcast, arithmetic),
  Div: op(broadcast, arithmetic),
  ...Object.fromEntries(
    ['Pow', 'Max', 'Min', 'Sum', 'Mean', 'Where', 'Equal', 'Less', 'Greater', 'LessOrEqual', 'GreaterOrEqual']
      .concat(['And', 'Or', 'Xor'])
      .map((n) => [n, op(broadcast)]),
  ),
  // normalisations
  BatchNormalization: op(sameShape, perChannelNorm([1, 2, 3, 4])),
  InstanceNormalization: op(sameShape, perChannelNorm([1, 2])),
  LayerNormalization: op(sameShape, layerNorm),
  Softmax: op(sameShape, softmax),
  LogSoftmax: op(sameShape, softmax),
  Hardmax: op(sameShape, softmax),
  LRN: coupling('normalises across neighbouring channels, which couples them'),
  GroupNormalization: op(undefined, refuse('normalises over groups of channels, which couples them')),
  // pools
  MaxPool: op(poolShape, pool),
  AveragePool: op(poolShape, pool),
  LpPool: op(poolShape, pool),
  GlobalAveragePool: op(globalPoolShape, pool),
  GlobalMaxPool: op(globalPoolShape, pool),
  GlobalLpPool: op(globalPoolShape, pool),
  // shape ops
  Flatten: op(flattenShape, flatten),
  Reshape: op(reshapeShape, reshape),
  Transpose: op(transposeShape, transpose),
  Squeeze: op(squeezeShape, squeeze),
  Unsqueeze: op(unsqueezeShape, unsqueeze),
  Concat: op(
    concatShape,
    refuse('joins the channels with other tensors; the joined branches would have to be pruned together'),
  ),
  // reductions
  ...Object.fromEntries(['ReduceMean', 'ReduceMax', 'ReduceMin', 'ReduceSum'].map((n) => [n, op(reduceShape, reduce)])),
  ...Object.fromEntries(
    ['ReduceProd', 'ReduceL1', 'ReduceL2', 'ReduceLogSum', 'ReduceLogSumExp', 'ReduceSumSquare'].map((n) => [
      n,
      op(reduceShape),
    ]),
  ),
};
