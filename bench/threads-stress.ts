// `node dist/bench/threads-stress.js [runs]`: the thread pool under long jobs. Accumulates the same conv patches
// (d = 576, 100,352 rows, ~800 jobs) into a Gram matrix `runs` times with 2 kernel threads and counts the runs whose
// G is not bit-identical to one thread's. Run it while the machine is busy (e.g. next to `npm test`): the race fixed in
// src/kernels/pool.ts showed about once per 30 runs only under heavy load.
import { GramAccumulator, type ConvGeometry } from '../src/kernels/gram.js';
import { getKernels } from '../src/kernels/instances.js';

const runs = Number(process.argv[2] ?? 30);
let s = 1;
const rnd = (n: number) =>
  Float32Array.from({ length: n }, () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5);
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
console.log(`${runs} runs, ${bad} with a difference`);
process.exit(bad ? 1 : 0);
