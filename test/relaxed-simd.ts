// Both kernel builds in one test process: Node 20 runs relaxed SIMD only behind a V8 flag, which is process-wide and
// can be set at run time (Node ≥ 22 has it on). Tests that import this run the relaxed build or fail; none skips it.
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import type { KernelBuild } from '../src/kernels/types.js';

const bytes = readFileSync(new URL('../build/subprune-relaxed.wasm', import.meta.url));
if (!WebAssembly.validate(bytes)) setFlagsFromString('--experimental-wasm-relaxed-simd');
if (!WebAssembly.validate(bytes)) throw new Error('this Node runs no relaxed SIMD, even with the flag');

export const BUILDS: KernelBuild[] = ['simd', 'relaxed-simd'];
