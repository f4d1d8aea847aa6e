import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Arena } from './memory.js';
import type { Kernels } from './types.js';

// build/subprune.wasm sits at the package root, whether this file runs from src/ (tests) or dist/src/ (CLI).
function wasmPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++, dir = dirname(dir)) {
    const p = join(dir, 'build', 'subprune.wasm');
    if (existsSync(p)) return p;
  }
  throw new Error('build/subprune.wasm is missing: run `npm run build:wasm` (npm install runs it)');
}

let compiled: WebAssembly.Module | undefined;

/** A fresh instance of the SIMD kernels with its own memory. */
export function wasmKernels(): Kernels {
  compiled ??= new WebAssembly.Module(readFileSync(wasmPath()));
  const arena = new Arena();
  const abort = () => { throw new Error('wasm kernel abort'); };
  const x = new WebAssembly.Instance(compiled, { env: { memory: arena.memory, abort } }).exports as unknown as Omit<Kernels, 'name' | 'arena'>;
  return {
    name: 'wasm', arena,
    gramPackFloats: x.gramPackFloats, gram: x.gram, gramCross: x.gramCross, symmetrize: x.symmetrize,
    gemmPackDoubles: x.gemmPackDoubles, gemm: x.gemm, gather: x.gather, extend: x.extend,
    updateRows: x.updateRows, updateScan: x.updateScan, downdateBlocks: x.downdateBlocks,
    groupGains: x.groupGains, argmax: x.argmax, solveUpperT: x.solveUpperT, im2col: x.im2col,
  };
}
