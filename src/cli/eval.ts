import { parseArgs } from 'node:util';
import { readModel } from '../onnx/index.js';
import { badInput } from '../errors.js';
import { evaluate, flattered } from '../eval/index.js';
import { Progress } from './progress.js';
import { num, pct, backendFlag } from './util.js';
import { readLabels } from './args.js';
import { inputsHelp, openInputs } from './inputs.js';
import { Calibration } from '../calibration.js';

export const evalHelp = `subprune eval: accuracy of a model, and agreement with a reference model

Usage: subprune eval MODEL.onnx --data X.npy [--labels Y.npy] [--reference ORIG.onnx] [--json]

${inputsHelp('--data DATA', 'the inputs')}
  --preprocess SPEC  how images become the model's input, for --data FOLDER (as for prune)
  --labels FILE      integer class labels, .npy of shape [samples]: prints top-1 accuracy of the
                     first output (its largest entry per sample)
  --reference FILE   another model with the same outputs (e.g. the unpruned original): prints each
                     output's relative error ‖y − y_ref‖/‖y_ref‖, and top-1 agreement (the share of
                     positions whose largest score is the reference's) for the first output that
                     holds class scores: a layer's channels or a Softmax's axis, 2 or more of them
                     (not a one-channel map, a Sigmoid's probabilities, boxes next to scores or an upscaled image)
  --batch n          batch size (default 64; a model with a fixed batch size uses its own)
  --backend NAME     model runtime: node (onnxruntime-node, the default where it loads) or web
                     (onnxruntime-web's WebAssembly backend: no native addon needed)
  --json             print the result as JSON
  -h, --help         this help`;

export async function runEval(argv: string[]): Promise<void> {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      data: { type: 'string', multiple: true },
      preprocess: { type: 'string' },
      labels: { type: 'string' },
      reference: { type: 'string' },
      batch: { type: 'string' },
      backend: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) {
    console.log(evalHelp);
    return;
  }
  if (positionals.length !== 1) throw badInput('eval takes one model: subprune eval MODEL.onnx --data X.npy');
  if (!o.data?.length) throw badInput('eval needs --data X.npy');
  const backend = backendFlag(o.backend);
  const model = readModel(positionals[0]);
  const reference = o.reference ? readModel(o.reference) : undefined;
  const labels = o.labels ? readLabels(o.labels) : undefined;
  const inputs = openInputs(o.data, '--data', o.preprocess);
  const data = Calibration.of(model, inputs.data);
  const bar = new Progress('eval', data.rows, !o.json && process.stderr.isTTY === true);
  try {
    const r = await evaluate(model, data, {
      labels,
      reference,
      batch: num(o.batch, '--batch', (v) => Number.isInteger(v) && v >= 1, 'a whole number ≥ 1'),
      backend,
      onBatch: (d) => bar.update(d),
    });
    bar.done();
    if (o.json) {
      console.log(JSON.stringify(r));
      return;
    }
    console.log(`${positionals[0]} on ${r.samples} samples of ${inputs.paths.join(', ')}:`);
    if (r.accuracy !== undefined) console.log(`  top-1 accuracy        ${pct(r.accuracy)}`);
    const scores = r.outputs?.find((x) => x.agreement !== undefined),
      one = scores?.oneClass,
      spread = scores?.spreadRelError;
    if (r.agreement !== undefined)
      console.log(
        `  agreement with ${o.reference}  ${pct(r.agreement)}` +
          (one === undefined ? '' : ` (its top-1 is class ${one} at every position: this says little)`),
      );
    if (spread !== undefined)
      console.log(`  score error           ${spread.toFixed(5)} of the scores' spread across the inputs`);
    for (const out of r.outputs ?? [])
      console.log(
        `  relative output error ${out.relError.toFixed(5)}` +
          (flattered(out) ? ` (${out.centeredRelError!.toFixed(5)} of the spread about the mean)` : '') +
          (r.outputs!.length > 1
            ? ` (${out.name}${out.agreement === undefined ? '' : `, agreement ${pct(out.agreement)}`})`
            : ''),
      );
    if (r.uncompared)
      console.log(`  not compared: ${r.uncompared.join(', ')} (integers, or shapes that depend on the values)`);
    if (r.accuracy === undefined && r.relError === undefined && !r.uncompared)
      console.log('  (give --labels and/or --reference to measure something)');
  } finally {
    inputs.close();
  }
}
