import type { KernelBuild, Kernels } from './types.js';
import { kernelBuild, wasmKernels } from './wasm.js';
import { plainKernels } from './plain.js';

/** The cores there are, where the platform says (in a browser: 1, as the thread pool needs Node's worker_threads). */
export function cores(): number {
  const os = globalThis.process?.getBuiltinModule?.('node:os') as typeof import('node:os') | undefined;
  return os?.availableParallelism?.() ?? 1;
}

/** All cores: results are bit-identical for any thread count (each range of rows is computed whole by one thread). */
export function defaultThreads(): number {
  return cores();
}

/** Which kernels run the selection and the Gram accumulation, on how many threads. */
export interface KernelOptions {
  /** SIMD WebAssembly (default) or plain TypeScript (for comparison). */
  kernels?: 'wasm' | 'plain';
  /** Threads for the wasm kernels (default: all cores); results are bit-identical for any count. */
  threads?: number;
}

const cache = new Map<string, Kernels>();

/**
 * The kernel set for a kind, thread count and wasm build (default: kernelBuild()), made once per process (worker
 * threads start once). Users allocate from its arena between mark() and release(mark).
 */
export function getKernels(kind: 'wasm' | 'plain' = 'wasm', threads = defaultThreads(), build?: KernelBuild): Kernels {
  const n = kind === 'plain' ? 1 : Math.max(1, Math.floor(threads));
  const b = kind === 'plain' ? 'plain' : (build ?? kernelBuild());
  const key = `${kind}:${b}:${n}`;
  let k = cache.get(key);
  if (!k) cache.set(key, (k = b === 'plain' ? plainKernels() : wasmKernels(n, b)));
  return k;
}
