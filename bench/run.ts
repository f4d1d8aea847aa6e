// npm run bench [-- --quick] [-- --gram] [-- --json] [-- --scale]: speed of the selection engine (both wasm kernel
// builds, plain SIMD and relaxed SIMD, on 1 and all threads, against plain TypeScript) and of end-to-end pruning of the
// bundled models. bench/README.md says how to read it.
import Benchmark from 'benchmark';
import { spawnSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { existsSync, readFileSync } from 'node:fs';
import { getKernels, cores } from '../src/kernels/instances.js';
import { kernelBuild } from '../src/kernels/wasm.js';
import { gramAccumulate } from '../src/kernels/ops.js';
import { GramAccumulator } from '../src/kernels/gram.js';
import type { KernelBuild } from '../src/kernels/types.js';
import { selectChannels, selectGroup, type LayerProblem } from '../src/select/greedy.js';
import { prune, type Mode } from '../src/prune/index.js';
import type { Budget } from '../src/budget/index.js';
import { readModel } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';

// Node 20 runs relaxed SIMD only behind a V8 flag: run this script again with it, so that both builds are measured.
const RELAXED_FLAG = '--experimental-wasm-relaxed-simd';
const relaxedRuns = () => WebAssembly.validate(readFileSync('build/subprune-relaxed.wasm'));
if (!relaxedRuns() && !process.execArgv.includes(RELAXED_FLAG)) {
  const child = [...process.execArgv, RELAXED_FLAG, ...process.argv.slice(1)];
  process.exit(spawnSync(process.execPath, child, { stdio: 'inherit' }).status ?? 1);
}

const args = process.argv.slice(2);
if (args.includes('--scale')) {
  // the cost model against wide layers: bench/scale.ts (each width in its own process, for its peak memory)
  const scale = new URL('./scale.js', import.meta.url).pathname;
  process.exit(spawnSync(process.execPath, [...process.execArgv, scale, ...args], { stdio: 'inherit' }).status ?? 1);
}
const quick = args.includes('--quick'),
  gramOnly = args.includes('--gram'),
  json = args.includes('--json');
const log = (s: string) => {
  if (!json) console.error(s);
};
const T = cores();
const defaultBuild = kernelBuild();
const builds: KernelBuild[] = relaxedRuns() ? ['simd', 'relaxed-simd'] : ['simd'];
const load0 = loadavg();

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

/** Median CPU seconds of this thread's fn over `reps` runs (one thread: other work on the machine does not count). */
function cpuTime(fn: () => void, reps: number): number {
  const s: number[] = [];
  for (let r = 0; r <= reps; r++) {
    const c0 = process.cpuUsage();
    fn();
    const c = process.cpuUsage(c0);
    if (r > 0) s.push((c.user + c.system) / 1e6); // the first run warms up
  }
  return s.sort((a, b) => a - b)[s.length >> 1];
}

interface Variant {
  key: string;
  kind: 'wasm' | 'plain';
  build: KernelBuild | 'plain';
  threads: number;
}
const variants: Variant[] = [
  ...builds.flatMap((build) =>
    [1, T].map((threads) => ({ key: `${build} ${threads}t`, kind: 'wasm' as const, build, threads })),
  ),
  { key: 'plain', kind: 'plain', build: 'plain', threads: 1 },
];
const kernelsOf = (v: Variant) => (v.build === 'plain' ? getKernels('plain') : getKernels('wasm', v.threads, v.build));
/** Runs fn with SUBPRUNE_KERNELS set to the variant's build: selectChannels takes the default build. */
function withBuild<R>(v: Variant, fn: () => R): R {
  const old = process.env.SUBPRUNE_KERNELS;
  if (v.kind === 'wasm') process.env.SUBPRUNE_KERNELS = v.build;
  try {
    return fn();
  } finally {
    if (old === undefined) delete process.env.SUBPRUNE_KERNELS;
    else process.env.SUBPRUNE_KERNELS = old;
  }
}

interface Row {
  what: string;
  size: string;
  unit: string;
  v: Record<string, number>;
}
const rows: Row[] = [];
const row = (what: string, size: string, unit: string) => {
  let r = rows.find((x) => x.what === what && x.size === size);
  if (!r) rows.push((r = { what, size, unit, v: {} }));
  return r.v;
};

// Gram accumulation G += XᵀX: N·d·(d+1) flops (the upper triangle's multiply-adds, ×2). Wall time, and for one
// thread also CPU time, which other work on the machine disturbs far less.
for (const v of variants) {
  const d = 1024,
    N = v.kind === 'plain' ? 1024 : 16384;
  if (v.kind === 'plain' && quick) continue;
  log(`gram N=${N} d=${d} ${v.key} …`);
  const K = kernelsOf(v),
    a = K.arena,
    mark = a.mark();
  const X = a.alloc(N * d * 4),
    G = a.alloc(d * d * 8),
    P = a.alloc(K.gramPackFloats(d) * 4);
  a.f32(X, N * d).set(rand(N * d, 1));
  const run = () => gramAccumulate(K, X, d, 0, 0, N, G, P, 0);
  const flops = N * d * (d + 1);
  const size = `N=${v.kind === 'plain' ? '16384 (plain: 1024)' : N}, d=${d}`;
  row('Gram G += XᵀX', size, 'GFLOP/s')[v.key] = flops / time(`gram ${v.key}`, run, v.kind === 'plain') / 1e9;
  if (v.threads === 1) row('Gram, per CPU second', size, 'GFLOP/s')[v.key] = flops / cpuTime(run, 7) / 1e9;
  a.release(mark);
}

// Greedy: the loop alone; the setup (Q = C·W and the first scan) reported apart.
function problem(d: number, m: number, g: number): LayerProblem {
  const acc = new GramAccumulator(d, { kernels: getKernels('wasm', 1, 'simd') });
  acc.add(rand(2 * d * d, 2));
  const G = acc.result().G;
  acc.release();
  return { d, m, g, G, W: Float64Array.from(rand(d * m, 3)) };
}
// g = 9: a 3×3 conv's input, 256 channels of 9 columns each (k channels)
for (const [d, m, k, g = 1] of gramOnly
  ? []
  : [
      [512, 256, 128],
      [1024, 1024, 512],
      [4096, 4096, 2048],
      [2304, 256, 128, 9],
    ]) {
  const pr = problem(d, m, g),
    size = `d=${d}, m=${m}, k=${k}${g > 1 ? `, g=${g}` : ''}`;
  for (const v of variants) {
    if (v.kind === 'plain' && quick && d >= 1024) continue;
    log(`greedy ${size} ${v.key} …`);
    let loop = 0,
      setup = 0,
      n = 0;
    const run = () => {
      const s = selectChannels(pr, k, { kernels: v.kind, threads: v.threads });
      loop += s.seconds.greedy;
      setup += s.seconds.setup;
      n++;
    };
    withBuild(v, () => time(`greedy ${v.key}`, run, d >= 4096 || v.kind === 'plain'));
    row('greedy loop', size, 's')[v.key] = loop / n;
    row('greedy setup (Q = G·W, first scan)', size, 's')[v.key] = setup / n;
  }
}

// A channel group with c consumers (a residual stream) against c single-consumer selections of the same size: one
// greedy over the sum of their objectives costs about the c selections (DESIGN.md, channel groups).
for (const c of gramOnly ? [] : [1, 2, 4]) {
  const [d, m, k] = [512, 256, 128],
    problems = Array.from({ length: c }, () => problem(d, m, 1)),
    size = `d=${d}, m=${m}, k=${k}`;
  for (const v of variants.filter((v) => v.kind === 'wasm' && v.threads === 1)) {
    log(`group of ${c} consumers ${size} ${v.key} …`);
    const group = () => selectGroup(problems, k, { threads: 1 }).refit(k);
    const singles = () => problems.forEach((pr) => selectChannels(pr, k, { threads: 1 }).refit(k));
    row(`group of ${c} consumers (greedy + re-fit)`, size, 's')[v.key] = withBuild(v, () =>
      time('group', group, false),
    );
    row(`${c} single selections (greedy + re-fit)`, size, 's')[v.key] = withBuild(v, () =>
      time('singles', singles, false),
    );
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
  for (const v of variants.filter((v) => v.kind === 'wasm' && !gramOnly)) {
    log(`select N=${N} d=${d} m=${m} k=${k} ${v.key} …`);
    const K = kernelsOf(v);
    const run = () => {
      const acc = new GramAccumulator(d, { kernels: K });
      acc.add(B);
      const G = acc.result().G;
      acc.release();
      selectChannels({ d, m, g: 1, G, W }, k, { threads: v.threads }).refit(k);
    };
    row('select from activations (Gram + greedy + re-fit)', `N=${N}, d=${d}, m=${m}, k=${k}`, 's')[v.key] = withBuild(
      v,
      () => time('select', run, false),
    );
  }
}

// End to end: prune each bundled model (compression 4; the transformer 1.5× fewer FLOPs), seconds per stage, with the
// default build: layerwise on 1 and all threads, and the sequential and asymmetric modes, whose captures go group by
// group (their capture against the layerwise one is what to watch). The uniform allocation, so that each mode's
// capture is its own: the global one (the default) adds one layerwise capture of the original model to every mode; and
// no sweep (the default adds one to the group-by-group modes: its seconds are the README's, The default setting).
const BUDGETS: Record<string, Budget> = {
  lenet: { compression: 4 },
  vgg: { compression: 4 },
  resnet20: { compression: 4 },
  mobilenet: { compression: 4 },
  vit: { compression: 1.5, target: 'flops' },
};
const RUNS: { mode: Mode; threads: number }[] = [
  { mode: 'layerwise', threads: 1 },
  { mode: 'layerwise', threads: T },
  { mode: 'sequential', threads: T },
  { mode: 'asymmetric', threads: T },
];
const stages: { model: string; mode: Mode; threads: number; seconds: Record<string, number> }[] = [];
for (const [name, budget] of Object.entries(BUDGETS)) {
  const file = `models/${name}.onnx`;
  if (!existsSync(file) || gramOnly) continue;
  const best = RUNS.map((): Record<string, number> => ({}));
  // each the best of three runs (two with --quick) by capture, as the first also pays for JIT warm-up; the runs take
  // turns, so that a slow spell of a shared machine does not fall on one mode alone. A model whose prunes all take
  // under 2 s gets seven runs (five): a capture of a tenth of a second doubles in a spell of a few hundred ms.
  let reps = quick ? 2 : 3;
  for (let rep = 0; rep < reps; rep++) {
    let slowest = 0;
    for (const [i, { mode, threads }] of RUNS.entries()) {
      log(`prune ${name} ${mode} (${threads} thread${threads > 1 ? 's' : ''}), run ${rep + 1} …`);
      const calib = openNpy('models/calib.npy');
      const opts = { budget, mode, threads, allocation: 'uniform', sweep: false } as const;
      const { report } = await prune(readModel(file), calib, opts);
      calib.close();
      if (!best[i]!.capture || report.seconds.capture < best[i]!.capture) Object.assign(best[i]!, report.seconds);
      slowest = Math.max(slowest, report.seconds.total);
    }
    if (rep === 0 && slowest < 2) reps = quick ? 5 : 7;
  }
  stages.push(...RUNS.map((r, i) => ({ model: name, ...r, seconds: best[i]! })));
}

const machine = `${cpus()[0].model}, ${cpus().length} cores, Node ${process.versions.node}`;
const load = `load average ${load0.map((x) => x.toFixed(2)).join(' ')} at the start, ${loadavg()
  .map((x) => x.toFixed(2))
  .join(' ')} at the end`;
if (json) {
  console.log(JSON.stringify({ machine, load, threads: T, defaultBuild, builds, rows, prune: stages }, null, 1));
} else {
  const f = (v: number | undefined, unit: string) =>
    v === undefined ? '—' : unit === 's' ? v.toFixed(4) : v.toFixed(1);
  const keys = variants.map((v) => v.key),
    base = `${defaultBuild} 1t`;
  console.log(`machine: ${machine}; ${load}`);
  console.log(
    `kernel builds measured: ${builds.join(', ')}; the default here (kernelBuild()): ${defaultBuild}` +
      (builds.length < 2 ? ' (this Node does not run relaxed SIMD)' : '') +
      '\n',
  );
  console.log(`| what | size | ${keys.join(' | ')} | ${base} vs plain | unit |`);
  console.log(`|---|---|${keys.map(() => '---:|').join('')}---:|---|`);
  for (const r of rows) {
    const p = r.v.plain,
      w = r.v[base];
    const ratio = p === undefined || w === undefined ? '—' : `${(r.unit === 's' ? p / w : w / p).toFixed(1)}×`;
    console.log(`| ${r.what} | ${r.size} | ${keys.map((k) => f(r.v[k], r.unit)).join(' | ')} | ${ratio} | ${r.unit} |`);
  }
  if (stages.length) {
    console.log(
      `\nprune (best of runs, ${defaultBuild} kernels), seconds; capture × = against layerwise, same threads:\n`,
    );
    console.log('| model | mode | threads | analyze | capture | capture × | select | rewrite | verify | total |');
    console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const s of stages) {
      const x = s.seconds,
        layerwise = stages.find((l) => l.model === s.model && l.mode === 'layerwise' && l.threads === s.threads);
      const cells = [x.analyze, x.capture].map((v) => v.toFixed(3));
      const ratio = layerwise ? `${(x.capture / layerwise.seconds.capture).toFixed(2)}×` : '—';
      const rest = [x.select, x.rewrite, x.verify, x.total].map((v) => v.toFixed(3));
      console.log(`| ${s.model} | ${s.mode} | ${s.threads} | ${cells.join(' | ')} | ${ratio} | ${rest.join(' | ')} |`);
    }
  }
}
