// node dist/bench/capture-cost.js [models]: the layerwise capture of each bundled model against its cost model
// (docs/DESIGN.md, "What each stage costs"): onnxruntime's session of the model with the consumer inputs as outputs and
// its pass over the calibration set, plus each consumer's rows × d(d+1)/2 multiply-adds at the rate
// GramAccumulator.add measures at that d on random rows (default threads). Best of three runs or more; the last column
// leaves the session out (a capture cannot: it needs one, and on the ViT creating it takes a fifth of the capture).
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { readModel } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { analyze } from '../src/graph/analyze.js';
import { Runner, captureGrams } from '../src/capture/index.js';
import { Calibration } from '../src/calibration.js';
import { GramAccumulator } from '../src/kernels/gram.js';

const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

/** Seconds per multiply-add of GramAccumulator.add at d columns (best of five, on about 2²⁷ multiply-adds). */
function secondsPerMac(d: number): number {
  const rows = Math.max(512, Math.min(16384, Math.floor(2 ** 27 / (d * d)) * 128));
  const X = Float32Array.from({ length: rows * d }, (_, i) => Math.sin(i * 0.37));
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const acc = new GramAccumulator(d);
    const t = performance.now();
    acc.add(X);
    acc.result();
    best = Math.min(best, (performance.now() - t) / 1000);
    acc.release();
  }
  return best / ((rows * d * (d + 1)) / 2);
}

const models = (process.argv[2] ?? 'lenet,vgg,resnet20,mobilenet,vit').split(',');
console.log(`load average ${load()} at the start\n`);
console.log(
  '| model | session s | pass s | Gram G multiply-adds | Gram s (model) | model s | capture s | capture / model | ' +
    'capture / (pass + Gram) |',
);
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
const rate = new Map<number, number>();
for (const name of models.filter((m) => existsSync(`models/${m}.onnx`))) {
  const model = readModel(`models/${name}.onnx`),
    calib = openNpy('models/calib.npy');
  const { groups } = analyze(model, undefined);
  const names = [...new Set(groups.flatMap((g) => g.consumers.map((c) => c.input)))];
  const data = Calibration.of(model, calib);
  let session = Infinity,
    forward = Infinity,
    capture = Infinity,
    grams;
  // at least three runs, and more within 3 s: LeNet's 50 ms capture varies by half between runs
  const start = performance.now();
  for (let rep = 0; rep < 3 || (rep < 30 && performance.now() - start < 3000); rep++) {
    let t = performance.now();
    const run = await Runner.open(model, names, {}, true);
    session = Math.min(session, (performance.now() - t) / 1000);
    t = performance.now();
    for (const b of data.batches(64)) await run.run(b, names);
    forward = Math.min(forward, (performance.now() - t) / 1000);
    await run.release();
    t = performance.now();
    grams = await captureGrams(model, groups, calib, {});
    capture = Math.min(capture, (performance.now() - t) / 1000);
  }
  let macs = 0,
    gram = 0;
  for (const g of groups)
    g.consumers.forEach((c, i) => {
      const m = (grams!.get(g.id)![i]!.rows * c.d * (c.d + 1)) / 2;
      if (!rate.has(c.d)) rate.set(c.d, secondsPerMac(c.d));
      macs += m;
      gram += m * rate.get(c.d)!;
    });
  const predicted = session + forward + gram;
  const cells = [session, forward, macs / 1e9, gram, predicted, capture].map((v) => v.toFixed(3));
  const ratios = [predicted, forward + gram].map((m) => `${(capture / m).toFixed(2)}×`);
  console.log(`| ${name} | ${cells.join(' | ')} | ${ratios.join(' | ')} |`);
  calib.close();
}
console.log(`\nload average ${load()} at the end`);
