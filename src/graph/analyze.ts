// Finding channel groups: one forward walk over the graph that tracks, for every activation, which channels it carries
// (its layout: runs of channels of channel spaces). Layers (layers.ts) create a space for their output channels and
// consume the spaces they read; ops pass channels on by their chain rules (ops.ts); joins (a residual Add, x·σ(x), an
// SE gate's product) make the spaces of their inputs one space; Concat lays spaces end to end. A space becomes a
// group unless something the tables cannot vouch for touches it: then it is refused with the reason, never guessed.
import { clone } from '@bufbuild/protobuf';
import { badInput } from '../errors.js';
import {
  attrInt,
  attrInts,
  attrString,
  DataType,
  ModelProtoSchema,
  opsetVersion,
  tensorDims,
  tensorToFloat32,
  numel,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import {
  axesOf,
  checkOpset,
  ifBranches,
  type IfBranches,
  entriesOf,
  partsAlike,
  normAxis,
  onlyShapes,
  shapeConstant,
  shapeEntrySource,
  shapeDim,
  opOf,
  OPS,
  UNARY_MAPS,
  type Layout,
  type OpRule,
  type ChainStep,
  type ParamSlice,
  type Segment,
  type ShapeEdit,
} from './ops.js';
import { biasAxis, weightToMatrix, type LayerInfo } from './layers.js';
import {
  constantTensors,
  dataInputs,
  producerMap,
  inferShapesAndValues,
  nodeMacs,
  type InputShapes,
  type Shapes,
} from './shapes.js';
import { calledFunction, normalizeModel, notInlinable } from './normalize.js';
import type { Analysis, AxisSlice, Consumer, Edit, Group, OutputAxis, Refused } from './types.js';
import { notRewritable } from '../rewrite/index.js';
import { groupTooBigToSelect, tooBigToSelect } from '../select/greedy.js';
import { groupSavings } from '../budget/size.js';

interface Use {
  node: NodeProto;
  slot: number;
}

/**
 * Every place a tensor name is read: node inputs of the graph, and (as a use without a slot) names read inside
 * subgraphs.
 */
function usesOf(graph: GraphProto): Map<string, Use[]> {
  const uses = new Map<string, Use[]>();
  const add = (name: string, use: Use) => {
    if (!name) return;
    const list = uses.get(name);
    if (list) list.push(use);
    else uses.set(name, [use]);
  };
  const inner = (g: GraphProto, owner: NodeProto) => {
    for (const n of g.node) {
      n.input.forEach((name) => add(name, { node: owner, slot: -1 }));
      for (const a of n.attribute) [a.g, ...a.graphs].forEach((sub) => sub && inner(sub, owner));
    }
  };
  for (const n of graph.node) {
    n.input.forEach((name, slot) => add(name, { node: n, slot }));
    for (const a of n.attribute) [a.g, ...a.graphs].forEach((sub) => sub && inner(sub, n));
  }
  return uses;
}

const label = (n: NodeProto) => `${opOf(n)} "${n.name}"`;

/** What a refusal at a quantized layer adds: its weights are integers (QLinearConv; a DequantizeLinear's output). */
const QUANTIZED = '; the model is quantized: prune the float model, then quantize the pruned one';
// weight standardization (timm's StdConv2d, BiT, NFNet) and torch's weight_norm without constant folding
const COMPUTED =
  '; it is computed at run time from constants alone (as weight standardization or weight_norm write it), and ' +
  'subprune prunes initializers: fold it into one first (e.g. remove_weight_norm before the export)';
// a weight sliced out of a packed one by tensor shapes, which torch's constant folding leaves (nn.MultiheadAttention
// with a query other than its key: a decoder's cross-attention)
const SLICED =
  ' at run time, by tensor shapes (as nn.MultiheadAttention slices its packed in_proj_weight for cross-attention); ' +
  'subprune prunes layers whose weights are initializers';
const QUANTIZED_LAYERS = new Set(
  ['QLinearConv', 'QLinearMatMul', 'ConvInteger', 'MatMulInteger'].concat(
    // onnxruntime's (quantize_dynamic, MatMul4BitsQuantizer)
    ['MatMulNBits', 'DynamicQuantizeMatMul', 'MatMulIntegerToFloat', 'QAttention'].map((o) => `com.microsoft::${o}`),
  ),
);

/** The ops between a quantized model's integers and floats (QDQ: torch's export of a quantized model, QAT). */
const QUANTIZE_OPS = new Set(['QuantizeLinear', 'DequantizeLinear', 'DynamicQuantizeLinear']);

/**
 * What a refusal at an op of onnxruntime's own domains adds: the model is quantized; the NCHWc ops (level all) hold
 * the channels in blocks laid out for the CPU that wrote them; contrib ops subprune does not know (Attention) were
 * fused from ONNX ops by an optimizer.
 */
function ortHint(node: NodeProto): string {
  if (QUANTIZED_LAYERS.has(opOf(node)) || QUANTIZE_OPS.has(opOf(node))) return QUANTIZED;
  if (!node.domain.startsWith('com.microsoft')) return '';
  const where =
    node.domain === 'com.microsoft.nchwc'
      ? "optimizedModelFilePath at level 'all': channels in blocks laid out for the CPU that wrote them"
      : 'optimizedModelFilePath, onnxruntime.transformers.optimizer';
  return `; onnxruntime's optimizers write such ops (${where}): prune the model as exported, then optimize`;
}
const FLOAT_TYPES = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE, DataType.BFLOAT16]);

/** The analysis state shared by the walk: constants, uses, producers, shapes. */
class Graph {
  readonly consts: Map<string, TensorProto>;
  readonly uses: Map<string, Use[]>;
  readonly producers: Map<string, NodeProto>;
  readonly outputs: Set<string>;
  readonly opset: number;
  readonly batch: number;
  constructor(
    readonly graph: GraphProto,
    readonly shapes: Shapes,
    readonly values: Map<string, number[]>,
    opset: number,
    /** Nodes calling a model-local function left as it is (see notInlinable): why it was not inlined. */
    readonly calls = new Map<string, string>(),
  ) {
    this.consts = constantTensors(graph);
    this.uses = usesOf(graph);
    this.producers = producerMap(graph);
    this.outputs = new Set(graph.output.map((o) => o.name));
    this.opset = opset;
    this.batch = shapes.get(dataInputs(graph)[0]?.name ?? '')?.[0] || 1;
  }
  constant = (name: string): TensorProto | undefined => this.consts.get(name);
  /**
   * What tensor `t` is computed from, when it is not a constant and no graph input's values reach it nor a layer's
   * output (DETR's decoder runs its layers on learned queries alone): the constants it reads, and whether tensor
   * shapes enter too (nn.MultiheadAttention's cross-attention slices its packed in_proj by the query's width).
   * Undefined otherwise. With `inputs`, graph inputs may reach it too (a padding mask made from the lengths): the
   * ones that do.
   */
  computedFrom(t: string, inputs = false): { consts: TensorProto[]; shapes: boolean; inputs: string[] } | undefined {
    if (this.consts.has(t)) return undefined;
    const consts: TensorProto[] = [],
      seen = new Set<string>(),
      read: string[] = [];
    let shapes = false;
    const visit = (name: string): boolean => {
      if (!name || seen.has(name)) return true;
      seen.add(name);
      const c = this.consts.get(name),
        p = this.producers.get(name);
      if (c) consts.push(c);
      else if (p?.opType === 'Shape' || p?.opType === 'Size') shapes = true;
      else if (!p && inputs) read.push(name);
      else return p !== undefined && !OPS[opOf(p)]?.layer && p.input.every(visit);
      return true;
    };
    return visit(t) ? { consts, shapes, inputs: read } : undefined;
  }
  private tables?: Map<string, Table>;
  /**
   * The per-channel table computed from a constant that `t` brings to `site` on the site's output axis `at`, by
   * `site|tensor|at` (see tablesOf): one tensor may be a table along several axes (Mamba's scan state, zeros of
   * [B, channels, state]).
   */
  table(site: NodeProto, t: string, at: number): Table | undefined {
    this.tables ??= tablesOf(this);
    return this.tables.get(`${site.name}|${t}|${at}`);
  }
  /** The tables that are a ConstantOfShape's count (see Table.count). */
  counts(): Table[] {
    this.tables ??= tablesOf(this);
    return [...this.tables.values()].filter((t) => t.count);
  }
  /** Whether a ConstantOfShape is a table (see Table.count). */
  isTable = (node: NodeProto): boolean => this.counts().some((t) => t.count === node.name);
  value = (name: string): number[] | undefined => this.values.get(name);
  producer = (name: string): NodeProto | undefined => this.producers.get(name);
  outputOf = (node: string): string => this.graph.node.find((n) => n.name === node)?.output[0] ?? '';
  /**
   * Why tensor `t` has no shape: the first node on the way back from it whose inputs all have shapes and whose output
   * has none (an op without a shape rule, as the fused ops onnxruntime's graph optimizer writes), or an input that
   * declares no shape.
   */
  unknownShape(t: string): string {
    let name = t;
    for (let n = this.producer(name); n; n = this.producer(name)) {
      const next = n.input.find((i) => i && !this.shapes.has(i));
      if (next === undefined && this.calls.has(n.name))
        return `the shape of "${t}" is unknown: it comes from "${n.name}", which ${this.calls.get(n.name)}`;
      if (next === undefined) {
        const why = DATA_SHAPED.has(opOf(n))
          ? 'whose output shape depends on the values it reads (the tokens a mixture of experts routes to one ' +
            'expert: torch.where, h[top]), not on shapes alone'
          : OPS[opOf(n)]?.shape
            ? 'whose output shape could not be computed'
            : 'an op with no shape rule in subprune';
        return `the shape of "${t}" is unknown: it comes from ${label(n)}, ${why}${ortHint(n)}`;
      }
      name = next;
    }
    return `the shape of "${t}" is unknown: the model's input "${name}" declares none`;
  }
  /**
   * Why a constant cannot be changed for these channels alone, if another node or a graph output reads it too. A
   * shape constant (`via`) may reach `node` through the nodes that compute its shape input (Concat, Unsqueeze, …).
   */
  shared(name: string, node: NodeProto, via = false): string | undefined {
    const uses = this.uses.get(name) ?? [];
    if (this.feedsOnly(name, node, via ? 8 : 0)) return undefined;
    const by = [...new Set(uses.map((u) => u.node.name))].join(', ');
    const output = this.outputs.has(name) ? ' and as a graph output' : '';
    const what = this.consts.has(name) ? 'constant' : 'shape';
    // the weight of one layer run on several inputs (torch calls one module on each of them)
    const layer = uses.length > 1 && uses.every((u) => u.slot === 1 && OPS[opOf(u.node)]?.layer);
    const why = layer ? ': one layer applied to several inputs (a head shared across FPN levels, a shared MLP)' : '';
    return (
      `${what} "${name}" is shared (used by ${by}${output})${why}; changing it for one group would change the ` +
      'others'
    );
  }
  /** Whether `name` is read by `node` alone, directly or (up to `depth` nodes away) through nodes that only feed it. */
  private feedsOnly(name: string, node: NodeProto, depth: number): boolean {
    if (this.outputs.has(name)) return false;
    return (this.uses.get(name) ?? []).every(
      (u) =>
        u.node === node || (depth > 0 && u.slot >= 0 && u.node.output.every((o) => this.feedsOnly(o, node, depth - 1))),
    );
  }
  flops(node: NodeProto): number | undefined {
    const macs = nodeMacs(node, this.shapes);
    return macs === undefined ? undefined : (2 * macs) / this.batch;
  }
}

/**
 * A table computed at run time from one constant and added per channel: T5's relative position bias, an embedding
 * table [buckets, heads] gathered by bucket indices computed from the sequence length, transposed and unsqueezed to
 * [1, heads, T, T] and added to every layer's attention scores. Its `axis` holds one entry per channel at every
 * `site` (the Add, Mul, … that meets the channels; the axis there in that node's output), so removing channels
 * slices the constant along `axis`; every site's channels become one space, as the constant is sliced once.
 */
interface Table {
  tensor: string;
  axis: number;
  sites: Set<string>;
  /** The axis of the site's output the table's axis reaches. */
  at: number;
  /**
   * The ConstantOfShape whose shape `tensor` counts along `axis`: `tensor` is not the table but the one-entry count
   * of that axis (T5's cross attention adds torch.zeros((1, heads, T, S)), plus the mask), or its constant factor
   * (GPT-NeoX adds its scores to torch.zeros(B · heads, T, T) by baddbmm); removing channels shrinks that count.
   * Or the Expand whose shape's entry `index` of `tensor` is that count, from a size of 1 (nn.MultiheadAttention's
   * key_padding_mask expanded to the heads).
   */
  count?: string;
  /** The entry of `tensor` that is the count (0 unless an Expand's shape). */
  index?: number;
  /** The activations from the constant to the sites, with the axis holding the channels: their shapes change too. */
  path: { tensor: string; axis: number }[];
  /** Shape entries of reshapes on the path that count the channels (one each): rewritten with them. */
  counts: { tensor: string; index: number }[];
}

// element-wise maps commute with slicing a constant (Mamba's A = -exp(A_log))
const TABLE_PASS = ['Cast', ...UNARY_MAPS];
const TABLE_JOIN = ['Add', 'Sub', 'Mul', 'Div'];

/**
 * Every table (see Table): for each constant of rank ≥ 2 that a Gather or Slice reads as its data, and each other
 * axis, the nodes its entries reach through Gather and Slice along other axes, Transpose, Unsqueeze, Cast and
 * element-wise products with tensors broadcast along that axis (a mask [1, 1, T, T]), up to the element-wise nodes
 * whose other input has that axis too (the sites). A constant that any other node reads on the way (a Shape, a graph
 * output, a MatMul) makes no table.
 */
function tablesOf(G: Graph): Map<string, Table> {
  const found = new Map<string, Table>();
  for (const [name, t] of G.consts) {
    const uses = G.uses.get(name) ?? [];
    const dims = tensorDims(t);
    // an embedding gathered (T5's bias) or a buffer sliced to the length (ESPnet's `pe[:, :x.size(1)]`, MPT's ALiBi
    // [1, heads, 1, max_seq] cut to the keys' length), or a per-channel factor of a product (BLOOM's ALiBi slopes)
    const gathered = uses.some((u) => ['Gather', 'Slice'].includes(opOf(u.node)) && u.slot === 0);
    // or a parameter mapped element-wise at run time (Mamba's A = -exp(A_log) [channels, state]; Mamba-2's per head):
    // of rank 1 too, which read as it is would be a per-channel parameter
    const mapped = uses.some((u) => TABLE_PASS.includes(opOf(u.node)));
    if ((dims.length < 2 && !mapped) || !uses.some((u) => gathered || mapped || TABLE_JOIN.includes(opOf(u.node))))
      continue;
    for (let axis = 0; axis < dims.length; axis++) {
      if (dims[axis]! < 2) continue;
      const t = tableSites(G, name, axis);
      // a constant meeting the channels as it is is a per-channel parameter, not a table
      if (!t || (!gathered && [...t.at.values()].some((site) => site.input === name))) continue;
      for (const [site, { input, at }] of t.at)
        found.set(`${site}|${input}|${at}`, { tensor: name, axis, sites: t.sites, path: t.path, counts: t.counts, at });
    }
  }
  for (const node of G.graph.node) {
    const concat = opOf(node) === 'ConstantOfShape' ? G.producer(node.input[0] ?? '') : undefined;
    if (!concat || opOf(concat) !== 'Concat' || (G.uses.get(concat.output[0] ?? '') ?? []).length !== 1) continue;
    if (!concat.input.every((c) => G.shapes.get(c)?.length === 1 && G.shapes.get(c)![0] === 1)) continue;
    concat.input.forEach((c, axis) => {
      const k = shapeCount(G, c, node);
      if (!k || (G.value(c)?.[0] ?? 0) < 2) return;
      const t = tableSites(G, node.output[0] ?? '', axis);
      for (const [site, { input, at }] of t?.at ?? [])
        found.set(`${site}|${input}|${at}`, {
          ...{ tensor: k, axis: 0, sites: t!.sites, path: t!.path, counts: t!.counts, at, count: node.name },
        });
    });
  }
  // a tensor expanded from a size of 1 by a constant count: its entries along that axis are copies, so fewer
  // channels need only a smaller count (nn.MultiheadAttention's key_padding_mask: view(B, 1, 1, S), expand(-1, heads,
  // -1, -1), reshape(B · heads, 1, S), added to the scores)
  for (const node of G.graph.node) {
    const x = G.shapes.get(node.input[0] ?? ''),
      y = G.shapes.get(node.output[0] ?? ''),
      shape = node.input[1] ?? '',
      v = G.value(shape);
    if (opOf(node) !== 'Expand' || !x || !y || !v) continue;
    y.forEach((d, axis) => {
      const k = axis - (y.length - x.length),
        c = d > 1 && (k < 0 || x[k] === 1) ? shapeConstant(G, shape, axis - (y.length - v.length)) : undefined;
      if (!c || G.shared(c.tensor, node, true)) return; // the count reaches this Expand alone
      const t = tableSites(G, node.output[0] ?? '', axis);
      for (const [site, { input, at }] of t?.at ?? [])
        found.set(`${site}|${input}|${at}`, {
          ...{ tensor: c.tensor, index: c.index, axis: 0, sites: t!.sites, path: t!.path, counts: t!.counts, at },
          count: node.name,
        });
    });
  }
  return found;
}

/**
 * The INT64 constant that counts the one-entry input `c` of a ConstantOfShape's shape: `c` itself, read by nothing
 * else; or, through Unsqueeze and Cast, the constant factor of a product with a dimension that is 1 here (B · heads,
 * the batch of the analysis), the product read by nothing but reshapes' shapes and this ConstantOfShape.
 */
function shapeCount(G: Graph, c: string, node: NodeProto): string | undefined {
  const only = (t: string) => (G.uses.get(t) ?? []).length === 1 && !G.outputs.has(t);
  if (G.constant(c)) return G.constant(c)!.dataType === DataType.INT64 && only(c) ? c : undefined;
  let part = c;
  for (let p = G.producer(part); p && ['Unsqueeze', 'Cast'].includes(opOf(p)); p = G.producer(part))
    part = p.input[0] ?? '';
  const mul = G.producer(part),
    n = G.value(part);
  if (!mul || opOf(mul) !== 'Mul' || n?.length !== 1) return undefined;
  const k = mul.input.find((i) => G.constant(i)?.dataType === DataType.INT64 && G.value(i)?.[0] === n[0]);
  const readers = { readers: (t: string) => G.uses.get(t) ?? [], isOutput: (t: string) => G.outputs.has(t) };
  return k && only(k) && onlyShapes({ ...readers, isTable: (x) => x === node }, part) ? k : undefined;
}

/** The sites a constant's axis reaches (site node → the input it reaches it by, the output axis), or undefined. */
function tableSites(
  G: Graph,
  name: string,
  axis: number,
): (Pick<Table, 'sites' | 'path' | 'counts'> & { at: Map<string, Site> }) | undefined {
  const sites = new Map<string, Site>();
  const path: Table['path'] = [],
    counts: Table['counts'] = [];
  const queue = [{ t: name, axis }];
  // ConstantOfShapes shaped like a tensor on the path, and those a Where on the path selects from (nothing else)
  const zeros = new Set<string>(),
    met = new Set<string>();
  for (let q = queue.shift(); q; q = queue.shift()) {
    if (G.outputs.has(q.t)) return undefined;
    if (!G.constant(q.t)) path.push({ tensor: q.t, axis: q.axis });
    const rank = G.shapes.get(q.t)?.length;
    if (rank === undefined) return undefined;
    for (const { node, slot } of G.uses.get(q.t) ?? []) {
      const y = node.output[0] ?? '',
        op = opOf(node),
        outRank = G.shapes.get(y)?.length;
      if (slot < 0 || outRank === undefined || node.output.length !== 1) return undefined;
      if (TABLE_PASS.includes(op)) queue.push({ t: y, axis: q.axis });
      else if (op === 'Shape') {
        // zeros shaped like it (torch's zeros_like, then masked_fill): to be met below, at a Where
        const uses = G.uses.get(y) ?? [];
        if (G.outputs.has(y) || !uses.every((u) => opOf(u.node) === 'ConstantOfShape')) return undefined;
        uses.forEach((u) => zeros.add(u.node.output[0] ?? ''));
      } else if (op === 'Where') {
        // a mask selecting between values that are the same along the axis (scalars, zeros shaped like it)
        const at = q.axis + outRank - rank;
        const same = node.input.every((i, s) => {
          const d = G.shapes.get(i),
            k = d && at - (outRank - d.length);
          if (s === slot || (d && (k! < 0 || d[k!] === 1))) return true;
          const like = sizedLike(G, i, k!);
          const on = like && path.some((p) => p.tensor === like.tensor && p.axis === like.axis);
          if (on && (G.uses.get(i) ?? []).length === 1) return met.add(i);
          return false;
        });
        if (!same) return undefined;
        queue.push({ t: y, axis: at });
      } else if (op === 'Transpose') {
        const perm = node.attribute.some((a) => a.name === 'perm')
          ? attrInts(node, 'perm')
          : [...Array(rank).keys()].reverse();
        queue.push({ t: y, axis: perm.indexOf(q.axis) });
      } else if (op === 'Unsqueeze' && slot === 0) {
        const axes = axesOf(node, G.constant)?.map((a) => (a < 0 ? a + outRank : a));
        if (!axes) return undefined;
        const kept = [...Array(outRank).keys()].filter((o) => !axes.includes(o));
        queue.push({ t: y, axis: kept[q.axis]! });
      } else if (op === 'Gather' && slot === 0) {
        const g = attrInt(node, 'axis', 0),
          ga = g < 0 ? g + rank : g;
        const indices = G.shapes.get(node.input[1] ?? '')?.length;
        if (ga === q.axis || indices === undefined) return undefined;
        queue.push({ t: y, axis: q.axis < ga ? q.axis : q.axis + indices - 1 });
      } else if (op === 'Slice' && slot === 0) {
        // cut along other axes only (opset 10's inputs; axes default to the first ones)
        const n = G.shapes.get(node.input[1] ?? '')?.[0];
        const axes = node.input[3] ? G.value(node.input[3]) : n === undefined ? undefined : [...Array(n).keys()];
        if (!axes || axes.some((a) => (a < 0 ? a + rank : a) === q.axis)) return undefined;
        queue.push({ t: y, axis: q.axis });
      } else if (op === 'Reshape' && slot === 0) {
        // the axis kept whole, with axes of size 1 around it: ALiBi's [B, heads, T] → [B · heads, 1, T]
        const to = keptAxis(G.shapes.get(q.t)!, G.shapes.get(y)!, q.axis),
          count = to === undefined ? undefined : reshapeCount(G, node, to, G.shapes.get(q.t)![q.axis]!);
        if (to === undefined || count === undefined) return undefined;
        if (count) counts.push(count);
        queue.push({ t: y, axis: to });
      } else if (TABLE_JOIN.includes(op) && node.input.length === 2) {
        const at = q.axis + outRank - rank,
          other = G.shapes.get(node.input[1 - slot] ?? '');
        if (!other) return undefined;
        const k = at - (outRank - other.length);
        if (k < 0 || other[k] === 1) queue.push({ t: y, axis: at });
        else sites.set(node.name, { input: q.t, at });
      } else return undefined;
    }
  }
  if ([...zeros].some((z) => !met.has(z))) return undefined;
  return sites.size ? { sites: new Set(sites.keys()), path, counts, at: sites } : undefined;
}

/** The axis of y that holds axis a of x whole (only axes of size 1 around it move), or undefined. */
function keptAxis(x: number[], y: number[], a: number): number | undefined {
  const to = y.findIndex(
    (d, j) =>
      d === x[a] && numel(y.slice(0, j)) === numel(x.slice(0, a)) && numel(y.slice(j + 1)) === numel(x.slice(a + 1)),
  );
  return to < 0 || numel(x.slice(0, a)) !== 1 ? undefined : to;
}

/**
 * The entry of a reshape's shape that counts `n` channels on output axis `to`: null if none needs rewriting (-1), an
 * INT64 constant entry (or the constant factor of B · n, a batch of 1 here merged with them) that only this reshape
 * reads; undefined if it cannot be rewritten alone.
 */
function reshapeCount(
  G: Graph,
  node: NodeProto,
  to: number,
  n: number,
): { tensor: string; index: number } | null | undefined {
  const shape = node.input[1] ?? '',
    v = G.value(shape);
  if (!v || v.filter((d) => d === -1).length > 1) return undefined;
  if (v[to] === -1) return null;
  const only = (t: string) => !G.outputs.has(t) && (G.uses.get(t) ?? []).length === 1;
  if (G.constant(shape)) return only(shape) && v[to] === n ? { tensor: shape, index: to } : undefined;
  const concat = G.producer(shape);
  if (!concat || opOf(concat) !== 'Concat' || !concat.input.every((i) => G.value(i)?.length === 1)) return undefined;
  let part = concat.input[to] ?? '';
  for (let p = G.producer(part); p && ['Unsqueeze', 'Cast'].includes(opOf(p)) && only(part); p = G.producer(part))
    part = p.input[0] ?? '';
  if (G.constant(part)) return only(part) && G.value(part)?.[0] === n ? { tensor: part, index: 0 } : undefined;
  const mul = G.producer(part);
  if (!mul || opOf(mul) !== 'Mul') return undefined;
  const k = mul.input.find((i) => G.constant(i) && G.value(i)?.length === 1 && G.value(i)![0] === n);
  // torch computes bsz · heads once for every reshape of an attention layer (q, k, v, the key_padding_mask): shared by
  // shape entries alone, it shrinks once with the heads
  const readers = { readers: (t: string) => G.uses.get(t) ?? [], isOutput: (t: string) => G.outputs.has(t) };
  return k && only(k) && (only(part) || onlyShapes({ ...readers, isTable: () => false }, k))
    ? { tensor: k, index: 0 }
    : undefined;
}

/** Where a table meets the channels: the input it arrives by, and the axis of the site's output it reaches. */
interface Site {
  input: string;
  at: number;
}

// ---- channel spaces -------------------------------------------------------------------------------------------

/** What the walk learns about one channel space; spaces that a join makes one are merged. */
interface SpaceRecord {
  n: number;
  producers: NodeProto[];
  /** The producers' output parts that made the space (producer node name, index in its partition, the part). */
  parts: { node: string; index: number; part: Part }[];
  consumers: Consumer[];
  slices: AxisSlice[];
  edits: Edit[];
  chain: NodeProto[];
  tensors: Group['tensors'];
  /** The first reason the channels cannot be pruned, if any. */
  refused?: string;
  /** That reason is only that a shape reads another group's channel count (which may turn out fixed). */
  byCount?: boolean;
}

/** Channel spaces with union-find: a join makes two spaces one, and their records merge. */
class Spaces {
  private readonly parent: number[] = [];
  private readonly rec: SpaceRecord[] = [];

  make(part: Part, producer: NodeProto, index: number): number {
    this.parent.push(this.parent.length);
    const parts = [{ node: producer.name, index, part }],
      n = part.n;
    this.rec.push({ n, producers: [producer], parts, consumers: [], slices: [], edits: [], chain: [], tensors: [] });
    return this.parent.length - 1;
  }
  find(a: number): number {
    while (this.parent[a] !== a) a = this.parent[a] = this.parent[this.parent[a]!]!;
    return a;
  }
  get(a: number): SpaceRecord {
    return this.rec[this.find(a)]!;
  }
  /** Makes a and b one space (the same channels); their records merge. */
  union(a: number, b: number): void {
    const [x, y] = [this.find(a), this.find(b)];
    if (x === y) return;
    const [keep, gone] = x < y ? [x, y] : [y, x];
    this.parent[gone] = keep;
    const k = this.rec[keep]!,
      g = this.rec[gone]!;
    k.producers.push(...g.producers);
    k.parts.push(...g.parts);
    k.consumers.push(...g.consumers);
    k.slices.push(...g.slices);
    k.edits.push(...g.edits);
    k.chain.push(...g.chain);
    k.tensors.push(...g.tensors);
    if (k.refused === undefined) [k.refused, k.byCount] = [g.refused, g.byCount];
  }
  /** byCount: the reason is that a shape reads another group's channel count. */
  refuse(a: number, why: string, byCount = false): void {
    const r = this.get(a);
    if (r.refused === undefined) [r.refused, r.byCount] = [why, byCount];
  }
  /** Refuses every space in a layout. */
  refuseAll(l: Layout | undefined, why: string, byCount = false): void {
    for (const s of l?.segments ?? []) if (s.space >= 0) this.refuse(s.space, why, byCount);
  }
  roots(): number[] {
    return this.parent.flatMap((p, i) => (p === i ? [i] : []));
  }
}

/** Each run of a layout with the entry it starts at. */
function runs(l: Layout): (Segment & { offset: number })[] {
  let offset = 0;
  return l.segments.map((s) => {
    const r = { ...s, offset };
    offset += s.n * s.per;
    return r;
  });
}

/**
 * The runs of a layout along its axis: of a stacked one, the first part's (the parts keep the same count, so shape
 * entries and activation sizes follow that part alone).
 */
function firstPart(l: Layout): (Segment & { offset: number })[] {
  const size = entriesOf(l) / (l.stack?.parts ?? 1);
  return runs(l).filter((r) => r.offset < size);
}

/** A stacked layout whose parts are one channel each (partsAlike) as a plain one: its first part's runs. */
const unstacked = (l: Layout): Layout => ({
  axis: l.axis,
  segments: firstPart(l).map(({ space, n, per }) => ({ space, n, per })),
});

/** Whether two layouts have the same runs (so a join can make their spaces one, run by run). */
const sameRuns = (a: Layout, b: Layout) =>
  a.segments.length === b.segments.length &&
  a.segments.every((s, i) => s.n === b.segments[i]!.n && s.per === b.segments[i]!.per);

/**
 * Two layouts of the same entries whose runs differ only in how many entries a channel has (grouped-query attention:
 * 2 k/v heads of 4 query heads each against 8 query heads): asks the next walk to merge the finer side's channels.
 * False if they differ otherwise.
 */
function align(W: Walk, a: Layout, b: Layout): boolean {
  const pairs = a.segments.map((s, i) => [s, b.segments[i]] as const);
  const fits = ([s, t]: (typeof pairs)[number]) =>
    t && s.space >= 0 && t.space >= 0 && s.n * s.per === t.n * t.per && (s.per % t.per === 0 || t.per % s.per === 0);
  if (a.segments.length !== b.segments.length || !pairs.every(fits)) return false;
  for (const [s, t] of pairs) {
    if (s.per > t.per) request(W, t!.space, { merge: s.per / t!.per });
    else if (t!.per > s.per) request(W, s.space, { merge: t!.per / s.per });
  }
  return true;
}

/**
 * Two layouts of the same entries whose runs end at different places (a GhostNet module's residual Add: the block's
 * input, one run of n channels, against its output, the Concat of a conv's n/2 channels and their depthwise copies):
 * asks the next walk to cut each side's spaces where the other side's runs end, so that the runs pair up and the join
 * makes them one space (the input's channel i and i + n/2 are then one channel with the conv's channel i). False if a
 * run ends inside the other side's channel or a run belongs to no space.
 */
function cutToAlign(W: Walk, a: Layout, b: Layout): boolean {
  const ra = runs(a),
    rb = runs(b);
  if (entriesOf(a) !== entriesOf(b) || ra.some((r) => r.space < 0) || rb.some((r) => r.space < 0)) return false;
  const cutsOf = (mine: typeof ra, other: typeof ra) =>
    mine.map((r) => {
      const ends = other
        .map((o) => o.offset + o.n * o.per)
        .filter((at) => at > r.offset && at < r.offset + r.n * r.per);
      return ends.every((at) => (at - r.offset) % r.per === 0) ? ends.map((at) => (at - r.offset) / r.per) : undefined;
    });
  const ca = cutsOf(ra, rb),
    cb = cutsOf(rb, ra);
  if ([...ca, ...cb].some((c) => !c) || [...ca, ...cb].every((c) => !c!.length)) return false;
  ra.forEach((r, i) => ca[i]!.length && request(W, r.space, { cuts: ca[i] }));
  rb.forEach((r, i) => cb[i]!.length && request(W, r.space, { cuts: cb[i] }));
  return true;
}

// ---- the walk -------------------------------------------------------------------------------------------------

/** The walk's state: the graph, the spaces, every tracked tensor's layout, and layers refused outright. */
interface Walk {
  G: Graph;
  S: Spaces;
  layouts: Map<string, Layout>;
  refused: Refused[];
  /** How each producer's output channels are cut into parts (default: one part, one entry per channel). */
  parts: Map<string, Part[]>;
  /** Tensors whose channel counts stay (see settle): their shapes are fixed sizes. */
  fixed: Set<string>;
  /** The outer products whose output carries the channels of one input (see settle): node → that input's slot. */
  carry: Map<string, number>;
  /** The outer products met (see outerChoices): node → the slots of its inputs, their channels on different axes. */
  outers: Map<string, number[]>;
  /** What the next walk must change about a space (by root). */
  requests: Map<number, Request>;
  /** Spaces that must end up one space (keep equally many channels), and why. */
  together: { spaces: number[]; why: string }[];
  /** The tables (see Table) met so far, by constant: the sites met and their channels' layouts. */
  tables: Map<string, TableMet>;
  /** A refusal that cites one upstream (refusedUpstream) → the first refusal of that line, which it cites instead. */
  causes: Map<string, string>;
  /** Channels whose count a shape reads from another tensor's channels (x.expand_as(y)): joined after the walk. */
  follows: { l: Layout; other: Layout; why: string }[];
  /** Shape entries read from a tensor's count at run time, made constants by a space (see freezeReads). */
  reads: { space: number; from: string; edit: Edit }[];
}

/** A table's sites met by the walk, and the layouts of the channels it met there. */
interface TableMet {
  table: Table;
  seen: Set<string>;
  layouts: Layout[];
}

/** A run of a producer's output channels that becomes one space: n channels of `per` entries. */
export interface Part {
  n: number;
  per: number;
}

/** What the next walk must change about a space, in its channels: cut it before channel k, or merge f channels. */
interface Request {
  merge?: number;
  cuts?: Set<number>;
}

/** Asks the next walk to merge a space's channels `merge` at a time, or to cut it before channels `cuts`. */
function request(W: Walk, space: number, want: { merge?: number; cuts?: number[] }): void {
  const root = W.S.find(space),
    r = W.requests.get(root) ?? {};
  if (want.merge) r.merge = lcm(r.merge ?? 1, want.merge);
  for (const c of want.cuts ?? []) (r.cuts ??= new Set()).add(c);
  W.requests.set(root, r);
}

const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);
const lcm = (a: number, b: number) => (a / gcd(a, b)) * b;

/**
 * The producers' parts the requests of a walk ask for, or undefined if nothing changes (or nothing can): a part is
 * cut before the requested channels, then its pieces' channels are merged.
 */
function recut(W: Walk): Map<string, Part[]> | undefined {
  const parts = new Map([...W.parts].map(([node, list]) => [node, [...list]]));
  let changed = false;
  for (const [root, req] of W.requests) {
    for (const { node, index, part } of W.S.get(root).parts) {
      const cuts = [...(req.cuts ?? [])].filter((k) => k > 0 && k < part.n).sort((a, b) => a - b);
      const sizes = [...cuts, part.n].map((k, i) => k - (i ? cuts[i - 1]! : 0));
      const f = req.merge ?? 1;
      if (sizes.some((n) => n % f !== 0) || (sizes.length === 1 && f === 1)) continue;
      // pieces replace the part in place (marked by an array); flattened once every request is applied
      const list: (Part | Part[])[] = parts.get(node) ?? [part];
      list[index] = sizes.map((n) => ({ n: n / f, per: part.per * f }));
      parts.set(node, list as Part[]);
      changed = true;
    }
  }
  if (!changed) return undefined;
  for (const [node, list] of parts) parts.set(node, (list as (Part | Part[])[]).flat());
  return parts;
}

/**
 * Walks until no node asks for the producers' channels to be laid out differently: the parts of a fused projection
 * split into q, k and v (cuts), and attention heads of d features (channels of d entries), show only where used. Then,
 * if a shape refused channels for reading another tensor's channel count, and that tensor's channels were refused for
 * reasons of their own (a ViT's patch features, normalised by LayerNorm), its count stays: the next walk reads it as a
 * fixed size.
 */
function settle(G: Graph): Walk {
  let parts = new Map<string, Part[]>(),
    fixed = new Set<string>(),
    carry = new Map<string, number>();
  for (let pass = 0, tries = 0; ;) {
    const W = walk(G, parts, fixed, carry);
    const next = pass < 6 && W.requests.size ? recut(W) : undefined;
    if (next) {
      [parts, pass] = [next, pass + 1];
      continue;
    }
    const more = pass < 6 ? fixedCounts(W) : fixed;
    if (more.size !== fixed.size) {
      [fixed, pass] = [more, pass + 1];
      continue;
    }
    const choices = tries < 6 ? outerChoices(W) : undefined;
    if (!choices) return W;
    [carry, tries] = [choices, tries + 1];
  }
}

/**
 * The next walk's choice of the input whose channels each outer product carries (Mamba's dt[..., None] ·
 * B[:, :, None, :], channels × state), or undefined if none changes. A tensor holds one group's channels, so an
 * outer product of two groups' channels refuses both; but one of them is often refused anyway (B's state is summed
 * over by C): the walks try carrying each input in turn, keeping the first whose channels stay prunable, and go back
 * to refusing both when none does.
 */
function outerChoices(W: Walk): Map<string, number> | undefined {
  const next = new Map(W.carry);
  let changed = false;
  for (const [name, slots] of W.outers) {
    const slot = W.carry.get(name);
    if (slot === undefined) next.set(name, slots[0]!);
    else if (slot >= 0) {
      const node = W.G.graph.node.find((n) => n.name === name)!,
        l = W.layouts.get(node.input[slot] ?? '');
      if (l && l.segments.every((g) => g.space < 0 || W.S.get(g.space).refused === undefined)) continue;
      next.set(name, slots[slots.indexOf(slot) + 1] ?? -1);
    } else continue;
    changed = true;
  }
  return changed ? next : undefined;
}

/**
 * The tensors whose channel counts stay: every space on them refused, none only for reading another count. Empty of
 * new names unless some space was refused for reading a count (then a walk with them fixed may prune it).
 */
function fixedCounts(W: Walk): Set<string> {
  const roots = W.S.roots().map((r) => W.S.get(r));
  if (!roots.some((r) => r.byCount)) return W.fixed;
  const stays = (l: Layout) =>
    l.segments.every((s) => s.space < 0 || (W.S.get(s.space).refused !== undefined && !W.S.get(s.space).byCount));
  return new Set([...W.fixed, ...[...W.layouts].filter(([, l]) => stays(l)).map(([t]) => t)]);
}

/** Records a step's slices and edits against each run of the layout (on the step's output). */
function record(
  W: Walk,
  node: NodeProto,
  l: Layout,
  step: { slices?: ParamSlice[]; shapeEdits?: ShapeEdit[]; attributes?: { name: string; per: number }[] },
): void {
  for (const r of firstPart(l)) {
    if (r.space < 0) continue;
    const rec = W.S.get(r.space);
    for (const { scale = 1, ...s } of step.slices ?? [])
      rec.slices.push({ tensor: s.tensor, axis: s.axis, offset: r.offset * scale, per: r.per * scale });
    for (const { scale, from, ...e } of step.shapeEdits ?? []) {
      const edit = { ...e, per: r.per * (scale ?? 1) };
      rec.edits.push(edit);
      if (from) W.reads.push({ space: r.space, from, edit });
    }
    for (const a of step.attributes ?? []) rec.edits.push({ node: node.name, attribute: a.name, per: r.per * a.per });
    rec.chain.push(node);
  }
}

/** Sets a node output's layout; a tensor written twice means the graph has a cycle. */
function setLayout(W: Walk, t: string, l: Layout): void {
  if (!t) return;
  if (W.layouts.has(t) || W.G.graph.input.some((i) => i.name === t)) {
    const why = `the graph has a cycle through "${t}"; the model is corrupted`;
    W.S.refuseAll(W.layouts.get(t), why);
    W.S.refuseAll(l, why);
  }
  W.layouts.set(t, l);
  const stacked = l.stack ? { stacked: true } : {},
    entries = W.G.shapes.get(t)?.[l.axis];
  for (const r of firstPart(l))
    if (r.space >= 0)
      W.S.get(r.space).tensors.push({ tensor: t, axis: l.axis, offset: r.offset, per: r.per, entries, ...stacked });
  if (!W.G.shapes.has(t)) W.S.refuseAll(l, W.G.unknownShape(t));
}

/**
 * The tensors a step's shape edits change, which must reach only `node`: a shape constant, or the output of the Concat
 * one of whose inputs becomes a constant (an input of `node` itself made a constant is its own).
 */
const edited = (W: Walk, node: NodeProto, edits: ShapeEdit[]) =>
  edits.flatMap((e) =>
    'tensor' in e ? (e.shared ? [] : [e.tensor]) : e.node === node.name ? [] : [W.G.outputOf(e.node)],
  );

/** Refuses the spaces of a step whose constants another node also reads, or that the rewrite cannot write. */
function checkConstants(W: Walk, node: NodeProto, names: string[], l: Layout, shapes: string[] = []): boolean {
  for (const name of [...names, ...shapes]) {
    const t = W.G.constant(name);
    const why =
      W.G.shared(name, node, shapes.includes(name)) ??
      (t && t.dataType !== DataType.INT64 ? notRewritable(t) : undefined);
    if (why) {
      W.S.refuseAll(l, why);
      return false;
    }
  }
  return true;
}

/** A layer node: it consumes the channels on its data input and creates a space for its output channels. */
function layerNode(W: Walk, node: NodeProto, rule: OpRule, info: LayerInfo): void {
  const { G, S } = W,
    layer = rule.layer!;
  const x = node.input[0] ?? '',
    inL = W.layouts.get(x),
    inShape = G.shapes.get(x);
  node.input.forEach((t, slot) => {
    if (slot > 0 && W.layouts.has(t))
      S.refuseAll(
        W.layouts.get(t),
        `consumer ${label(node)} takes the channels as its ${slot === 1 ? 'weight' : 'bias'} input`,
      );
  });
  const own = [info.weight, ...(info.bias ? [info.bias] : [])];
  const sharing = own.map((name) => G.shared(name, node)).find((w) => w);
  const writable = own.map((name) => notRewritable(G.constant(name)!)).find((w) => w);
  if (inL && inShape) {
    for (const r of runs(inL)) {
      if (r.space < 0) continue;
      const why = sharing ?? writable;
      if (why) {
        S.refuse(r.space, why);
        continue;
      }
      const shape = layer.consume(node, info, inShape, { axis: inL.axis, offset: r.offset, n: r.n, per: r.per });
      if (typeof shape === 'string') {
        S.refuse(r.space, shape);
        continue;
      }
      const consumer: Consumer = {
        node,
        weight: info.weight,
        layout: info.layout,
        input: x,
        kind: shape.input.kind,
        ...(shape.input.kind === 'conv' ? { conv: shape.input.conv } : { inputDims: inShape }),
        offset: r.offset,
        entries: entriesOf(inL),
        g: shape.g,
        d: shape.d,
        m: numel(info.weightDims) / shape.dTotal, // W is dTotal × m
        row: shape.row,
        dTotal: shape.dTotal,
      };
      const huge = tooBigToSelect(consumer);
      if (huge) S.refuse(r.space, huge);
      const rec = S.get(r.space);
      rec.consumers.push(consumer);
      // the consumer's weights for these channels go with them (its input axis: input channels or features)
      rec.slices.push({ tensor: info.weight, axis: info.inAxis, offset: r.offset, per: r.per });
    }
  } else if (inL) S.refuseAll(inL, G.unknownShape(x));

  // producer side: a space for each part of the output channels (one part unless a later node cut them)
  const y = node.output[0] ?? '',
    yShape = G.shapes.get(y);
  const n = info.weightDims[info.outAxis]!;
  const parts = W.parts.get(node.name) ?? [{ n, per: 1 }];
  const axis = yShape ? layer.channelAxis(yShape.length) : 0;
  const ba = info.bias ? biasAxis(G.constant(info.bias)!, n) : undefined;
  let offset = 0;
  const segments = parts.map((p, index) => {
    const space = S.make(p, node, index),
      rec = S.get(space);
    rec.slices.push({ tensor: info.weight, axis: info.outAxis, offset, per: p.per });
    if (info.bias && ba !== undefined) rec.slices.push({ tensor: info.bias, axis: ba, offset, per: p.per });
    offset += p.n * p.per;
    return { space, n: p.n, per: p.per };
  });
  const out: Layout = { axis, segments };
  const why =
    (layer.fixedOutputs && `${label(node)}: ${layer.fixedOutputs}`) ??
    sharing ??
    writable ??
    (!yShape
      ? G.unknownShape(y)
      : yShape[axis] !== n
        ? `output "${y}" has shape [${yShape.join(', ')}], expected ${n} channels on axis ${axis}`
        : undefined);
  if (why) S.refuseAll(out, why);
  setLayout(W, y, out);
}

/** A node with one input carrying channels: its chain rule says how they pass. False if it refused them. */
function chainNode(W: Walk, node: NodeProto, rule: OpRule | undefined, slot: number, l: Layout): boolean {
  const { G, S } = W,
    t = node.input[slot]!;
  if (!rule?.chain && G.calls.has(node.name)) {
    S.refuseAll(l, `"${node.name}" ${G.calls.get(node.name)}`);
    return false;
  }
  if (!rule?.chain) {
    S.refuseAll(
      l,
      `${opOf(node)} "${node.name}" is not known to act per channel (it may mix channels); subprune stops at it` +
        ortHint(node),
    );
    return false;
  }
  const inShape = G.shapes.get(t);
  if (!inShape) {
    S.refuseAll(l, G.unknownShape(t));
    return false;
  }
  const roots = new Set(l.segments.filter((r) => r.space >= 0).map((r) => S.find(r.space)));
  const follows: Walk['follows'] = []; // kept only if the node passes the channels on
  const step = rule.chain({
    node,
    input: slot,
    layout: l,
    entries: entriesOf(l),
    inShape,
    outShape: G.shapes.get(node.output[0] ?? ''),
    outShapes: node.output.map((o) => G.shapes.get(o)),
    opset: G.opset,
    constant: G.constant,
    producer: G.producer,
    readers: (name) => G.uses.get(name) ?? [],
    isOutput: (name) => G.outputs.has(name),
    onlyFor: (name) => !G.shared(name, node, true),
    isTable: G.isTable,
    value: G.value,
    shape: (name) => G.shapes.get(name),
    channelsOf: (name) => {
      const other = W.layouts.get(name);
      const spaces = other?.segments.filter((r) => r.space >= 0).map((r) => S.find(r.space));
      if (!other || !spaces?.length) return undefined;
      const same = spaces.every((x) => roots.has(x));
      // another group's channels whose count stays (refused for reasons of their own) are a fixed size
      return same || !W.fixed.has(name) ? { axis: other.axis, same } : undefined;
    },
    follow: (name, why) => {
      const other = W.layouts.get(name),
        spaced = (x: Layout) => !x.stack && x.segments.every((s) => s.space >= 0);
      if (!other || W.fixed.has(name) || !spaced(other) || !spaced(l) || !sameRuns(other, l)) return false;
      follows.push({ l, other, why });
      return true;
    },
  });
  if ('refuse' in step) {
    S.refuseAll(l, step.refuse, step.countOf !== undefined);
    return false;
  }
  W.follows.push(...follows);
  if ('none' in step) {
    // the output does not carry the channels (a Shape: its dims follow at run time); its edits count them, one per
    // channel (the rule checked that their constants reach nothing else)
    if (step.shapeEdits) record(W, node, { ...l, segments: l.segments.map((r) => ({ ...r, per: 1 })) }, step);
    return true;
  }
  if ('regroup' in step) return regroup(W, node, l, step.regroup);
  if ('ranges' in step) return cutInto(W, node, l, step);
  if (l.stack && !step.stack) {
    S.refuseAll(l, `${label(node)} ${PACKED}`);
    return false;
  }
  if (step.stack && !l.stack && !stackInParts(W, node, l, step.stack.parts, 1 / (step.scale ?? 1))) return false;
  const outs = step.allOutputs ? node.output : node.output.slice(0, 1);
  for (const o of node.output.slice(outs.length)) {
    if (o && (G.uses.has(o) || G.outputs.has(o))) {
      S.refuseAll(l, `${label(node)}: its extra output "${o}" is used`);
      return false;
    }
  }
  const out: Layout = {
    axis: step.axis,
    segments: Array.from({ length: step.repeat ?? 1 }, () =>
      l.segments.map((s) => ({ ...s, per: s.per * (step.scale ?? 1) })),
    ).flat(),
    ...(step.stack ? { stack: step.stack } : {}),
  };
  const params = (step.slices ?? []).map((s) => s.tensor);
  if (!checkConstants(W, node, params, l, edited(W, node, step.shapeEdits ?? []))) return false;
  record(W, node, out, step);
  for (const o of outs) setLayout(W, o, out);
  return true;
}

/**
 * torch's squeeze If (see ifBranches): each branch's op passes the channels by its chain rule, with no slices or
 * edits (the branches hold no weights, and their axes are not the channels'), to the same axis whichever runs.
 */
function ifNode(W: Walk, node: NodeProto, b: IfBranches): void {
  const { G, S } = W,
    l = W.layouts.get(b.x);
  if (!l) return;
  const inShape = G.shapes.get(b.x),
    y = node.output[0] ?? '';
  if (!inShape || !G.shapes.has(y))
    return S.refuseAll(l, `the shapes around ${label(node)} are unknown (its condition is not known from shapes)`);
  const steps = b.ops.map((op) =>
    OPS[op.opType]!.chain!({
      node: op,
      input: 0,
      layout: l,
      entries: entriesOf(l),
      inShape,
      outShape: undefined,
      opset: G.opset,
      constant: b.constant,
      producer: G.producer,
      readers: (name) => G.uses.get(name) ?? [],
      isOutput: (name) => G.outputs.has(name),
      onlyFor: () => false,
      isTable: () => false,
      value: G.value,
      channelsOf: () => undefined,
    }),
  );
  const axes = steps.map((st) => ('axis' in st && !('ranges' in st) && !st.slices?.length ? st.axis : undefined));
  if (l.stack || axes[0] === undefined || axes[0] !== axes[1] || steps.some((st) => 'shapeEdits' in st))
    return S.refuseAll(l, `${label(node)}: its branches do not pass the channels on to the same axis`);
  const out: Layout = { axis: axes[0], segments: l.segments };
  record(W, node, out, {});
  setLayout(W, y, out);
}

/**
 * A reshape cuts the channel axis into blocks of `inner` entries (attention heads of `inner` features): the next walk
 * makes every channel of these spaces a whole number of blocks, if the producers' outputs allow it.
 */
function regroup(W: Walk, node: NodeProto, l: Layout, inner: number): boolean {
  const blocks =
    `${label(node)} cuts the channels into blocks of ${inner} entries (attention heads, conv groups, GroupNorm's ` +
    'groups)';
  // DLRM's interaction: its bottom MLP's features and the embedding bags' laid end to end, then viewed as [B, 4, 4]
  const other = runs(l).reduce((n, r) => n + (r.space < 0 ? r.n * r.per : 0), 0);
  if (other) {
    W.S.refuseAll(l, `${blocks} that also hold ${other} entries of no group's channels (inputs, constants, refused)`);
    return false;
  }
  for (const r of runs(l)) {
    const f = lcm(r.per, inner) / r.per;
    if (r.n % f !== 0 || r.offset % inner !== 0) {
      W.S.refuseAll(l, `${blocks} that do not line up with the channels`);
      return false;
    }
    if (f > 1) request(W, r.space, { merge: f });
  }
  W.S.refuseAll(l, `${blocks}; their producers could not be laid out in whole blocks`);
  return false;
}

/**
 * A reshape packs the channel axis into `parts` equal parts of channels of `inner` entries each (a fused q/k/v into
 * [.., 3, heads, d]): the next walk cuts the producers' spaces at the parts' bounds and merges their channels into
 * blocks of `inner`, as needed. Then each part is one space, and the parts keep equally many channels.
 */
function stackInParts(W: Walk, node: NodeProto, l: Layout, parts: number, inner: number): boolean {
  const packs = `${label(node)} packs the channels in ${parts} parts of blocks of ${inner} entries (q, k, v heads)`;
  const size = entriesOf(l) / parts;
  let pending = false;
  for (const r of runs(l)) {
    const end = r.offset + r.n * r.per,
      f = lcm(r.per, inner) / r.per;
    const cuts = [...Array(parts - 1).keys()].map((i) => (i + 1) * size).filter((at) => at > r.offset && at < end);
    if (r.space < 0 || cuts.some((at) => (at - r.offset) % r.per !== 0) || r.offset % inner !== 0) {
      W.S.refuseAll(l, `${packs} that do not line up with the channels`);
      return false;
    }
    if (cuts.length || f > 1) {
      request(W, r.space, { cuts: cuts.map((at) => (at - r.offset) / r.per), ...(f > 1 ? { merge: f } : {}) });
      pending = true;
    }
  }
  if (pending || runs(l).some((r) => (r.offset % size) + r.n * r.per !== size)) {
    W.S.refuseAll(l, `${packs}; their producers could not be laid out in one space per part`);
    return false;
  }
  // the parts laid out alike (q, k and v heads of d entries) become one space, head i of each one channel: it holds
  // for attention, where they are one already, and makes it so where the scores' heads are mixed (CaiT's talking heads)
  const [first] = l.segments;
  if (l.segments.every((r) => r.space >= 0 && r.n === first!.n && r.per === first!.per)) {
    l.segments.forEach((r) => W.S.union(r.space, first!.space));
    return true;
  }
  const why = `${packs}, so the parts must keep equally many channels`;
  W.together.push({ spaces: l.segments.map((r) => r.space), why });
  return true;
}

/**
 * Split or Slice along the channel axis: each output gets the runs of its range of entries. A range boundary inside a
 * run (a fused q/k/v projection's one space) asks the next walk to cut that space there. The shape entries that count
 * a range follow its runs' channels.
 */
function cutInto(W: Walk, node: NodeProto, l: Layout, step: Extract<ChainStep, { ranges: unknown }>): boolean {
  const rs = runs(l);
  let pending = false;
  for (const [s, e] of step.ranges)
    for (const r of rs) {
      const end = r.offset + r.n * r.per;
      for (const at of [s, e])
        if (at > r.offset && at < end) {
          if (r.space < 0 || (at - r.offset) % r.per !== 0) {
            W.S.refuseAll(l, `${label(node)} cuts a channel of the channel axis in two`);
            return false;
          }
          request(W, r.space, { cuts: [(at - r.offset) / r.per] });
          pending = true;
        }
    }
  if (pending) {
    W.S.refuseAll(l, `${label(node)} splits the channels where their producers could not be cut`);
    return false;
  }
  const counts = step.counts ?? [];
  if (
    !checkConstants(
      W,
      node,
      [],
      l,
      edited(
        W,
        node,
        counts.map((c) => c.edit),
      ),
    )
  )
    return false;
  for (const c of step.counts ?? [])
    for (const r of rs)
      if (r.space >= 0 && r.offset >= c.from && r.offset < c.to) W.S.get(r.space).edits.push({ ...c.edit, per: r.per });
  const within = (s: number, e: number): Layout => ({
    axis: step.axis,
    segments: rs.filter((r) => r.offset >= s && r.offset < e).map(({ space, n, per }) => ({ space, n, per })),
  });
  if (step.proportional) {
    // bounds computed as fractions of the axis' size (torch's chunk) stay right if the equal divisions of the axis
    // that they fall on keep equally many channels: divisions laid out alike (YOLOv8's C2f chunks a conv's output in
    // two) become one space, channel i of each one channel; otherwise they must be one space already
    const total = entriesOf(l),
      u = step.ranges.flat().reduce(gcd, total);
    const divisions = [...Array(total / u).keys()].map((i) => within(i * u, (i + 1) * u));
    const alike = divisions.every((d) => entriesOf(d) === u && sameRuns(d, divisions[0]!));
    if (alike && rs.every((r) => r.space >= 0))
      divisions.forEach((d) => d.segments.forEach((r, i) => W.S.union(r.space, divisions[0]!.segments[i]!.space)));
    else {
      const why =
        `${label(node)} computes its bounds from the size of the channel axis, so its parts must keep equally many ` +
        'channels';
      W.together.push({ spaces: rs.filter((r) => r.space >= 0).map((r) => r.space), why });
    }
  }
  step.ranges.forEach(([s, e], i) => {
    const part = within(s, e);
    record(W, node, part, {});
    setLayout(W, node.output[i] ?? '', part);
  });
  return true;
}

/**
 * Why the channels an untracked tensor carries were refused, if they were: the reason of the nearest tensor upstream
 * whose channels the walk tracked and refused (a ConvNeXt stream, normalised by a LayerNorm, then added to), or the
 * reason that one cites in turn (each residual Add of a refused stream would otherwise quote all the Adds before it).
 */
function refusedUpstream(W: Walk, t: string): string | undefined {
  const seen = new Set<string>(),
    queue = [t];
  for (let x = queue.shift(); x !== undefined && seen.size < 64; x = queue.shift()) {
    if (seen.has(x)) continue;
    seen.add(x);
    const why = W.layouts.get(x)?.segments.find((s) => s.space >= 0 && W.S.get(s.space).refused !== undefined);
    const reason = why && W.S.get(why.space).refused;
    if (reason) return W.causes.get(reason) ?? reason;
    // a tensor's shape is not its channels: a mask viewed to the shape of a refused stream is not refused for it
    const p = W.G.producer(x);
    if (p && !['Shape', 'Size'].includes(opOf(p))) queue.push(...p.input.filter((i) => i && !W.G.constant(i)));
  }
  return undefined;
}

/**
 * Why the channels cannot meet `t`, an input of `node` no group owns (Add `combines`, Concat along the tokens `joins`):
 * its channels refused upstream, a tensor computed from constants (a class token expanded to the batch), or `else`.
 */
function unowned(W: Walk, node: NodeProto, verb: string, t: string, otherwise?: string): string {
  const cause = refusedUpstream(W, t),
    what = cause
      ? `(its channels are refused: ${cause})`
      : W.G.computedFrom(t)
        ? '(it is computed from constants and shapes alone, e.g. learned queries or a class token expanded to the ' +
          'batch, or zeros: subprune slices constants, not tensors computed from them)'
        : otherwise;
  const why = `${label(node)} ${verb} the channels with "${t}", which no group owns`;
  if (!what) return why;
  const full = `${why} ${what}; both would have to be pruned together`;
  if (cause) W.causes.set(full, cause);
  return full;
}

/**
 * An element-wise node with several inputs (Add, Mul, …): inputs that carry channels on the same (broadcast) axis
 * become the same channels; constants along that axis are sliced; an input no group owns that does not broadcast
 * along the channels couples them with something subprune cannot prune.
 */
function joinNode(W: Walk, node: NodeProto, views = new Map<string, Layout>()): void {
  const { G, S } = W;
  const y = node.output[0] ?? '',
    yShape = G.shapes.get(y);
  const ins = node.input.map((t, slot) => ({
    t,
    slot,
    l: t ? (views.get(t) ?? W.layouts.get(t)) : undefined,
    shape: G.shapes.get(t),
  }));
  if (!yShape || ins.some((i) => i.t && !i.shape)) {
    const why = G.unknownShape(ins.find((i) => i.t && !i.shape)?.t ?? y);
    return ins.forEach((i) => S.refuseAll(i.l, why));
  }
  const rank = yShape.length;
  const outAxis = (i: (typeof ins)[number]) => i.l!.axis + rank - i.shape!.length;
  // an outer product (each input's channels broadcast along the other's): the output carries one input's channels
  const outer = ins.filter((i) => i.l && entriesOf(i.l) > 1);
  const ones = (i: (typeof ins)[number], axis: number) => i.shape![axis - (rank - i.shape!.length)] === 1;
  if (outer.length === 2 && outAxis(outer[0]!) !== outAxis(outer[1]!)) {
    const [a, b] = outer as [(typeof ins)[number], (typeof ins)[number]];
    if (ones(a, outAxis(b)) && ones(b, outAxis(a))) {
      W.outers.set(node.name, [a.slot, b.slot]);
      const kept = ins.find((i) => i.slot === W.carry.get(node.name)),
        other = kept === a ? b : a;
      if (kept) {
        S.refuseAll(
          other.l,
          `${label(node)} multiplies the channels by those of "${kept.t}" on another axis (an outer product, ` +
            'whose output holds the channels of one of its inputs)',
        );
        other.l = undefined;
      }
    }
  }
  const tracked = ins.filter((i) => i.l);
  const all = tracked.map((i) => i.l!);
  const refuseAll = (why: string) => all.forEach((l) => S.refuseAll(l, why));
  // inputs whose channel axis has one entry broadcast over the others: the others' channels decide
  const wide = tracked.filter((i) => entriesOf(i.l!) > 1 || tracked.every((j) => entriesOf(j.l!) === 1));
  const ref = wide[0]!,
    axis = outAxis(ref);
  for (const i of tracked.filter((j) => !wide.includes(j)))
    S.refuseAll(i.l, `${label(node)} broadcasts the channels of "${i.t}" over the channels of "${ref.t}"`);
  for (const i of wide) {
    const differ = `${label(node)} combines channels laid out differently ("${ref.t}" and "${i.t}")`;
    if (outAxis(i) !== axis) return refuseAll(differ);
    if (!sameRuns(i.l!, ref.l!))
      return refuseAll(
        align(W, i.l!, ref.l!) || cutToAlign(W, i.l!, ref.l!)
          ? `${differ}, which their producers could not match`
          : differ,
      );
  }
  const out: Layout = { axis, segments: ref.l!.segments };
  const slices: { tensor: string; axis: number }[] = [];
  const follows: Layout[] = [];
  const tables: Table[] = [];
  for (const i of ins.filter((j) => j.t && !j.l)) {
    const dims = i.shape!,
      k = axis - (rank - dims.length);
    if (k < 0 || dims[k] === 1) continue; // broadcasts along the channels
    const table = G.table(node, i.t, axis);
    if (table && dims[k] === entriesOf(out)) {
      tables.push(table); // computed from a constant whose axis holds one entry per channel
      continue;
    }
    const like = sizedLike(G, i.t, k);
    const l = like && W.layouts.get(like.tensor);
    if (l && !l.stack && l.axis === like.axis && sameRuns(l, out)) {
      follows.push(l); // its entries along the channels are read from `like` at run time
      continue;
    }
    if (!G.constant(i.t)) {
      const inputs = G.computedFrom(i.t, true)?.inputs ?? [];
      const otherwise = inputs.length
        ? `(it is computed from the input ${inputs.map((x) => `"${x}"`).join(', ')} by no layer, e.g. an ` +
          'embedding lookup or a padding mask: subprune prunes only channels that a layer produces)'
        : '(e.g. a branch subprune cannot prune)';
      return refuseAll(unowned(W, node, 'combines', i.t, otherwise));
    }
    if (dims[k] !== entriesOf(out))
      return refuseAll(`${label(node)}: constant "${i.t}" has ${dims[k]} entries along the channels`);
    slices.push({ tensor: i.t, axis: k });
  }
  for (const l of [...wide.slice(1).map((i) => i.l!), ...follows])
    l.segments.forEach((s, r) => s.space >= 0 && S.union(s.space, out.segments[r]!.space));
  if (
    !checkConstants(
      W,
      node,
      slices.map((s) => s.tensor),
      out,
    )
  )
    return;
  const writable = tables.map((t) => !t.count && notRewritable(G.constant(t.tensor)!)).find((w) => w);
  if (writable) return refuseAll(writable);
  for (const table of tables) {
    for (const r of runs(out))
      for (const p of table.path)
        if (r.space >= 0)
          W.S.get(r.space).tensors.push({
            ...{ tensor: p.tensor, axis: p.axis, offset: r.offset, per: r.per },
            entries: G.shapes.get(p.tensor)?.[p.axis],
          });
    const met: TableMet = W.tables.get(table.tensor) ?? { table, seen: new Set(), layouts: [] };
    met.seen.add(node.name);
    met.layouts.push(out);
    W.tables.set(table.tensor, met);
  }
  record(W, node, out, {
    slices: [...slices, ...tables.filter((t) => !t.count).map((t) => ({ tensor: t.tensor, axis: t.axis }))],
    shapeEdits: tables.flatMap((t) =>
      [...(t.count ? [{ tensor: t.tensor, index: t.index ?? 0 }] : []), ...t.counts].map((e) => ({
        ...e,
        shared: true as const,
      })),
    ),
  });
  setLayout(W, y, out);
}

/**
 * The axis of another tensor that axis k of `t` copies its size from at run time, so that it holds as many entries as
 * that axis, pruned or not: `t` is Expand(m, Shape(x)) (through Cast, Not, Identity), m of size 1 on axis k (a mask
 * expanded as the scores it masks: DistilBERT's `mask.expand_as(scores)`), or ConstantOfShape of a shape whose entry
 * k is a dimension of x (ESPnet's rel_shift concatenates `torch.zeros((*x.size()[:3], 1))` to x).
 */
function sizedLike(G: Graph, t: string, k: number): { tensor: string; axis: number } | undefined {
  let n = G.producer(t);
  while (n && ['Cast', 'Not', 'Identity'].includes(opOf(n))) n = G.producer(n.input[0] ?? '');
  if (n && opOf(n) === 'ConstantOfShape') return shapeDim(G, n.input[0] ?? '', k);
  const shape = n && opOf(n) === 'Expand' ? G.producer(n.input[1] ?? '') : undefined;
  if (!shape || opOf(shape) !== 'Shape' || shape.attribute.some((a) => a.name === 'start' || a.name === 'end'))
    return undefined;
  const m = G.shapes.get(n!.input[0] ?? ''),
    x = G.shapes.get(shape.input[0] ?? '');
  if (!m || !x) return undefined;
  const km = k - (x.length - m.length);
  return km < 0 || m[km] === 1 ? { tensor: shape.input[0]!, axis: k + x.length - G.shapes.get(t)!.length } : undefined;
}

/**
 * A product of two activations, A [.., M, K] · B [.., K, N] (attention: q·kᵀ, then weights·v): channels on a batch
 * axis (the heads) stay on it, and the inputs' channels there become the same channels; channels on M or N pass to
 * the output's rows or columns; channels on K are summed over, which couples them.
 */
function matmulNode(W: Walk, node: NodeProto): void {
  const { G, S } = W;
  const y = node.output[0] ?? '',
    yShape = G.shapes.get(y);
  const ins = [0, 1].map((slot) => {
    const t = node.input[slot] ?? '';
    return { t, l: W.layouts.get(t), shape: G.shapes.get(t) };
  });
  let tracked = ins.filter((i) => i.l);
  const refuseAll = (why: string) => tracked.forEach((i) => S.refuseAll(i.l, why));
  if (!yShape || ins.some((i) => !i.shape || i.shape.length < 2))
    return refuseAll(`the shapes around ${label(node)} are unknown or not matrices`);
  // onnxruntime's FusedMatMul transposes the last two axes of an input with transA / transB (the batch axes too with
  // transBatchA / transBatchB, refused)
  const transBatch = ['transBatchA', 'transBatchB'].find((a) => attrInt(node, a, 0) !== 0);
  if (transBatch) return refuseAll(`${label(node)} has ${transBatch}=1, which subprune does not support`);
  const trans = [attrInt(node, 'transA', 0) !== 0, attrInt(node, 'transB', 0) !== 0];
  const rank = yShape.length;
  // the output axis of each input's channel axis, or why there is none
  const axes = ins.map(({ l, shape }, slot) => {
    if (!l) return undefined;
    const r = shape!.length,
      k = (slot === 0) !== trans[slot] ? r - 1 : r - 2; // the inner (summed) axis
    if (l.axis === k) return `${label(node)} sums over the channels (they are its inner dimension), which couples them`;
    return l.axis < r - 2 ? rank - r + l.axis : slot === 0 ? rank - 2 : rank - 1;
  });
  // channels summed over are refused; the other input's may still pass, as beside an input no group owns (Falcon's
  // query heads times its one key/value head)
  ins.forEach((i, slot) => {
    if (typeof axes[slot] !== 'string') return;
    S.refuseAll(i.l, axes[slot]);
    i.l = undefined;
    axes[slot] = undefined;
  });
  // one channel on a batch axis broadcast over the other input's channels there (Falcon's one key/value head, kept
  // [B, 1, T, d], times every query head): it stays whole, and the other's channels pass as beside a constant
  const one = ins.map((i) => i.l !== undefined && axes[0] === axes[1] && i.shape![i.l.axis] === 1);
  if (ins.every((i) => i.l) && one[0] !== one[1] && (axes[0] as number) < rank - 2) {
    const b = one[0] ? 0 : 1;
    const why = `${label(node)} multiplies the one channel of "${ins[b]!.t}" with every channel of "${ins[1 - b]!.t}"`;
    S.refuseAll(ins[b]!.l, `${why} (e.g. one key/value head for all query heads): it cannot be removed alone`);
    ins[b]!.l = undefined;
    axes[b] = undefined;
  }
  tracked = ins.filter((i) => i.l);
  if (!tracked.length) return;
  const [a0, a1] = axes as (number | undefined)[];
  const ref = tracked[0]!,
    axis = (a0 ?? a1)!;
  const differ = `${label(node)} multiplies channels laid out differently ("${ins[0]!.t}" and "${ins[1]!.t}")`;
  if (tracked.length === 2 && (a0 !== a1 || axis >= rank - 2)) return refuseAll(differ);
  if (tracked.length === 2 && !sameRuns(ins[0]!.l!, ins[1]!.l!))
    return refuseAll(align(W, ins[0]!.l!, ins[1]!.l!) ? `${differ}, which their producers could not match` : differ);
  if (tracked.length === 1 && axis < rank - 2) {
    const other = ins.find((i) => !i.l)!,
      k = axis - (rank - other.shape!.length);
    if (k >= 0 && other.shape![k] !== 1)
      return refuseAll(`${label(node)} pairs the channels with "${other.t}", which no group owns`);
  }
  if (tracked.length === 2)
    ins[1]!.l!.segments.forEach((s, r) => s.space >= 0 && S.union(s.space, ref.l!.segments[r]!.space));
  const out: Layout = { axis, segments: ref.l!.segments };
  record(W, node, out, {});
  setLayout(W, y, out);
}

/**
 * An Einsum of activations (Phi-2's "bthd,bshd->bhts" and "bhts,bshd->bthd"), as a MatMul by its letters: the
 * channels' letter must be an output letter (else they are summed over); inputs with channels under the same letter
 * become the same channels; another input with that letter (no group's) refuses them, unless it is 1 there.
 */
function einsumNode(W: Walk, node: NodeProto): void {
  const { G, S } = W;
  const y = node.output[0] ?? '',
    equation = attrString(node, 'equation', '').replace(/\s/g, ''),
    [lhs, rhs] = equation.split('->');
  const terms = lhs?.split(',') ?? [];
  const ins = node.input.map((t, slot) => ({
    t,
    l: W.layouts.get(t),
    shape: G.shapes.get(t),
    term: terms[slot] ?? '',
  }));
  let tracked = ins.filter((i) => i.l);
  const refuseAll = (why: string) => tracked.forEach((i) => S.refuseAll(i.l, why));
  const readable = rhs !== undefined && terms.length === ins.length && /^[a-zA-Z,]*$/.test(lhs + rhs);
  if (!readable || !G.shapes.has(y) || ins.some((i) => i.shape?.length !== i.term.length))
    return refuseAll(
      `${label(node)}: its equation "${equation}" is not one subprune reads (every output letter named)`,
    );
  const sums = (c: string) =>
    `${label(node)} sums over the channels (letter "${c}" of "${equation}"), which couples them`;
  // channels summed over are refused alone: the other input's may still pass (Mamba's einsum("bdn,bn->bd", state, C)
  // sums C's state channels and keeps the state's d)
  const summed = tracked.filter((i) => !rhs!.includes(i.term[i.l!.axis]!));
  summed.forEach((i) => S.refuseAll(i.l, sums(i.term[i.l!.axis]!)));
  tracked = tracked.filter((i) => !summed.includes(i));
  if (!tracked.length) return;
  const letters = tracked.map((i) => i.term[i.l!.axis]!),
    c = letters[0]!,
    axis = rhs!.indexOf(c);
  const names = tracked.map((i) => `"${i.t}"`).join(' and '),
    differ = `${label(node)} multiplies channels laid out differently (${names})`;
  if (letters.some((x) => x !== c) || tracked.some((i) => !sameRuns(i.l!, tracked[0]!.l!))) return refuseAll(differ);
  if (ins.some((i) => i.term.indexOf(c) !== i.term.lastIndexOf(c))) return refuseAll(sums(c));
  const other = ins.find((i) => !tracked.includes(i) && i.term.includes(c) && i.shape![i.term.indexOf(c)] !== 1);
  if (other) return refuseAll(`${label(node)} pairs the channels with "${other.t}", which no group owns`);
  const ref = tracked[0]!.l!;
  for (const i of tracked.slice(1))
    i.l!.segments.forEach((s, r) => s.space >= 0 && S.union(s.space, ref.segments[r]!.space));
  const out: Layout = { axis, segments: ref.segments };
  record(W, node, out, {});
  setLayout(W, y, out);
}

/**
 * The Attention op (opset 23): softmax(q · kᵀ · scale + mask) · v head by head, with g query heads per key/value
 * head (query head i reads key/value head ⌊i / g⌋; g = 1 without grouped-query attention). On 4-D q, k, v
 * [B, heads, T, d] the heads are axis 1; on 3-D ones [B, T, heads · d] (heads counted by q_num_heads and
 * kv_num_heads) blocks of d entries of axis 2. A channel is whole key/value heads with their query heads: the walk
 * merges the producers' channels until each holds as many key/value heads in q, k and v, then q's, k's and v's become
 * the same channels and pass to Y; the head-count attributes follow them. Channels anywhere else are mixed (summed
 * over d or over the keys). Refused: one key/value head for every query head, heads no group owns, a mask with one
 * slice per head, past keys and values, and the outputs beside Y.
 */
function attentionNode(W: Walk, node: NodeProto): void {
  const { G, S } = W;
  const y = node.output[0] ?? '';
  const ins = node.input.map((t, slot) => ({ t, slot, l: t ? W.layouts.get(t) : undefined, shape: G.shapes.get(t) }));
  const tracked = ins.filter((i) => i.l);
  const refuseAll = (why: string) => tracked.forEach((i) => S.refuseAll(i.l, `${label(node)} ${why}`));
  const qkv = ins.slice(0, 3),
    rank = qkv[0]!.shape?.length;
  if (!tracked.length) return;
  if (!G.shapes.has(y) || (rank !== 3 && rank !== 4) || qkv.some((i) => i.shape?.length !== rank))
    return tracked.forEach((i) => S.refuseAll(i.l, G.unknownShape(y)));
  const extra = tracked.find((i) => i.slot > 2) ?? ins.slice(4).find((i) => i.t);
  if (extra) return refuseAll(`reads "${extra.t}" as input ${extra.slot} (past keys and values are not supported)`);
  if (node.output.slice(1).some((o) => o)) return refuseAll('outputs present keys, values or scores beside Y');
  const axis = rank === 4 ? 1 : 2;
  const off = qkv.find((i) => i.l && i.l.axis !== axis);
  if (off) return refuseAll(`mixes the channels on axis ${off.l!.axis} of "${off.t}"; only its heads pass`);
  const width = qkv.map((i) => i.shape![axis]!);
  const [hq, hk, hv] =
    rank === 4 ? width : [attrInt(node, 'q_num_heads'), ...[1, 2].map(() => attrInt(node, 'kv_num_heads'))];
  const g = hq! / hk!;
  if (hv !== hk || !Number.isInteger(g) || width.some((e) => e % hk! !== 0))
    return refuseAll(`reads ${hq} query, ${hk} key and ${hv} value heads`);
  if (g > 1 && hk === 1)
    return refuseAll('shares its one key/value head among every query head: it cannot be removed alone');
  const other = qkv.find((i) => !i.l);
  if (other) return refuseAll(`pairs the heads with "${other.t}", which no group owns`);
  const mask = ins[3]?.t ? ins[3].shape : undefined;
  if (mask && mask.length >= 3 && mask[mask.length - 3] !== 1)
    return refuseAll(`adds the mask "${ins[3]!.t}", which holds one slice per head`);
  // entries of q, k and v per key/value head (its query heads' entries for q)
  const units = width.map((e) => e / hk!),
    ls = qkv.map((i) => i.l!);
  // every channel whole key/value heads (not a feature of each, as equal parts of one projection would pair them), as
  // many in q, k and v
  const perGroup = (l: Layout, i: number) => l.segments.map((s) => [s.n, s.per / units[i]!].join());
  const whole = ls.every((l, i) => l.segments.every((s) => s.per % units[i]! === 0));
  if (!whole || ls.some((l, i) => perGroup(l, i).join() !== perGroup(ls[0]!, 0).join()))
    return refuseAll(
      `reads heads laid out differently in q, k and v (${qkv.map((i) => `"${i.t}"`).join(', ')})` +
        (mergeHeads(W, ls, units) ? ', which their producers could not match' : ''),
    );
  const [ref, ...rest] = ls as [Layout, Layout, Layout];
  for (const l of rest) l.segments.forEach((s, r) => s.space >= 0 && S.union(s.space, ref.segments[r]!.space));
  // Y: v's entries for each query head, g·d_v per key/value head
  const yUnit = (G.shapes.get(y)![axis]! / hq!) * g;
  const out: Layout = { axis, segments: ref.segments.map((s) => ({ ...s, per: (s.per / units[0]!) * yUnit })) };
  const counts = [
    { name: 'q_num_heads', per: g / yUnit },
    { name: 'kv_num_heads', per: 1 / yUnit },
  ].filter((a) => node.attribute.some((x) => x.name === a.name));
  record(W, node, out, { attributes: counts });
  setLayout(W, y, out);
}

/**
 * Asks the producers of q, k and v (layouts `ls`, `units[i]` entries per key/value head) to merge their channels until
 * each run's channels hold whole key/value heads, as many in all three. False if the runs do not pair up.
 */
function mergeHeads(W: Walk, ls: Layout[], units: number[]): boolean {
  const runs = ls[0]!.segments.length;
  if (ls.some((l) => l.segments.length !== runs)) return false;
  for (let r = 0; r < runs; r++) {
    const segs = ls.map((l) => l.segments[r]!);
    // the smallest merge that makes each channel whole heads, then the heads per channel that gives
    const whole = segs.map((s, i) => units[i]! / gcd(s.per, units[i]!)),
      heads = segs.map((s, i) => (s.per * whole[i]!) / units[i]!);
    const total = segs.map((s, i) => (s.n * s.per) / units[i]!);
    if (segs.some((s) => s.space < 0) || total.some((t) => t !== total[0])) return false;
    const all = heads.reduce(lcm);
    segs.forEach((s, i) => {
      const f = (whole[i]! * all) / heads[i]!;
      if (f > 1) request(W, s.space, { merge: f });
    });
  }
  return true;
}

/**
 * Concat: along the channel axis of its inputs it lays their runs end to end (inputs no group owns become fixed
 * entries); along another axis it joins inputs with the same runs (and slices constants along the channels).
 */
function concatNode(W: Walk, node: NodeProto): void {
  const { G, S } = W;
  const y = node.output[0] ?? '',
    yShape = G.shapes.get(y);
  const ins = node.input.map((t) => ({ t, l: W.layouts.get(t), shape: G.shapes.get(t) }));
  const tracked = ins.filter((i) => i.l);
  const refuseAll = (why: string) => tracked.forEach((i) => S.refuseAll(i.l, why));
  if (!yShape || ins.some((i) => !i.shape)) return refuseAll(G.unknownShape(ins.find((i) => !i.shape)?.t ?? y));
  const axis = attrInt(node, 'axis') < 0 ? attrInt(node, 'axis') + yShape.length : attrInt(node, 'axis');
  if (tracked.every((i) => i.l!.axis === axis)) {
    const segments = ins.flatMap((i) => i.l?.segments ?? [{ space: -1, n: i.shape![axis]!, per: 1 }]);
    const out = { axis, segments };
    record(W, node, out, {});
    return setLayout(W, y, out);
  }
  // along another axis (e.g. tokens): every input carries the same channels; constants are sliced along them
  const ref = tracked[0]!,
    out: Layout = { axis: ref.l!.axis, segments: ref.l!.segments };
  if (tracked.some((i) => i.l!.axis !== out.axis || !sameRuns(i.l!, ref.l!)))
    return refuseAll(`${label(node)} joins channels laid out differently along axis ${axis}`);
  const slices = [],
    follows: Layout[] = [];
  for (const i of ins.filter((j) => !j.l)) {
    const like = sizedLike(G, i.t, out.axis),
      l = like && W.layouts.get(like.tensor);
    if (l && !l.stack && l.axis === like.axis && sameRuns(l, out)) {
      follows.push(l); // zeros as many along the channels as `like` has (rel_shift's padding column)
      continue;
    }
    if (!G.constant(i.t)) return refuseAll(unowned(W, node, 'joins', i.t));
    if (i.shape![out.axis] !== entriesOf(out))
      return refuseAll(`${label(node)}: constant "${i.t}" has ${i.shape![out.axis]} entries along the channels`);
    slices.push({ tensor: i.t, axis: out.axis });
  }
  for (const l of [...tracked.slice(1).map((i) => i.l!), ...follows])
    l.segments.forEach((s, r) => s.space >= 0 && S.union(s.space, out.segments[r]!.space));
  if (
    !checkConstants(
      W,
      node,
      slices.map((x) => x.tensor),
      out,
    )
  )
    return;
  record(W, node, out, { slices });
  setLayout(W, y, out);
}

/** The walk over every node in graph order, with each producer's outputs cut into `parts`. */
function walk(G: Graph, parts: Map<string, Part[]>, fixed: Set<string>, carry: Map<string, number>): Walk {
  const W: Walk = {
    G,
    S: new Spaces(),
    layouts: new Map(),
    refused: [],
    parts,
    fixed,
    carry,
    outers: new Map(),
    requests: new Map(),
    together: [],
    tables: new Map(),
    causes: new Map(),
    follows: [],
    reads: [],
  };
  for (const node of G.graph.node) {
    const rule = OPS[opOf(node)];
    // quantized layers, and onnxruntime's ops the tables do not know (the NCHWc Conv, Attention) with a weight, are no
    // layers here: refused by name, or an optimized or quantized model's only candidates vanish and inspect lists none
    if (QUANTIZED_LAYERS.has(opOf(node)))
      W.refused.push({ node: node.name, reason: `${label(node)} is a layer of integers${QUANTIZED}` });
    else if (!rule && node.domain.startsWith('com.microsoft') && node.input[1] && G.constant(node.input[1]))
      W.refused.push({ node: node.name, reason: `${opOf(node)} is not an ONNX layer${ortHint(node)}` });
    const inputs = node.input.flatMap((t, slot) => (t && W.layouts.has(t) ? [{ t, slot, l: W.layouts.get(t)! }] : []));
    const branches = ifBranches(node, G.constant);
    if (branches) {
      ifNode(W, node, branches);
      continue;
    }
    for (const sub of inner(node))
      W.S.refuseAll(W.layouts.get(sub), `tensor "${sub}" is read inside a subgraph of ${label(node)}`);
    // packed parts of channels pass only through chain rules, one input at a time, until a Gather or Split; or into an
    // element-wise join with channels of another input on their axis, where parts that are one channel each read as
    // that axis' channels (SKNet's branch weights times the stacked branches)
    const packed = inputs.filter((i) => i.l.stack);
    if (
      packed.length &&
      rule?.merge === 'join' &&
      packed.length < inputs.length &&
      packed.every((i) => partsAlike(i.l))
    ) {
      joinNode(W, node, new Map(packed.map((i) => [i.t, unstacked(i.l)])));
      continue;
    }
    if (packed.length && (inputs.length > 1 || rule?.merge || rule?.layer)) {
      packed.forEach((i) => W.S.refuseAll(i.l, `${label(node)} ${PACKED}`));
      continue;
    }
    if (rule?.merge === 'matmul' && node.input.every((t) => !G.constant(t))) {
      // a weight computed from an initializer: a layer subprune cannot prune, not a product of activations
      const from = G.computedFrom(node.input[1] ?? ''),
        weight = from?.consts.find((c) => c.dims.length >= 2 && FLOAT_TYPES.has(c.dataType));
      if (from && weight) {
        const why = `${label(node)}: its weight is computed from "${weight.name}"${from.shapes ? SLICED : COMPUTED}`;
        inputs.forEach((i) => W.S.refuseAll(i.l, `consumer ${why}`));
        W.refused.push({ node: node.name, reason: why });
      } else if (inputs.length) matmulNode(W, node); // a product of activations (attention): no weights to prune
      continue;
    }
    if (rule?.merge === 'einsum') {
      einsumNode(W, node);
      continue;
    }
    if (rule?.merge === 'attention') {
      attentionNode(W, node);
      continue;
    }
    const info = rule?.layer?.read(node, G.constant);
    if (info && !('refuse' in info)) {
      layerNode(W, node, rule!, info);
      continue;
    }
    if (info) {
      // not a layer here (e.g. a grouped conv); a depthwise conv still passes channels on by its chain rule
      const w = node.input[1] ?? '',
        dq = G.producer(w);
      const why =
        info.refuse +
        (dq?.opType === 'DequantizeLinear'
          ? ` (${label(dq)} computes it from integers)${QUANTIZED}`
          : G.computedFrom(w)?.shapes === false
            ? COMPUTED
            : '');
      let passed = false;
      for (const i of inputs) {
        if (i.slot === 0 && rule!.chain) passed = chainNode(W, node, rule, 0, i.l);
        else W.S.refuseAll(i.l, `consumer ${why}`);
      }
      // its input's channels refused, upstream (a ConvNeXt block's depthwise conv on the normalised stream) or by its
      // chain rule (a depthwise weight shared by the convs of several FPN levels): say why, not that groups couple them
      const chained = inputs.every((i) => i.slot === 0);
      const up = !passed && rule!.chain && chained ? refusedUpstream(W, node.input[0] ?? '') : undefined;
      const reason = up ? `${label(node)} passes on the channels it reads, which are refused: ${up}` : why;
      if (!passed) W.refused.push({ node: node.name, reason });
      continue;
    }
    if (!inputs.length) continue;
    const others = node.input.filter((t) => t && !W.layouts.has(t) && !G.constant(t));

    if (rule?.merge === 'concat') concatNode(W, node);
    else if (rule?.merge === 'join' && (inputs.length > 1 || others.length > 0)) joinNode(W, node);
    else if (inputs.length === 1) void chainNode(W, node, rule, inputs[0]!.slot, inputs[0]!.l);
    else
      inputs.forEach((i) =>
        W.S.refuseAll(
          i.l,
          `${label(node)} combines channels of several inputs; subprune does not know how it mixes them`,
        ),
      );
  }
  for (const o of G.graph.output) {
    const l = W.layouts.get(o.name);
    if (l) W.S.refuseAll(l, `tensor "${o.name}" is a graph output, so its channels cannot change`);
  }
  for (const t of W.tables.values()) joinTable(W, t);
  for (const f of W.follows) joinFollowed(W, f);
  countReaders(W);
  freezeReads(W);
  for (const root of W.S.roots()) {
    const huge = groupTooBigToSelect(W.S.get(root).consumers);
    if (huge) W.S.refuse(root, huge);
  }
  // a count that reshapes shrink with their channels also shapes a table no group met: it would change there too
  for (const t of G.counts().filter((c) => !W.tables.has(c.tensor)))
    for (const root of W.S.roots())
      if (W.S.get(root).edits.some((e) => 'tensor' in e && e.tensor === t.tensor))
        W.S.refuse(
          root,
          `its count "${t.tensor}" also shapes ${opOf(G.graph.node.find((n) => n.name === t.count)!)} "${t.count}", ` +
            "which no group's channels meet",
        );
  // a count shrunk once for a group (shared) must shape no reshape of other channels, which would keep theirs (the
  // reshapes of a table met, BLOOM's ALiBi [B · heads, 1, T], are the table's)
  const tablePaths = new Set([...W.tables.values()].flatMap((t) => t.table.path.map((p) => p.tensor)));
  for (const root of W.S.roots()) {
    const rec = W.S.get(root),
      ours = new Set([...rec.chain.map((n) => n.output[0]), ...tablePaths]);
    for (const e of rec.edits) {
      const other =
        'tensor' in e && e.shared ? shapedReshapes(G, e.tensor).find((n) => !ours.has(n.output[0])) : undefined;
      if (other && 'tensor' in e) {
        W.S.refuse(root, `its count "${e.tensor}" also shapes ${label(other)}, whose channels are not this group's`);
        break;
      }
    }
  }
  return W;
}

/** The Reshapes whose shape input `name` reaches through the ops that compute shapes (see onlyShapes). */
function shapedReshapes(G: Graph, name: string, depth = 0): NodeProto[] {
  if (depth > 6) return [];
  return (G.uses.get(name) ?? []).flatMap(({ node, slot }) =>
    opOf(node) === 'Reshape'
      ? slot === 1
        ? [node]
        : []
      : ['Mul', 'Div', 'Unsqueeze', 'Concat', 'Cast'].includes(opOf(node))
        ? node.output.flatMap((o) => shapedReshapes(G, o, depth + 1))
        : [],
  );
}

/**
 * A shape entry read from another tensor's count at run time, which a space made a constant of its own because the
 * walk took that count as fixed (FastViT's attention: `reshape(B, N, C)` of the heads with C = x.shape[1] of the
 * stream): if the stream's channels are pruned after all, the entry must become that constant too, or it would read
 * the stream's new count. Every other space on the tensor writes the constant unchanged (per 0).
 */
function freezeReads(W: Walk): void {
  for (const { space, from, edit } of W.reads)
    for (const s of W.layouts.get(from)?.segments ?? [])
      if (s.space >= 0 && W.S.find(s.space) !== W.S.find(space)) W.S.get(s.space).edits.push({ ...edit, per: 0 });
}

/**
 * A Reshape whose own input's channels keep their count (no group's, or every group on them refused) but whose shape
 * reads another tensor's channel count at run time: a one-head attention's `q.reshape(b, h · w, heads, c // heads)`
 * and `(a @ v).reshape(b, h · w, c)` with c = x.shape[1] of a GroupNorm'd stream, its own group. If that group prunes,
 * the entry must become the constant it was (per 0), or, if it cannot be one alone, the group must stay.
 */
function countReaders(W: Walk): void {
  const { G } = W;
  for (const node of G.graph.node) {
    const x = node.input[0] ?? '',
      shape = node.input[1] ?? '',
      l = W.layouts.get(x);
    if (opOf(node) !== 'Reshape' || G.constant(x)) continue;
    // channels that may be pruned passed a chain rule, which read every entry; a tensor computed from constants alone
    // may be a table, which shrinks with the channels it is added to
    if (l ? l.segments.some((s) => s.space >= 0 && W.S.get(s.space).refused === undefined) : G.computedFrom(x))
      continue;
    G.value(shape)?.forEach((value, i) => {
      const src = shapeEntrySource(G, shape, i),
        from = src && W.layouts.get(src.tensor);
      if (!src || !from || from.axis !== src.axis) return;
      if (!src.part)
        return W.S.refuseAll(
          from,
          `${label(node)} reads their count (its shape entry ${i}) for channels that keep theirs`,
          true,
        );
      for (const s of from.segments)
        if (s.space >= 0) W.S.get(s.space).edits.push({ ...src.part, values: [value], index: 0, per: 0 });
    });
  }
}

/**
 * A shape that reads its channel count from another tensor's channels (SE's `y.view(b, c, 1, 1)`, `y.expand_as(x)`,
 * with b, c = x.size()) stays right if both keep the same channels: they become one space, unless the other tensor's
 * channels were refused for reasons of their own (then its count stays, and the next walk reads it as a fixed size).
 */
function joinFollowed(W: Walk, { l, other, why }: Walk['follows'][number]): void {
  const own = other.segments.some((s) => W.S.get(s.space).refused !== undefined && !W.S.get(s.space).byCount);
  if (own) W.S.refuseAll(l, why, true);
  else l.segments.forEach((s, r) => W.S.union(s.space, other.segments[r]!.space));
}

/**
 * The channels of every site of a table become one space (the constant is sliced once for all); refused if a site
 * was not met with channels, or met with channels laid out otherwise.
 */
function joinTable(W: Walk, { table, seen, layouts }: TableMet): void {
  const missing = [...table.sites].filter((s) => !seen.has(s));
  const [first, ...rest] = layouts;
  const why = missing.length
    ? `constant "${table.tensor}" is added to these channels and also at ${missing.join(', ')}, where no group's ` +
      'channels meet it; slicing it would change that node too'
    : rest.some((l) => !sameRuns(l, first!))
      ? `constant "${table.tensor}" is added to channels laid out differently at ${[...seen].join(', ')}`
      : undefined;
  if (why) return layouts.forEach((l) => W.S.refuseAll(l, why));
  for (const l of rest) l.segments.forEach((s, r) => s.space >= 0 && W.S.union(s.space, first!.segments[r]!.space));
}

const PACKED =
  'reads packed parts of channels (a reshape to [.., parts, heads, d]) before a Gather or Split takes them apart';

/** Names read inside a node's subgraphs (If/Loop/Scan bodies). */
function inner(node: NodeProto): string[] {
  const names: string[] = [];
  const visit = (g: GraphProto) => {
    for (const n of g.node) {
      names.push(...n.input);
      for (const a of n.attribute) [a.g, ...a.graphs].forEach((sub) => sub && visit(sub));
    }
  };
  for (const a of node.attribute) [a.g, ...a.graphs].forEach((sub) => sub && visit(sub));
  return names.filter((t) => t);
}

/** The group of a space that survived the walk, or the reason it is refused. */
function groupOf(W: Walk, root: number): Group | string {
  const rec = W.S.get(root);
  if (!rec.consumers.length) {
    const only = rec.refused?.startsWith('tensor ') && rec.refused.includes('graph output');
    return only || !rec.refused ? 'output layer: no consumer' : rec.refused;
  }
  if (rec.refused) return rec.refused;
  const producers = [...new Set(rec.producers)].sort((a, b) => order(W, a) - order(W, b));
  const chain = [...new Set(rec.chain)].sort((a, b) => order(W, a) - order(W, b));
  const consumers = [...rec.consumers].sort((a, b) => order(W, a.node) - order(W, b.node) || a.offset - b.offset);
  return {
    id: producers[0]!.name,
    channels: rec.n,
    producers,
    consumers,
    slices: dedupe(rec.slices),
    edits: rec.edits,
    chain,
    tensors: dedupe(rec.tensors),
    params: 0,
    flops: 0,
  };
}

/**
 * A producer whose output channels a later node cut into parts that stay apart (a GhostNet module's Slice keeps both
 * copies of some channels and one copy of the others) is the first producer of several groups: their ids, which
 * budgets, reports and the group-by-group modes key on, then add the part's index in the producer's output,
 * `name#i` (an index, not a channel range, so that the id stays when an earlier part is pruned).
 */
function uniqueIds(W: Walk, groups: Group[], roots: Map<Group, number>): void {
  const count = new Map<string, number>();
  for (const g of groups) count.set(g.id, (count.get(g.id) ?? 0) + 1);
  for (const g of groups) {
    if (count.get(g.id)! < 2) continue;
    const name = g.producers[0]!.name;
    g.id = `${name}#${W.S.get(roots.get(g)!).parts.find((p) => p.node === name)!.index}`;
  }
}

const order = (W: Walk, n: NodeProto) => W.G.graph.node.indexOf(n);
const dedupe = <S extends AxisSlice>(xs: S[]) => [
  ...new Map(xs.map((s) => [`${s.tensor}|${s.axis}|${s.offset}|${s.per}`, s])).values(),
];

function prepare(model: Model, inputShape?: InputShapes): Graph {
  const graph = model.graph;
  if (!graph) throw badInput('the model has no graph.');
  checkOpset(model);
  normalizeModel(model);
  const { shapes, values } = inferShapesAndValues(model, inputShape);
  const calls = new Map<string, string>();
  for (const n of graph.node) {
    const f = calledFunction(model, n),
      why = f && (notInlinable(model, f) ?? 'it calls itself');
    if (f) calls.set(n.name, `calls the model-local function "${f.name}", which subprune cannot inline: ${why}`);
  }
  return new Graph(graph, shapes, values, opsetVersion(model) ?? 1, calls);
}

/**
 * The channel groups of a model and the candidates refused, with reasons. Normalises the graph in place (see
 * normalizeModel: inlines model-local functions, names unnamed nodes, folds views of constants, drops trailing
 * omitted inputs).
 * inputShape: the inputs' shapes (see InputShapes) (default: declared, symbolic dims 1).
 */
export function analyze(model: Model, inputShape?: InputShapes): Analysis {
  const G = prepare(model, inputShape);
  const W = settle(G);
  for (const t of W.together)
    if (new Set(t.spaces.map((x) => W.S.find(x))).size > 1) t.spaces.forEach((x) => W.S.refuse(x, t.why));
  const groups: Group[] = [];
  const roots = new Map<Group, number>();
  const refused: Refused[] = [...W.refused];
  for (const root of W.S.roots()) {
    const g = groupOf(W, root);
    if (typeof g !== 'string') (groups.push(g), roots.set(g, root));
    else {
      const producers = [...new Set(W.S.get(root).producers)].sort((a, b) => order(W, a) - order(W, b));
      refused.push({
        node: producers[0]!.name,
        ...(producers.length > 1 ? { producers: producers.map((p) => p.name) } : {}),
        reason: g,
      });
    }
  }
  groups.sort((a, b) => order(W, a.producers[0]!) - order(W, b.producers[0]!));
  uniqueIds(W, groups, roots);
  refused.sort((a, b) => order(W, nodeNamed(G, a.node)) - order(W, nodeNamed(G, b.node)));
  // one row per producer and reason: the parts of an uneven Split are refused alike, each its own space
  const rows = new Map(refused.map((r) => [`${r.node}\n${r.producers?.join('\n')}\n${r.reason}`, r]));
  // on the shapes prepare inferred (each groupSavings would infer them twice more)
  const params = groupSavings(model, groups, inputShape, 'params', G.shapes),
    flops = groupSavings(model, groups, inputShape, 'flops', G.shapes);
  for (const g of groups) [g.params, g.flops] = [params.get(g.id)!, flops.get(g.id)!];
  const outputs = outputAxes(W);
  analyzedOutputs.set(model, outputs);
  return { groups, refused: [...rows.values()], outputs, ...inputBytes(G, groups) };
}

/** Analysis.outputs of the models analyzed, which comparisons with them read (outputAxesOf). */
const analyzedOutputs = new WeakMap<Model, OutputAxis[]>();

/**
 * How `model`'s outputs compare (Analysis.outputs): from its analysis if it had one, else from an analysis of a copy
 * (analyze normalises the model it reads). A model the analysis cannot read compares by values alone.
 */
export function outputAxesOf(model: Model): OutputAxis[] {
  const known = analyzedOutputs.get(model);
  if (known) return known;
  try {
    return analyze(clone(ModelProtoSchema, model)).outputs;
  } catch {
    const g = model.graph;
    return g ? g.output.map((o) => ({ name: o.name, ...uncompared(o, dataShaped(g)) })) : [];
  }
}

/** Ops whose output holds independent values per entry (probabilities): no class scores, whatever the layout. */
const INDEPENDENT = new Set(['Sigmoid', 'HardSigmoid']);

/** Ops whose outputs' shapes depend on the values of their inputs, not only on their shapes. */
const DATA_SHAPED = new Set(['NonMaxSuppression', 'NonZero', 'Unique', 'Compress', 'Loop']);

/**
 * Ops whose output has the shape of their input 0, whatever the others' (a scatter into a tensor: Mixtral's experts'
 * outputs added to zeros_like(h) at the rows torch.where picked, which torch writes as ScatterElements).
 */
const SHAPED_AS_DATA = new Set(['ScatterElements', 'ScatterND', 'Scatter']);

/**
 * The tensors whose shapes depend on values: DATA_SHAPED ops' outputs and everything computed from them, including
 * the outputs of a node (If, Scan) whose subgraph computes one of its outputs so: torchvision's batched_nms is scripted
 * as `if boxes.numel() == 0` with the NonMaxSuppression inside the If's else branch, under a condition that may be
 * known from shapes alone. `outer`: the enclosing graphs' data-shaped tensors, which a subgraph may read by name.
 * `shapes`: a Loop whose outputs have shapes there runs a trip count known from shapes to the end (see loopShapes in
 * shapes.ts: torch's nn.EmbeddingBag, one iteration per bag), so its shapes do not depend on values.
 */
function dataShaped(g: GraphProto, outer: ReadonlySet<string> = new Set(), shapes?: Shapes): Set<string> {
  const out = new Set(outer);
  const fromBody = (n: NodeProto) =>
    n.attribute.some((a) =>
      [a.g, ...a.graphs].some((sub) => {
        if (!sub) return false;
        const inner = dataShaped(sub, out);
        return sub.output.some((o) => inner.has(o.name));
      }),
    );
  const read = (n: NodeProto) => (SHAPED_AS_DATA.has(n.opType) ? n.input.slice(0, 1) : n.input);
  const shaped = (n: NodeProto) =>
    DATA_SHAPED.has(n.opType) && !(n.opType === 'Loop' && shapes && n.output.every((t) => shapes.has(t)));
  for (const n of g.node)
    if (shaped(n) || read(n).some((t) => out.has(t)) || fromBody(n)) n.output.forEach((t) => out.add(t));
  return out;
}

/** Why a graph output is not compared (OutputAxis.uncompared), as a field to spread. */
function uncompared(o: GraphProto['output'][number], shaped: Set<string>): Pick<OutputAxis, 'uncompared'> {
  if (shaped.has(o.name)) return { uncompared: 'data-shaped' };
  const t = o.type?.value;
  return t?.case === 'tensorType' && !FLOAT_TYPES.has(t.value.elemType) ? { uncompared: 'integers' } : {};
}

/**
 * How each graph output compares (see OutputAxis). Its class axis is a Softmax's axis, or the channel axis of the one
 * layer whose output channels the walk carried to it (through Flatten, Transpose, Resize, ...), if 2 or more entries.
 */
function outputAxes(W: Walk): OutputAxis[] {
  const { G } = W,
    shaped = dataShaped(G.graph, new Set(), G.shapes);
  return G.graph.output.map((o) => {
    const { name } = o,
      why = uncompared(o, shaped);
    if (why.uncompared) return { name, ...why };
    const dims = G.shapes.get(name);
    let p = G.producers.get(name);
    while (p && (p.opType === 'Identity' || p.opType === 'Cast')) p = G.producers.get(p.input[0]!);
    if (!dims || !p || INDEPENDENT.has(p.opType)) return { name };
    let axis: number | undefined;
    if (p.opType === 'Softmax' || p.opType === 'LogSoftmax') {
      axis = normAxis(attrInt(p, 'axis', G.opset >= 13 ? -1 : 1), dims.length);
      // before opset 13 the classes are every axis from `axis` on, flattened
      if (G.opset < 13 && axis !== dims.length - 1) axis = undefined;
    } else {
      const l = W.layouts.get(name),
        spaces = new Set(l?.segments.map((r) => (r.space >= 0 ? W.S.find(r.space) : -1)));
      // each entry one output channel of the layer: not a run of them (a YOLO head's [B, 255, H, W] viewed as
      // [B, 3, H, W, 85], whose anchor axis holds 3 runs of 85 box and class fields), nor one channel's entries along
      // another axis (Conv-TasNet's decoder [B·C, 1, T] viewed as [B, C, T]: one channel's T samples)
      const one = (s: number) =>
        W.S.get(s).parts.every((p) => p.part.per === 1) && l!.segments.every((r) => r.per === 1);
      const image = l && (upsampled(G, dims, l.axis) || asInput(G, dims)); // an image, not scores
      if (l && !l.stack && spaces.size === 1 && !spaces.has(-1) && one([...spaces][0]!) && !image) axis = l.axis;
    }
    const sphere = axis !== undefined && normalisedAxes(G, p, dims.length)?.includes(axis);
    return axis !== undefined && dims[axis]! >= 2 && !sphere ? { name, classAxis: axis } : { name };
  });
}

/** Ops between an L2 norm and the Div by it: F.normalize's clamp_min(eps) and expand_as, an added eps, a cast. */
const NORM_TO_DIVISOR = new Set(['Clip', 'Max', 'Add', 'Expand', 'Identity', 'Cast']);

/**
 * The axes over which node `p` divides a tensor by its own L2 norm (x / ‖x‖: LpNormalization, torch.norm or
 * F.normalize, written as ReduceL2, or Sqrt of ReduceSumSquare or of ReduceSum of x² or x·x), if it does: along them
 * the output is an embedding on the unit sphere (a face recognizer's, a sentence encoder's), compared by distances,
 * whose largest entry names no class.
 */
function normalisedAxes(G: Graph, p: NodeProto, rank: number): number[] | undefined {
  if (p.opType === 'LpNormalization')
    return attrInt(p, 'p', 2) === 2 ? [normAxis(attrInt(p, 'axis', -1), rank)] : undefined;
  if (p.opType !== 'Div') return undefined;
  const x = p.input[0]!,
    back = (t: string | undefined) => (t === undefined ? undefined : G.producers.get(t));
  let d = back(p.input[1]);
  while (d && NORM_TO_DIVISOR.has(d.opType)) d = back(d.input[0]);
  let r: NodeProto | undefined;
  if (d?.opType === 'ReduceL2' && d.input[0] === x) r = d;
  else if (d?.opType === 'Sqrt') {
    const s = back(d.input[0]),
      sq = s?.opType === 'ReduceSum' ? back(s.input[0]) : undefined;
    if (s?.opType === 'ReduceSumSquare' && s.input[0] === x) r = s;
    else if ((sq?.opType === 'Pow' && sq.input[0] === x) || (sq?.opType === 'Mul' && sq.input.every((t) => t === x)))
      r = s;
  }
  if (!r) return undefined;
  // no axes: every axis (unless noop_with_empty_axes, which makes the Reduce an identity)
  const axes = axesOf(r, G.constant) ?? (attrInt(r, 'noop_with_empty_axes', 0) ? [] : [...Array(rank).keys()]);
  return axes.map((a) => normAxis(a, rank));
}

/**
 * Whether a layer's output [N, C, ...] has more entries per channel than an input of its rank (a super-resolution
 * model's image, EDSR's [N, 3, 2H, 2W] of [N, 3, H, W]): class scores per position come at most at the input's
 * resolution (a Softmax over the channels still says they are classes).
 */
function upsampled(G: Graph, dims: number[], axis: number): boolean {
  const per = (d: number[]) => d.slice(2).reduce((a, b) => a * b, 1);
  return (
    axis === 1 &&
    dataInputs(G.graph).some((x) => {
      const d = G.shapes.get(x.name);
      return d?.length === dims.length && per(d) < per(dims);
    })
  );
}

/**
 * Whether an output [N, C, ...] has the shape of a float input: the model maps a tensor to one like it (a diffusion
 * UNet's noise prediction for its noisy sample, a denoiser's or an autoencoder's image), whose channels are no classes.
 * A segmentation's scores have as many channels as classes, which would have to equal the input's too.
 */
function asInput(G: Graph, dims: number[]): boolean {
  return dataInputs(G.graph).some((x) => {
    const d = G.shapes.get(x.name),
      t = x.type?.value;
    const float = t?.case === 'tensorType' && FLOAT_TYPES.has(t.value.elemType);
    return float && dims.length >= 3 && d?.length === dims.length && d.every((n, i) => n === dims[i]);
  });
}

/** Analysis.inputBytes, as a field to spread (none when a consumer input's shape is unknown). */
function inputBytes(G: Graph, groups: Group[]): { inputBytes?: number } {
  let bytes = 0;
  for (const t of new Set(groups.flatMap((g) => g.consumers.map((c) => c.input)))) {
    const dims = G.shapes.get(t);
    if (!dims) return {};
    bytes += (4 * dims.reduce((a, b) => a * b, 1)) / G.batch;
  }
  return { inputBytes: bytes };
}

export { modelStats } from './shapes.js';

const nodeNamed = (G: Graph, name: string) => G.graph.node.find((n) => n.name === name)!;

/**
 * A consumer's weight rows for its group as the d×m matrix W with (the group's part of) the consumer's output = B·W:
 * rows c·g + j, see weightToMatrix.
 */
export function consumerWeightMatrix(model: Model, c: Consumer): Float64Array {
  const t = model.graph && constantTensors(model.graph).get(c.weight);
  if (!t) throw badInput(`the model has no constant "${c.weight}" (weight of consumer "${c.node.name}").`);
  const { data } = tensorToFloat32(t);
  if (data.length !== c.dTotal * c.m) {
    const expects = `consumer "${c.node.name}" expects ${c.dTotal}×${c.m}; was the model changed after analysis?`;
    throw badInput(`weight "${c.weight}" has ${data.length} values, ${expects}`);
  }
  return weightToMatrix(c.layout, data, c.dTotal, c.m, { from: c.row, count: c.d });
}
