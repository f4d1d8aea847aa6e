import type { KernelBuild, Kernels } from './types.js';
import { kernelBuild, wasmKernels } from './wasm.js';
import { plainKernels } from './plain.js';

const nodeOs = () => globalThis.process?.getBuiltinModule?.('node:os') as typeof import('node:os') | undefined;

/** The cores there are, where the platform says (in a browser: 1, as the thread pool needs Node's worker_threads). */
export function cores(): number {
  return nodeOs()?.availableParallelism?.() ?? 1;
}

/**
 * The cores other processes leave free: all cores less the 1-minute load average (rounded), at least 1. On a busy
 * machine a second thread only waits for a core: with load average 12 on 2 cores (medians of 31 runs at nice −20),
 * the 1024×128, k = 32 selection from activations (Gram, greedy, re-fit) took 4.4 ms on 1 thread and 22 ms on 2,
 * 2048×256, k = 64 9.7 and 12.1 ms, 4096×512, k = 128 147 and 146 ms; one Gram block of 128 rows took 0.81 ms on 1
 * and 1.1 ms on 2 at d = 512, 2.7 and 7.8 ms at d = 768. At load 0.2–2 (the others starting again) 2 threads were
 * still no faster (39 and 46 ms for 4096×512; a Gram block at d = 2048 11.3 and 11.9 ms): a second thread pays only
 * on a core nobody else wants. On an idle machine 2 threads are no slower than 1 since the arena clears memory with
 * memory.fill and the Gram blocks, Q = G·W and the re-fit's solves split only from sizes where a second thread pays
 * (wasm.ts MIN_WORK_OF; `node dist/bench/threads-stress.js 0 --reps 41` at load 1.5: 1024×128, k = 32: 1.8 ms on
 * both; 2048×256, k = 64: 6.7 on 2 against 7.1 on 1; 4096×512, k = 128: 29.4 against 42.7). Results are
 * bit-identical for any thread count (each range of rows is computed whole by one thread), so only the time depends
 * on it.
 */
export function defaultThreads(): number {
  const n = cores(),
    load = nodeOs()?.loadavg?.()[0] ?? 0;
  return Math.max(1, Math.min(n, Math.round(n - load)));
}

/** Which kernels run the selection and the Gram accumulation, on how many threads. */
export interface KernelOptions {
  /** SIMD WebAssembly (default) or plain TypeScript (for comparison). */
  kernels?: 'wasm' | 'plain';
  /** Threads for the wasm kernels (default: defaultThreads()); results are bit-identical for any count. */
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
