import { parseArgs } from 'node:util';
import { statSync } from 'node:fs';
import { readModel } from '../onnx/index.js';
import { checkWritable, writeFileAtomic } from '../atomic.js';
import { badInput } from '../errors.js';
import { captureStats, encodeStats } from '../capture/shards.js';
import { defaultThreads } from '../kernels/instances.js';
import { fmtBytes } from '../kernels/memory.js';
import { METHODS } from '../select/baselines.js';
import { Progress } from './progress.js';
import { num, sameFile, backendFlag } from './util.js';
import { inputsHelp, openInputs } from './inputs.js';
import { choice } from './args.js';

export const captureHelp = `subprune capture: the layerwise capture of a part of the calibration data, for prune --stats

Usage: subprune capture MODEL.onnx --calib PART.npy -o PART.stats [options]

The Gram matrices prune's layerwise mode builds are sums over the calibration samples, so a calibration set split in
parts can be captured part by part, in parallel processes or on other machines, and pruned from all the parts:
  subprune capture MODEL.onnx --calib part1.npy -o part1.stats &
  subprune capture MODEL.onnx --calib part2.npy -o part2.stats &
  wait
  subprune prune MODEL.onnx --stats part1.stats --stats part2.stats --calib small.npy -o OUT.onnx
Each part should hold other samples (a shard captured twice is refused). Parts of a multiple of 64 samples and of
--batch give one capture's numbers up to the order of float64 sums; others differ in the last bits.

${inputsHelp('--calib DATA', 'calibration inputs')};
                      this capture's part of them
  --preprocess SPEC   how images become the model's input, for --calib FOLDER (as for prune; recorded in the file,
                      so every part needs the same)
  -o, --output FILE   where to write the statistics (atomically; never an input; an existing file is replaced)
  --method NAME       the method prune will rank with (default greedy): activation-norm and sampling need channel
                      statistics besides the Gram matrices, captured with this flag; every part needs the same
  --all-tokens        count padding tokens as rows (as prune --all-tokens; every part and prune need the same)
  --batch n           calibration batch size (default 64, fewer where 64 samples' activations pass 96 MiB: 2 for
                      ResNet-50 at 224×224; a model with a fixed batch size uses its own)
  --threads n         threads for the wasm kernels (default: the cores other processes leave free)
  --backend NAME      model runtime: node (onnxruntime-node, the default where it loads) or web
  --quiet             no summary line
  -h, --help          this help

The file holds, per group and consumer, G = BᵀB (d×d, float64), the column sums of B (for the bias re-fit), the row
count, the channel statistics of --method, and a key: the model's SHA-256, the input shapes, --preprocess,
--all-tokens, the groups and subprune's version; prune refuses stats whose key differs from its own run's (format:
docs/DESIGN.md).`;

export async function runCapture(argv: string[]): Promise<void> {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      calib: { type: 'string', multiple: true },
      preprocess: { type: 'string' },
      output: { type: 'string', short: 'o' },
      method: { type: 'string', default: 'greedy' },
      'all-tokens': { type: 'boolean', default: false },
      batch: { type: 'string' },
      threads: { type: 'string' },
      backend: { type: 'string' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) {
    console.log(captureHelp);
    return;
  }
  if (positionals.length !== 1)
    throw badInput('capture takes one model: subprune capture MODEL.onnx --calib PART.npy -o PART.stats');
  const input = positionals[0]!;
  if (!o.calib?.length) throw badInput('capture needs --calib PART.npy (this part of the calibration inputs)');
  if (!o.output) throw badInput('capture needs -o PART.stats (where to write the statistics)');
  const calibPaths = o.calib.map((v) => v.slice(v.indexOf('=') + 1));
  // as prune's -o: an existing output is replaced, an input never
  for (const given of [input, ...calibPaths])
    if (sameFile(given, o.output))
      throw badInput(
        `-o ${o.output} is an input of this run; subprune never overwrites its inputs, choose another file`,
      );
  checkWritable(o.output); // before the work, not after it
  const method = choice(o.method!, '--method', METHODS);
  const batch = num(o.batch, '--batch', (v) => Number.isInteger(v) && v >= 1, 'a whole number ≥ 1');
  const threads =
    num(o.threads, '--threads', (v) => Number.isInteger(v) && v >= 1 && v <= 60, 'a whole number from 1 to 60') ??
    defaultThreads();
  const backend = backendFlag(o.backend);
  const model = readModel(input);
  const inputs = openInputs(o.calib, '--calib', o.preprocess);
  let bar: Progress | undefined;
  const t = performance.now();
  try {
    const stats = await captureStats(model, inputs.data, {
      method,
      batch,
      threads,
      backend,
      preprocess: inputs.preprocess,
      allTokens: o['all-tokens'],
      onBatch: (done, total) => (bar ??= new Progress('capture', total)).update(done),
    });
    bar?.done();
    writeFileAtomic(o.output, encodeStats(stats));
    if (!o.quiet) {
      const groups = stats.key.groups.length,
        seconds = ((performance.now() - t) / 1000).toFixed(2);
      console.log(
        `captured ${groups} group${groups > 1 ? 's' : ''} on ${stats.samples} samples of ${inputs.paths.join(', ')} ` +
          `in ${seconds} s; wrote ${o.output} (${fmtBytes(statSync(o.output).size)})`,
      );
    }
  } finally {
    inputs.close();
  }
}
