import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Arena } from './memory.js';
import { MAX_PARTS, Pool, type PoolStats } from './pool.js';
import {
  KERNEL_NAMES,
  balancedRanges,
  parLayout,
  positional,
  scratchBytes,
  splitRange,
  type KernelBuild,
  type KernelFunctions,
  type KernelName,
  type Kernels,
} from './types.js';
import { badInput } from '../errors.js';

// Four compiled builds of assembly/index.ts sit in build/ at the package root, whether this file runs from src/ (tests)
// or dist/src/ (CLI): plain SIMD and relaxed SIMD (fused multiply-add), each with its own memory (one thread) and
// with shared memory (threads).
export type WasmFile = 'subprune.wasm' | 'subprune-mt.wasm' | 'subprune-relaxed.wasm' | 'subprune-relaxed-mt.wasm';
const FILES: Record<KernelBuild, { single: WasmFile; threads: WasmFile }> = {
  simd: { single: 'subprune.wasm', threads: 'subprune-mt.wasm' },
  'relaxed-simd': { single: 'subprune-relaxed.wasm', threads: 'subprune-relaxed-mt.wasm' },
};

// Where there is no file system (the browser page: node:fs is an empty module there), only provided modules count.
const hasFs = typeof readFileSync === 'function' && typeof existsSync === 'function';

function wasmPath(file: WasmFile): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++, dir = dirname(dir)) {
    const p = join(dir, 'build', file);
    if (existsSync(p)) return p;
  }
  return undefined;
}

const compiled = new Map<WasmFile, WebAssembly.Module>();
const bytesRead = new Map<WasmFile, Buffer<ArrayBuffer> | undefined>();
const wasmBytes = (file: WasmFile) => {
  if (!hasFs) return undefined;
  if (!bytesRead.has(file)) {
    const p = wasmPath(file);
    bytesRead.set(file, p ? readFileSync(p) : undefined);
  }
  return bytesRead.get(file);
};
const compile = (file: WasmFile) => {
  let m = compiled.get(file);
  if (!m) {
    const bytes = wasmBytes(file);
    if (!bytes) throw new Error(`build/${file} is missing: run \`npm run build:wasm\` (npm install runs it)`);
    compiled.set(file, (m = new WebAssembly.Module(bytes)));
  }
  return m;
};

/**
 * Supplies the compiled build/`file` where there is no file system to read it from (the browser page fetches it).
 * Provide the relaxed-SIMD files only where `WebAssembly.validate` accepts their bytes: a provided relaxed module makes
 * it the default build.
 */
export function provideWasm(file: WasmFile, module: WebAssembly.Module): void {
  compiled.set(file, module);
}

/**
 * Whether this runtime runs the relaxed-SIMD build (Node ≥ 22 and Chromium do; Node 20 with a flag): its file
 * validates, or where there are no files, the page provided its module.
 */
function relaxedRuns(): boolean {
  const file = FILES['relaxed-simd'].single;
  if (!hasFs) return compiled.has(file);
  const bytes = wasmBytes(file);
  return bytes !== undefined && WebAssembly.validate(bytes);
}

/**
 * The build from an override (SUBPRUNE_KERNELS) and whether the relaxed build runs here: by default the relaxed
 * build where it runs, else plain SIMD.
 */
export function chooseBuild(override: string | undefined, relaxedOk: () => boolean): KernelBuild {
  if (!override) return relaxedOk() ? 'relaxed-simd' : 'simd';
  if (override === 'simd') return 'simd';
  if (override !== 'relaxed-simd' && override !== 'relaxed')
    throw badInput(`SUBPRUNE_KERNELS=${override} is not a kernel build: use simd or relaxed-simd`);
  if (!relaxedOk()) {
    throw badInput(
      `SUBPRUNE_KERNELS=${override}: this runtime does not run relaxed SIMD ` +
        '(Node 20 needs node --experimental-wasm-relaxed-simd; Node ≥ 22 runs it by default)',
    );
  }
  return 'relaxed-simd';
}

/**
 * The kernel build that runs by default: relaxed SIMD (fused multiply-add) where `WebAssembly.validate` accepts it,
 * else plain SIMD; the environment variable SUBPRUNE_KERNELS=simd|relaxed-simd overrides (tests, benchmarks).
 */
export function kernelBuild(): KernelBuild {
  return chooseBuild(globalThis.process?.env?.SUBPRUNE_KERNELS, relaxedRuns);
}

const MAX_PAGES = 65536;

// Multiply-adds below which a call runs on the calling thread. Measured on the 2-core EPYC (Node 20, load average 4
// from other work, this process at nice −20, 400 calls each, 10th percentile): updateScan over p rows × 256 columns
// took 4.5 µs on 1 thread and 8.0 µs on 2 at 16,384 multiply-adds (a hand-over costs ~3.5 µs), 60 / 64 µs at
// 262,144, 90 / 93 µs at 393,216 and 119 / 71 µs at 524,288, the smallest size where the second thread paid. The
// 4096×512, k = 128 selection then keeps its greedy steps (≤ 131,072) on one thread; its Gram blocks and Q = G·W
// (over 10⁷ each) are split. It was 30,000, which split those greedy steps too.
const MIN_WORK = 1 << 19;
// Three kernels need more before a second thread pays, measured at load 0.6–1.7, this process at normal priority. A
// Gram block (median of 15 GramAccumulator.add of 2048 rows in 128-row blocks): split, 2.60 against 2.27 ms on 1 thread
// at d = 128 (2²⁰ multiply-adds a block), 5.80 against 6.56 at d = 256 (2²²). The selection's Q = G·W (gemmRows,
// d²·m) and the re-fit's triangular solves (solveUpperT, t²·m): with them split at 2¹⁹, the 2048×256, k = 64
// selection (median of 101) took 2.64–2.98 ms on 2 threads against 2.67–3.42 on 1, and 0.72 against 0.64 ms at
// 1024×128; with these thresholds 2.08–2.26 against 2.05–2.27, and 0.71 against 0.71; 4096×512 stays split.
const MIN_WORK_OF: Partial<Record<KernelName, number>> = {
  gramTiles: 1 << 21,
  gemmRows: 1 << 24,
  solveUpperT: 1 << 21,
};
// Big jobs are cut into up to 4 parts per thread, each of at least PART_WORK multiply-adds (0.05 ms of Gram tiles,
// 0.26 ms of updateScan on one thread), so that a worker preempted by another process holds up the caller for one
// small part, not for its whole share.
const PART_WORK = 1 << 20;
const partsPerThread = (work: number | undefined, threads: number) =>
  work === undefined ? 1 : Math.max(1, Math.min(4, Math.floor(work / (threads * PART_WORK))));

/** A fresh instance of the SIMD kernels with its own memory; threads > 1 share that memory with worker threads. */
export function wasmKernels(threads = 1, build: KernelBuild = kernelBuild()): Kernels {
  const shared = threads > 1;
  const module = compile(shared ? FILES[build].threads : FILES[build].single);
  const memory = new WebAssembly.Memory({ initial: 16, maximum: MAX_PAGES, shared });
  const abort = () => {
    throw new Error('wasm kernel abort');
  };
  const x = new WebAssembly.Instance(module, { env: { memory, abort } }).exports as unknown as KernelFunctions;
  const arena = new Arena(memory, (ptr, bytes) => x.zero(ptr, bytes));
  const missing = KERNEL_NAMES.find((n) => typeof x[n] !== 'function');
  if (missing) throw new Error(`the compiled kernels lack ${missing}: run \`npm run build:wasm\``);
  const pool = shared ? new Pool(module, memory, threads) : undefined;
  const fns = Object.fromEntries(KERNEL_NAMES.map((n) => [n, x[n]])) as unknown as KernelFunctions;
  const k: Kernels = {
    ...fns,
    name: 'wasm',
    build,
    arena,
    threads,
    par(name, args, opts = {}) {
      const fn = x[name] as (...a: number[]) => void;
      const a = positional(name, args);
      // Small jobs stay on this thread (MIN_WORK), and all do while the workers come late (Pool.solo).
      if (!pool || (opts.work !== undefined && opts.work < (MIN_WORK_OF[name] ?? MIN_WORK)) || pool.solo()) {
        fn(...a);
        return;
      }
      const layout = parLayout(name),
        align = opts.align ?? layout.align;
      const parts = Math.min(MAX_PARTS, threads * partsPerThread(opts.work, threads));
      const [lo, hi] = [a[layout.lo], a[layout.hi]];
      const ranges = opts.cost ? balancedRanges(lo, hi, parts, align, opts.cost) : splitRange(lo, hi, parts, align);
      pool.run(name, a, ranges, scratchBytes(name, args), (b) => fn(...b));
    },
  };
  if (pool) pools.set(k, pool);
  return k;
}

const pools = new WeakMap<Kernels, Pool>();

/** What the thread pool of a kernel set did so far (undefined: one thread, no pool). */
export function poolStats(k: Kernels): PoolStats | undefined {
  return pools.get(k)?.stats;
}
