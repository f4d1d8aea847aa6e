// `node dist/bench/threads-stress.js [runs] [--reps N]`: the thread pool under load.
// 1. Speed: the 1024×128 (k = 32), 2048×256 (k = 64) and 4096×512 (k = 128) selections (Gram, greedy and re-fit of
//    one layer) on 1 and 2 kernel threads as the machine is, then the largest next to a competing process that keeps
//    2 threads busy (spawned here), median of N runs.
// 2. Bit-identity under long jobs: accumulates the same conv patches (d = 576, 100,352 rows, ~800 jobs) into a Gram
//    matrix `runs` times with 2 kernel threads and counts the runs whose G is not bit-identical to one thread's.
//    Run it while the machine is busy (e.g. next to `npm test`): the race fixed in src/kernels/pool.ts showed about
//    once per 30 runs only under heavy load. Exits 1 if any run differs.
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import { GramAccumulator, type ConvGeometry } from '../src/kernels/gram.js';
import { getKernels } from '../src/kernels/instances.js';
import { poolStats } from '../src/kernels/wasm.js';
import { selectChannels } from '../src/select/greedy.js';

const args = process.argv.slice(2);
const runs = Number(args.find((a) => /^\d+$/.test(a)) ?? 30),
  reps = args.includes('--reps') ? Number(args[args.indexOf('--reps') + 1]) : 9;
let s = 1;
const rnd = (n: number) =>
  Float32Array.from({ length: n }, () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5);
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

// 1. Speed
interface Size {
  N: number;
  d: number;
  m: number;
  k: number;
  B: Float32Array;
  W: Float64Array;
}
const sizes: Size[] = [1, 2, 4].map((f) => {
  const [N, d, m, k] = [1024 * f, 128 * f, 64 * f, 32 * f];
  return { N, d, m, k, B: rnd(N * d), W: Float64Array.from(rnd(d * m)) };
});
function select(threads: number, { d, m, k, B, W }: Size = sizes[2]!): number {
  const t0 = performance.now();
  const acc = new GramAccumulator(d, { kernels: getKernels('wasm', threads) });
  acc.add(B);
  const G = acc.result().G;
  acc.release();
  selectChannels({ d, m, g: 1, G, W }, k, { threads }).refit(k);
  return (performance.now() - t0) / 1000;
}
function medians(size = sizes[2]!): Record<number, number> {
  const t: Record<number, number[]> = { 1: [], 2: [] };
  for (let r = 0; r <= reps; r++) for (const threads of [1, 2]) if (r > 0) t[threads].push(select(threads, size));
  const med = (v: number[]) => v.sort((a, b) => a - b)[v.length >> 1];
  return { 1: med(t[1]), 2: med(t[2]) };
}
const table: string[] = [];
const report = (what: string, t: Record<number, number>, l0: string) =>
  table.push(`| ${what} | ${t[1].toFixed(4)} | ${t[2].toFixed(4)} | ${l0} → ${load()} |`);
const named = ({ N, d, k }: Size) => `${N}×${d}, k = ${k}`;
select(1);
select(2); // warm-up: JIT, worker start
let l0 = load();
for (const size of sizes) {
  l0 = load();
  report(`${named(size)}, as the machine is`, medians(size), l0);
}
// The competing load: another process with 2 threads that never wait.
const spinner = spawn(
  process.execPath,
  [
    '-e',
    "new (require('node:worker_threads').Worker)('for (;;);', { eval: true }); setTimeout(() => { for (;;); }, 100);",
  ],
  { stdio: 'ignore' },
);
await new Promise((r) => setTimeout(r, 1000));
l0 = load();
report(`${named(sizes[2]!)}, with a competing 2-thread process`, medians(), l0);
spinner.kill();
console.log(`selection (m = d/2): median seconds of ${reps} runs\n`);
console.log('| size, machine | 1 thread | 2 threads | load average (1 min) |');
console.log('|---|---:|---:|---|');
console.log(table.join('\n'));
const st = poolStats(getKernels('wasm', 2));
if (st) {
  console.log(
    `\npool: ${st.jobs} jobs handed over, parts run by the caller ${st.callerParts}, by workers ` +
      `${st.workerParts}; ${st.soloCalls} calls ran on the caller alone while workers came late`,
  );
}

// 2. Bit-identity
const conv: ConvGeometry = { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] };
const batches = Array.from({ length: 8 }, () => rnd(64 * 64 * 14 * 14));

function gram(threads: number): Float64Array {
  const acc = new GramAccumulator(64 * 9, { kernels: getKernels('wasm', threads) });
  for (const b of batches) acc.addConv(b, [64, 64, 14, 14], conv);
  const G = acc.result().G;
  acc.release();
  return G;
}

const ref = gram(1);
let bad = 0;
for (let r = 0; r < runs; r++) {
  const G = gram(2);
  const n = G.reduce((a, v, i) => a + (v !== ref[i] ? 1 : 0), 0);
  if (n) {
    bad++;
    console.log(`run ${r}: ${n} of ${G.length} entries differ from 1 thread`);
  }
}
console.log(`\nbit-identity: ${runs} runs of a conv Gram on 2 threads, ${bad} with a difference from 1 thread`);
process.exit(bad ? 1 : 0);
