// The normal form analysis and rewrite work on: unique node names, no Identity aliases of constants.
import { clone } from '@bufbuild/protobuf';
import { TensorProtoSchema, type GraphProto } from '../onnx/index.js';
import { constantTensors } from './shapes.js';

/**
 * Give every node a unique name, in place: unnamed nodes become `${opType}_${index}`, later duplicates get a suffix.
 * Unit ids are node names, so they must be unique and stable across runs on the same file.
 */
export function nameNodes(graph: GraphProto): void {
  const all = new Set(graph.node.map((n) => n.name).filter((n) => n !== ''));
  const seen = new Set<string>();
  graph.node.forEach((n, i) => {
    if (n.name && !seen.has(n.name)) {
      seen.add(n.name);
      return;
    }
    const base = n.name || `${n.opType}_${i}`;
    let name = base;
    for (let k = 1; all.has(name) || seen.has(name); k++) name = `${base}_${k}`;
    n.name = name;
    seen.add(name);
    all.add(name);
  });
}

/**
 * Replace Identity nodes that merely alias a constant by a copy of the constant under the Identity's output name,
 * in place. The PyTorch exporter deduplicates equal initializers (e.g. the zero biases of an untrained BN-folded
 * conv) this way; without folding, every such conv would look like it shares its bias with another.
 */
export function foldConstantIdentities(graph: GraphProto): void {
  const consts = constantTensors(graph);
  const outputs = new Set(graph.output.map((o) => o.name));
  graph.node = graph.node.filter((n) => {
    const t = n.opType === 'Identity' ? consts.get(n.input[0] ?? '') : undefined;
    const y = n.output[0] ?? '';
    if (!t || !y || outputs.has(y)) return true;
    const copy = clone(TensorProtoSchema, t);
    copy.name = y;
    graph.initializer.push(copy);
    consts.set(y, copy);
    return false;
  });
}

/** The normal form analysis and rewrite work on: unique node names, no Identity aliases of constants. Idempotent. */
export function normalizeGraph(graph: GraphProto): void {
  nameNodes(graph);
  foldConstantIdentities(graph);
}
