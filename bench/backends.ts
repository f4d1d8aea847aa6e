// npm run bench:backends [-- --repeat 5 --modes layerwise,asymmetric --models lenet,vgg]: what onnxruntime-web's
// WebAssembly backend costs against onnxruntime-node (default: every bundled model, layerwise). Cold: `subprune prune`
// (compression 4) in a fresh process, wall time (loading the runtime and compiling included). Warm: prune() and
// evaluate() repeated in this process, after one run not counted. The two backends alternate so that load from other
// work on the machine hits both alike; medians over the repeats.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { readModel } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { prune, type Mode } from '../src/prune/index.js';
import { evaluate } from '../src/eval/index.js';
import type { Backend } from '../src/capture/index.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const repeat = Number(flag('--repeat', '5')),
  modes = flag('--modes', 'layerwise').split(',') as Mode[];
const models = flag('--models', 'lenet,vgg,resnet20')
  .split(',')
  .filter((m) => existsSync(`models/${m}.onnx`));
const backends: Backend[] = ['node', 'web'];
const dir = mkdtempSync(join(tmpdir(), 'subprune-bench-'));

const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
const f = (s: number) => s.toFixed(2);

/** Median seconds of fn per backend, alternating backends, after one uncounted run of each. */
async function timed(fn: (b: Backend) => Promise<unknown>): Promise<Record<Backend, number>> {
  const t: Record<Backend, number[]> = { node: [], web: [] };
  for (let i = 0; i <= repeat; i++) {
    for (const b of backends) {
      const t0 = performance.now();
      await fn(b);
      if (i > 0) t[b].push((performance.now() - t0) / 1000);
    }
  }
  return { node: median(t.node), web: median(t.web) };
}

let cliArgs: string[] = [];
async function cold(b: Backend): Promise<void> {
  const r = spawnSync(process.execPath, ['bin/subprune.js', ...cliArgs, '--backend', b], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`subprune ${cliArgs.join(' ')}: ${r.stderr}`);
}

console.log(
  `${cpus().length} × ${cpus()[0].model}, Node ${process.version}, load average ${loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')}; medians of ${repeat}`,
);
console.log('| model | what | node s | web s | web / node |');
console.log('|---|---|---:|---:|---:|');
const row = (model: string, what: string, s: Record<Backend, number>) =>
  console.log(`| ${model} | ${what} | ${f(s.node)} | ${f(s.web)} | ${(s.web / s.node).toFixed(1)}× |`);
for (const name of models) {
  const model = readModel(`models/${name}.onnx`),
    calib = openNpy('models/calib.npy'),
    test = openNpy('models/test.npy');
  for (const mode of modes) {
    cliArgs = [
      'prune',
      `models/${name}.onnx`,
      '--calib',
      'models/calib.npy',
      '--compression',
      '4',
      '--mode',
      mode,
      '-o',
      join(dir, 'out.onnx'),
      '--quiet',
    ];
    row(name, `prune ${mode}, cold (CLI wall)`, await timed(cold));
    row(
      name,
      `prune ${mode}, warm`,
      await timed((backend) => prune(model, calib, { budget: { compression: 4 }, mode, backend })),
    );
  }
  row(name, `eval ${test.rows} samples, warm`, await timed((backend) => evaluate(model, test, { backend })));
  calib.close();
  test.close();
}
