// `node dist/bench/latency.js MODEL.onnx … [--data X.npy] [--rows n] [--batch b]`: what a pruned model costs where it
// is deployed. onnxruntime-node's milliseconds to run the first n rows of the data (default models/test.npy, 512
// rows, batches of 32) at the optimization levels `basic` (what subprune's captures use) and `all` (onnxruntime's
// default: on x86 its blocked NCHWc convolutions, which take channel counts in multiples of 8, 16 on AVX-512), the
// best of five passes after one to warm up. Models with one float input whose first axis is the batch.
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { openNpy } from '../src/npy.js';

const { values: o, positionals: models } = parseArgs({
  allowPositionals: true,
  options: { data: { type: 'string' }, rows: { type: 'string' }, batch: { type: 'string' } },
});
const data = o.data ?? 'models/test.npy',
  rows = Number(o.rows ?? 512),
  batch = Number(o.batch ?? 32);
if (!models.length) {
  console.error('usage: node dist/bench/latency.js MODEL.onnx … [--data X.npy] [--rows n] [--batch b]');
  process.exit(2);
}
const ort = await import('onnxruntime-node');
const npy = openNpy(data);
const n = Math.min(rows, npy.rows),
  X = npy.readF32(0, n),
  per = npy.rowSize;
npy.close();

/** Best milliseconds of five passes over the rows (after a warm-up pass). */
async function msPerPass(file: string, level: 'basic' | 'all'): Promise<number> {
  const session = await ort.InferenceSession.create(readFileSync(file), {
    graphOptimizationLevel: level,
    logSeverityLevel: 3,
  });
  const input = session.inputNames[0]!;
  const pass = async () => {
    for (let r = 0; r < n; r += batch) {
      const b = Math.min(batch, n - r);
      await session.run({
        [input]: new ort.Tensor('float32', X.subarray(r * per, (r + b) * per), [b, ...npy.shape.slice(1)]),
      });
    }
  };
  await pass();
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    await pass();
    best = Math.min(best, performance.now() - t);
  }
  await session.release();
  return best;
}

console.log(`${cpus()[0]!.model}, ${cpus().length} cores; load average ${loadavg()[0]!.toFixed(2)}`);
console.log(`ms to run ${n} rows of ${data} in batches of ${batch} (best of 5):\n`);
console.log('| model | level basic | level all |');
console.log('|---|---:|---:|');
for (const file of models) {
  const [basic, all] = [await msPerPass(file, 'basic'), await msPerPass(file, 'all')];
  console.log(`| ${file} | ${basic.toFixed(1)} | ${all.toFixed(1)} |`);
}
