// node dist/bench/conv-gram.js [threads]: the Gram accumulation of 3×3, padding-1 Conv inputs from their im2col
// patches against from their shifted input (src/kernels/shift-gram.ts, docs/DESIGN.md), in batches of 8 samples;
// best of three runs each. A 7×7 input is where addConv keeps the patches: both columns run them.
import { loadavg } from 'node:os';
import { GramAccumulator } from '../src/kernels/gram.js';
import { getKernels } from '../src/kernels/instances.js';
import { ShiftGram } from '../src/kernels/shift-gram.js';

const threads = Number(process.argv[2] ?? 1),
  kernels = getKernels('wasm', threads),
  conv = { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1] } as const satisfies Parameters<
    GramAccumulator['addConv']
  >[2];

/** Seconds to accumulate G of b samples of [C, H, H] (best of `runs`), from shifts where addConv takes them or not. */
function seconds(x: Float32Array, C: number, H: number, b: number, shift: boolean, runs = 3): number {
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    const t = performance.now(),
      acc = new GramAccumulator(9 * C, { kernels, shift }),
      size = C * H * H;
    for (let s = 0; s < b; s += 8) acc.addConv(x.subarray(s * size, (s + 8) * size), [8, C, H, H], conv);
    acc.result();
    acc.release();
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  return best;
}

console.log(
  `load average ${loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')}, ${threads} thread(s)\n`,
);
console.log('| input | samples | im2col s | shifts s | × |\n|---|---:|---:|---:|---:|');
for (const [C, H, b] of [
  [64, 56, 16],
  [128, 28, 32],
  [256, 14, 64],
  [32, 28, 64],
  [64, 14, 64],
  [512, 7, 64],
  [64, 7, 64],
]) {
  const x = Float32Array.from({ length: b! * C! * H! * H! }, (_, i) => Math.sin(i * 0.37));
  const patches = seconds(x, C!, H!, b!, false),
    shifts = seconds(x, C!, H!, b!, true),
    taken = ShiftGram.suits(conv, H!, H!) ? '' : ' (patches)';
  console.log(
    `| ${C} × ${H} × ${H}${taken} | ${b} | ${patches.toFixed(3)} | ${shifts.toFixed(3)} | ` +
      `${(patches / shifts).toFixed(2)} |`,
  );
}
