// npm run bench [-- --quick] [-- --json]: speed of the selection engine (wasm SIMD kernels on 1 and all threads,
// against plain TypeScript) and of end-to-end pruning of the bundled models. bench/README.md says how to read it.
import Benchmark from 'benchmark';
import { cpus } from 'node:os';
import { existsSync } from 'node:fs';
import { getKernels, cores } from '../src/kernels/instances.js';
import { gramAccumulate } from '../src/kernels/ops.js';
import { GramAccumulator } from '../src/kernels/gram.js';
import { selectChannels, type LayerProblem } from '../src/select/greedy.js';
import { prune } from '../src/prune/index.js';
import { readModel } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick'),
  json = args.includes('--json');
const log = (s: string) => {
  if (!json) console.error(s);
};
const T = cores();

function rand(n: number, seed: number): Float32Array {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    x[i] = s / 2 ** 32 - 0.5;
  }
  return x;
}

/** Mean seconds of fn over Benchmark.js's samples (long cases: one sample). */
function time(name: string, fn: () => void, long: boolean): number {
  const b = new Benchmark(name, fn, { minSamples: long ? 1 : 5, maxTime: long ? 0 : 2, initCount: 1 });
  b.run();
  if (b.error) throw b.error;
  return b.stats.mean;
}

type Variant = 'wasm1' | 'wasmN' | 'plain';
interface Row {
  what: string;
  size: string;
  unit: string;
  wasm1?: number;
  wasmN?: number;
  plain?: number;
}
const rows: Row[] = [];
const row = (what: string, size: string, unit: string) => {
  let r = rows.find((x) => x.what === what && x.size === size);
  if (!r) rows.push((r = { what, size, unit }));
  return r;
};
const variants: [Variant, 'wasm' | 'plain', number][] = [
  ['wasm1', 'wasm', 1],
  ['wasmN', 'wasm', T],
  ['plain', 'plain', 1],
];

// Gram accumulation G += XᵀX: N·d·(d+1) flops (the upper triangle's multiply-adds, ×2).
for (const [v, kind, threads] of variants) {
  const d = 1024,
    N = v === 'plain' ? 1024 : 16384;
  if (v === 'plain' && quick) continue;
  log(`gram N=${N} d=${d} ${v} …`);
  const K = getKernels(kind, threads),
    a = K.arena,
    mark = a.mark();
  const X = a.alloc(N * d * 4),
    G = a.alloc(d * d * 8),
    P = a.alloc(K.gramPackFloats(d) * 4),
    tmp = a.alloc(128 * threads);
  a.f32(X, N * d).set(rand(N * d, 1));
  const s = time(`gram ${v}`, () => gramAccumulate(K, X, d, 0, 0, N, G, P, 0), v === 'plain');
  row('Gram G += XᵀX', `N=${N === 1024 ? '16384 (plain: 1024)' : N}, d=${d}`, 'GFLOP/s')[v] =
    (N * d * (d + 1)) / s / 1e9;
  a.release(mark);
}

// Greedy: the loop alone; the setup (Q = C·W and the first scan) reported apart.
function problem(d: number, m: number): LayerProblem {
  const acc = new GramAccumulator(d);
  acc.add(rand(2 * d * d, 2));
  const G = acc.result().G;
  acc.release();
  return { d, m, g: 1, G, W: Float64Array.from(rand(d * m, 3)) };
}
for (const [d, m, k] of [
  [512, 256, 128],
  [1024, 1024, 512],
  [4096, 4096, 2048],
]) {
  const pr = problem(d, m),
    size = `d=${d}, m=${m}, k=${k}`;
  for (const [v, kind, threads] of variants) {
    if (v === 'plain' && quick && d >= 1024) continue;
    log(`greedy ${size} ${v} …`);
    let loop = 0,
      setup = 0,
      n = 0;
    time(
      `greedy ${v}`,
      () => {
        const s = selectChannels(pr, k, { kernels: kind, threads });
        loop += s.seconds.greedy;
        setup += s.seconds.setup;
        n++;
      },
      d >= 4096 || v === 'plain',
    );
    row('greedy loop', size, 's')[v] = loop / n;
    row('greedy setup (Q = G·W, first scan)', size, 's')[v] = setup / n;
  }
}

// One layer from f32 activations: Gram, greedy and re-fit.
{
  const N = 4096,
    d = 512,
    m = 256,
    k = 128;
  const B = rand(N * d, 4),
    W = Float64Array.from(rand(d * m, 5));
  for (const [v, kind, threads] of variants.filter(([v]) => v !== 'plain')) {
    log(`select N=${N} d=${d} m=${m} k=${k} ${v} …`);
    const K = getKernels(kind, threads);
    row('select from activations (Gram + greedy + re-fit)', `N=${N}, d=${d}, m=${m}, k=${k}`, 's')[v] = time(
      'select',
      () => {
        const acc = new GramAccumulator(d, { kernels: K });
        acc.add(B);
        const G = acc.result().G;
        acc.release();
        selectChannels({ d, m, g: 1, G, W }, k, { threads }).refit(k);
      },
      false,
    );
  }
}

// End to end: prune each bundled model at compression 4 (layerwise), seconds per stage.
const stages: { model: string; threads: number; seconds: Record<string, number> }[] = [];
for (const name of ['lenet', 'vgg', 'resnet20']) {
  const file = `models/${name}.onnx`;
  if (!existsSync(file)) continue;
  for (const threads of [1, T]) {
    log(`prune ${name} (${threads} thread${threads > 1 ? 's' : ''}) …`);
    const calib = openNpy('models/calib.npy');
    const best: Record<string, number> = {};
    for (let rep = 0; rep < 3; rep++) {
      // best of 3: the first run also pays for JIT warm-up
      const { report } = await prune(readModel(file), calib, { budget: { compression: 4 }, threads });
      if (!best.total || report.seconds.total < best.total) Object.assign(best, report.seconds);
    }
    calib.close();
    stages.push({ model: name, threads, seconds: best });
  }
}

const machine = `${cpus()[0].model}, ${cpus().length} cores, Node ${process.versions.node}`;
if (json) {
  console.log(JSON.stringify({ machine, threads: T, rows, prune: stages }, null, 1));
} else {
  const f = (v: number | undefined, unit: string) =>
    v === undefined ? '—' : unit === 's' ? v.toFixed(4) : v.toFixed(1);
  console.log(`machine: ${machine}\n`);
  console.log(`| what | size | wasm, 1 thread | wasm, ${T} threads | plain TS | wasm 1 thread vs plain | unit |`);
  console.log('|---|---|---:|---:|---:|---:|---|');
  for (const r of rows) {
    const ratio =
      r.plain === undefined || r.wasm1 === undefined
        ? '—'
        : `${(r.unit === 's' ? r.plain / r.wasm1 : r.wasm1 / r.plain).toFixed(1)}×`;
    console.log(
      `| ${r.what} | ${r.size} | ${f(r.wasm1, r.unit)} | ${f(r.wasmN, r.unit)} | ${f(r.plain, r.unit)} | ${ratio} | ${r.unit} |`,
    );
  }
  if (stages.length) {
    console.log('\nprune at compression 4, layerwise (best of 3), seconds:\n');
    console.log('| model | threads | analyze | capture | select | rewrite | verify | total |');
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const s of stages) {
      const x = s.seconds;
      console.log(
        `| ${s.model} | ${s.threads} | ${[x.analyze, x.capture, x.select, x.rewrite, x.verify, x.total].map((v) => v.toFixed(3)).join(' | ')} |`,
      );
    }
  }
}
