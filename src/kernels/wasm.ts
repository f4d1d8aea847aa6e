import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Arena } from './memory.js';
import { Pool } from './pool.js';
import { splitRange, type Kernels, type ParKernel, type ParOptions } from './types.js';

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
  const x = new WebAssembly.Instance(module, { env: { memory, abort } }).exports as unknown as Omit<
    Kernels,
    'name' | 'arena' | 'threads' | 'par'
  >;
  const pool = shared ? new Pool(module, memory, threads) : undefined;
  const k: Kernels = {
    name: 'wasm',
    arena,
    threads,
    gramRows: x.gramRows,
    gramPackFloats: x.gramPackFloats,
    gramPack: x.gramPack,
    gramTiles: x.gramTiles,
    symmetrize: x.symmetrize,
    gemmChunk: x.gemmChunk,
    gemmPackDoubles: x.gemmPackDoubles,
    gemmPack: x.gemmPack,
    gemmRows: x.gemmRows,
    gather: x.gather,
    extend: x.extend,
    updateRows: x.updateRows,
    updateScan: x.updateScan,
    downdateBlocks: x.downdateBlocks,
    groupGains: x.groupGains,
    argmax: x.argmax,
    solveUpperT: x.solveUpperT,
    im2col: x.im2col,
    par<N extends ParKernel>(name: N, args: Parameters<Kernels[N]>, lo: number, opts: ParOptions = {}) {
      const fn = x[name] as (...a: number[]) => void;
      const a = args as unknown as number[];
      // Small jobs stay on this thread: a hand-over costs a few microseconds.
      if (!pool || (opts.work !== undefined && opts.work < 30000)) {
        fn(...a);
        return;
      }
      const ranges = opts.ranges ?? splitRange(a[lo], a[lo + 1], threads, opts.align ?? 1);
      pool.run(name, a, lo, ranges, opts.scratch, (b) => fn(...b));
    },
  };
  return k;
}
