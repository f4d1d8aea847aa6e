import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Arena } from './memory.js';
import { Pool } from './pool.js';
import {
  KERNEL_NAMES,
  parLayout,
  positional,
  scratchBytes,
  splitRange,
  type KernelFunctions,
  type Kernels,
} from './types.js';

// build/subprune.wasm (own memory) and build/subprune-mt.wasm (shared memory, for threads) sit at the package root,
// whether this file runs from src/ (tests) or dist/src/ (CLI).
function wasmPath(file: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++, dir = dirname(dir)) {
    const p = join(dir, 'build', file);
    if (existsSync(p)) return p;
  }
  throw new Error(`build/${file} is missing: run \`npm run build:wasm\` (npm install runs it)`);
}

const compiled = new Map<string, WebAssembly.Module>();
const compile = (file: string) => {
  let m = compiled.get(file);
  if (!m) compiled.set(file, (m = new WebAssembly.Module(readFileSync(wasmPath(file)))));
  return m;
};

/** Supplies the compiled build/`file` where there is no file system to read it from (the browser page fetches it). */
export function provideWasm(file: 'subprune.wasm' | 'subprune-mt.wasm', module: WebAssembly.Module): void {
  compiled.set(file, module);
}

const MAX_PAGES = 65536;

/** A fresh instance of the SIMD kernels with its own memory; threads > 1 share that memory with worker threads. */
export function wasmKernels(threads = 1): Kernels {
  const shared = threads > 1;
  const module = compile(shared ? 'subprune-mt.wasm' : 'subprune.wasm');
  const memory = new WebAssembly.Memory({ initial: 16, maximum: MAX_PAGES, shared });
  const arena = new Arena(memory);
  const abort = () => {
    throw new Error('wasm kernel abort');
  };
  const x = new WebAssembly.Instance(module, { env: { memory, abort } }).exports as unknown as KernelFunctions;
  const pool = shared ? new Pool(module, memory, threads) : undefined;
  const missing = KERNEL_NAMES.find((n) => typeof x[n] !== 'function');
  if (missing) throw new Error(`the compiled kernels lack ${missing}: run \`npm run build:wasm\``);
  const fns = Object.fromEntries(KERNEL_NAMES.map((n) => [n, x[n]])) as unknown as KernelFunctions;
  const k: Kernels = {
    ...fns,
    name: 'wasm',
    arena,
    threads,
    par(name, args, opts = {}) {
      const fn = x[name] as (...a: number[]) => void;
      const a = positional(name, args);
      // Small jobs stay on this thread: a hand-over costs a few microseconds.
      if (!pool || (opts.work !== undefined && opts.work < 30000)) {
        fn(...a);
        return;
      }
      const layout = parLayout(name);
      const ranges = opts.ranges ?? splitRange(a[layout.lo], a[layout.hi], threads, opts.align ?? layout.align);
      pool.run(name, a, ranges, scratchBytes(name, args), (b) => fn(...b));
    },
  };
  return k;
}
