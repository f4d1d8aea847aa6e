// Sequential and asymmetric captures go group by group, each on the model pruned so far. Rerunning the model from its
// inputs for every group costs a forward pass per group; a frontier instead keeps, over the whole calibration set,
// the tensors at the edge of what the next groups leave unchanged, and the next capture runs only the nodes after it.
// Correctness never rests on predicting what changes: when the model moves to its next version, every cached tensor
// whose computation differs in any node or constant upstream is dropped (advance), and a capture computes whatever
// is not cached from the model's inputs. The one exception is checked too: a group's consumer inputs are cut down to
// its kept channels when the rewrite changed only nodes that carry its channels, and their float constants are the
// old ones without the removed channels' entries; that they compute each channel alone is the analysis's claim, the
// same the rewrite rests on.
import { toBinary } from '@bufbuild/protobuf';
import {
  AttributeProtoSchema,
  DataType,
  type AttributeProto,
  TensorProtoSchema,
  tensorToFloat32,
  dropEntries,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import { holdsSubgraph, type OrtTensor } from './runner.js';
import type { AxisSlice } from '../graph/types.js';
import { availableMemory } from '../kernels/memory.js';

/**
 * Bytes a frontier's cache may hold by default: a quarter of the free memory, at most 2 GiB (past it, captures run
 * from the model's inputs as they would without one).
 */
export const frontierBytes = () => Math.min(2 ** 31, availableMemory() / 4);

/** onnxruntime's tensor types that a frontier feeds back (others are recomputed). */
const ORT_TYPES: Record<string, DataType> = {
  float32: DataType.FLOAT,
  float16: DataType.FLOAT16,
  float64: DataType.DOUBLE,
  int64: DataType.INT64,
  int32: DataType.INT32,
  int8: DataType.INT8,
  uint8: DataType.UINT8,
  bool: DataType.BOOL,
};

/**
 * What a capture's step needs to know of the captures after it: the tensors they want (`later`); the nodes its own
 * group's rewrite changes (`changing`), and what they reach, but for the tensors `sliceable`, which the rewrite only
 * cuts down (advance cuts them down too); the nodes the later groups' rewrites change (`laterChanging`).
 */
export interface StepPlan {
  later: readonly string[];
  changing?: readonly NodeProto[];
  sliceable?: readonly string[];
  laterChanging?: readonly NodeProto[];
}

/** One capture's use of a frontier: what to feed, what to compute, what to keep for the next capture. */
export interface FrontierStep {
  /** Cached tensors the run reads, with their data types. */
  given: Map<string, DataType>;
  /** Wanted tensors the cache already holds (no node runs for them). */
  cached: string[];
  /** Tensors to keep after the run (computed or cached), for later captures. */
  keep: string[];
}

const producers = (g: GraphProto) => new Map(g.node.flatMap((n) => n.output.map((o) => [o, n] as const)));

/** The nodes `roots` reach (themselves included), in `g`. */
function descendants(g: GraphProto, roots: readonly NodeProto[]): Set<NodeProto> {
  const out = new Set(roots),
    tensors = new Set(roots.flatMap((n) => n.output));
  for (const n of g.node)
    // graph order is topological
    if (!out.has(n) && n.input.some((x) => tensors.has(x))) {
      out.add(n);
      for (const o of n.output) tensors.add(o);
    }
  return out;
}

/** The nodes `names` depend on, in `g` (whose producers by tensor are `producer`). */
function ancestors(
  g: GraphProto,
  names: readonly string[],
  producer: ReadonlyMap<string, NodeProto> = producers(g),
): Set<NodeProto> {
  const out = new Set<NodeProto>(),
    stack = [...names];
  for (let t = stack.pop(); t !== undefined; t = stack.pop()) {
    const n = producer.get(t);
    if (!n || out.has(n)) continue;
    out.add(n);
    stack.push(...n.input.filter((x) => x));
  }
  return out;
}

/** Byte-wise equality, four bytes at a time where both arrays allow (no Buffer: this also runs in browsers). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let i = 0;
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const n = a.length >> 2,
      x = new Uint32Array(a.buffer, a.byteOffset, n),
      y = new Uint32Array(b.buffer, b.byteOffset, n);
    for (; i < n; i++) if (x[i] !== y[i]) return false;
    i = n << 2;
  }
  for (; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Two constants with the same type, shape and values: the same object (a rewrite shares what it leaves alone), or
 * raw bytes compared directly, other forms serialized.
 */
function sameTensor(a: TensorProto, b: TensorProto): boolean {
  if (a === b) return true;
  if (a.dataType !== b.dataType || a.dims.length !== b.dims.length || a.dims.some((x, i) => x !== b.dims[i]))
    return false;
  if (a.rawData.length && b.rawData.length && !a.externalData.length && !b.externalData.length)
    return sameBytes(a.rawData, b.rawData);
  return sameBytes(toBinary(TensorProtoSchema, a), toBinary(TensorProtoSchema, b));
}

/** Two nodes that compute the same thing from the same tensor names (their names aside). */
const sameNode = (a: NodeProto, b: NodeProto) =>
  a === b ||
  (a.opType === b.opType &&
    a.domain === b.domain &&
    a.input.join('\n') === b.input.join('\n') &&
    a.output.join('\n') === b.output.join('\n') &&
    a.attribute.length === b.attribute.length &&
    a.attribute.every((x, i) => sameAttribute(x, b.attribute[i]!)));

const sameList = <T>(a: readonly T[], b: readonly T[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** Two attributes with the same value: numbers and lists compared directly (serializing each took 20 ms per ViT). */
function sameAttribute(a: AttributeProto, b: AttributeProto): boolean {
  if (a.name !== b.name || a.type !== b.type || a.f !== b.f || a.i !== b.i || !sameBytes(a.s, b.s)) return false;
  if (!sameList(a.ints, b.ints) || !sameList(a.floats, b.floats)) return false;
  if (a.strings.length !== b.strings.length || a.strings.some((x, k) => !sameBytes(x, b.strings[k]!))) return false;
  if (a.t || b.t) return !!a.t && !!b.t && sameTensor(a.t, b.t);
  if (
    a.g ||
    b.g ||
    a.graphs.length ||
    b.graphs.length ||
    a.tensors.length ||
    b.tensors.length ||
    a.sparseTensor ||
    b.sparseTensor
  )
    return sameBytes(toBinary(AttributeProtoSchema, a), toBinary(AttributeProtoSchema, b));
  return true;
}

/**
 * Of `names` (tensors of `prev`), those that `next` computes exactly as `prev` does (`same`: the same nodes and
 * constants all the way up to the graph inputs), and those that differ only inside `region` (`sliced`: tensors a
 * group's rewrite sliced, computed by nodes of the same ops whose constants and attributes may differ, from inputs
 * that are the same or sliced themselves).
 */
export function compareTensors(
  prev: Model,
  next: Model,
  names: readonly string[],
  slicing?: Slicing,
): { same: Set<string>; sliced: Set<string> } {
  const region = slicing?.region ?? new Set<string>(),
    removed = slicing ? removedOf(slicing) : new Set<number>();
  const a = prev.graph!,
    b = next.graph!;
  const before = producers(a),
    after = producers(b),
    constsA = new Map(a.initializer.map((t) => [t.name, t])),
    constsB = new Map(b.initializer.map((t) => [t.name, t])),
    inputsA = new Set(a.input.map((x) => x.name)),
    inputsB = new Set(b.input.map((x) => x.name));
  // a graph input or constant (no producer): the same kind in both, and the same values
  const sourceSame = (t: string) => {
    const ca = constsA.get(t),
      cb = constsB.get(t);
    if (ca || cb) return !!ca && !!cb && sameTensor(ca, cb);
    return inputsA.has(t) && inputsB.has(t);
  };
  // 'shape': integers computed from shapes and integer constants alone (a Reshape's target shape, a head count), which
  // the rewrite edits as it edits integer constants; a node of the region may read them as it reads those
  const state = new Map<string, 'same' | 'sliced' | 'shape'>();
  const of = (t: string) =>
    !t ? 'same' : (state.get(t) ?? (!after.has(t) && !before.has(t) && sourceSame(t) ? 'same' : undefined));
  // a constant input of a node of the region: the same, or (float) the old one with the removed channels' entries cut
  // out along the group's slices of it; shape counts (integers) the rewrite edits are not checked here
  const constantOk = (t: string, old: string | undefined) => {
    if (of(t) === 'same') return true;
    const ct = constsB.get(t),
      co = old === undefined ? undefined : constsA.get(old);
    if (!ct) return after.get(t)?.opType === 'Constant';
    if (ct.dataType !== DataType.FLOAT && ct.dataType !== DataType.FLOAT16 && ct.dataType !== DataType.DOUBLE)
      return true;
    const runs = slicing?.slices.filter((x) => x.tensor === old) ?? [];
    if (!co || !runs.length) return false;
    let want = tensorToFloat32(co);
    for (const r of runs) want = cutEntries(want, r.axis, removedEntries(r, removed));
    // bit for bit, without a callback per entry
    const bytes = (x: ArrayBufferView) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    return sameBytes(bytes(tensorToFloat32(ct).data), bytes(want.data));
  };
  const intConstant = (t: string) => {
    const c = constsB.get(t),
      n = after.get(t);
    return c ? INTEGER_TYPES.has(c.dataType) : n?.opType === 'Constant' && constantOfInts(n);
  };
  const ints = new Set<string>(),
    isInt = (t: string) => !t || ints.has(t) || intConstant(t);
  const need = ancestors(b, names, after);
  for (const n of b.node) {
    if (!need.has(n)) continue;
    const int = computesInts(n, isInt);
    if (int) n.output.forEach((o) => ints.add(o));
    const old = n.output.map((o) => before.get(o));
    const o0 = old[0] && old.every((o) => o === old[0]) ? old[0] : undefined;
    if (o0 && sameNode(o0, n) && n.input.every((t) => of(t) === 'same')) n.output.forEach((o) => state.set(o, 'same'));
    else if (
      o0?.opType === n.opType &&
      n.output.every((o) => region.has(o)) &&
      n.input.every((t, i) => of(t) !== undefined || constantOk(t, o0.input[i]))
    )
      n.output.forEach((o) => state.set(o, 'sliced'));
    else if (int && !n.output.some((o) => region.has(o)) && n.input.every((t) => of(t) !== undefined || intConstant(t)))
      n.output.forEach((o) => state.set(o, 'shape'));
  }
  const same = new Set(names.filter((t) => of(t) === 'same'));
  return { same, sliced: new Set(names.filter((t) => of(t) === 'sliced')) };
}

const INTEGER_TYPES = new Set<number>([DataType.INT64, DataType.INT32, DataType.BOOL]);

/** Ops that give integers from integers, as exporters compute shapes. */
const SHAPE_OPS = new Set([
  ...['Shape', 'Size', 'Constant', 'Gather', 'Concat', 'Unsqueeze', 'Squeeze', 'Slice', 'Reshape', 'Identity'],
  ...['Add', 'Sub', 'Mul', 'Div', 'Neg', 'Equal', 'Where', 'Expand', 'Range', 'ReduceProd', 'Min', 'Max'],
]);

/** Whether a Constant node holds integers (value_int, value_ints, or an integer tensor). */
function constantOfInts(n: NodeProto): boolean {
  const a = n.attribute[0];
  return a?.name === 'value_int' || a?.name === 'value_ints' || (!!a?.t && INTEGER_TYPES.has(a.t.dataType));
}

/** Whether node `n` computes integers from shapes (Shape, Size) and integers (`isInt`) alone. */
function computesInts(n: NodeProto, isInt: (t: string) => boolean): boolean {
  if (n.opType === 'Shape' || n.opType === 'Size') return true;
  if (n.opType === 'Constant') return constantOfInts(n);
  return SHAPE_OPS.has(n.opType) && n.input.every(isInt);
}

/** Of `names` (tensors of `prev`), those that `next` computes exactly as `prev` does. */
export const unchangedTensors = (prev: Model, next: Model, names: readonly string[]) =>
  compareTensors(prev, next, names).same;

/**
 * Where a group's channels lie in a tensor: entries offset + c·per .. + per of `axis` (< 0: from the end), of
 * `entries` along it when known.
 */
export interface ChannelRun {
  axis: number;
  offset: number;
  per: number;
  entries?: number;
}

/** The entries of the `removed` channels of `run` along its axis. */
const removedEntries = (run: { offset: number; per: number }, removed: ReadonlySet<number>) =>
  new Set([...removed].flatMap((c) => Array.from({ length: run.per }, (_, j) => run.offset + c * run.per + j)));

/** Values with `dims` without `entries` along `axis` (< 0: from the end; inPlace: dropEntries'). */
function cutEntries<T extends Float32Array | Uint16Array>(
  x: { data: T; dims: number[] },
  axis: number,
  entries: ReadonlySet<number>,
  inPlace = false,
): { data: T; dims: number[] } {
  return dropEntries(x, axis < 0 ? x.dims.length + axis : axis, entries, inPlace);
}

/**
 * The tensor without the `entries` of the removed channels of `run` (a new tensor of onnxruntime's own class, over
 * the old one's memory: the frontier is the only holder of its tensors).
 */
function sliceTensor(t: OrtTensor, run: ChannelRun, channels: number, entries: ReadonlySet<number>) {
  const dims = [...t.dims],
    axis = run.axis < 0 ? dims.length + run.axis : run.axis;
  const fits = run.entries === undefined ? run.offset + channels * run.per <= dims[axis]! : dims[axis] === run.entries;
  if (!fits || (t.type !== 'float32' && t.type !== 'float16')) return undefined;
  const cut = cutEntries({ data: t.data as Float32Array | Uint16Array, dims }, axis, entries, true);
  const Tensor = t.constructor as new (type: string, data: typeof cut.data, dims: number[]) => OrtTensor;
  return new Tensor(t.type, cut.data, cut.dims);
}

/** The channels a group's rewrite removes. */
function removedOf(s: Slicing): Set<number> {
  const removed = new Set(Array.from({ length: s.channels }, (_, c) => c));
  for (const c of s.keep) removed.delete(c);
  return removed;
}

/** A group's rewrite, as a frontier needs it: its activations, and where its channels lie in each cached one. */
export interface Slicing {
  /** The tensors that carry the group's channels (its rewrite only drops entries of them). */
  region: ReadonlySet<string>;
  /** The constant entries that belong to the channels (Group.slices): what the rewrite cuts out of them. */
  slices: readonly AxisSlice[];
  /** Tensors to cut down (the group's consumer inputs), with where the channels lie. */
  runs: ReadonlyMap<string, ChannelRun>;
  /** Channels n of the group, and those kept. */
  channels: number;
  keep: readonly number[];
}

/**
 * Tensors of the calibration set's batches kept between the captures of a sequential or asymmetric prune, for one
 * line of models (the model pruned so far, or the original). `budget`: bytes the cache may hold. `fixed`: the model
 * never changes (asymmetric mode's original), so the first capture computes what every later one wants and keeps it,
 * one run of the model in all, as far as that fits the budget (after that, captures go on from a cut as for a
 * changing model).
 */
export class Frontier {
  /** Per tensor, its value in each batch (by the batch's first row), as onnxruntime gave it. */
  private cache = new Map<string, Map<number, OrtTensor>>();
  private staged = new Map<string, Map<number, OrtTensor>>();
  /** Bytes of the first batch's staged tensors, and the tensors left out for the budget. */
  private stagedBytes = 0;
  private left = new Set<string>();
  /** The cache's bytes while a capture stages, summed once (summing them per staged tensor took most of its time). */
  private heldBytes?: number;
  private ahead: boolean;

  constructor(
    private model: Model,
    readonly budget: number,
    fixed = false,
  ) {
    this.ahead = fixed;
  }

  /** Bytes the cache holds. */
  get bytes(): number {
    let n = 0;
    for (const per of this.cache.values()) for (const t of per.values()) n += (t.data as ArrayBufferView).byteLength;
    return n;
  }

  /**
   * Moves to the model's next version, dropping every cached tensor that `next` computes differently; with `slicing`
   * (the group just pruned), a cached tensor the rewrite only cut down along the group's channels is cut down too.
   */
  advance(next: Model, slicing?: Slicing): void {
    if (next === this.model) return;
    this.ahead = false;
    const { same, sliced } = compareTensors(this.model, next, [...this.cache.keys()], slicing);
    const removed = slicing ? removedOf(slicing) : new Set<number>();
    for (const [t, per] of [...this.cache]) {
      if (same.has(t)) continue;
      const run = sliced.has(t) ? slicing!.runs.get(t) : undefined,
        entries = run && removedEntries(run, removed);
      const cut =
        run && [...per].map(([start, x]) => [start, sliceTensor(x, run, slicing!.channels, entries!)] as const);
      if (cut && cut.every(([, x]) => x)) this.cache.set(t, new Map(cut as [number, OrtTensor][]));
      else this.cache.delete(t);
    }
    this.model = next;
  }

  /**
   * How to compute `want` in the current model: which cached tensors to feed, and which tensors to keep for the
   * later captures (StepPlan). Undefined when a node to run holds a subgraph, whose reads of outer tensors a part of
   * the model cannot feed (the capture then runs the whole model, and nothing is cached).
   */
  step(want: readonly string[], plan: StepPlan): FrontierStep | undefined {
    const { later, changing = [], sliceable = [], laterChanging = [] } = plan;
    const g = this.model.graph!;
    const producer = producers(g),
      have = new Set(this.cache.keys());
    // the nodes to run: back from what is wanted, stopping at cached tensors
    const run = new Set<NodeProto>(),
      stack = (this.ahead ? [...want, ...later] : want).filter((t) => !have.has(t));
    for (let t = stack.pop(); t !== undefined; t = stack.pop()) {
      const n = producer.get(t);
      if (!n || run.has(n) || have.has(t)) continue;
      run.add(n);
      stack.push(...n.input.filter((x) => x));
    }
    if ([...run].some(holdsSubgraph)) {
      this.cache.clear();
      return undefined;
    }
    const read = new Set([...run].flatMap((n) => n.input)),
      made = new Set([...run].flatMap((n) => n.output));
    // a cached tensor that a node run for another of its outputs computes anyway (one part of a Split) is not fed: a
    // graph input of that name would be defined twice
    const given = new Map<string, DataType>();
    for (const t of have)
      if (read.has(t) && !made.has(t)) given.set(t, ORT_TYPES[this.cache.get(t)!.values().next().value!.type]!);
    // what to keep: back from what later captures want, the first tensors known after this run that neither this
    // group's rewrite changes (`changing`; but for those it only cuts down) nor a later group's will; past one a later
    // rewrite changes (an SE block's gated activation: a later group re-fits the gate), the walk goes on to its inputs,
    // to compute it again from. A Constant's output is not kept: its node runs from nothing.
    const dirty = descendants(g, changing),
      dirtyLater = descendants(g, laterChanging),
      known = new Set([...have, ...[...run].flatMap((n) => n.output)]),
      cuttable = new Set(sliceable);
    const cut = new Set<string>(),
      seen = new Set<string>(),
      back = [...later];
    for (let t = back.pop(); t !== undefined; t = back.pop()) {
      const n = producer.get(t);
      if (!n || seen.has(t) || n.opType === 'Constant') continue;
      seen.add(t);
      if (known.has(t) && (cuttable.has(t) || !dirty.has(n)) && !dirtyLater.has(n)) cut.add(t);
      else back.push(...n.input.filter((x) => x));
    }
    // what later captures want first, then the earliest produced: when the budget cannot hold the whole cut, what the
    // rest can be computed again from (a transformer block's input before its attention output, which the block's
    // input alone gives again)
    const at = new Map(g.node.map((n, i) => [n, i])),
      first = new Set(later);
    const keep = [...cut].sort(
      (a, b) => +first.has(b) - +first.has(a) || (at.get(producer.get(a)!) ?? -1) - (at.get(producer.get(b)!) ?? -1),
    );
    return { given, cached: want.filter((t) => have.has(t)), keep };
  }

  /** The tensors the cache holds. */
  get names(): string[] {
    return [...this.cache.keys()];
  }

  /** Whether the cache holds a tensor. */
  has(name: string): boolean {
    return this.cache.has(name);
  }

  /** A cached tensor of one batch. */
  get(name: string, start: number): OrtTensor {
    const t = this.cache.get(name)?.get(start);
    if (!t) throw new Error(`frontier: ${name} of the batch from row ${start} is not cached`);
    return t;
  }

  /**
   * Stages a tensor of one batch for the next capture. It is left out if it has a type no session can be fed, or if
   * it would not fit the budget with what is staged before it: a later capture computes it again, from whatever is
   * cached.
   */
  stage(name: string, start: number, t: OrtTensor, batches: number): void {
    if (!(t.type in ORT_TYPES) || this.left.has(name)) return;
    const bytes = (t.data as ArrayBufferView).byteLength;
    if (start === 0) {
      // from the first batch on, the whole set's size is known: one batch's times the batches
      if ((this.stagedBytes + bytes) * batches + (this.heldBytes ??= this.bytes) > this.budget) {
        this.left.add(name);
        this.ahead = false;
        return;
      }
      this.stagedBytes += bytes;
    }
    let per = this.staged.get(name);
    if (!per) this.staged.set(name, (per = new Map()));
    per.set(start, t);
  }

  /** After a capture that completed: the cache becomes what it staged. After one that failed: empty. */
  commit(ok: boolean): void {
    this.cache = ok ? this.staged : new Map();
    this.staged = new Map();
    this.stagedBytes = 0;
    this.heldBytes = undefined;
    this.left.clear();
  }
}
