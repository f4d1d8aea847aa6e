// Rewriting a model with fewer channels. Analysis (src/graph) already recorded, per unit, every constant to slice
// and every shape constant to edit; this module applies those records generically, so it has no per-op knowledge.
import { clone } from '@bufbuild/protobuf';
import { badInput } from '../errors.js';
import {
  DataType,
  dataTypeName,
  encodeFloat32,
  numel,
  ModelProtoSchema,
  replaceInitializerData,
  setTensorData,
  tensorToFloat32,
  tensorToInt64,
  type GraphProto,
  type Model,
  type TensorProto,
} from '../onnx/index.js';
import type { ParamSlice } from '../graph/ops.js';
import { constantTensors } from '../graph/shapes.js';
import { normalizeGraph } from '../graph/normalize.js';
import { inputAxis, matrixToWeight } from '../graph/layers.js';
import type { Unit } from '../graph/types.js';

export interface PrunePlan {
  unit: Unit;
  /** Kept channel indices, strictly ascending, at least one. */
  keep: number[];
  /**
   * Re-fitted consumer weights, (keep.length·g) × m row-major in the consumerWeightMatrix layout (rows: kept channels'
   * groups in `keep` order). Absent: the consumer's weight is only sliced. If the consumer is itself the producer of
   * another unit in the same call, W may have either its original m columns (they are then sliced by that unit's keep)
   * or already only that unit's kept columns.
   */
  W?: Float64Array;
}

const FLOATS = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE]);

/** Why a constant cannot be sliced or replaced by the rewrite (it reads and writes FLOAT, FLOAT16 and DOUBLE only). */
export function notRewritable(t: TensorProto): string | undefined {
  if (FLOATS.has(t.dataType)) return undefined;
  const type = dataTypeName(t.dataType);
  return `constant "${t.name}" has data type ${type}; subprune rewrites FLOAT, FLOAT16 and DOUBLE constants only`;
}

/** A float constant being edited: decoded once, written back once (so FLOAT16 weights are rounded only once). */
interface Work {
  t: TensorProto;
  dims: number[];
  data: Float32Array;
}

/** Keep only the kept channels' blocks along `axis` (channel c owns entries c·group .. c·group+group−1). */
function sliceAxis(w: Work, s: ParamSlice, keep: readonly number[], channels: number, what: string): void {
  const { dims, data } = w;
  if (dims[s.axis] !== channels * s.group) {
    throw badInput(
      `${what}: constant "${s.tensor}" has ${dims[s.axis]} entries on axis ${s.axis}, expected ` +
        `${channels}×${s.group}; was the model changed after analysis?`,
    );
  }
  const outer = numel(dims.slice(0, s.axis));
  const inner = numel(dims.slice(s.axis + 1));
  const block = s.group * inner;
  const out = new Float32Array(outer * keep.length * block);
  let o = 0;
  for (let i = 0; i < outer; i++) {
    const base = i * dims[s.axis]! * inner;
    for (const c of keep) {
      out.set(data.subarray(base + c * block, base + (c + 1) * block), o);
      o += block;
    }
  }
  w.dims = dims.map((d, i) => (i === s.axis ? keep.length * s.group : d));
  w.data = out;
}

function checkPlan(p: PrunePlan): void {
  const { unit, keep } = p;
  if (keep.length === 0)
    throw badInput(
      `unit "${unit.id}": keep at least one channel (removing all of them would disconnect the consumer).`,
    );
  keep.forEach((c, i) => {
    if (!Number.isInteger(c) || c < 0 || c >= unit.channels)
      throw badInput(`unit "${unit.id}": channel ${c} is out of range 0..${unit.channels - 1}.`);
    if (i > 0 && c <= keep[i - 1]!)
      throw badInput(`unit "${unit.id}": kept channels must be strictly ascending (W's rows follow keep).`);
  });
}

/**
 * A new model with each plan's unit pruned to its kept channels: producer weight (output axis) and bias, per-channel
 * parameters of the chain, Reshape shape constants, and the consumer weight (replaced by W or sliced on its input
 * axis). Initializers keep their data types. Shapes recorded in value_info for the changed tensors are dropped
 * (onnxruntime re-infers them). The input model is not changed.
 *
 * Order (matters when a weight is both one unit's consumer and the next unit's producer, e.g. LeNet's fc1):
 * 1. consumer side of every plan: replace the weight by W (with the consumer's original m outputs), or slice its
 *    input axis; 2. producer side of every plan: slice output axes, biases, chain parameters, shape constants.
 * So a re-fitted W with all m columns gets its output columns sliced in step 2 by the other unit's keep.
 */
export function pruneUnits(model: Model, plans: PrunePlan[]): Model {
  const out = clone(ModelProtoSchema, model);
  const graph = out.graph;
  if (!graph) throw badInput('the model has no graph.');
  normalizeGraph(graph); // a no-op if `model` went through analyze; otherwise the same form the units were found in
  const consts = constantTensors(graph);
  const work = new Map<string, Work>();
  const get = (name: string, unit: Unit): Work => {
    let w = work.get(name);
    if (!w) {
      const t = consts.get(name);
      if (!t)
        throw badInput(`unit "${unit.id}": the model has no constant "${name}"; was it analysed on a different model?`);
      w = { t, ...tensorToFloat32(t) };
      work.set(name, w);
    }
    return w;
  };
  const ids = new Set<string>();
  for (const p of plans) {
    checkPlan(p);
    if (ids.has(p.unit.id)) throw badInput(`unit "${p.unit.id}" appears twice in one pruneUnits call.`);
    ids.add(p.unit.id);
  }
  const byProducerWeight = new Map(plans.map((p) => [p.unit.weight, p]));
  /** Output slices already done by a W that came with only the next unit's kept columns. */
  const done = new Set<string>();

  // 1. Consumer side.
  for (const { unit, keep, W } of plans) {
    const w = get(unit.consumerWeight, unit);
    if (w.data.length !== unit.d * unit.m) {
      throw badInput(
        `unit "${unit.id}": consumer weight "${unit.consumerWeight}" has ${w.data.length} values, expected ` +
          `${unit.d}×${unit.m}; was the model changed after analysis?`,
      );
    }
    if (W) {
      const rows = keep.length * unit.g;
      const next = byProducerWeight.get(unit.consumerWeight);
      let cols = unit.m;
      if (W.length !== rows * cols && next && W.length === rows * next.keep.length) {
        cols = next.keep.length;
        done.add(unit.consumerWeight);
      }
      if (W.length !== rows * cols)
        throw badInput(
          `unit "${unit.id}": W has ${W.length} values, expected ${rows}×${unit.m} (kept channels × g by ` +
            'consumer outputs).',
        );
      Object.assign(w, matrixToWeight(unit.consumerLayout, W, rows, cols, w.dims, unit.g));
    } else {
      const slice = { tensor: unit.consumerWeight, ...inputAxis(unit.consumerLayout, unit.g) };
      sliceAxis(w, slice, keep, unit.channels, `unit "${unit.id}"`);
    }
  }

  // 2. Producer side and chain.
  const changed = new Set<string>();
  for (const { unit, keep } of plans) {
    for (const s of unit.slices) {
      if (s.tensor === unit.weight && done.has(s.tensor)) continue;
      sliceAxis(get(s.tensor, unit), s, keep, unit.channels, `unit "${unit.id}"`);
    }
    for (const e of unit.shapeEdits) {
      const t = consts.get(e.tensor);
      if (!t) throw badInput(`unit "${unit.id}": the model has no shape constant "${e.tensor}".`);
      const { dims, data } = tensorToInt64(t);
      data[e.index] = BigInt(keep.length * e.perChannel);
      writeBack(graph, e.tensor, t, dims, data);
    }
    changed.add(unit.producer.output[0] ?? '');
    for (const n of unit.chain) n.output.forEach((o) => changed.add(o));
  }
  for (const [name, w] of work) writeBack(graph, name, w.t, w.dims, w.data);

  // Shapes of the producer output and the chain changed; drop stale value_info rather than guess (ORT re-infers).
  graph.valueInfo = graph.valueInfo.filter((vi) => !changed.has(vi.name) && !work.has(vi.name));
  return out;
}

/** Store new data in an initializer (keeps its data type, fixes its graph-input entry) or a Constant node's tensor. */
function writeBack(
  graph: GraphProto,
  name: string,
  t: TensorProto,
  dims: number[],
  data: Float32Array | BigInt64Array,
): void {
  if (graph.initializer.includes(t)) {
    replaceInitializerData(graph, name, dims, data);
    return;
  }
  if (data instanceof BigInt64Array) {
    setTensorData(t, dims, DataType.INT64, new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice());
  } else {
    const dt = t.dataType === DataType.FLOAT16 || t.dataType === DataType.DOUBLE ? t.dataType : DataType.FLOAT;
    setTensorData(t, dims, dt, encodeFloat32(data, dt));
  }
}
