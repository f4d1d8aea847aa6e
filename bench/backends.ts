// npm run bench:backends [-- --repeat 5]: what onnxruntime-web's WebAssembly backend costs against onnxruntime-node.
// `subprune prune` (compression 4) and `subprune eval` on every bundled model, each run in its own process; the two
// backends alternate so that load from other work on the machine hits both alike. Medians over the repeats.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';

const args = process.argv.slice(2);
const repeat = Number(args[args.indexOf('--repeat') + 1] || 5);
const models = ['lenet', 'vgg', 'resnet20'].filter((m) => existsSync(`models/${m}.onnx`));
const backends = ['node', 'web'] as const;
const dir = mkdtempSync(join(tmpdir(), 'subprune-bench-'));

function cli(argv: string[]): number {
  const t = performance.now();
  const r = spawnSync(process.execPath, ['bin/subprune.js', ...argv], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`subprune ${argv.join(' ')}: ${r.stderr}`);
  return (performance.now() - t) / 1000;
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
const f = (s: number) => s.toFixed(2);

console.log(`${cpus().length} × ${cpus()[0].model}, Node ${process.version}, load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}; median of ${repeat}`);
console.log('| model | command | node: wall s | node: capture + verify s | web: wall s | web: capture + verify s | web / node (capture + verify) |');
console.log('|---|---|---|---|---|---|---|');
for (const model of models) {
  for (const mode of ['layerwise', 'asymmetric']) {
    const wall = { node: [] as number[], web: [] as number[] }, ort = { node: [] as number[], web: [] as number[] };
    for (let i = 0; i < repeat; i++) {
      for (const b of backends) {
        const rep = join(dir, `${b}.json`);
        wall[b].push(cli(['prune', `models/${model}.onnx`, '--calib', 'models/calib.npy', '--compression', '4', '--mode', mode,
          '-o', join(dir, `${b}.onnx`), '--report', rep, '--backend', b, '--quiet']));
        const s = JSON.parse(readFileSync(rep, 'utf8')).seconds;
        ort[b].push(s.capture + s.verify);
      }
    }
    const [wn, on, ww, ow] = [median(wall.node), median(ort.node), median(wall.web), median(ort.web)];
    console.log(`| ${model} | prune --mode ${mode} | ${f(wn)} | ${f(on)} | ${f(ww)} | ${f(ow)} | ${(ow / on).toFixed(1)}× |`);
  }
  const wall = { node: [] as number[], web: [] as number[] };
  for (let i = 0; i < repeat; i++) {
    for (const b of backends) {
      wall[b].push(cli(['eval', `models/${model}.onnx`, '--data', 'models/test.npy', '--reference', `models/${model}.onnx`, '--backend', b, '--json']));
    }
  }
  const [wn, ww] = [median(wall.node), median(wall.web)];
  console.log(`| ${model} | eval, 2000 samples, with a reference | ${f(wn)} | | ${f(ww)} | | ${(ww / wn).toFixed(1)}× (wall) |`);
}
