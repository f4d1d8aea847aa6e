// Model size as a function of the channels kept per unit, without rewriting the model. Pruning unit u from n_u to k_u
// channels scales every constant it slices (producer weight and bias, chain parameters, the consumer weight's input
// axis) by k_u/n_u, and the FLOPs of its producer and consumer nodes likewise; a tensor or node touched by two units
// (LeNet's fc2 weight: fc1's consumer, fc2's producer) scales by both. So the size is exact and costs O(tensors).
import { internal } from '../errors.js';
import { numel, tensorDims, type Model } from '../onnx/index.js';
import { modelStats } from '../graph/analyze.js';
import { constantTensors, inferShapes, nodeMacs } from '../graph/shapes.js';
import type { Unit } from '../graph/types.js';
import type { SizeOf } from './index.js';

export type Target = 'params' | 'flops';

/** A term of the size: `per` × Π k_u over `units` (per = full size / Π n_u, a whole number). */
interface Term {
  per: number;
  units: string[];
}

/**
 * Exact params (every initializer and Constant tensor, as modelStats counts them) or FLOPs after pruning to `keeps`.
 */
export function sizeModel(model: Model, units: Unit[], inputShape: number[], target: Target): SizeOf {
  const full = modelStats(model, inputShape);
  const touched = new Map<string, Set<Unit>>(); // tensor or node name → units that scale it
  const touch = (name: string, u: Unit) => {
    const s = touched.get(name) ?? new Set();
    s.add(u);
    touched.set(name, s);
  };
  let size: number, value: (name: string) => number;
  if (target === 'params') {
    for (const u of units) {
      u.slices.forEach((s) => touch(s.tensor, u));
      touch(u.consumerWeight, u);
    }
    const consts = constantTensors(model.graph!);
    size = full.params;
    value = (name) => numel(tensorDims(consts.get(name)!));
  } else {
    for (const u of units) {
      touch(`node:${u.producer.name}`, u);
      touch(`node:${u.consumer.name}`, u);
    }
    const shapes = inferShapes(model, inputShape),
      byName = new Map(model.graph!.node.map((n) => [`node:${n.name}`, n]));
    const batch = inputShape[0] || 1;
    size = full.flops;
    value = (name) => (2 * (nodeMacs(byName.get(name)!, shapes) ?? 0)) / batch;
  }
  const terms: Term[] = [];
  for (const [name, us] of touched) {
    const v = value(name),
      denom = [...us].reduce((a, u) => a * u.channels, 1);
    if (v % denom !== 0) throw internal(`size of ${name} (${v}) is not a multiple of its units' channels (${denom})`);
    size -= v;
    terms.push({ per: v / denom, units: [...us].map((u) => u.id) });
  }
  const base = size;
  return (keeps) => terms.reduce((s, t) => s + t.units.reduce((p, id) => p * keeps.get(id)!, t.per), base);
}
