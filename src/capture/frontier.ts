// Sequential and asymmetric captures go group by group, each on the model pruned so far. Rerunning the model from its
// inputs for every group costs a forward pass per group; a frontier instead keeps, over the whole calibration set,
// the tensors at the edge of what the next groups leave unchanged, and the next capture runs only the nodes after it.
// Correctness never rests on predicting what changes: when the model moves to its next version, every cached tensor
// whose computation differs in any node or constant upstream is dropped (advance), and a capture computes whatever
// is not cached from the model's inputs.
import { toBinary } from '@bufbuild/protobuf';
import {
  AttributeProtoSchema,
  DataType,
  type AttributeProto,
  TensorProtoSchema,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import { holdsSubgraphs, type OrtTensor } from './runner.js';
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

/** The nodes `names` depend on, in `g`. */
function ancestors(g: GraphProto, names: readonly string[]): Set<NodeProto> {
  const producer = producers(g),
    out = new Set<NodeProto>(),
    stack = [...names];
  for (let t = stack.pop(); t !== undefined; t = stack.pop()) {
    const n = producer.get(t);
    if (!n || out.has(n)) continue;
    out.add(n);
    stack.push(...n.input.filter((x) => x));
  }
  return out;
}

const sameBytes = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length &&
  Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));

/** Two constants with the same type, shape and values (raw bytes compared directly; other forms serialized). */
function sameTensor(a: TensorProto, b: TensorProto): boolean {
  if (a.dataType !== b.dataType || a.dims.length !== b.dims.length || a.dims.some((x, i) => x !== b.dims[i]))
    return false;
  if (a.rawData.length && b.rawData.length && !a.externalData.length && !b.externalData.length)
    return sameBytes(a.rawData, b.rawData);
  return sameBytes(toBinary(TensorProtoSchema, a), toBinary(TensorProtoSchema, b));
}

/** Two nodes that compute the same thing from the same tensor names (their names aside). */
const sameNode = (a: NodeProto, b: NodeProto) =>
  a.opType === b.opType &&
  a.domain === b.domain &&
  a.input.join('\n') === b.input.join('\n') &&
  a.output.join('\n') === b.output.join('\n') &&
  a.attribute.length === b.attribute.length &&
  a.attribute.every((x, i) => sameAttribute(x, b.attribute[i]!));

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
 * Of `names` (tensors of `prev`), those that `next` computes exactly as `prev` does: the same nodes and constants all
 * the way up to the graph inputs.
 */
export function unchangedTensors(prev: Model, next: Model, names: readonly string[]): Set<string> {
  const a = prev.graph!,
    b = next.graph!;
  const before = producers(a),
    constsA = new Map(a.initializer.map((t) => [t.name, t])),
    constsB = new Map(b.initializer.map((t) => [t.name, t])),
    inputsA = new Set(a.input.map((x) => x.name)),
    inputsB = new Set(b.input.map((x) => x.name));
  const need = ancestors(b, names),
    same = new Set<string>();
  // a graph input or constant (no producer): the same kind in both, and the same values
  const sourceSame = (t: string) => {
    const ca = constsA.get(t),
      cb = constsB.get(t);
    if (ca || cb) return !!ca && !!cb && sameTensor(ca, cb);
    return inputsA.has(t) && inputsB.has(t);
  };
  const producerB = producers(b);
  const ok = (t: string) => !t || same.has(t) || (!producerB.has(t) && !before.has(t) && sourceSame(t));
  for (const n of b.node) {
    if (!need.has(n)) continue;
    const old = n.output.map((o) => before.get(o));
    if (old[0] && old.every((o) => o === old[0]) && sameNode(old[0], n) && n.input.every(ok))
      for (const o of n.output) same.add(o);
  }
  return new Set(names.filter((t) => same.has(t) || (!producerB.has(t) && !before.has(t) && sourceSame(t))));
}

/**
 * Tensors of the calibration set's batches kept between the captures of a sequential or asymmetric prune, for one
 * line of models (the model pruned so far, or the original). `budget`: bytes the cache may hold. `fixed`: the model
 * never changes (asymmetric mode's original), so the first capture computes what every later one wants and keeps it,
 * one run of the model in all, while that fits the budget (after that, captures go on from a cut as for a changing
 * model).
 */
export class Frontier {
  /** Per tensor, its value in each batch (by the batch's first row), as onnxruntime gave it. */
  private cache = new Map<string, Map<number, OrtTensor>>();
  private staged = new Map<string, Map<number, OrtTensor>>();
  private stagedBytes = 0;
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

  /** Moves to the model's next version, dropping every cached tensor that `next` computes differently. */
  advance(next: Model): void {
    if (next !== this.model) {
      this.ahead = false;
      const keep = unchangedTensors(this.model, next, [...this.cache.keys()]);
      for (const t of [...this.cache.keys()]) if (!keep.has(t)) this.cache.delete(t);
      this.model = next;
    }
  }

  /**
   * How to compute `want` in the current model: which cached tensors to feed, and which tensors to keep for the
   * captures of `later` (their wanted tensors), given that the nodes `changing` (and what they reach) change before
   * then. Undefined when the graph holds subgraphs (the capture then runs the whole model, and nothing is cached).
   */
  step(want: readonly string[], later: readonly string[], changing: readonly NodeProto[]): FrontierStep | undefined {
    const g = this.model.graph!;
    if (holdsSubgraphs(g)) {
      this.cache.clear();
      return undefined;
    }
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
    const read = new Set([...run].flatMap((n) => n.input));
    const given = new Map<string, DataType>();
    for (const t of have) if (read.has(t)) given.set(t, ORT_TYPES[this.cache.get(t)!.values().next().value!.type]!);
    // what to keep: tensors known after this run and unchanged by `changing` that later captures want, or that a node
    // they need reads when that node is not itself known and unchanged (it will run again)
    const dirty = descendants(g, changing),
      needed = ancestors(g, later),
      known = new Set([...have, ...[...run].flatMap((n) => n.output)]);
    const done = (n: NodeProto) => !dirty.has(n) && n.output.every((o) => known.has(o));
    const clean = (t: string) => !dirty.has(producer.get(t)!);
    const keep = new Set(later.filter((t) => known.has(t) && clean(t)));
    for (const n of needed) if (!done(n)) for (const t of n.input) if (known.has(t) && clean(t)) keep.add(t);
    return { given, cached: want.filter((t) => have.has(t)), keep: [...keep] };
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
   * Stages a tensor of one batch for the next capture (dropped if it has a type no session can be fed, or when the
   * budget would be exceeded: everything staged is then given up, and the next capture computes it again).
   */
  stage(name: string, start: number, t: OrtTensor, batches: number): void {
    if (this.stagedBytes < 0) return;
    if (!(t.type in ORT_TYPES)) return;
    const bytes = (t.data as ArrayBufferView).byteLength;
    // after the first batch, the whole set is known: one batch's size times the batches
    this.stagedBytes += bytes;
    if (start === 0 && this.stagedBytes * batches + this.bytes > this.budget) {
      this.staged.clear();
      this.stagedBytes = -1;
      this.ahead = false;
      return;
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
  }
}
