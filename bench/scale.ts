// npm run bench -- --scale [--widths 1024,2048,4096]: the cost model of docs/DESIGN.md ("What each stage costs")
// against measurements. A 3-hidden-layer MLP (input 256, 10 outputs, random weights) of each width is pruned to
// keep-ratio 0.5 layerwise from 8,192 random calibration rows (default threads); each width runs in a child process so
// that its peak RSS is its own. The model predicts each stage from rates this run measures on a small problem (the
// Gram accumulation and the greedy) and onnxruntime's forward pass; the table prints both, and the largest layer that
// fits this machine's memory.
import { spawnSync } from 'node:child_process';
import { cpus, loadavg, totalmem } from 'node:os';
import { DataType, float32Tensor, makeGraph, makeModel, makeNode, makeTensorValueInfo } from '../src/onnx/index.js';
import type { Model } from '../src/onnx/index.js';
import { encodeNpy, npyFromBytes } from '../src/npy.js';
import { prune } from '../src/prune/index.js';
import { Runner } from '../src/capture/index.js';
import { Calibration } from '../src/calibration.js';
import { GramAccumulator, gramBytes } from '../src/kernels/gram.js';
import { getKernels, defaultThreads } from '../src/kernels/instances.js';
import { selectChannels, selectionBytes } from '../src/select/greedy.js';

const N = 8192,
  INPUT = 256,
  OUTPUT = 10,
  HIDDEN = 3;

let seed = 1;
function rand(n: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 16807) % 2147483647;
    a[i] = (seed / 2147483647 - 0.5) * scale;
  }
  return a;
}

/** x → (Gemm → Relu) × HIDDEN → Gemm: each hidden layer is a group, consumed by the next Gemm (d = width). */
function mlp(width: number): Model {
  const dims = [INPUT, ...Array<number>(HIDDEN).fill(width), OUTPUT];
  const nodes = [],
    inits = [];
  let x = 'x';
  for (let l = 0; l + 1 < dims.length; l++) {
    const [i, o] = [dims[l]!, dims[l + 1]!];
    inits.push(
      float32Tensor(`w${l}`, [i, o], rand(o * i, 2 / Math.sqrt(i))),
      float32Tensor(`b${l}`, [o], rand(o, 0.1)),
    );
    const y = l + 2 < dims.length ? `h${l}` : 'y';
    nodes.push(makeNode('Gemm', [x, `w${l}`, `b${l}`], [y], [], `fc${l}`));
    if (l + 2 < dims.length) nodes.push(makeNode('Relu', [y], [`r${l}`], [], `relu${l}`));
    x = l + 2 < dims.length ? `r${l}` : y;
  }
  const input = makeTensorValueInfo('x', DataType.FLOAT, ['N', INPUT]),
    output = makeTensorValueInfo('y', DataType.FLOAT, ['N', OUTPUT]);
  return makeModel(makeGraph('mlp', nodes, [input], [output], inits));
}

const calibration = () => npyFromBytes(encodeNpy(rand(N * INPUT, 2), [N, INPUT]), 'calib.npy');

/** One width, in this process: the prune's seconds per stage and the forward pass alone. */
async function measure(width: number) {
  const model = mlp(width);
  const run = await Runner.open(model, []);
  const calib = Calibration.of(model, calibration());
  let t = performance.now();
  for (const b of calib.batches(64)) await run.runRaw(b, ['y']);
  const forward = (performance.now() - t) / 1000;
  await run.release();
  t = performance.now();
  const { report } = await prune(model, calibration(), { budget: { keepRatio: 0.5 }, mode: 'layerwise' });
  const wall = (performance.now() - t) / 1000;
  return { width, forward, wall, seconds: report.seconds, rss: process.resourceUsage().maxRSS * 1024 };
}

/** The kernels' rates on this machine: Gram multiply-adds per second, and the selection's (selectMacs) per second. */
function rates(threads: number) {
  const d = 1024,
    rows = 8192,
    k = 256;
  const acc = new GramAccumulator(d, { kernels: getKernels('wasm', threads) });
  const B = rand(rows * d, 1);
  let t = performance.now();
  acc.add(B);
  const gram = (rows * d * d) / 2 / ((performance.now() - t) / 1000);
  const G = acc.result().G;
  acc.release();
  const W = Float64Array.from(rand(d * d, 1));
  t = performance.now();
  selectChannels({ d, m: d, g: 1, G, W }, k, { threads }).refit(k);
  const select = selectMacs(d, d, k) / ((performance.now() - t) / 1000);
  return { gram, select };
}

/** The selection's multiply-adds: Q = G·W (d²·m), then k steps over the remaining columns (k·d·(k/2 + m)). */
const selectMacs = (d: number, m: number, k: number) => d * d * m + k * d * (k / 2 + m);

/** The cost model (docs/DESIGN.md): per consumer N·d²/2 Gram multiply-adds, and the selection's (selectMacs). */
function predict(width: number, r: { gram: number; select: number }) {
  const consumers = [width, width, width].map((d, i) => ({ d, m: i < HIDDEN - 1 ? width : OUTPUT }));
  const gram = consumers.reduce((a, c) => a + (N * c.d * c.d) / 2, 0) / r.gram;
  const select = consumers.reduce((a, c) => a + selectMacs(c.d, c.m, c.d / 2), 0) / r.select;
  const memory = Math.max(...consumers.map((c) => Math.max(gramBytes(c.d), selectionBytes(c.d, c.m, 1, c.d / 2))));
  return { gram, select, memory };
}

/** The largest square dense layer (m = d, half kept) whose statistics fit kernel memory and this machine's memory. */
function largestLayer(): number {
  let d = 256;
  const fits = (d: number) =>
    Math.max(gramBytes(d), selectionBytes(d, d, 1, d / 2)) < Math.min(2 ** 32, totalmem() / 2);
  while (fits(d + 256)) d += 256;
  return d;
}

const args = process.argv.slice(2);
const one = args.indexOf('--width');
if (one >= 0) {
  console.log(JSON.stringify(await measure(Number(args[one + 1]))));
  process.exit(0);
}
const listed = args.indexOf('--widths');
const widths = listed >= 0 ? args[listed + 1]!.split(',').map(Number) : [1024, 2048, 4096, 8192];
const threads = defaultThreads();
const load0 = loadavg();
const r = rates(threads);
const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GB`;
console.log(
  `machine: ${cpus()[0]?.model}, ${cpus().length} cores, ${gib(totalmem())}; ${threads} kernel threads; ` +
    `Gram ${(r.gram / 1e9).toFixed(2)} G multiply-adds/s, selection ${(r.select / 1e9).toFixed(2)} G/s (measured)\n`,
);
console.log(
  '| width | forward s | capture s (model: forward + Gram) | select s (model) | verify s | total s | ' +
    "peak RSS (model: the largest group's kernel memory) |",
);
console.log('|---:|---:|---:|---:|---:|---:|---:|');
for (const width of widths) {
  const child = spawnSync(process.execPath, [...process.execArgv, process.argv[1]!, '--width', String(width)], {
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  if (child.status !== 0) {
    console.log(`| ${width} | failed: ${(child.stderr || '').split('\n')[0]} |`);
    continue;
  }
  const m = JSON.parse(child.stdout.trim().split('\n').pop()!) as Awaited<ReturnType<typeof measure>>;
  const p = predict(width, r),
    s = m.seconds;
  const f = (x: number) => x.toFixed(2);
  console.log(
    `| ${width} | ${f(m.forward)} | ${f(s.capture)} (${f(m.forward + p.gram)}) | ${f(s.select)} (${f(p.select)}) | ` +
      `${f(s.verify)} | ${f(s.total)} | ${gib(m.rss)} (${gib(p.memory)}) |`,
  );
}
console.log(
  "\nlargest square dense layer that fits (half kept; kernel memory and half of this machine's): " +
    `d = ${largestLayer()}` +
    `\nload average ${load0.map((x) => x.toFixed(2)).join(' ')} at the start, ` +
    `${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')} at the end`,
);
