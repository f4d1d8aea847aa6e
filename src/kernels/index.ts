export type { Kernels, KernelBuild } from './types.js';
export { Arena, fmtBytes } from './memory.js';
export { wasmKernels, kernelBuild, provideWasm } from './wasm.js';
export { plainKernels } from './plain.js';
export { getKernels, defaultThreads, cores } from './instances.js';
export { GramAccumulator, type Gram, type ConvGeometry } from './gram.js';
