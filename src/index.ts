// subprune's library API: the same operations as the CLI, as typed functions.
export {
  prune,
  pruneSizes,
  MODES,
  type PruneOptions,
  type SizesOptions,
  type Sized,
  type PruneReport,
  type GroupReport,
  type Mode,
} from './prune/index.js';
export { analyze, modelStats, consumerWeightMatrix } from './graph/analyze.js';
export type { Group, Consumer, Refused, Analysis } from './graph/types.js';
export { pruneGroups, type PrunePlan } from './rewrite/index.js';
export { captureGrams, Runner, loadRuntime, type Backend, type RuntimeOptions } from './capture/index.js';
export {
  captureStats,
  mergeStats,
  encodeStats,
  decodeStats,
  readStats,
  modelFingerprint,
  distinctSamples,
  STATS_FORMAT,
  type CaptureStats,
  type CaptureStatsOptions,
  type StatsKey,
} from './capture/shards.js';
export { Calibration, modelInputs, type InputData, type Batch, type Feed, type ModelInput } from './calibration.js';
export { openNpz, npzFromBytes } from './npz.js';
export { evaluate, type Fidelity } from './eval/index.js';
export { resolveBudget, uniformKeeps, type Budget } from './budget/index.js';
export { selectChannels, type LayerProblem, type Selection, type Refit, type SelectOptions } from './select/greedy.js';
export { rankChannels, METHODS, type Method } from './select/baselines.js';
export { sizeModel } from './budget/size.js';
export { allocateByLevel, allocateGlobal, monotone, gridKeeps, type Curve } from './budget/allocate.js';
export { sensitivityCurves, ALLOCATIONS, type Allocation } from './prune/allocation.js';
export { rankGroup, planOf, type Ranked } from './prune/rank.js';
export { runStudy, type StudyOptions, type StudyResult, type StudyRow } from './study/index.js';
export { GramAccumulator, type Gram, type ConvGeometry } from './kernels/gram.js';
export { wasmKernels, plainKernels, type Kernels } from './kernels/index.js';
export { provideWasm } from './kernels/wasm.js';
export { readModel, writeModel, parseModel, serializeModel, type Model } from './onnx/index.js';
export { openNpy, npyFromBytes, readNpy, writeNpy, encodeNpy, type NpyFile } from './npy.js';
export { SubpruneError } from './errors.js';
export * from './images/index.js';
