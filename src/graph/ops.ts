// The op table: everything subprune knows about how an ONNX op treats shapes and channels, one entry per op type.
// - `shape`: the op's output shapes from its input shapes (and constant inputs), for FLOPs, the consumers' geometry
//   and g after a Flatten/Reshape. An op without one leaves its outputs unknown; callers refuse or report that.
// - `chain`: how the op passes a group's channels between producer and consumer. A chain rule gets the channel layout
//   of its input and returns the layout of its output plus the parameter slices and shape-constant edits that
//   pruning needs, or a reason why the op couples channels. Ops without one are refused as "not known to act per
//   channel". Analysis records the edits in the Group; rewrite applies them generically.
// - `layer`: Conv, Gemm and MatMul, which produce and consume channels: their entry in the layer table (layers.ts).
// Supporting a new op is one entry here plus a test. The opsets this table is written for live here too; the op name
// a node is known by (opOf: `domain::opType` outside ai.onnx) is the layer table's.
import {
  attrInt,
  attrInts,
  attrString,
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
import { fusedConvRefusal, LAYERS, opOf, type Layer } from './layers.js';

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

export { opOf };

const label = (n: NodeProto) => `${opOf(n)} "${n.name}"`;
export const normAxis = (a: number, rank: number) => (a < 0 ? a + rank : a);

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

/**
 * Where channels sit in a tensor: along `axis`, in runs (a Concat's output has one run per part). A `stack` holds
 * the runs in `parts` equal parts along another, outer axis (a fused q/k/v reshaped to [.., 3, heads, d]): the runs
 * list part after part, as if the two axes were one, and every part keeps equally many channels.
 */
export interface Layout {
  axis: number;
  segments: Segment[];
  stack?: Stack;
}

/** The outer axis of a stacked layout and how many parts it holds (its size). */
export interface Stack {
  axis: number;
  parts: number;
}

/** Entries of a layout's axis. */
export const entriesOf = (l: Layout) => l.segments.reduce((a, s) => a + s.n * s.per, 0);

/**
 * Whether a stacked layout's runs are alike (as many channels of as many entries each), which is when the walk made
 * the parts one: channel i of every part is one channel (stackInParts). Otherwise they only keep equal counts.
 */
export const partsAlike = (l: Layout) =>
  l.segments.every((s) => s.n === l.segments[0]!.n && s.per === l.segments[0]!.per);

/**
 * The constant `tensor`'s axis `axis` holds the entries of the step's output channel axis, one block per channel; with
 * `scale`, `scale` entries per entry of the channel axis (GroupNormalization-18's scale, one entry per group of
 * channels: 1 / the group's width).
 */
export interface ParamSlice {
  tensor: string;
  axis: number;
  scale?: number;
}

/**
 * What counts the entries of the step's output channel axis: entry `index` of the INT64 shape constant `tensor`; or
 * entry `index` of input `input` of `node`, which becomes a constant of its own (`values` before pruning): a shape
 * constant other nodes read too, or one entry of a shape a Concat builds at run time from a tensor the channels do
 * not change (`B, T, C = x.shape`).
 */
export type ShapeEdit = (
  { tensor: string; index: number; shared?: true } | { node: string; input: number; values: number[]; index: number }
) & {
  /** The entry counts `scale` per entry of the output's channel axis (a factor of heads · head_dim: 1 / head_dim). */
  scale?: number;
  /**
   * The tensor whose dimension the entry read at run time before it became a constant of its own (a count the walk
   * took as fixed): if another group prunes that tensor's channels, the constant must be written then too.
   */
  from?: string;
};

/** A shape entry that counts the entries in [from, to) of a channel axis. */
export interface Count {
  edit: ShapeEdit;
  from: number;
  to: number;
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
  /** Every output's shape (Split has several). */
  outShapes?: (number[] | undefined)[];
  opset: number;
  /** A constant tensor (initializer or Constant node) by name; undefined if computed at run time. */
  constant(name: string): TensorProto | undefined;
  /** The node computing a tensor; undefined for graph inputs and initializers. */
  producer(name: string): NodeProto | undefined;
  /** The nodes (and input slots) that read a tensor; slot −1: read inside a subgraph. */
  readers(name: string): { node: NodeProto; slot: number }[];
  /** The values of a small integer tensor (a constant, or computed from shapes), if known. */
  value(name: string): number[] | undefined;
  /** A tensor's shape, if known. */
  shape?(name: string): number[] | undefined;
  /** Where a tensor carries channels: 'same' (this node's channels), 'other' (another group's) or undefined. */
  channelsOf(name: string): { axis: number; same: boolean } | undefined;
  /**
   * Whether this node's channels can be made the same as those of `name` (laid out alike), whose count a shape entry
   * reads: the walk joins them at its end, or refuses them with `why` if that tensor's count must stay.
   */
  follow?(name: string, why: string): boolean;
  /** Whether a tensor is a graph output. */
  isOutput(name: string): boolean;
  /** Whether a constant is read only on the way to this node (so it can be changed for it). */
  onlyFor(name: string): boolean;
  /** Whether a ConstantOfShape is a table counted by a shape entry (see tablesOf in analyze.ts). */
  isTable(node: NodeProto): boolean;
}

/**
 * How a node passes the channels on: the channel axis of its output, the factor by which each channel's entries grow (a
 * Flatten of h·w positions: h·w; a reshape into heads of d entries: 1/d), the constants to slice (laid out like the
 * output's channel axis), the shape constants to edit, the node's INT attributes that count the channels (a depthwise
 * conv's group), and whether every output carries the channels (a Split along another axis); or why it couples
 * channels. A rule that does not return the stack of a stacked input does not handle stacks: the walk refuses it.
 */
export type ChainStep =
  | {
      axis: number;
      scale?: number;
      slices?: ParamSlice[];
      shapeEdits?: ShapeEdit[];
      /** INT attributes that count the channels: `per` counts per entry of the output's channel axis. */
      attributes?: { name: string; per: number }[];
      allOutputs?: boolean;
      /** The output's stack (see Layout): a rule that passes a stacked layout on says where it went. */
      stack?: Stack;
      /**
       * The output's axis holds the input's runs this many times over, one copy per entry of the axes merged before
       * the channels (a flatten of channels-last [N, h, w, C] to [N, h·w·C]).
       */
      repeat?: number;
    }
  /** The output carries no channels; `shapeEdits`: counts of the channels (one per channel) computed from it. */
  | { none: true; shapeEdits?: ShapeEdit[] }
  /**
   * The channels leave in parts along the axis: output i gets the entries ranges[i] (a Split or Slice of them).
   * `counts`: shape entries that count the entries in [from, to) of the input's axis (split sizes, slice bounds);
   * `proportional`: the bounds are computed at run time from the axis' size (torch's chunk), so they stay right only
   * if every channel space on the axis keeps the same number of channels (the analysis checks).
   */
  | { axis: number; ranges: [number, number][]; counts?: Count[]; proportional?: boolean }
  /** A reshape cuts the axis into blocks of `inner` entries: every channel must own whole blocks (attention heads). */
  | { regroup: number }
  /** countOf: the only reason is that a shape entry reads the channel count of that tensor (another group's). */
  | { refuse: string; countOf?: string };
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
  /** Any tensor's shape inferred so far (an If's branches read outer tensors that are not its inputs). */
  shape?(name: string): number[] | undefined;
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
export function axesOf(node: NodeProto, constant: (name: string) => TensorProto | undefined): number[] | undefined {
  if (node.attribute.some((a) => a.name === 'axes')) return attrInts(node, 'axes');
  const t = node.input[1] ? constant(node.input[1]) : undefined;
  return t ? Array.from(tensorToInt64(t).data, Number) : undefined;
}

/**
 * An If each of whose branches is one op reading the same outer tensor `x` (after Constant nodes for its axes): torch
 * exports `x.squeeze(k)` of a dimension not known to be 1 as If(Equal(Shape(x)[k], 1)) with then Squeeze(x, [k]) and
 * else Identity(x). `constant` also finds the branches' Constant nodes.
 */
export interface IfBranches {
  x: string;
  ops: [NodeProto, NodeProto];
  constant(name: string): TensorProto | undefined;
}
const BRANCH_OPS = ['Identity', 'Squeeze', 'Unsqueeze'];

export function ifBranches(
  node: NodeProto,
  constant: (name: string) => TensorProto | undefined,
): IfBranches | undefined {
  if (node.opType !== 'If' || node.domain) return undefined;
  const local = new Map<string, TensorProto>();
  const ops: NodeProto[] = [];
  for (const name of ['then_branch', 'else_branch']) {
    const g = node.attribute.find((a) => a.name === name)?.g;
    if (!g || g.output.length !== 1 || node.output.length !== 1) return undefined;
    const rest = g.node.filter((n) => {
      const t = n.opType === 'Constant' ? n.attribute.find((a) => a.name === 'value')?.t : undefined;
      if (t) n.output.forEach((o) => local.set(o, t));
      return !t;
    });
    const op = rest[0];
    if (rest.length !== 1 || !BRANCH_OPS.includes(op!.opType) || op!.domain || op!.output[0] !== g.output[0]!.name)
      return undefined;
    ops.push(op!);
  }
  const x = ops[0]!.input[0] ?? '';
  if (!x || ops.some((op) => op.input[0] !== x || local.has(x) || op.input.slice(1).some((t) => t && !local.has(t))))
    return undefined;
  return { x, ops: ops as [NodeProto, NodeProto], constant: (name) => local.get(name) ?? constant(name) };
}

/** The branch a known condition takes: its op's output shape. */
const ifShape: ShapeRule = (ctx) => {
  const cond = ctx.value(ctx.node.input[0] ?? ''),
    b = ifBranches(ctx.node, ctx.constant),
    x = b && ctx.shape?.(b.x);
  if (!cond || cond.length !== 1 || !b || !x) return undefined;
  const op = b.ops[cond[0] ? 0 : 1];
  return OPS[op.opType]!.shape!({
    ...ctx,
    node: op,
    ins: op.input.map((t, i) => (i ? b.constant(t) && tensorDims(b.constant(t)!) : x)),
    constant: b.constant,
  });
};

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
// ArgMax/ArgMin: one index along `axis` (CLIP's pooled token, input_ids.argmax(-1))
const argShape: ShapeRule = withX((x, { node }) => {
  const axis = normAxis(attrInt(node, 'axis', 0), x.length),
    keep = attrInt(node, 'keepdims', 1) === 1;
  return [x.flatMap((d, i) => (i === axis ? (keep ? [1] : []) : [d]))];
});
// TopK: values and indices, `k` of them along `axis` (a mixture of experts' routing: the top 2 of 8 experts' scores);
// k is an input from opset 10, an attribute before
const topkShape: ShapeRule = withX((x, ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', -1), x.length),
    k = ctx.node.input[1] ? ctx.value(ctx.node.input[1])?.[0] : attrInt(ctx.node, 'k', 0) || undefined;
  if (k === undefined) return undefined;
  const y = x.map((d, i) => (i === axis ? Math.min(k, d) : d));
  return [y, [...y]];
});
// OneHot: the indices' shape with `depth` entries inserted at `axis` (a mixture of experts' routing mask)
const oneHotShape: ShapeRule = withX((x, ctx) => {
  const depth = valueOf(ctx, 1)?.[0];
  if (depth === undefined) return undefined;
  const axis = normAxis(attrInt(ctx.node, 'axis', -1), x.length + 1);
  return [[...x.slice(0, axis), depth, ...x.slice(axis)]];
});
const concatShape: ShapeRule = withX((x, { node, ins }) => {
  if (!ins.every((s) => s)) return undefined;
  const axis = normAxis(attrInt(node, 'axis'), x.length);
  const y = [...x];
  y[axis] = (ins as number[][]).reduce((a, s) => a + s[axis]!, 0);
  return [y];
});
const shapeShape: ShapeRule = withX((x) => [[x.length]]);
/** GridSample: x's batch and channels sampled at the grid's points ([N, H_out, W_out, 2], or 3-D with 3). */
const gridSampleShape: ShapeRule = withX((x, { ins }) => {
  const grid = ins[1];
  return grid && grid.length === x.length ? [[x[0]!, x[1]!, ...grid.slice(1, -1)]] : undefined;
});
const constantShape: ShapeRule = ({ node, constant }) => {
  const t = constant(node.output[0] ?? '');
  return t ? [tensorDims(t)] : undefined;
};
/** The INT64 values of input `slot` (newer opsets) or of attribute `attr` (older ones); undefined if computed. */
function intsOf(ctx: ShapeContext, slot: number, attr: string): number[] | undefined {
  if (ctx.node.attribute.some((a) => a.name === attr)) return attrInts(ctx.node, attr);
  return valueOf(ctx, slot);
}
/**
 * The float values of a constant, or of a Concat of constants (torch with do_constant_folding=False writes Resize's
 * scales as Concat(Constant [1, 1], Constant [2, 2])); undefined otherwise.
 */
function floatValues(ctx: ShapeContext, name: string): number[] | undefined {
  const t = ctx.constant(name);
  if (t) return t.dataType === DataType.FLOAT ? Array.from(tensorToFloat32(t).data) : undefined;
  const n = ctx.producer(name);
  if (!n || opOf(n) !== 'Concat') return undefined;
  const parts = n.input.map((i) => floatValues(ctx, i));
  return parts.every((v) => v) ? parts.flatMap((v) => v!) : undefined;
}
/** The axes a Resize's scales or sizes are for: its `axes` attribute (opset 18), else every axis. */
export const resizeAxes = (node: NodeProto, rank: number) =>
  node.attribute.some((a) => a.name === 'axes')
    ? attrInts(node, 'axes').map((a) => normAxis(a, rank))
    : [...Array(rank).keys()];
const resizeShape: ShapeRule = withX((x, ctx) => {
  const { node, constant } = ctx;
  const axes = resizeAxes(node, x.length),
    at = (v: number[]) => x.map((d, i) => (axes.includes(i) ? v[axes.indexOf(i)]! : d));
  // sizes a constant, or computed from shapes (F.interpolate(x, size=y.shape[2:]): an FPN's upsampling); a policy
  // other than "stretch" (opset 18) keeps the aspect ratio instead, which is not computed here
  const sizes = node.opType === 'Resize' ? (int64Values(constant(node.input[3] ?? '')) ?? valueOf(ctx, 3)) : undefined;
  if (sizes?.length === axes.length)
    return attrString(node, 'keep_aspect_ratio_policy', 'stretch') === 'stretch' ? [at(sizes)] : undefined;
  const slot = node.opType === 'Resize' && Number(node.input.length) > 2 ? 2 : 1;
  const scales = node.attribute.some((a) => a.name === 'scales')
    ? node.attribute.find((a) => a.name === 'scales')!.floats
    : floatValues(ctx, node.input[slot] ?? '');
  return scales?.length === axes.length ? [at(x.map((d, i) => Math.floor(d * scales[i]!)))] : undefined;
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
/** Slice's first kept index and step on every axis of x, and the output shape; undefined if a bound is unknown. */
function sliceOf(x: number[], ctx: ShapeContext): { first: number[]; step: number[]; y: number[] } | undefined {
  const starts = intsOf(ctx, 1, 'starts'),
    ends = intsOf(ctx, 2, 'ends');
  const axes = intsOf(ctx, 3, 'axes') ?? starts?.map((_, i) => i),
    steps = ctx.node.input[4] ? valueOf(ctx, 4) : starts?.map(() => 1);
  if (!starts || !ends || !axes || !steps) return undefined;
  const y = [...x],
    first = x.map(() => 0),
    step = x.map(() => 1);
  axes.forEach((a0, i) => {
    const a = normAxis(a0, x.length),
      d = x[a]!,
      st = steps[i]!;
    const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v < 0 ? v + d : v, lo), hi);
    const s = st > 0 ? clamp(starts[i]!, 0, d) : clamp(starts[i]!, -1, d - 1);
    const e = st > 0 ? clamp(ends[i]!, 0, d) : clamp(ends[i]!, -1, d - 1);
    y[a] = Math.max(0, Math.ceil((e - s) / st));
    first[a] = s;
    step[a] = st;
  });
  return { first, step, y };
}
const sliceShape: ShapeRule = withX((x, ctx) => {
  const s = sliceOf(x, ctx);
  return s ? [s.y] : undefined;
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
/** A scalar input's value: an integer one as computed, or a float constant (torch.arange(T, dtype=float)). */
function scalarOf(ctx: ShapeContext, slot: number): number | undefined {
  return valueOf(ctx, slot)?.[0] ?? floatValues(ctx, ctx.node.input[slot] ?? '')?.[0];
}
/** Range's start and entry count, when its three scalars are known. */
function rangeOf(ctx: ShapeContext): { start: number; delta: number; n: number } | undefined {
  const [start, limit, delta] = [0, 1, 2].map((i) => scalarOf(ctx, i));
  if (start === undefined || limit === undefined || !delta) return undefined;
  return { start, delta, n: Math.max(Math.ceil((limit - start) / delta), 0) };
}
const rangeShape: ShapeRule = (ctx) => {
  const r = rangeOf(ctx);
  return r ? [[r.n]] : undefined;
};
/**
 * Einsum with one letter per axis (no ellipsis): every letter's size from the inputs (1 broadcasts), the output's
 * letters after "->" or, implicitly, the letters seen once in alphabetical order (torch.outer: "i,j->ij").
 */
const einsumShape: ShapeRule = ({ node, ins }) => {
  const [lhs, rhs] = attrString(node, 'equation', '').replace(/\s/g, '').split('->');
  const terms = lhs!.split(',');
  if (terms.length !== ins.length || /[^a-zA-Z,>-]/.test(lhs! + (rhs ?? ''))) return undefined;
  const size = new Map<string, number>(),
    seen = new Map<string, number>();
  for (const [i, term] of terms.entries()) {
    const x = ins[i];
    if (!x || x.length !== term.length) return undefined;
    [...term].forEach((c, a) => {
      seen.set(c, (seen.get(c) ?? 0) + 1);
      if ((size.get(c) ?? 1) === 1) size.set(c, x[a]!);
      else if (x[a] !== 1 && x[a] !== size.get(c)) size.set(c, NaN);
    });
  }
  const out =
    rhs ??
    [...seen.keys()]
      .filter((c) => seen.get(c) === 1)
      .sort()
      .join('');
  const y = [...out].map((c) => size.get(c));
  return y.every((d) => d !== undefined && Number.isFinite(d)) ? [y as number[]] : undefined;
};
const expandShape: ShapeRule = withX((x, ctx) => {
  const v = valueOf(ctx, 1);
  return v ? [broadcastShapes([x, v])] : undefined;
});

/**
 * Attention (opset 23): Y is [B, q heads, S, v head size] for 4-D q, k, v; [B, S, q_num_heads · v head size] for 3-D
 * ones (the value's width divided by kv_num_heads).
 */
const attentionShape: ShapeRule = ({ node, ins }) => {
  const [q, , v] = ins;
  if (!q || !v || q.length !== v.length) return undefined;
  if (q.length === 4) return [[q[0]!, q[1]!, q[2]!, v[3]!]];
  const heads = attrInt(node, 'q_num_heads', 0),
    kv = attrInt(node, 'kv_num_heads', 0);
  return q.length === 3 && heads && kv ? [[q[0]!, q[1]!, (heads * v[2]!) / kv]] : undefined;
};

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
/** Row-major strides of a shape. */
const stridesOf = (x: number[]) => x.map((_, i) => x.slice(i + 1).reduce((p, d) => p * d, 1));
/** The value at every index of shape y, read from flat index `at(index)` of v. */
const gatherFlat = (v: number[], y: number[], at: (index: number[]) => number) =>
  Array.from({ length: numel(y) }, (_, f) => v[at(stridesOf(y).map((s, i) => Math.floor(f / s) % y[i]!))]!);
const sliceValue: ValueRule = (ctx) => {
  const v = valueOf(ctx, 0),
    x = ctx.ins[0],
    s = x && sliceOf(x, ctx);
  if (!v || !s || v.length !== numel(x)) return undefined;
  const xs = stridesOf(x);
  return gatherFlat(v, s.y, (idx) => idx.reduce((f, k, a) => f + (s.first[a]! + k * s.step[a]!) * xs[a]!, 0));
};
const transposeValue: ValueRule = (ctx) => {
  const v = valueOf(ctx, 0),
    x = ctx.ins[0],
    y = x && transposeShape(ctx)?.[0];
  if (!v || !x || !y || v.length !== numel(x)) return undefined;
  const perm = attrInts(
      ctx.node,
      'perm',
      x.map((_, i) => x.length - 1 - i),
    ),
    xs = stridesOf(x);
  return gatherFlat(v, y, (idx) => idx.reduce((f, k, a) => f + k * xs[perm[a]!]!, 0));
};
const constantOfShapeValue: ValueRule = (ctx) => {
  const shape = valueOf(ctx, 0),
    t = ctx.node.attribute.find((a) => a.name === 'value')?.t;
  if (!shape || shape.length !== 1 || shape[0]! > 64) return undefined;
  const fill = t && t.dataType === DataType.INT64 ? Number(tensorToInt64(t).data[0] ?? 0n) : 0;
  return new Array<number>(shape[0]!).fill(fill);
};
const rangeValue: ValueRule = (ctx) => {
  const r = rangeOf(ctx);
  return r && r.n <= 64 ? Array.from({ length: r.n }, (_, i) => r.start + i * r.delta) : undefined;
};
/** Expand of a scalar or a 1-D tensor to a 1-D shape (torch's repeat_interleave expands its repeat count). */
const expandValue: ValueRule = (ctx) => {
  const v = valueOf(ctx, 0),
    x = ctx.ins[0],
    y = expandShape(ctx)?.[0];
  if (!v || !x || !y || y.length > 1 || v.length !== numel(x)) return undefined;
  return Array.from({ length: numel(y) }, (_, i) => v[v.length === 1 ? 0 : i]!);
};
/** Split of a 1-D tensor: each output's values (torch's repeat_interleave splits the repeats, one per entry). */
const splitValues = (ctx: ShapeContext): (number[] | undefined)[] => {
  const v = valueOf(ctx, 0),
    sizes = ctx.ins[0]?.length === 1 ? splitShape(ctx) : undefined;
  if (!v || !sizes || sizes.some((s) => s?.length !== 1)) return [];
  let at = 0;
  return sizes.map((s) => v.slice(at, (at += s![0]!)));
};
const whereValue: ValueRule = (ctx) => {
  const [c, a, b] = [0, 1, 2].map((i) => valueOf(ctx, i));
  if (!c || !a || !b) return undefined;
  const n = Math.max(c.length, a.length, b.length),
    at = (v: number[], i: number) => v[v.length === 1 ? 0 : i]!;
  return Array.from({ length: n }, (_, i) => (at(c, i) ? at(a, i) : at(b, i)));
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
 * channels by itself. Anything else (another index, another tensor's Shape, a Shape with start ≠ 0) is
 * not recognised.
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
const reason = (ctx: ChainContext, why: string) => `${label(ctx.node)}${why.startsWith(':') ? '' : ' '}${why}`;
const refusal = (ctx: ChainContext, why: string): ChainStep => ({ refuse: reason(ctx, why) });

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
  ctx.input === 0
    ? { ...pass(ctx), stack: ctx.layout.stack }
    : refusal(ctx, `: the channels enter as input ${ctx.input}`);

/**
 * Add/Sub/Mul/Div/Pow/Max/Min with a constant: its entries along the channels are sliced. (With another branch the
 * analysis joins the two branches' channels instead.)
 */
const arithmetic: ChainRule = (ctx) => result(ctx, broadcastParam(ctx, 1 - ctx.input, 'constant'));

/** Where(condition, a, b) with constant other inputs (a fixed causal mask, a fill value): sliced as Add's. */
const where: ChainRule = (ctx) => {
  const slices = [0, 1, 2].filter((i) => i !== ctx.input).map((i) => broadcastParam(ctx, i, 'input'));
  const why = slices.find((s) => typeof s === 'string');
  return why !== undefined ? { refuse: why } : pass(ctx, (slices as ParamSlice[][]).flat());
};

/** Normalisations whose parameters are per channel along axis 1 (BatchNormalization: scale, B, mean, var). */
function perChannelNorm(params: number[]): ChainRule {
  return (ctx) => {
    if (ctx.input !== 0) return refusal(ctx, `: the channels enter as input ${ctx.input}`);
    if (ctx.layout.axis !== 1)
      return ctx.node.opType === 'InstanceNormalization'
        ? refusal(ctx, `normalises over axis ${ctx.layout.axis}, which holds the channels (GroupNorm with one group)`)
        : refusal(ctx, `normalises along axis 1, but the channels are on axis ${ctx.layout.axis}`);
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

/** Ops on axes ≥ 2 of an N×C×spatial tensor (pools, resizing): per channel when the channels are axis 1. */
const spatial: ChainRule = (ctx) =>
  ctx.layout.axis === 1 && ctx.input === 0
    ? pass(ctx)
    : refusal(ctx, `works over axis ${ctx.layout.axis}, which holds the channels`);

/**
 * A grouped convolution passes each group of input channels through its own filters: a depthwise one (group = input
 * channels, each output channel from one input channel) every channel, a grouped one (ResNeXt, RegNet) blocks of
 * cin/group channels, which must then be whole channels of the group (the walk merges them: pruning removes whole
 * conv groups). The filters (weight axis 0) and bias follow the channels, and so does `group`. A channel multiplier
 * (cout/cin output channels per input channel) makes each channel that many entries on the output. A transposed one
 * (CenterNet's depthwise upsampling) keeps its input channels on weight axis 0 ([C_in, C_out/group, k…]), which is
 * laid out as its output only when C_out = C_in: it passes channels then.
 */
const grouped =
  (transposed: boolean): ChainRule =>
  (ctx) => {
    const [, w, b] = ctx.node.input;
    const weight = ctx.constant(w ?? '');
    const group = attrInt(ctx.node, 'group', 1);
    const cin = ctx.inShape[1] ?? 0;
    if (!weight) return refusal(ctx, `: its weight "${w}" is not a constant`);
    const dims = tensorDims(weight);
    if (ctx.input !== 0 || ctx.layout.axis !== 1)
      return refusal(ctx, `receives the channels on axis ${ctx.layout.axis}, not as its input channels`);
    const width = cin / group; // input channels per conv group
    const cout = transposed ? dims[1]! * group : dims[0]!;
    const fits = transposed ? dims[0] === cin && cout === cin : dims[1] === width && cout % group === 0;
    // an ordinary conv that the layer table refused (a 3-D transposed one, a 3-D UNet's upsampling) is no layer here,
    // and passes nothing: the table's reason says why, not the shape of a depthwise one
    const read = group === 1 && !fits ? LAYERS[opOf(ctx.node)]?.read(ctx.node, ctx.constant) : undefined;
    if (read && 'refuse' in read) return { refuse: read.refuse };
    if (!fits || !Number.isInteger(width))
      return refusal(
        ctx,
        `has weight [${dims.join(', ')}] for ${cin} input channels in ${group} groups` +
          (transposed ? ' (a transposed one passes them only with as many outputs as inputs)' : ''),
      );
    if (width > 1 && ctx.layout.segments.some((r) => r.per % width !== 0)) return { regroup: width };
    if (b && !ctx.constant(b)) return refusal(ctx, `: its bias "${b}" is not a constant`);
    const slices = [{ tensor: w!, axis: 0 }, ...(b ? [{ tensor: b, axis: 0 }] : [])];
    // group counts output entries in blocks of cout/group
    return { axis: 1, scale: cout / cin, slices, attributes: [{ name: 'group', per: group / cout }] };
  };

/**
 * Flatten at the channel axis (axis=1 of N×C×spatial; axis=2 of [B, T, C], LeViT's `flatten(0, 1)` before a
 * BatchNorm1d): channel c now owns its entries times the size of the axes after it, consecutively.
 */
const flatten: ChainRule = (ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', 1), ctx.inShape.length);
  if (axis !== ctx.layout.axis) {
    return refusal(
      ctx,
      `(axis=${axis}) mixes the channels on axis ${ctx.layout.axis} with other axes; ` +
        "only a Flatten at the channel axis keeps each channel's features together",
    );
  }
  return { axis: 1, scale: numel(ctx.inShape.slice(axis + 1)) };
};

/** Where entry `index` of a shape tensor comes from: a constant's entry, a dimension of a tensor, or unknown. */
type Source = (
  | { kind: 'constant'; tensor: string; index: number }
  | { kind: 'dim'; tensor: string; axis: number }
  | { kind: 'unknown' }
) & {
  /** The outermost one-entry input of a Concat the entry passes through. */
  part?: { node: string; input: number };
  /** A dimension divided by an INT64 constant on the way (`x.size(-1) // heads`, as einops writes head_dim). */
  divisor?: { tensor: string; value: number };
  /** A dimension multiplied by an INT64 constant on the way (`bsz * num_heads`, as nn.MultiheadAttention writes it). */
  multiplier?: { tensor: string; value: number };
};

/** What tracing a shape entry reads: constants, the producers and values of shape tensors, the channel axes. */
type SourceContext = Pick<ChainContext, 'constant' | 'producer' | 'value' | 'channelsOf'>;

/**
 * Traces entry `index` of the INT64 tensor `name` back through what exporters build shapes with: Concat of parts,
 * Unsqueeze/Squeeze/Cast/Identity, Gather or Slice of a Shape, a Shape itself, a product with a constant.
 */
function sourceOf(ctx: SourceContext, name: string, index: number, depth = 0): Source {
  if (depth > 12) return { kind: 'unknown' };
  const t = ctx.constant(name);
  if (t) return t.dataType === DataType.INT64 ? { kind: 'constant', tensor: name, index } : { kind: 'unknown' };
  const n = ctx.producer(name);
  if (!n) return { kind: 'unknown' };
  const op = opOf(n),
    x = n.input[0] ?? '';
  if (op === 'Concat') {
    let at = 0;
    for (const [input, part] of n.input.entries()) {
      const len = ctx.value(part)?.length;
      if (len === undefined) return { kind: 'unknown' };
      if (index < at + len) {
        const src = sourceOf(ctx, part, index - at, depth + 1);
        return len === 1 ? { ...src, part: { node: n.name, input } } : src;
      }
      at += len;
    }
    return { kind: 'unknown' };
  }
  if (['Unsqueeze', 'Squeeze', 'Cast', 'Identity', 'Reshape'].includes(op)) return sourceOf(ctx, x, index, depth + 1);
  if (op === 'Where') {
    // torch's expand: -1 entries replaced by 1; the condition's value picks the branch
    const c = ctx.value(x);
    if (!c) return { kind: 'unknown' };
    return sourceOf(ctx, n.input[c[c.length === 1 ? 0 : index] ? 1 : 2] ?? '', index, depth + 1);
  }
  if (op === 'Shape') {
    const rank = ctx.value(name)?.length ?? 0,
      start = attrInt(n, 'start', 0);
    return { kind: 'dim', tensor: x, axis: (start < 0 ? start + rank : start) + index };
  }
  if (op === 'Gather' || op === 'Slice') {
    const from = ctx.producer(x),
      v = ctx.value(name);
    if (!from || opOf(from) !== 'Shape' || !v) return { kind: 'unknown' };
    // the gathered or sliced dimension: the index into the Shape whose value is this entry
    const dims = ctx.value(x) ?? [];
    const pick =
      op === 'Gather' ? ctx.value(n.input[1] ?? '')?.[index] : (ctx.value(n.input[1] ?? '')?.[0] ?? 0) + index;
    if (pick === undefined || dims.length === 0) return { kind: 'unknown' };
    return sourceOf(ctx, x, pick < 0 ? pick + dims.length : pick, depth + 1);
  }
  if (op === 'Div') {
    const d = ctx.constant(n.input[1] ?? '') && ctx.value(n.input[1] ?? '');
    const src = d?.length === 1 ? sourceOf(ctx, x, index, depth + 1) : undefined;
    if (!src || src.kind !== 'dim' || src.divisor) return { kind: 'unknown' };
    return { ...src, divisor: { tensor: n.input[1]!, value: d![0]! } };
  }
  if (op === 'Mul') {
    const [a, b] = [n.input[0] ?? '', n.input[1] ?? ''];
    for (const [f, k] of [
      [a, b],
      [b, a],
    ] as const) {
      const m = ctx.constant(k) && ctx.value(k);
      if (!m) continue;
      const src = sourceOf(ctx, f, index, depth + 1);
      const one = m.length === 1 && src.kind === 'dim' && !src.divisor && !src.multiplier;
      return one ? { ...src, multiplier: { tensor: k, value: m[0]! } } : src;
    }
    // C·H of `B, C, H, W = x.shape` (a CRNN's features per column): it follows the channel count of x when one factor
    // is the axis that holds x's channels and the other is not
    const [sa, sb] = [sourceOf(ctx, a, index, depth + 1), sourceOf(ctx, b, index, depth + 1)];
    if (sa.divisor || sb.divisor || sa.multiplier || sb.multiplier) return { kind: 'unknown' };
    const holds = (s: Source) => s.kind === 'dim' && ctx.channelsOf(s.tensor)?.axis === s.axis;
    const fixed = (s: Source) => s.kind === 'constant' || (s.kind === 'dim' && !holds(s));
    if (holds(sa) && fixed(sb)) return sa;
    if (holds(sb) && fixed(sa)) return sb;
  }
  return { kind: 'unknown' };
}

/** What tracing a shape entry outside a chain reads: constants, and the producers and values of shape tensors. */
type ShapeReader = Omit<SourceContext, 'channelsOf'>;

/** sourceOf outside a chain: no channel axis is known. */
const plainSource = (ctx: ShapeReader, name: string, index: number) =>
  sourceOf({ ...ctx, channelsOf: () => undefined }, name, index);

/**
 * The dimension of a tensor that entry `index` of the shape tensor `name` is read from at run time, as it is (no
 * factor on the way): `torch.zeros((*x.size()[:3], 1))`'s entries 0 to 2 are x's axes 0 to 2.
 */
export function shapeDim(ctx: ShapeReader, name: string, index: number): { tensor: string; axis: number } | undefined {
  const src = plainSource(ctx, name, index);
  return src.kind === 'dim' && !src.divisor && !src.multiplier ? { tensor: src.tensor, axis: src.axis } : undefined;
}

/**
 * The dimension of a tensor that entry `index` of the shape tensor `name` is computed from at run time, with or
 * without a factor on the way (`c // heads`), and the one-entry Concat input it passes through, if any (see Source).
 */
export function shapeEntrySource(
  ctx: ShapeReader,
  name: string,
  index: number,
): { tensor: string; axis: number; part?: { node: string; input: number } } | undefined {
  const src = plainSource(ctx, name, index);
  return src.kind === 'dim' ? { tensor: src.tensor, axis: src.axis, ...(src.part && { part: src.part }) } : undefined;
}

/** The INT64 constant entry that entry `index` of the shape tensor `name` is (through Concat, Where, Unsqueeze). */
export function shapeConstant(
  ctx: ShapeReader,
  name: string,
  index: number,
): { tensor: string; index: number } | undefined {
  const src = plainSource(ctx, name, index);
  return src.kind === 'constant' ? { tensor: src.tensor, index: src.index } : undefined;
}

/**
 * The edit of entry `index` of the shape constant `tensor`: in place if only this node reads it, else on a copy when
 * it is the node's input `slot`; undefined if it is shared and reaches the node through other nodes.
 */
function countAt(ctx: ChainContext, slot: number, tensor: string, index: number): ShapeEdit | undefined {
  if (ctx.onlyFor(tensor)) return { tensor, index };
  if (ctx.node.input[slot] === tensor) return { node: ctx.node.name, input: slot, values: ctx.value(tensor)!, index };
  return undefined;
}

/**
 * What a reshape's or expand's shape says for output axis `axis`, where the channels will be: nothing to do (-1, a
 * copy, or a dimension of a tensor with the same channels, which follows them at run time), an entry to rewrite, or
 * why it would not follow the channels. Entries for other axes that read another group's channel count cannot follow
 * either.
 */
function shapeEntry(ctx: ChainContext, slot: number, axis: number, rank: number): ShapeEdit[] | ChainStep {
  const name = ctx.node.input[slot] ?? '',
    v = ctx.value(name);
  if (!v) return refusal(ctx, `: its shape "${name}" is not known`);
  const divisors: ShapeEdit[] = [];
  let followed = false;
  for (let i = 0; i < rank; i++) {
    const src = sourceOf(ctx, name, i);
    if (src.kind !== 'dim') continue;
    const c = ctx.channelsOf(src.tensor);
    if (!c || c.axis !== src.axis) continue;
    const k = src.divisor?.value;
    // the channels' own count (C, or C // d for channels of d entries) follows them at run time
    if (i === axis && c.same && (k === undefined || v[axis]! * k === ctx.entries)) continue;
    // the batch (B · heads) // heads of a tensor whose batch is merged with its heads (BLOOM's merge_heads, read by
    // every reshape back to [B, …]): the divisor counts the heads, each one entry of this node's input
    const batch =
      c.same && v[i] === 1 && k === ctx.shape?.(src.tensor)?.[c.axis] && ctx.layout.segments.every((r) => r.per === 1);
    if (batch && onlyShapes(ctx, src.divisor!.tensor)) {
      divisors.push({ tensor: src.divisor!.tensor, index: 0, shared: true, scale: ctx.entries / v[axis]! });
      continue;
    }
    // head_dim = C // heads (einops' rearrange): the divisor counts the heads, as entry `axis` does
    const perHead = i === axis + 1 && c.same && k === v[axis] && v[axis]! * v[i]! === ctx.entries;
    if (perHead && ctx.onlyFor(src.divisor!.tensor)) {
      divisors.push({ tensor: src.divisor!.tensor, index: 0 });
      continue;
    }
    // computed once for the q, k and v reshapes (MPT's `d = C // n_heads`): one count, shrunk once for the group (the
    // analysis checks that every reshape it shapes is the group's)
    if (perHead && onlyShapes(ctx, src.divisor!.tensor)) {
      divisors.push({ tensor: src.divisor!.tensor, index: 0, shared: true });
      continue;
    }
    const why = `: its shape entry ${i} reads the channel count of "${src.tensor}", which another group prunes`;
    // the count of another tensor with as many channels (SE's y.view(b, c, 1, 1) with b, c = x.size()): one space
    const whole =
      i === axis && !src.divisor && v[axis] === ctx.entries && v[axis] === ctx.shape?.(src.tensor)?.[c.axis];
    if (whole && ctx.follow?.(src.tensor, reason(ctx, why))) {
      followed = true;
      continue;
    }
    // one entry of a shape built at run time (a Concat input of its own): it becomes a constant, written unchanged
    // when that group prunes (freezeReads); at the channels' axis it counts this group's, as below (a one-head
    // attention's q.reshape(b, h · w, 1, c // 1) with c of the GroupNorm'd stream)
    if (src.part && i === axis) continue;
    if (src.part && i !== axis) {
      divisors.push({ ...src.part, values: [v[i]!], index: 0, scale: 0, from: src.tensor });
      continue;
    }
    return { ...refusal(ctx, why), countOf: src.tensor };
  }
  if (followed || v[axis] === -1 || (v[axis] === 0 && attrInt(ctx.node, 'allowzero', 0) === 0)) return divisors;
  const src = sourceOf(ctx, name, axis);
  const own = src.kind === 'dim' && ctx.channelsOf(src.tensor);
  if (src.kind === 'dim' && src.multiplier && !(own && own.axis === src.axis)) {
    // bsz · heads (nn.MultiheadAttention's [T, B·H, d]): a dimension that is 1 here times the channel count, which
    // the constant factor holds
    const m = src.multiplier;
    // heads · head_dim (Perceiver's `hiddens = heads * v_head_dim`, head_dim read from v split into heads): the factor
    // counts the heads of a tensor with these channels, as this node's input does, one entry each
    const heads = own && own.same ? ctx.shape?.(src.tensor)?.[own.axis] : undefined;
    const perHead = heads === m.value && heads === ctx.entries && ctx.layout.segments.every((r) => r.per === 1);
    if (perHead && v[axis]! % heads === 0 && ctx.onlyFor(m.tensor))
      return [{ tensor: m.tensor, index: 0, scale: heads / v[axis]! }, ...divisors];
    if (m.value !== ctx.outShape?.[axis])
      return refusal(ctx, `: its shape entry ${axis} (${v[axis]}) is a product that does not count the channels`);
    if (ctx.onlyFor(m.tensor)) return [{ tensor: m.tensor, index: 0 }, ...divisors];
    // torch computes bsz · heads once for the q, k and v reshapes: shared by shape entries alone
    if (onlyShapes(ctx, m.tensor)) return [{ tensor: m.tensor, index: 0, shared: true }, ...divisors];
    return refusal(ctx, `: its head count "${m.tensor}" is read by other nodes than reshapes`);
  }
  const part: ShapeEdit | undefined = src.part && { ...src.part, values: [v[axis]!], index: 0 };
  if (src.kind === 'constant') {
    const edit = countAt(ctx, slot, src.tensor, src.index) ?? part;
    return edit ? [edit, ...divisors] : refusal(ctx, `: its shape constant "${src.tensor}" is shared`);
  }
  if (own && own.same && own.axis === src.axis) return divisors;
  if (src.kind === 'dim' && part) return [{ ...part, from: src.tensor }, ...divisors];
  return refusal(
    ctx,
    `: its shape entry ${axis} (${v[axis]}) does not follow the channels ` +
      '(it is neither a constant nor read from them at run time)',
  );
}

/**
 * Whether `name` reaches only shape inputs of Reshapes, through the ops that build shapes, and the shapes of
 * ConstantOfShapes that are tables (GPT-NeoX's baddbmm onto torch.zeros(B · heads, T, T): see tablesOf in
 * analyze.ts, which vets where they go).
 */
export function onlyShapes(
  ctx: Pick<ChainContext, 'readers' | 'isOutput' | 'isTable'>,
  name: string,
  depth = 0,
): boolean {
  if (depth > 6 || ctx.isOutput(name)) return false;
  return ctx
    .readers(name)
    .every(({ node, slot }) =>
      opOf(node) === 'Reshape'
        ? slot === 1
        : opOf(node) === 'ConstantOfShape'
          ? ctx.isTable(node)
          : ['Mul', 'Div', 'Unsqueeze', 'Concat', 'Cast'].includes(opOf(node)) &&
            node.output.every((o) => onlyShapes(ctx, o, depth + 1)),
    );
}

/**
 * Reshape: the axes of input and output pair up in blocks of equal size. The channels' block either keeps one axis, is
 * split (a Flatten's inverse: [.., H·d, ..] → [.., H, d, ..], the attention heads' reshape: the channels become the
 * outer axis, each owning whole blocks of d entries), or is merged with following axes (a Flatten: [N, C, h, w] → [N,
 * C·h·w]). The shape entry that counts the channels is rewritten (a constant) or follows them by itself (read from
 * the tensor at run time). Anything that mixes the channels with other axes is refused.
 */
const reshape: ChainRule = (ctx) => {
  const x = ctx.inShape,
    y = ctx.outShape,
    a = ctx.layout.axis;
  const mixes = refusal(
    ctx,
    `to [${y?.join(', ') ?? '?'}] mixes the channels with other axes; only reshapes that split the channel axis ` +
      'into [channels, rest] or merge it with the axes after it, or a last channel axis with the axes before it (a ' +
      'flatten), are supported',
  );
  if (ctx.input !== 0) return refusal(ctx, ': the channels enter as its shape');
  if (!y) return refusal(ctx, ': its output shape is unknown');
  // torch's x.view(x.size(0), -1), also of channels last (x.permute(0, 2, 3, 1).reshape(x.size(0), -1))
  if (isViewFlatten(ctx.node, ctx.producer, ctx.constant)) {
    if (a === 1) return { axis: 1, scale: numel(x.slice(2)) };
    return a === x.length - 1 ? { axis: 1, ...repeated(numel(x.slice(1, a))) } : mixes;
  }
  const block = blockOf(x, y, a);
  if (!block) return mixes;
  const [i0, i1, j0, j1] = block;
  let axis: number, scale: number;
  if (ctx.layout.stack) return refusal(ctx, 'reshapes packed parts of channels (take them apart first)');
  // axes of size 1 beside the channels in the block (the batch of the analysis): the block splits the channels; an
  // output entry that merges such an axis with the channels at run time (bsz · heads) must say so (shapeEntry)
  const alone = [...Array(i1 - i0).keys()].every((i) => i0 + i === a || x[i0 + i] === 1);
  if (alone && (i1 - i0 === 1 || j1 - j0 > 1)) {
    // split (or kept): the channels become the first output axis of the block that is not 1
    const wide = [...Array(j1 - j0).keys()].map((i) => j0 + i).filter((j) => y[j] !== 1);
    if (
      (wide.length >= 3 && !partsInside(ctx, wide[1]!) && !reshapedAgain(ctx, wide[0]!)) ||
      (wide.length === 2 && softmaxOver(ctx, wide[0]!))
    )
      return stacked(ctx, wide[0]!, wide[1]!, j1);
    axis = wide[0] ?? j0;
    const inner = numel(y.slice(axis + 1, j1));
    if (inner > 1 && ctx.layout.segments.some((r) => r.per % inner !== 0)) return { regroup: inner };
    scale = 1 / inner;
  } else {
    // merge: the channels must be the outer axis of the merged ones (axes of size 1 aside), and the block's first
    // output axis that is not 1 takes them: a flatten ([N, C, h, w] → [N, C·h·w]), whole channels per entry
    // (GroupNorm's [N, G, C/G·h·w] → [N, C, h, w]) or whole blocks of channels per entry (GroupNorm's [N, C, h, w]
    // → [N, G, C/G·h·w]: the walk makes each group of C/G channels whole)
    axis = [...Array(j1 - j0).keys()].map((i) => j0 + i).find((j) => y[j] !== 1) ?? j0;
    const outer = numel(x.slice(i0, a));
    if (outer !== 1 && a === x.length - 1 && i1 === x.length && y[axis] === numel(x.slice(i0, i1))) {
      // channels last merged with the axes before them into one (Keras' Flatten of NHWC, [N, h, w, C] →
      // [N, h·w·C]): every entry of the outer axes holds all the channels, so the runs repeat once per entry.
      // (Channels merged with axes on both sides, as a channel shuffle's [N, C/g, g, h, w] → [N, C, h, w], stay
      // refused.)
      const edits = shapeEntry(ctx, 1, axis, y.length);
      return Array.isArray(edits) ? { axis, shapeEdits: edits, ...repeated(outer) } : edits;
    }
    if (outer !== 1 || (y[axis]! % x[a]! !== 0 && x[a]! % y[axis]! !== 0)) return mixes;
    const inner = x[a]! / y[axis]!;
    if (inner > 1 && ctx.layout.segments.some((r) => r.per % inner !== 0)) return { regroup: inner };
    scale = inner > 1 ? 1 / inner : y[axis]! / x[a]!;
  }
  const edits = shapeEntry(ctx, 1, axis, y.length);
  return Array.isArray(edits) ? { axis, scale, shapeEdits: edits } : edits;
};

const repeated = (n: number) => (n > 1 ? { repeat: n } : {});

/**
 * Whether a reshape to [.., heads, parts, d] is only read by Gathers and Slices along the parts axis `p`: BLOOM's fused
 * query_key_value viewed as [B, T, heads, 3, d], q, k, v = x[..., 0, :], x[..., 1, :], x[..., 2, :]; Falcon-40B's
 * viewed as [B, T, kv, heads / kv + 2, d], q = x[:, :, :, :-2], k = x[:, :, :, [-2]]. Then the heads (key/value
 * groups) are the channels, each owning its q, k and v entries (not timm's [.., 3, heads, d], whose parts come first).
 */
function partsInside(ctx: ChainContext, p: number): boolean {
  const y = ctx.node.output[0] ?? '',
    readers = ctx.readers(y),
    rank = ctx.outShape!.length;
  const along = (node: NodeProto) =>
    opOf(node) === 'Gather'
      ? normAxis(attrInt(node, 'axis', 0), rank) === p
      : opOf(node) === 'Slice' &&
        ctx
          .value(node.input[3] ?? '')
          ?.map((a) => normAxis(a, rank))
          .join() === `${p}`;
  return !ctx.isOutput(y) && readers.length > 0 && readers.every(({ node, slot }) => slot === 0 && along(node));
}

/**
 * Whether a reshape to [.., a, b] is read only by softmaxes over axis `p` = a alone, directly or through Transposes
 * (tensor `t`): SKNet's branch weights [B, branches, C, 1, 1], softmaxed over the branches. Then a holds the parts and
 * b the channels (not a's channels of b entries each, which such a softmax would couple).
 */
function softmaxOver(ctx: ChainContext, p: number, t = ctx.node.output[0] ?? ''): boolean {
  const readers = ctx.readers(t),
    rank = ctx.outShape!.length;
  // before opset 13 torch softmaxes another axis than the last between two Transposes that swap it with the last
  const over = ({ node, slot }: { node: NodeProto; slot: number }): boolean => {
    if (slot !== 0) return false;
    if (opOf(node) === 'Transpose') return softmaxOver(ctx, attrInts(node, 'perm', []).indexOf(p), node.output[0]);
    if (opOf(node) !== 'Softmax' && opOf(node) !== 'LogSoftmax') return false;
    const axis = normAxis(attrInt(node, 'axis', ctx.opset >= 13 ? -1 : 1), rank);
    return axis === p && (ctx.opset >= 13 || p === rank - 1);
  };
  return p >= 0 && !ctx.isOutput(t) && readers.length > 0 && readers.every(over);
}

/**
 * Whether a reshape's output reaches another Reshape through Transposes alone that keep its axis c in place: torch's
 * PixelShuffle before opset 11 ([N, C·r², H, W] → [N, C, r, r, H, W], Transpose, [N, C, H·r, W·r]). Packed parts
 * cannot pass that Reshape, so the split is the channels' own (each owning its r² entries), not a packed q/k/v's
 * [parts, heads, d].
 */
function reshapedAgain(ctx: ChainContext, c: number): boolean {
  let t = ctx.node.output[0] ?? '';
  for (;;) {
    const readers = ctx.readers(t);
    if (ctx.isOutput(t) || readers.length !== 1 || readers[0]!.slot !== 0) return false;
    const next = readers[0]!.node;
    if (opOf(next) === 'Reshape') return true;
    if (opOf(next) !== 'Transpose' || attrInts(next, 'perm', []).indexOf(c) !== c) return false;
    t = next.output[0] ?? '';
  }
}

/**
 * A reshape that cuts the channel axis into [parts, channels, entries…] (timm's packed q/k/v: [.., 3·C] →
 * [.., 3, heads, d]): the output is stacked, `parts` along axis p, the channels along axis q, each owning the entries
 * of the axes after it up to j1. The walk lays the producers out in parts of whole channels.
 */
function stacked(ctx: ChainContext, p: number, q: number, j1: number): ChainStep {
  const y = ctx.outShape!;
  const edits = shapeEntry(ctx, 1, q, y.length);
  if (!Array.isArray(edits)) return edits;
  return { axis: q, scale: 1 / numel(y.slice(q + 1, j1)), shapeEdits: edits, stack: { axis: p, parts: y[p]! } };
}

/**
 * The smallest blocks of input axes [i0, i1) and output axes [j0, j1) with equal sizes that cover input axis a, or
 * undefined if the sizes do not pair up.
 */
function blockOf(x: number[], y: number[], a: number): [number, number, number, number] | undefined {
  let i = 0,
    j = 0;
  while (i < x.length || j < y.length) {
    const i0 = i,
      j0 = j;
    let px = x[i] ?? 1,
      py = y[j] ?? 1;
    i++;
    j++;
    while (px !== py) {
      if (px < py && i < x.length) px *= x[i++]!;
      else if (py < px && j < y.length) py *= y[j++]!;
      else return undefined;
    }
    // axes of size 1 after the block join it only if they are on both sides alike; the channels' block is what matters
    if (a >= i0 && a < i) return [i0, i, j0, j];
  }
  return undefined;
}

/** Expand broadcasts other axes; the channel axis keeps its size, and its shape entry follows the channels. */
const expand: ChainRule = (ctx) => {
  const y = ctx.outShape;
  if (ctx.input !== 0 || !y) return refusal(ctx, ': the channels enter as its shape');
  const axis = ctx.layout.axis + y.length - ctx.inShape.length;
  if (y[axis] !== ctx.inShape[ctx.layout.axis]) return refusal(ctx, 'broadcasts the channel axis');
  const v = ctx.value(ctx.node.input[1] ?? '');
  const at = axis - (y.length - (v?.length ?? y.length));
  if (v && (v[at] === 1 || at < 0)) return { axis };
  const edits = shapeEntry(ctx, 1, at, v?.length ?? y.length);
  return Array.isArray(edits) ? { axis, shapeEdits: edits } : edits;
};

/**
 * Tile repeating other axes: a repeat of 1 on the channel axis keeps every channel's entries together (SpeechBrain's
 * attentive pooling: `mean.unsqueeze(2).repeat(1, 1, L)`), unless a repeat counts channels, which pruning changes.
 */
const tile: ChainRule = (ctx) => {
  if (ctx.input !== 0) return refusal(ctx, ': the channels enter as its repeats');
  const repeats = ctx.node.input[1] ?? '',
    r = ctx.value(repeats);
  if (!r) return refusal(ctx, ': its repeats are not known');
  if (r[ctx.layout.axis] !== 1) return refusal(ctx, 'repeats the channel axis');
  if (readsChannelCount(ctx, repeats)) return refusal(ctx, ': its repeats are computed from a channel count');
  return pass(ctx);
};

/** Transpose keeps every channel's entries; it only moves the channel axis. */
const transpose: ChainRule = (ctx) => {
  const perm = attrInts(
    ctx.node,
    'perm',
    ctx.inShape.map((_, i) => ctx.inShape.length - 1 - i),
  );
  const axis = perm.indexOf(ctx.layout.axis),
    st = ctx.layout.stack;
  if (!st) return { axis };
  const stack = { ...st, axis: perm.indexOf(st.axis) };
  // parts that are one channel each may go anywhere (opset 11's softmax over them, moved last and back)
  return stack.axis < axis || partsAlike(ctx.layout)
    ? { axis, stack }
    : refusal(ctx, 'moves packed parts of channels after the channels');
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
  const st = ctx.layout.stack;
  if (axes.includes(ctx.layout.axis) || (st && axes.includes(st.axis))) return refusal(ctx, 'removes the channel axis');
  const moved = (at: number) => at - axes.filter((x) => x < at).length;
  return { axis: moved(ctx.layout.axis), ...(st ? { stack: { ...st, axis: moved(st.axis) } } : {}) };
};

const unsqueeze: ChainRule = (ctx) => {
  const a = chainAxes(ctx);
  if (a === 'computed' || a === undefined) return refusal(ctx, ': its axes are not a constant');
  const rank = ctx.inShape.length + a.length;
  const inserted = new Set(a.map((x) => normAxis(x, rank)));
  const moved = (at: number) => {
    let axis = 0;
    for (let seen = -1; axis < rank; axis++) if (!inserted.has(axis) && ++seen === at) break;
    return axis;
  };
  const st = ctx.layout.stack;
  return { axis: moved(ctx.layout.axis), ...(st ? { stack: { ...st, axis: moved(st.axis) } } : {}) };
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
      "reduces over the channel axis (LayerNorm's mean, CBAM's channel max and mean, GRN's mean of the channels' " +
        'norms), which couples channels',
    );
  }
  const drop = attrInt(ctx.node, 'keepdims', 1) === 0 ? axes.filter((x) => x < ctx.layout.axis).length : 0;
  return { axis: ctx.layout.axis - drop };
};

/**
 * Softmax-like ops normalise over `axis` (opset ≥ 13) or over all axes from `axis` on (older opsets). Over the parts
 * of a stacked layout whose parts are one channel each, each channel's own entries (SKNet's softmax over its
 * branches, [B, branches, C, 1, 1]); over parts that only keep equal counts, entries of different channels.
 */
const softmax: ChainRule = (ctx) => {
  const rank = ctx.inShape.length;
  const axis = normAxis(attrInt(ctx.node, 'axis', ctx.opset >= 13 ? -1 : 1), rank);
  const st = ctx.layout.stack;
  const couples = ctx.opset >= 13 ? axis === ctx.layout.axis : axis <= ctx.layout.axis;
  if (couples) return refusal(ctx, 'normalises across the channels, which couples them');
  if (st && (ctx.opset >= 13 ? axis === st.axis : axis <= st.axis) && !partsAlike(ctx.layout))
    return refusal(ctx, 'normalises across packed parts of channels that are not one channel each');
  return { ...pass(ctx), stack: st };
};

/** LayerNormalization and RMSNormalization normalise over all axes from `axis` on. */
const layerNorm: ChainRule = (ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', -1), ctx.inShape.length);
  return axis <= ctx.layout.axis ? refusal(ctx, 'normalises across the channels, which couples them') : pass(ctx);
};

/**
 * GroupNormalization normalises each of its num_groups groups of C / num_groups channels over the group's channels and
 * the spatial axes: a channel must be whole groups (the walk merges them: pruning removes whole groups, and num_groups
 * follows). Its scale and bias are sliced with them: per channel from opset 21 on, per group at 18 to 20.
 */
const groupNorm: ChainRule = (ctx) => {
  if (ctx.input !== 0) return refusal(ctx, `: the channels enter as input ${ctx.input}`);
  if (ctx.layout.axis !== 1)
    return refusal(ctx, `normalises groups of axis 1, but the channels are on axis ${ctx.layout.axis}`);
  const groups = attrInt(ctx.node, 'num_groups', 0),
    width = ctx.entries / groups;
  if (!Number.isInteger(width)) return refusal(ctx, `: ${ctx.entries} channels do not make ${groups} groups`);
  if (groups === 1) return refusal(ctx, 'normalises all the channels as one group, which couples them');
  if (width > 1 && ctx.layout.segments.some((r) => r.per % width !== 0)) return { regroup: width };
  const perGroup = ctx.opset < 21,
    slices: ParamSlice[] = [];
  for (const name of ctx.node.input.slice(1, 3)) {
    const t = name ? ctx.constant(name) : undefined,
      dims = t && tensorDims(t);
    if (!dims) return refusal(ctx, `: parameter "${name}" is not a constant`);
    if (dims.length !== 1 || dims[0] !== (perGroup ? groups : ctx.entries))
      return refusal(
        ctx,
        `: parameter "${name}" has shape [${dims.join(', ')}], expected [${perGroup ? groups : ctx.entries}]` +
          ` (one entry per ${perGroup ? 'group' : 'channel'} at opset ${ctx.opset})`,
      );
    slices.push({ tensor: name, axis: 0, ...(perGroup ? { scale: 1 / width } : {}) });
  }
  return { axis: 1, slices, attributes: [{ name: 'num_groups', per: 1 / width }] };
};

/**
 * RotaryEmbedding (opset 23) rotates pairs of entries of each head's last axis by the same angles for every head: on
 * [B, heads, T, d] the heads pass; 3-D input (heads counted by num_heads) and channels on another axis are refused.
 */
const rotary: ChainRule = (ctx) => {
  if (ctx.input !== 0) return refusal(ctx, `: the channels enter as input ${ctx.input}`);
  if (ctx.inShape.length !== 4)
    return refusal(ctx, 'rotates 3-D input [B, T, heads · d] (heads counted by num_heads); only 4-D input passes');
  if (ctx.layout.axis !== 1)
    return refusal(ctx, `rotates pairs of entries of each head, but the channels are on axis ${ctx.layout.axis}`);
  return pass(ctx);
};

/** Resize/Upsample scale the spatial axes: per channel when the channel axis keeps its size. */
const resize: ChainRule = (ctx) => {
  if (ctx.input !== 0) return refusal(ctx, ': the channels enter as another input');
  if (!ctx.outShape) return refusal(ctx, ': its output shape is unknown');
  const a = ctx.layout.axis;
  if (ctx.outShape[a] !== ctx.inShape[a]) return refusal(ctx, 'resizes the channel axis');
  // a constant `sizes` input names the channel count (unless its `axes` leave the channel axis out): it follows them
  const sizes = ctx.node.opType === 'Resize' ? ctx.node.input[3] : undefined,
    index = resizeAxes(ctx.node, ctx.inShape.length).indexOf(a);
  const t = sizes ? ctx.constant(sizes) : undefined;
  if (!sizes || index < 0) return { axis: a };
  if (t) return { axis: a, shapeEdits: [{ tensor: sizes, index }] };
  // computed sizes: torch's Concat(Shape(x)[:2], y.shape[2:]) reads the channel count from x at run time
  const edits = shapeEntry(ctx, 3, index, ctx.value(sizes)?.length ?? ctx.outShape.length);
  return Array.isArray(edits) ? { axis: a, shapeEdits: edits } : edits;
};

/**
 * DepthToSpace in CRD mode (torch's PixelShuffle): output channel c is input channels [c·r², (c + 1)·r²) spread
 * over r×r pixels, so channels of whole blocks of r² entries pass. DCR mode (TensorFlow's depth_to_space)
 * interleaves them.
 */
const depthToSpace: ChainRule = (ctx) => {
  if (ctx.input !== 0 || ctx.layout.axis !== 1) return refusal(ctx, `moves axis ${ctx.layout.axis} into space`);
  if (attrString(ctx.node, 'mode', 'DCR') !== 'CRD')
    return refusal(ctx, 'in DCR mode interleaves the channels (only CRD mode, as torch exports PixelShuffle)');
  const r2 = attrInt(ctx.node, 'blocksize') ** 2;
  if (ctx.layout.segments.some((s) => s.per % r2 !== 0)) return { regroup: r2 };
  return { axis: 1, scale: 1 / r2 };
};

/** Pad with no padding along the channel axis. */
const pad: ChainRule = (ctx) => {
  if (ctx.input !== 0) return refusal(ctx, ': the channels enter as another input');
  const rank = ctx.inShape.length,
    padsName = ctx.node.input[1] ?? '';
  // pads computed from the spatial sizes at run time (the Pytorch-UNet's F.pad(x1, [diffX // 2, …]) to its skip's
  // size) stay as they are when no channel count enters them
  const pads = ctx.node.attribute.some((x) => x.name === 'pads')
    ? attrInts(ctx.node, 'pads')
    : (int64Values(ctx.constant(padsName)) ?? (readsChannelCount(ctx, padsName) ? undefined : ctx.value(padsName)));
  const axesName = ctx.node.input[3];
  if (!pads || (axesName && !ctx.constant(axesName)))
    return refusal(ctx, ': its pads are neither a constant nor computed from sizes other than channel counts');
  const axes = axesName ? int64Values(ctx.constant(axesName))!.map((x) => normAxis(x, rank)) : [...Array(rank).keys()];
  const at = axes.indexOf(ctx.layout.axis);
  if (at >= 0 && (pads[at] !== 0 || pads[at + axes.length] !== 0)) return refusal(ctx, 'pads the channel axis');
  return pass(ctx);
};

/**
 * Whether an integer tensor computed at run time may read the size of an axis holding channels (which pruning changes):
 * a Shape of such a tensor other than through a Gather of constant indices that are not the channel axis, or an input
 * of the graph.
 */
function readsChannelCount(ctx: ChainContext, name: string, seen = new Set<string>()): boolean {
  if (ctx.constant(name) || seen.has(name)) return false;
  seen.add(name);
  const n = ctx.producer(name);
  if (!n || seen.size > 64) return true;
  const from = opOf(n) === 'Gather' ? ctx.producer(n.input[0] ?? '') : undefined;
  const shape = from && opOf(from) === 'Shape' ? from : opOf(n) === 'Shape' ? n : undefined;
  if (shape) {
    const x = shape.input[0] ?? '',
      a = ctx.channelsOf(x)?.axis,
      dims = ctx.value(shape.output[0] ?? ''),
      start = attrInt(shape, 'start', 0);
    if (a === undefined) return false;
    const picks = shape === n ? undefined : ctx.value(n.input[1] ?? '');
    if (!picks || !dims || attrInt(n, 'axis', 0) !== 0 || !ctx.constant(n.input[1] ?? '')) return true;
    const rank = ctx.shape?.(x)?.length ?? dims.length;
    return picks.some((i) => normAxis(start, rank) + normAxis(i, dims.length) === a);
  }
  return n.input.some((t) => t && readsChannelCount(ctx, t, seen));
}

/**
 * Slice and Split along other axes keep the channels; along the channel axis they hand each output a range of its
 * entries (a fused q/k/v projection split into q, k and v). Gather along other axes keeps them too (a scalar index
 * removes its axis).
 */
const slice: ChainRule = (ctx) => {
  if (ctx.input !== 0) return refusal(ctx, ': the channels enter as another input');
  const a = ctx.layout.axis,
    x = ctx.inShape,
    y = ctx.outShape;
  if (!y || y.length !== x.length) return refusal(ctx, ': its output shape is unknown');
  const st = ctx.layout.stack;
  if (st && y[a] === x[a]) return y[st.axis] === x[st.axis] ? { axis: a, stack: st } : slicePart(ctx, st);
  if (y[a] === x[a]) return { axis: a };
  if (st) return refusal(ctx, 'slices the channels of packed parts');
  if (ctx.node.attribute.some((at) => at.name === 'starts'))
    return refusal(
      ctx,
      'slices the channel axis with bounds as attributes (opset < 10); re-export at opset 10 or later',
    );
  const [startsName, endsName] = [ctx.node.input[1] ?? '', ctx.node.input[2] ?? ''];
  const starts = ctx.value(startsName),
    ends = ctx.value(endsName),
    axes = ctx.value(ctx.node.input[3] ?? '') ?? starts?.map((_, i) => i),
    steps = ctx.value(ctx.node.input[4] ?? '') ?? starts?.map(() => 1);
  const k = axes?.findIndex((v) => normAxis(v, x.length) === a) ?? -1;
  if (!starts || !ends || k < 0 || steps![k] !== 1) return refusal(ctx, 'slices the channel axis with a step');
  // a negative constant bound counts from the end (Falcon's fused_qkv[..., :-2, :]): it becomes the positive one
  const fromEnd = (b: { name: string; values: number[] }) => b.values[k]! < 0 && ctx.constant(b.name);
  if ([starts, ends].some((v, i) => v[k]! < 0 && !fromEnd({ name: [startsName, endsName][i]!, values: v })))
    return refusal(ctx, 'slices the channel axis from its end with a computed bound');
  const s0 = Math.min(starts[k]! < 0 ? starts[k]! + x[a]! : starts[k]!, x[a]!),
    range: [number, number] = [s0, s0 + y[a]!];
  // a constant bound is rewritten (the entries before it); a computed one follows the axis' size (see proportional)
  const bounds = [
    { name: startsName, slot: 1, at: s0, edit: s0 > 0, values: starts },
    { name: endsName, slot: 2, at: range[1], edit: range[1] < x[a]!, values: ends },
  ];
  const positive = (b: (typeof bounds)[number]) => b.values.map((v, i) => (i === k ? b.at : v));
  const counts = bounds
    .filter((b) => b.edit && ctx.constant(b.name))
    .map((b) => ({
      edit: fromEnd(b)
        ? { node: ctx.node.name, input: b.slot, values: positive(b), index: k }
        : countAt(ctx, b.slot, b.name, k),
      from: 0,
      to: b.at,
    }));
  if (counts.some((c) => !c.edit)) return refusal(ctx, ': its bounds are shared constants');
  const proportional = bounds.some((b) => b.edit && !ctx.constant(b.name));
  return { axis: a, ranges: [range], counts: counts as Count[], ...(proportional ? { proportional } : {}) };
};
const split: ChainRule = (ctx) => {
  const axis = normAxis(attrInt(ctx.node, 'axis', 0), ctx.inShape.length),
    st = ctx.layout.stack;
  if (ctx.input !== 0) return refusal(ctx, ': the channels enter as its split sizes');
  if (st && axis === st.axis) {
    // torch's unbind of a packed q/k/v: one part per output
    if (ctx.outShapes?.length !== st.parts || ctx.outShapes.some((o) => o?.[axis] !== 1))
      return refusal(ctx, 'splits packed parts of channels other than one part per output');
    return { axis: ctx.layout.axis, ranges: partRanges(ctx, st) };
  }
  if (st && axis === ctx.layout.axis) return refusal(ctx, 'splits the channels of packed parts');
  if (axis !== ctx.layout.axis) return { axis: ctx.layout.axis, allOutputs: true, stack: st };
  const sizes = ctx.outShapes?.map((o) => o?.[axis]);
  if (!sizes || sizes.some((v) => v === undefined)) return refusal(ctx, ': its split sizes are unknown');
  if (ctx.node.attribute.some((at) => at.name === 'split'))
    return refusal(ctx, 'splits the channel axis with sizes as an attribute (opset < 13); re-export at opset 13+');
  let at = 0;
  const ranges = (sizes as number[]).map((n) => [at, (at += n)] as [number, number]);
  const name = ctx.node.input[1];
  if (!name) return { axis, ranges, proportional: true }; // equal parts of whatever size the axis has
  if (!ctx.constant(name)) return refusal(ctx, `: its split sizes "${name}" are not a constant`);
  const counts = ranges.map(([from, to], index) => ({ edit: countAt(ctx, 1, name, index)!, from, to }));
  return { axis, ranges, counts };
};
const gather: ChainRule = (ctx) => {
  const rank = ctx.inShape.length,
    axis = normAxis(attrInt(ctx.node, 'axis', 0), rank),
    a = ctx.layout.axis,
    st = ctx.layout.stack;
  const indices = ctx.constant(ctx.node.input[1] ?? '');
  if (ctx.input === 0 && axis === a && indices && !st) return gatherOne(ctx, indices);
  if (ctx.input !== 0 || axis === a) return refusal(ctx, 'gathers along the channel axis');
  if (!indices) return refusal(ctx, ': its indices are not a constant');
  const r = tensorDims(indices).length; // the gathered axis becomes r axes
  const moved = (at: number) => (at < axis ? at : at + r - 1);
  if (st && axis === st.axis) {
    // qkv[0], qkv[1], qkv[2] of a packed q/k/v: one part
    const index = Array.from(tensorToInt64(indices).data, Number);
    if (index.length !== 1) return refusal(ctx, 'gathers several packed parts of channels at once');
    const part = normAxis(index[0]!, st.parts);
    return { axis: moved(a), ranges: [partRanges(ctx, st)[part]!] };
  }
  return { axis: moved(a), ...(st ? { stack: { ...st, axis: moved(st.axis) } } : {}) };
};

/**
 * A Gather of one entry of the channel axis by a constant [i] (Falcon's fused_qkv[..., [-2], :], its key head): that
 * entry, as a Slice of it would take it; the index counts the entries before it (from the end: it becomes positive).
 */
function gatherOne(ctx: ChainContext, indices: TensorProto): ChainStep {
  const index = Array.from(tensorToInt64(indices).data, Number),
    n = ctx.inShape[ctx.layout.axis]!;
  if (tensorDims(indices).length !== 1 || index.length !== 1)
    return refusal(ctx, 'gathers along the channel axis (other than one entry by a constant [i])');
  const at = index[0]! < 0 ? index[0]! + n : index[0]!,
    name = ctx.node.input[1]!;
  const edit = index[0]! < 0 ? { node: ctx.node.name, input: 1, values: [at], index: 0 } : countAt(ctx, 1, name, 0);
  if (!edit) return refusal(ctx, ': its indices are a shared constant');
  return { axis: ctx.layout.axis, ranges: [[at, at + 1]], counts: at > 0 ? [{ edit, from: 0, to: at }] : [] };
}

/** A Slice of one packed part, its axis kept (Phi-2's qkv[:, :, 2:3], the values): that part's entries. */
function slicePart(ctx: ChainContext, st: Stack): ChainStep {
  const starts = ctx.value(ctx.node.input[1] ?? ''),
    axes = ctx.value(ctx.node.input[3] ?? '') ?? starts?.map((_, i) => i),
    steps = ctx.value(ctx.node.input[4] ?? '') ?? starts?.map(() => 1);
  const k = axes?.findIndex((v) => normAxis(v, ctx.inShape.length) === st.axis) ?? -1;
  if (!starts || k < 0 || steps![k] !== 1 || ctx.outShape![st.axis] !== 1)
    return refusal(ctx, 'slices packed parts of channels other than one part');
  const part = Math.min(starts[k]! < 0 ? starts[k]! + st.parts : starts[k]!, st.parts - 1);
  return { axis: ctx.layout.axis, ranges: [partRanges(ctx, st)[part]!] };
}

/** The entries of each part of a stacked layout, in the runs' order. */
const partRanges = (ctx: ChainContext, st: Stack) =>
  [...Array(st.parts).keys()].map((i): [number, number] => [
    (i * ctx.entries) / st.parts,
    ((i + 1) * ctx.entries) / st.parts,
  ]);

/**
 * A Shape of the channels' tensor carries no channels: the dimensions it reads are the pruned tensor's at run time.
 * Where such a dimension ends up in a reshape or expand, their rules check that it follows the right channels. Where
 * the channel count becomes data (a Cast to float on the way), pruning would change that value, so the channels are
 * refused, unless it is C // heads with channels of C / heads entries (Whisper's attention scale
 * (C // heads) ** -0.25 from `B, T, C = q.shape`): the divisor then counts the channels, as a reshape's does.
 */
const shapeOf: ChainRule = (ctx) => {
  for (const o of shapeOutputs(ctx, ctx.node.output[0] ?? '')) {
    const n = ctx.value(o)?.length;
    const counts = (i: number) => {
      const src = sourceOf(ctx, o, i);
      return src.kind === 'dim' && src.tensor === ctx.node.input[0] && src.axis === ctx.layout.axis;
    };
    if (n === undefined || [...Array(n).keys()].some(counts))
      return refusal(ctx, `: the channel count it reads is the model output "${o}", which pruning would change`);
  }
  const divisors: ShapeEdit[] = [];
  for (const cast of floatCasts(ctx, ctx.node.output[0] ?? '')) {
    const x = cast.input[0] ?? '';
    for (let i = 0; i < (ctx.value(x)?.length ?? 1); i++) {
      const src = sourceOf(ctx, x, i);
      if (src.kind !== 'dim' || src.tensor !== ctx.node.input[0] || src.axis !== ctx.layout.axis) continue;
      const k = src.divisor?.value,
        d = src.divisor && ctx.constant(src.divisor.tensor);
      // channels of C / k entries each (a head): cut the channels into such blocks first, as a reshape into heads does
      const inner = k && ctx.entries % k === 0 ? ctx.entries / k : 0;
      if (inner > 1 && ctx.layout.segments.some((r) => r.per % inner !== 0)) return { regroup: inner };
      const perChannel = k !== undefined && ctx.layout.segments.every((r) => r.space >= 0 && r.per * k === ctx.entries);
      // the divisor read by that Div alone: writing the kept count there changes nothing else
      const alone = ctx.readers(src.divisor?.tensor ?? '').length === 1;
      if (perChannel && d?.dataType === DataType.INT64 && alone) {
        divisors.push({ tensor: src.divisor!.tensor, index: 0 });
        continue;
      }
      return refusal(
        ctx,
        `: the channel count it reads becomes a value (${label(cast)} to float), which pruning changes`,
      );
    }
  }
  return divisors.length ? { none: true, shapeEdits: divisors } : { none: true };
};

/** The Casts to a float type that an integer tensor (a Shape's output) reaches through the ops that compute shapes. */
function floatCasts(ctx: ChainContext, name: string, depth = 0): NodeProto[] {
  if (depth > 8) return [];
  return ctx.readers(name).flatMap(({ node }) => {
    const op = opOf(node);
    if (op === 'Cast') {
      if (FLOAT_TYPES.has(attrInt(node, 'to'))) return [node];
    } else if (!SHAPE_OPS.has(op)) return [];
    return node.output.flatMap((o) => floatCasts(ctx, o, depth + 1));
  });
}

/** The graph outputs an integer tensor (a Shape's output) is, or reaches through the ops that compute shapes. */
function shapeOutputs(ctx: ChainContext, name: string, depth = 0): string[] {
  if (depth > 8) return [];
  const next = ctx
    .readers(name)
    .filter(({ node }) => SHAPE_OPS.has(opOf(node)) || opOf(node) === 'Cast')
    .flatMap(({ node }) => node.output.flatMap((o) => shapeOutputs(ctx, o, depth + 1)));
  return ctx.isOutput(name) ? [name, ...next] : next;
}

/** Integer ops through which exporters compute shapes and values from a Shape. */
const SHAPE_OPS = new Set('Gather Slice Squeeze Unsqueeze Concat Identity Div Mul Add Sub'.split(' '));

const FLOAT_TYPES = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE, DataType.BFLOAT16]);

/**
 * onnxruntime's Gelu variants with a bias (BiasGelu, FastGelu: gelu(x + bias), the bias [C] on the last axis): as an
 * Add of a constant, then an element-wise op.
 */
const biasActivation: ChainRule = (ctx) =>
  ctx.input === 0 ? result(ctx, broadcastParam(ctx, 1, 'bias')) : refusal(ctx, `: the channels enter as its bias`);

/**
 * onnxruntime's normalisations over the axes from `axis` on (-1 by default): the normalised tensor, then per-row
 * statistics (SimplifiedLayerNormalization's inverse deviation; the Skip ones' mean and inverse deviation, then the
 * sum of input, skip and bias).
 */
const normStatsShape: ShapeRule = withX((x, { node }) => {
  const axis = normAxis(attrInt(node, 'axis', -1), x.length),
    stats = [...x.slice(0, axis), ...x.slice(axis).map(() => 1)];
  const skip = node.domain === 'com.microsoft' && node.opType.startsWith('Skip');
  return node.output.map((_, i) => (i === 0 || (skip && i === 3) ? [...x] : stats));
});

const refuse =
  (why: string): ChainRule =>
  (ctx) =>
    refusal(ctx, why);

// ---- the table --------------------------------------------------------------------------------------------------

/**
 * How the analysis treats a node with several inputs that carry channels: 'join' ops (element-wise with broadcasting:
 * Add, Mul, …) make the channels of their inputs the same channels (a residual Add; x·sigmoid(x); an SE gate's
 * product); 'concat' lays its inputs' channels end to end along its axis; 'matmul' multiplies two activations
 * (attention's q·kᵀ and weights·v): channels on a batch axis (heads) pass to the output and join, on the rows or
 * columns they pass, and on the contracted axis they are refused; 'attention' (the Attention op) joins the heads of
 * q, k and v.
 */
export type Merge = 'join' | 'concat' | 'matmul' | 'einsum' | 'attention';

export interface OpRule {
  shape?: ShapeRule;
  value?: ValueRule;
  /** The values of every output, for ops with several (a Split of a shape). */
  values?: (ctx: ShapeContext) => (number[] | undefined)[];
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
/** The element-wise maps of one input (entry i of the output depends on entry i of the input alone). */
export const UNARY_MAPS: readonly string[] = ['Relu', 'LeakyRelu', 'Sigmoid', 'HardSigmoid', 'HardSwish', 'Tanh']
  .concat(['Elu', 'Selu', 'Celu', 'Softplus', 'Softsign', 'Mish', 'Gelu', 'ThresholdedRelu', 'Identity', 'Erf'])
  .concat(['Abs', 'Neg', 'Exp', 'Log', 'Sqrt', 'Reciprocal', 'Floor', 'Ceil', 'Round', 'Sign', 'Sin', 'Cos']);
const joining = op(broadcast, arithmetic, 'join');

/** Every op subprune knows, keyed by op type. Ops of other domains are looked up as `domain::op` and never match. */
export const OPS: Readonly<Record<string, OpRule>> = {
  ...Object.fromEntries(Object.entries(LAYERS).map(([name, layer]) => [name, { shape: layerShape(layer), layer }])),
  // a grouped Conv or ConvTranspose passes channels
  Conv: { shape: layerShape(LAYERS.Conv!), layer: LAYERS.Conv!, chain: grouped(false) },
  ConvTranspose: { shape: layerShape(LAYERS.ConvTranspose!), layer: LAYERS.ConvTranspose!, chain: grouped(true) },
  MatMul: { shape: layerShape(LAYERS.MatMul!), layer: LAYERS.MatMul!, merge: 'matmul' },
  Constant: op(constantShape),
  Shape: op(shapeShape, shapeOf, undefined, shapeValue),
  // element-wise, one input
  ...Object.fromEntries(UNARY_MAPS.map((n) => [n, unary])),
  Identity: op(sameShape, elementwise, undefined, sameValue),
  // a negated length as a Slice's start (MPT's causal_mask[-s_q:, -s_k:])
  Neg: { ...unary, value: (ctx) => valueOf(ctx, 0)?.map((v) => -v) },
  If: op(ifShape), // only torch's squeeze of a dimension not known to be 1 (see ifBranches)
  Dropout: unary, // output 1 (the mask) must be unused: checked for every op by the analysis
  Clip: unary, // min/max are scalars by the spec
  Not: op(sameShape),
  // the output has the first input's shape (Swin's shifted-window mask is written by ScatterND)
  ...Object.fromEntries(['ScatterND', 'ScatterElements', 'Trilu', 'CumSum'].map((n) => [n, op(sameShape)])),
  Tile: op(
    withX((x, ctx) => {
      const r = valueOf(ctx, 1);
      return r?.length === x.length ? [x.map((d, i) => d * r[i]!)] : undefined;
    }),
    tile,
  ),
  Cast: op(
    sameShape,
    (ctx) => (FLOAT_TYPES.has(attrInt(ctx.node, 'to')) ? pass(ctx) : refusal(ctx, 'casts to a non-float type')),
    undefined,
    sameValue,
  ),
  // a quantized model's (QDQ) values as integers and back: shapes only (for FLOPs); channels stop at them
  QuantizeLinear: op(sameShape),
  DequantizeLinear: op(sameShape),
  PRelu: op(sameShape, (ctx) =>
    ctx.input === 0 ? result(ctx, broadcastParam(ctx, 1, 'slope')) : refusal(ctx, ': the channels enter as the slope'),
  ),
  // element-wise, broadcasting
  ...Object.fromEntries(['Pow', 'Max', 'Min', 'Sum', 'Mean'].map((n) => [n, joining])),
  Add: { ...joining, value: arithmeticValue((a, b) => a + b) },
  Sub: { ...joining, value: arithmeticValue((a, b) => a - b) },
  Mul: { ...joining, value: arithmeticValue((a, b) => a * b) },
  Div: { ...joining, value: arithmeticValue((a, b) => Math.trunc(a / b)) },
  // integer Mod takes the divisor's sign (Python's %) unless fmod=1 (C's %): Swin's window padding computes it
  Mod: op(broadcast, undefined, undefined, (ctx) =>
    arithmeticValue(attrInt(ctx.node, 'fmod', 0) ? (a, b) => a % b : (a, b) => ((a % b) + b) % b)(ctx),
  ),
  Range: op(rangeShape, undefined, undefined, rangeValue),
  ...Object.fromEntries(
    ['Less', 'Greater', 'LessOrEqual', 'GreaterOrEqual', 'And', 'Or', 'Xor'].map((n) => [n, op(broadcast)]),
  ),
  Equal: op(
    broadcast,
    undefined,
    undefined,
    arithmeticValue((a, b) => (a === b ? 1 : 0)),
  ),
  // element-wise selection: the chosen branches' channels join, a condition broadcast along them (a causal mask)
  Where: op(broadcast, where, 'join', whereValue),
  ConstantOfShape: op(
    ({ node, value }) => (value(node.input[0] ?? '') ? [value(node.input[0] ?? '')!] : undefined),
    undefined,
    undefined,
    constantOfShapeValue,
  ),
  // normalisations
  BatchNormalization: op(sameShape, perChannelNorm([1, 2, 3, 4])),
  InstanceNormalization: op(sameShape, perChannelNorm([1, 2])),
  LayerNormalization: op(sameShape, layerNorm),
  // opset 23: x / sqrt(mean(x²) + eps) · scale over the axes from `axis` on, as LayerNormalization without the mean
  RMSNormalization: op(sameShape, layerNorm),
  Softmax: op(sameShape, softmax),
  LogSoftmax: op(sameShape, softmax),
  Hardmax: op(sameShape, softmax),
  LRN: op(sameShape, refuse('normalises across neighbouring channels, which couples them')),
  GroupNormalization: op(sameShape, groupNorm),
  // opset 23: rotary position embedding per head; softmax(q · kᵀ) · v per head
  RotaryEmbedding: op(sameShape, rotary),
  Attention: op(attentionShape, undefined, 'attention'),
  // pools and resizing
  ...Object.fromEntries(['MaxPool', 'AveragePool', 'LpPool'].map((n) => [n, op(poolShape, spatial)])),
  ...Object.fromEntries(
    ['GlobalAveragePool', 'GlobalMaxPool', 'GlobalLpPool'].map((n) => [n, op(globalPoolShape, spatial)]),
  ),
  Resize: op(resizeShape, resize),
  Upsample: op(resizeShape, resize),
  Pad: op(padShape, pad),
  // the channels of x each sampled at the same points (RAFT's lookup in its correlation pyramid); not known to act
  // per channel here, so the analysis stops at it
  GridSample: op(gridSampleShape),
  DepthToSpace: op(
    withX((x, { node }) => {
      const r = attrInt(node, 'blocksize');
      return x.length === 4 ? [[x[0]!, x[1]! / (r * r), x[2]! * r, x[3]! * r]] : undefined;
    }),
    depthToSpace,
  ),
  // shape ops
  Flatten: op(flattenShape, flatten),
  Reshape: op(reshapeShape, reshape, undefined, sameValue),
  Transpose: op(transposeShape, transpose, undefined, transposeValue),
  Squeeze: op(squeezeShape, squeeze, undefined, sameValue),
  Unsqueeze: op(unsqueezeShape, unsqueeze, undefined, sameValue),
  Slice: op(sliceShape, slice, undefined, sliceValue),
  Split: { ...op(splitShape, split), values: splitValues },
  Gather: op(gatherShape, gather, undefined, gatherValue),
  // the output has the indices' shape (DeBERTa's relative-position scores: torch.gather)
  GatherElements: op(({ ins }) => (ins[1] ? [[...ins[1]]] : undefined)),
  // a product of two activations written with letters (Phi-2's "bthd,bshd->bhts"): as MatMul's
  Einsum: op(einsumShape, undefined, 'einsum'),
  Concat: op(concatShape, undefined, 'concat', concatValue),
  Expand: op(expandShape, expand, undefined, expandValue),
  // reductions
  // each reduces every channel on its own over other axes (ConvNeXt-V2's GRN: ReduceL2 over H, W)
  ...Object.fromEntries(
    ['ReduceMean', 'ReduceMax', 'ReduceMin', 'ReduceSum', 'ReduceProd', 'ReduceL1', 'ReduceL2', 'ReduceLogSum']
      .concat(['ReduceLogSumExp', 'ReduceSumSquare'])
      .map((n) => [n, op(reduceShape, reduce)]),
  ),
  ArgMax: op(argShape),
  ArgMin: op(argShape),
  TopK: op(topkShape),
  OneHot: op(oneHotShape),
  // onnxruntime's contrib ops, as its graph optimizer writes them (optimizedModelFilePath at level extended)
  // a depthwise one passes channels as Conv's, unless it is no Conv and activation (a residual Z added)
  'com.microsoft::FusedConv': {
    shape: layerShape(LAYERS['com.microsoft::FusedConv']!),
    layer: LAYERS['com.microsoft::FusedConv']!,
    chain: (ctx) => fusedConvRefusal(ctx.node) ?? grouped(false)(ctx),
  },
  'com.microsoft::FusedMatMul': {
    shape: layerShape(LAYERS['com.microsoft::FusedMatMul']!),
    layer: LAYERS['com.microsoft::FusedMatMul']!,
    merge: 'matmul',
  },
  'com.microsoft::Gelu': unary,
  'com.microsoft::QuickGelu': unary,
  'com.microsoft::BiasGelu': op(sameShape, biasActivation),
  'com.microsoft::FastGelu': op(sameShape, biasActivation),
  // input + skip (+ bias), then a LayerNormalization over the last axis: the residual stream's channels
  'com.microsoft::SkipLayerNormalization': op(
    normStatsShape,
    refuse('normalises across the channels (a LayerNormalization of the sum with its skip input), which couples them'),
  ),
  'com.microsoft::SkipSimplifiedLayerNormalization': op(
    normStatsShape,
    refuse('normalises across the channels (an RMSNorm of the sum with its skip input), which couples them'),
  ),
  // RMSNorm as onnxruntime fuses it (LLaMA's x · rsqrt(mean(x²) + eps) · w), an op it defines in ONNX's own domain
  SimplifiedLayerNormalization: op(normStatsShape, layerNorm),
};

/** The layer-table entry of a node, found by its op name (domain and op type). */
export const layerOf = (n: NodeProto): Layer | undefined => OPS[opOf(n)]?.layer;
