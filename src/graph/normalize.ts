// The normal form analysis and rewrite work on: model-local functions inlined, unique node names, one initializer of
// each name, no Identity aliases or other views of constants.
import { clone } from '@bufbuild/protobuf';
import {
  AttributeProtoSchema,
  DataType,
  NodeProtoSchema,
  TensorProtoSchema,
  markCopy,
  numel,
  tensorToInt64,
  type FunctionProto,
  type GraphProto,
  type Model,
  type NodeProto,
  type TensorProto,
} from '../onnx/index.js';
import { OPS } from './ops.js';
import { constantTensors } from './shapes.js';

const norm = (domain: string) => (domain === 'ai.onnx' ? '' : domain);
const fnKey = (domain: string, name: string) => `${norm(domain)}|${name}`;

/** Why a model-local function cannot be inlined (its body holds a subgraph, or imports another opset), if so. */
export function notInlinable(model: Model, f: FunctionProto): string | undefined {
  if (f.node.some((n) => n.attribute.some((a) => a.g || a.graphs.length)))
    return 'its body holds a subgraph (If, Loop, Scan)';
  for (const o of f.opsetImport) {
    const m = model.opsetImport.find((x) => norm(x.domain) === norm(o.domain));
    if (m && m.version !== o.version)
      return `it imports opset ${o.version} of "${o.domain || 'ai.onnx'}" where the model imports ${m.version}`;
  }
  return undefined;
}

/** The model-local function a node calls, if any. */
export function calledFunction(model: Model, node: NodeProto): FunctionProto | undefined {
  return model.functions.find((f) => fnKey(f.domain, f.name) === fnKey(node.domain, node.opType));
}

/**
 * Replace every call of a model-local function (a FunctionProto: torch's export_modules_as_functions writes one per
 * module class) in the main graph by the function's body, in place, nested calls too: the layers inside are then
 * layers of the graph, and a pruned model needs no function whose inputs changed shape. Inner tensors get names
 * prefixed by the call's node name (made unique), inner nodes `${call}/${inner}`; attributes referring to the call's
 * (ref_attr_name) take its values. Functions that cannot be inlined (notInlinable) stay called; functions no longer
 * called are dropped.
 */
export function inlineFunctions(model: Model): void {
  const graph = model.graph;
  if (!graph || !model.functions.length) return;
  const fns = new Map(
    model.functions.filter((f) => !notInlinable(model, f)).map((f) => [fnKey(f.domain, f.name), f] as const),
  );
  if (!fns.size) return;
  const taken = new Set<string>([
    ...graph.input.map((v) => v.name),
    ...graph.initializer.map((t) => t.name),
    ...graph.node.flatMap((n) => [...n.input, ...n.output]),
  ]);
  const fresh = (base: string) => {
    let name = base;
    for (let k = 1; taken.has(name); k++) name = `${base}_${k}`;
    taken.add(name);
    return name;
  };
  const expand = (nodes: NodeProto[], depth: number): NodeProto[] =>
    nodes.flatMap((call) => {
      const f = fns.get(fnKey(call.domain, call.opType));
      if (!f || depth > 32) return [call]; // deeper: a recursive function, left for the analysis to refuse
      const at = call.name || call.opType,
        names = new Map<string, string>();
      f.input.forEach((x, i) => names.set(x, call.input[i] ?? ''));
      f.output.forEach((y, i) => names.set(y, call.output[i] || fresh(`${at}/${y}`)));
      const rename = (t: string) => {
        if (!t) return t;
        if (!names.has(t)) names.set(t, fresh(`${at}/${t}`));
        return names.get(t)!;
      };
      const attrs = new Map(call.attribute.map((a) => [a.name, a]));
      const body = f.node.map((inner, i) => {
        const n = clone(NodeProtoSchema, inner);
        n.name = `${at}/${inner.name || `${inner.opType}_${i}`}`;
        n.input = n.input.map(rename);
        n.output = n.output.map(rename);
        n.attribute = n.attribute.flatMap((a) => {
          if (!a.refAttrName) return [a];
          const given = attrs.get(a.refAttrName);
          return given ? [{ ...clone(AttributeProtoSchema, given), name: a.name }] : [];
        });
        return n;
      });
      return expand(body, depth + 1);
    });
  graph.node = expand(graph.node, 0);
  for (const f of fns.values())
    for (const o of f.opsetImport)
      if (!model.opsetImport.some((m) => norm(m.domain) === norm(o.domain))) model.opsetImport.push(o);
  // keep what is still called: from the graph, or from the body of a function kept
  const keep = new Set(graph.node.map((n) => fnKey(n.domain, n.opType)));
  model.functions.forEach((f) => !fns.has(fnKey(f.domain, f.name)) && keep.add(fnKey(f.domain, f.name)));
  for (let size = 0; size !== keep.size;) {
    size = keep.size;
    for (const f of model.functions)
      if (keep.has(fnKey(f.domain, f.name))) f.node.forEach((n) => keep.add(fnKey(n.domain, n.opType)));
  }
  model.functions = model.functions.filter((f) => keep.has(fnKey(f.domain, f.name)));
}

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

/** Ops that only give their input other dimensions, its values in the same order. */
const VIEWS = new Set(['Identity', 'Reshape', 'Squeeze', 'Unsqueeze', 'Flatten']);

/**
 * The dimensions of a view (VIEWS) of a constant, by the op table's shape rule, if its shape or axes are constants
 * too; undefined if the node is not such a view.
 */
function viewOfConstant(n: NodeProto, consts: Map<string, TensorProto>): number[] | undefined {
  const t = VIEWS.has(n.opType) && !n.domain ? consts.get(n.input[0] ?? '') : undefined;
  if (!t || !n.output[0] || n.input.slice(1).some((x) => x && !consts.has(x))) return undefined;
  const ints = (name: string) => {
    const c = consts.get(name);
    return c?.dataType === DataType.INT64 ? Array.from(tensorToInt64(c).data, Number) : undefined;
  };
  const dims = OPS[n.opType]!.shape?.({
    node: n,
    ins: n.input.map((x) => (x ? consts.get(x)?.dims.map(Number) : undefined)),
    constant: (name) => consts.get(name),
    producer: () => undefined,
    value: ints,
  })?.[0];
  return dims && numel(dims) === numel(t.dims.map(Number)) ? dims : undefined;
}

/**
 * Replace views of constants (Identity, Reshape, Squeeze, Unsqueeze, Flatten with constant shapes or axes) by a copy
 * of the constant under the view's output name, in place. The PyTorch exporter deduplicates equal initializers (e.g.
 * the zero biases of an untrained BN-folded conv) by Identity aliases; without folding, every such conv would look
 * like it shares its bias with another. paddle2onnx adds a conv's bias as Add(y, Reshape(bias, [1, C, 1, 1])) (an
 * elementwise_add along axis 1): folded, that is a constant per channel, which the analysis slices.
 */
export function foldConstantViews(graph: GraphProto): void {
  const consts = constantTensors(graph);
  const outputs = new Set(graph.output.map((o) => o.name));
  // the constants folded views read (sources, shapes, axes): dropped below if nothing else reads them, so that a
  // parameter is not counted (and kept unpruned) twice
  const folded = new Set<string>();
  graph.node = graph.node.filter((n) => {
    const dims = outputs.has(n.output[0] ?? '') ? undefined : viewOfConstant(n, consts);
    if (!dims) return true;
    const copy = clone(TensorProtoSchema, consts.get(n.input[0]!)!);
    copy.name = n.output[0]!;
    copy.dims = dims.map(BigInt);
    markCopy(copy, consts.get(n.input[0]!)!);
    graph.initializer.push(copy);
    consts.set(copy.name, copy);
    n.input.forEach((x) => folded.add(x));
    return false;
  });
  // an initializer listed as a graph input (before IR 4) stays: without it the input would be required
  const read = new Set([...graph.node.flatMap((n) => n.input), ...outputs, ...graph.input.map((i) => i.name)]);
  const unread = (name: string) => folded.has(name) && !read.has(name);
  graph.node = graph.node.filter((n) => !(n.opType === 'Constant' && unread(n.output[0] ?? '')));
  graph.initializer = graph.initializer.filter((t) => !unread(t.name));
}

/**
 * Drop the empty names that end a node's inputs: optional inputs left out, as ONNX allows either way. torch writes
 * LayerNormalization(x, scale, '') for a LayerNorm without bias (MPT, OLMo), which onnxruntime 1.x's extended graph
 * optimizations crash on (a segmentation fault loading the model at the default level).
 */
export function trimOmittedInputs(graph: GraphProto): void {
  for (const n of graph.node) while (n.input.length && n.input[n.input.length - 1] === '') n.input.pop();
}

/**
 * Keep only the last initializer of each name. ONNX forbids two of one name, but onnxruntime loads such a file (it
 * warns and uses the last), and a converter that adds a parameter's initializer again writes one; pruning only the
 * copy the analysis reads (the last, as constantTensors does) left the other at its old shape, and onnxruntime refused
 * the pruned model ("Shape of initializer ... does not match").
 */
export function dropShadowedInitializers(graph: GraphProto): void {
  const last = new Map(graph.initializer.map((t, i) => [t.name, i]));
  if (last.size < graph.initializer.length)
    graph.initializer = graph.initializer.filter((t, i) => last.get(t.name) === i);
}

/**
 * The normal form analysis and rewrite work on: model-local functions inlined, unique node names, one initializer of
 * each name, no Identity aliases or other views of constants, no trailing omitted inputs. Idempotent.
 */
export function normalizeModel(model: Model): void {
  const graph = model.graph;
  if (!graph) return;
  inlineFunctions(model);
  nameNodes(graph);
  dropShadowedInitializers(graph);
  foldConstantViews(graph);
  trimOmittedInputs(graph);
}

/**
 * Whether normalizeModel would leave `model` as it is: every node named, uniquely, one initializer of each name, no
 * view of a constant, no trailing omitted input, and no model-local function (conservatively: one that
 * cannot be inlined stays).
 */
export function isNormalized(model: Model): boolean {
  const graph = model.graph;
  if (!graph) return true;
  if (model.functions.length || new Set(graph.initializer.map((t) => t.name)).size < graph.initializer.length)
    return false;
  const consts = constantTensors(graph),
    outputs = new Set(graph.output.map((o) => o.name)),
    names = new Set<string>();
  for (const n of graph.node) {
    if (!n.name || names.has(n.name) || n.input[n.input.length - 1] === '') return false;
    names.add(n.name);
    if (!outputs.has(n.output[0] ?? '') && viewOfConstant(n, consts)) return false;
  }
  return true;
}
