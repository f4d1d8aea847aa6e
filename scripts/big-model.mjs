// The check with a real model past protobuf's 2 GB limit (issue 17), kept out of the test suite (it writes ~9 GB of
// files and takes minutes): a torch export with a 2.2 GB embedding stored as external data (one file per tensor, as
// torch writes it) is pruned by the CLI keeping every channel without a re-fit, and at keep-ratio 0.5; onnxruntime-node
// loads the written .onnx + .data from disk; kept whole, its outputs must equal the original's exactly.
//
//   npm run build:ts && node scripts/big-model.mjs [DIR]     (DIR default /tmp/subprune-big; needs ~10 GB free)
//
// The model is made once by scripts/make-big-model.py with Debian's /usr/bin/python3 (python3-torch); that takes
// minutes. Prints seconds and peak RSS (from /usr/bin/time -v) per run.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';

const dir = process.argv[2] ?? '/tmp/subprune-big';
const model = join(dir, 'big.onnx'),
  ids = join(dir, 'ids.npy'),
  out = join(dir, 'out');
mkdirSync(out, { recursive: true });
if (!existsSync(model)) {
  console.log(`making ${model} (torch export, minutes) ...`);
  const r = spawnSync('/usr/bin/python3', ['scripts/make-big-model.py', dir], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('scripts/make-big-model.py failed');
}

/** Runs the CLI under /usr/bin/time -v: wall seconds, peak RSS in GB, its stdout. */
function prune(name, ...flags) {
  const args = ['-v', 'node', 'bin/subprune.js', 'prune', model, '--calib', ids, '-o', join(out, `${name}.onnx`)];
  const r = spawnSync('/usr/bin/time', [...args, '--report', join(out, `${name}.json`), ...flags], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`prune ${flags.join(' ')} failed:\n${r.stderr}`);
  const wall = r.stderr.match(/Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)/);
  const seconds = Number(wall[1] ?? 0) * 3600 + Number(wall[2]) * 60 + Number(wall[3]);
  const rss = Number(r.stderr.match(/Maximum resident set size \(kbytes\): (\d+)/)[1]) / 2 ** 20;
  const report = JSON.parse(readFileSync(join(out, `${name}.json`), 'utf8'));
  return { seconds, rss, report, stdout: r.stdout };
}

/** The first output of the model file (onnxruntime reads its external data from disk) on the first 256 ids. */
async function outputs(file) {
  const s = await ort.InferenceSession.create(file);
  const all = new BigInt64Array(readFileSync(ids).buffer.slice(128)); // int64 .npy: 128-byte header
  const y = await s.run({ ids: new ort.Tensor('int64', all.subarray(0, 256), [256]) });
  await s.release();
  return y.logits.data;
}

const sizes = (f) => `${(statSync(f).size / 2 ** 30).toFixed(2)} GiB`;
const rows = [];
for (const [name, flags] of [
  ['kept', ['--keep-ratio', '1', '--no-refit']],
  ['half', ['--keep-ratio', '0.5']],
]) {
  const r = prune(name, ...flags);
  const s = r.report.seconds;
  rows.push(
    `| ${flags.join(' ')} | ${r.seconds.toFixed(1)} | ${r.rss.toFixed(2)} | ${s.capture.toFixed(1)} | ` +
      `${s.verify.toFixed(1)} | ${sizes(join(out, `${name}.onnx.data`))} |`,
  );
  console.log(r.stdout.trim().split('\n').slice(-2).join('\n'));
}
const [want, got] = [await outputs(model), await outputs(join(out, 'kept.onnx'))];
const same = want.length === got.length && want.every((v, i) => v === got[i]);
console.log('\n| flags | wall s | peak RSS GB | capture s | verify s | .data |\n|---|---|---|---|---|---|');
console.log(rows.join('\n'));
console.log(`\nkept whole: outputs ${same ? 'equal' : 'DIFFER from'} the original's in onnxruntime-node`);
if (!same) process.exit(1);
