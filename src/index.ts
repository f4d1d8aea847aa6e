// subprune's library API: the same operations as the CLI, as typed functions.
export { prune, type PruneOptions, type PruneReport, type UnitReport, type Mode } from './prune/index.js';
export { analyze, modelStats, consumerWeightMatrix } from './graph/analyze.js';
export type { Unit, Refused, Analysis } from './graph/types.js';
export { pruneUnits } from './rewrite/index.js';
export { captureGrams, Runner, modelInput, loadRuntime, type Backend } from './capture/index.js';
export { evaluate, type Fidelity } from './eval/index.js';
export { resolveBudget, uniformKeeps, type Budget } from './budget/index.js';
export { selectChannels, type LayerProblem, type Selection, type Refit, type SelectOptions } from './select/greedy.js';
export { GramAccumulator, type Gram, type ConvGeometry } from './kernels/gram.js';
export { wasmKernels, plainKernels, type Kernels } from './kernels/index.js';
export { provideWasm } from './kernels/wasm.js';
export { readModel, writeModel, parseModel, serializeModel, type Model } from './onnx/index.js';
export { openNpy, npyFromBytes, readNpy, writeNpy, encodeNpy, type NpyFile } from './npy.js';
export { SubpruneError } from './errors.js';
