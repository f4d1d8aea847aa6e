// npm run bench [-- --quick] [-- --json]: speed of the selection engine, wasm SIMD kernels against plain TypeScript.
// Each figure is the mean over the samples Benchmark.js takes (at least 1; short cases many more).
import Benchmark from 'benchmark';
import { cpus } from 'node:os';
import { wasmKernels } from '../src/kernels/wasm.js';
import { plainKernels } from '../src/kernels/plain.js';
import { GramAccumulator } from '../src/kernels/gram.js';
import { selectChannels, type LayerProblem } from '../src/select/greedy.js';
import type { Kernels } from '../src/kernels/types.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick'), json = args.includes('--json');
const log = (s: string) => { if (!json) console.error(s); };

function rand(n: number, seed: number): Float32Array {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; x[i] = s / 2 ** 32 - 0.5; }
  return x;
}

/** Mean seconds of fn over Benchmark.js's samples. */
function time(name: string, fn: () => void, long: boolean): number {
  const b = new Benchmark(name, fn, { minSamples: long ? 1 : 5, maxTime: long ? 0 : 2, initCount: 1 });
  b.run();
  if (b.error) throw b.error;
  return b.stats.mean;
}

interface Row { what: string; size: string; wasm: number; plain?: number; unit: string }
const rows: Row[] = [];

// Gram accumulation: N·d·(d+1) flops (the upper triangle's multiply-adds, ×2).
function gramRate(k: Kernels, N: number, d: number, long: boolean): number {
  const a = k.arena, X = a.alloc(N * d * 4), G = a.alloc(d * d * 8), P = a.alloc((k.gramPackFloats(d) + 32) * 4);
  a.f32(X, N * d).set(rand(N * d, 1));
  const s = time(`gram ${k.name}`, () => k.gram(X, N, d, G, P), long);
  return (N * d * (d + 1)) / s / 1e9;
}
{
  const N = 16384, d = 1024;
  log(`gram N=${N} d=${d} …`);
  const w = gramRate(wasmKernels(), N, d, false);
  const p = quick ? undefined : gramRate(plainKernels(), 1024, d, true);
  rows.push({ what: 'Gram G += XᵀX', size: `N=${N}, d=${d}`, wasm: w, plain: p, unit: 'GFLOP/s' });
}

// Greedy: the loop alone (setup = Q = C·W and the first scan, reported apart).
function problem(d: number, m: number): LayerProblem {
  const acc = new GramAccumulator(d);
  acc.add(rand(2 * d * d, 2));
  return { d, m, g: 1, G: acc.result().G, W: Float64Array.from(rand(d * m, 3)) };
}
const sizes: [number, number, number][] = [[512, 256, 128], [1024, 1024, 512], [4096, 4096, 2048]];
for (const [d, m, k] of sizes) {
  const pr = problem(d, m), long = d >= 4096;
  for (const backend of ['wasm', 'plain'] as const) {
    if (backend === 'plain' && quick && d >= 1024) continue;
    log(`greedy d=${d} m=${m} k=${k} ${backend} …`);
    let loop = 0, setup = 0, n = 0;
    time(`greedy ${backend}`, () => {
      const s = selectChannels(pr, k, { kernels: backend });
      loop += s.seconds.greedy; setup += s.seconds.setup; n++;
    }, long || backend === 'plain');
    const size = `d=${d}, m=${m}, k=${k}`;
    const put = (what: string, v: number) => {
      const r = rows.find((x) => x.what === what && x.size === size);
      if (r) r[backend] = v; else rows.push({ what, size, wasm: backend === 'wasm' ? v : NaN, unit: 's', ...(backend === 'plain' ? { plain: v } : {}) });
    };
    put('greedy loop', loop / n);
    put('greedy setup (Q = G·W)', setup / n);
  }
}

// The whole selection of one layer from f32 activations: Gram, greedy, re-fit.
{
  const N = 4096, d = 512, m = 256, k = 128;
  const B = rand(N * d, 4), W = Float64Array.from(rand(d * m, 5));
  log(`select N=${N} d=${d} m=${m} k=${k} …`);
  const s = time('select', () => {
    const acc = new GramAccumulator(d);
    acc.add(B);
    selectChannels({ d, m, g: 1, G: acc.result().G, W }, k).refit(k);
  }, false);
  rows.push({ what: 'select from activations (Gram + greedy + re-fit)', size: `N=${N}, d=${d}, m=${m}, k=${k}`, wasm: s, unit: 's' });
}

const machine = `${cpus()[0].model}, ${cpus().length} cores, Node ${process.versions.node}`;
if (json) {
  console.log(JSON.stringify({ machine, rows }, null, 1));
} else {
  const f = (v: number | undefined, unit: string) => v === undefined || Number.isNaN(v) ? '—' : unit === 's' ? v.toFixed(4) : v.toFixed(1);
  console.log(`machine: ${machine}\n`);
  console.log('| what | size | wasm | plain TS | ratio | unit |');
  console.log('|---|---|---:|---:|---:|---|');
  for (const r of rows) {
    const ratio = r.plain === undefined ? '—' : r.unit === 's' ? `${(r.plain / r.wasm).toFixed(1)}×` : `${(r.wasm / r.plain).toFixed(1)}×`;
    console.log(`| ${r.what} | ${r.size} | ${f(r.wasm, r.unit)} | ${f(r.plain, r.unit)} | ${ratio} | ${r.unit} |`);
  }
}
