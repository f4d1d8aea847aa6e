import type { KernelBuild, Kernels } from './types.js';
import { kernelBuild, wasmKernels } from './wasm.js';
import { plainKernels } from './plain.js';

const nodeOs = () => globalThis.process?.getBuiltinModule?.('node:os') as typeof import('node:os') | undefined;

/** The cores there are, where the platform says (in a browser: 1, as the thread pool needs Node's worker_threads). */
export function cores(): number {
  return nodeOs()?.availableParallelism?.() ?? 1;
}

/** The CPU time of each core (ms) as the platform counts it: busy (user, nice, system, interrupts) and in all. */
export interface CpuTimes {
  busy: number;
  total: number;
}

const cpuTimes = (os: typeof import('node:os')): CpuTimes[] =>
  os.cpus().map(({ times: t }) => ({
    busy: t.user + t.nice + t.sys + t.irq,
    total: t.user + t.nice + t.sys + t.irq + t.idle,
  }));

/**
 * The cores other processes leave free, from two readings of the cores' CPU times and the CPU time this process took
 * between them (`ownMs`): the share of the listed cores' time others kept busy, as a share of this process's `n`
 * cores (a container's cores may be a few of the many the platform lists, and busy as they are on average),
 * subtracted from n and rounded, at least 1.
 */
export function coresLeft(n: number, before: CpuTimes[], after: CpuTimes[], ownMs: number): number {
  let busy = -ownMs,
    total = 0;
  for (const [i, a] of after.entries()) {
    busy += a.busy - (before[i]?.busy ?? a.busy);
    total += a.total - (before[i]?.total ?? a.total);
  }
  const others = total > 0 ? (n * Math.max(0, busy)) / total : 0;
  return Math.max(1, Math.min(n, Math.round(n - others)));
}

/** How long defaultThreads() watches the cores, and how long its answer stands. */
const WATCH_MS = 100,
  FRESH_MS = 10_000;
let measured: { at: number; threads: number } | undefined;

/**
 * The cores other processes leave free, watched for 0.1 s (coresFree; the answer stands for 10 s). On a busy machine
 * a second thread only waits for a core: with load average 12 on 2 cores (medians of 31 runs at nice −20), the
 * 1024×128, k = 32 selection from activations (Gram, greedy, re-fit) took 4.4 ms on 1 thread and 22 ms on 2,
 * 2048×256, k = 64 9.7 and 12.1 ms, 4096×512, k = 128 147 and 146 ms; one Gram block of 128 rows took 0.81 ms on 1
 * and 1.1 ms on 2 at d = 512, 2.7 and 7.8 ms at d = 768. On an idle machine 2 threads are no slower than 1 since the
 * arena clears memory with memory.fill and the Gram blocks, Q = G·W and the re-fit's solves split only from sizes
 * where a second thread pays (wasm.ts MIN_WORK_OF; `node dist/bench/threads-stress.js 0 --reps 41` at load 1.5:
 * 1024×128, k = 32: 1.8 ms on both; 2048×256, k = 64: 6.7 on 2 against 7.1 on 1; 4096×512, k = 128: 29.4 against
 * 42.7). The 1-minute load average, which this used before, still counts a run that has just ended: a prune started
 * within a minute of another took 1 thread on an idle 2-core machine (ResNet-18 at 160×160, 128 images, 2× FLOPs:
 * 121 s against 98 s on 2). Results are bit-identical for any thread count (each range of rows is computed whole by
 * one thread), so only the time depends on it.
 */
export function defaultThreads(): number {
  const now = performance.now();
  if (!measured || now - measured.at >= FRESH_MS) measured = { at: now, threads: coresFree(WATCH_MS) };
  return measured.threads;
}

/** The cores other processes leave free over the next `ms` milliseconds (coresLeft), this thread sleeping meanwhile. */
export function coresFree(ms: number): number {
  const n = cores(),
    os = nodeOs();
  if (!os || n === 1) return 1;
  const before = cpuTimes(os),
    own = process.cpuUsage();
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  const { user, system } = process.cpuUsage(own);
  return coresLeft(n, before, cpuTimes(os), (user + system) / 1000);
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
