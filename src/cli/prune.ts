import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { readModel, writeModel } from '../onnx/index.js';
import { checkWritable, writeFileAtomic } from '../atomic.js';
import { badInput } from '../errors.js';
import { MODES, prune } from '../prune/index.js';
import type { Budget } from '../budget/index.js';
import { Progress } from './progress.js';
import { fmtBytes } from '../kernels/memory.js';
import { defaultThreads } from '../kernels/instances.js';
import { num, sameFile, table, pct, big, backendFlag } from './util.js';
import { inputsHelp, openInputs } from './inputs.js';
import { choice, methodFlags, methodHelp, methodOptions } from './args.js';

export const pruneHelp = `subprune prune: remove channels from an ONNX model with unlabeled calibration data

Usage: subprune prune MODEL.onnx --calib X.npy -o OUT.onnx [options]

${inputsHelp('--calib DATA', 'calibration inputs')};
                      a few hundred samples are enough, no labels needed
  --preprocess SPEC   how images become the model's input (resize, crop, channels, scale, mean, std; or a
                      preset: imagenet, paddleocr-rec, paddleocr-det), for --calib FOLDER; see the README
  -o, --output FILE   where to write the pruned model (after onnxruntime has run it; atomically; never the input)
Budget (one of; default --compression 2):
  --compression c     make the model c times smaller: total parameter count ÷ c (every initializer),
                      split over the groups by --allocation
  --target WHAT       with --compression: params (default) or flops
  --keep-ratio r      keep the fraction r of the channels of every group (0 < r ≤ 1)
  --budget FILE       JSON {"<group id, producer node or weight name>": channels to keep, ...}; groups not
                      named keep all
Method:
  --mode M            layerwise (default): every group from the original model's activations;
                      sequential: group by group, from the model whose earlier groups are already pruned;
                      asymmetric: as sequential, but fit the original model's activations
  --no-refit          keep the consumers' weights (only slice them) instead of the least-squares re-fit
  --no-bias-refit     re-fit the weights only, as the paper does (default: the consumers' biases too, where
                      a per-channel bias fits: Conv, Gemm, MatMul; one is added where absent)
  --refine N          after the greedy, up to N swaps of a kept and a removed channel per group, each the
                      best that raises the objective (default 0: none; each round costs k greedy runs)
${methodHelp}
Other:
  --report FILE       write a JSON report: per group the kept channels in greedy order and the objective,
                      params and FLOPs before/after, seconds per stage, fidelity on the calibration data
  --batch n           calibration batch size (default 64; a model with a fixed batch size uses its own)
  --kernels NAME      selection kernels: wasm (SIMD WebAssembly, default) or plain (TypeScript)
  --threads n         threads for the wasm kernels (default: all cores). Results are bit-identical
                      for any n
  --backend NAME      model runtime for capture and verification: node (onnxruntime-node, the default where it
                      loads) or web (onnxruntime-web's WebAssembly backend: no native addon needed)
  --quiet             no summary table (nor the kernel memory line printed before the run)
  -h, --help          this help

The objective of a group is 1 − the relative error of its consumers' inputs (‖B_S W' − A W‖²/‖A W‖², the mean over
its consumers) on the calibration data. Groups are listed by 'subprune inspect MODEL'.`;

export async function runPrune(argv: string[]): Promise<void> {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      calib: { type: 'string', multiple: true },
      preprocess: { type: 'string' },
      output: { type: 'string', short: 'o' },
      compression: { type: 'string' },
      target: { type: 'string' },
      'keep-ratio': { type: 'string' },
      budget: { type: 'string' },
      mode: { type: 'string', default: 'layerwise' },
      'no-refit': { type: 'boolean', default: false },
      'no-bias-refit': { type: 'boolean', default: false },
      refine: { type: 'string' },
      report: { type: 'string' },
      batch: { type: 'string' },
      kernels: { type: 'string', default: 'wasm' },
      threads: { type: 'string' },
      backend: { type: 'string' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
      ...methodOptions,
    },
  });
  if (o.help) {
    console.log(pruneHelp);
    return;
  }
  if (positionals.length !== 1)
    throw badInput('prune takes one model: subprune prune MODEL.onnx --calib X.npy -o OUT.onnx');
  const input = positionals[0];
  if (!o.calib?.length) throw badInput('prune needs --calib X.npy (calibration inputs)');
  if (!o.output) throw badInput('prune needs -o OUT.onnx');
  if (sameFile(input, o.output))
    throw badInput(`-o ${o.output} is the input model; subprune never overwrites its input, choose another file`);
  if (o.report && (sameFile(o.report, input) || sameFile(o.report, o.output)))
    throw badInput('--report must be another file than the models');
  const calibPaths = o.calib.map((v) => v.slice(v.indexOf('=') + 1));
  for (const given of [...calibPaths, o.budget]) {
    if (given && [o.output, o.report].some((out) => out && sameFile(given, out)))
      throw badInput(
        `${given} is an input of this run; subprune never overwrites its inputs, choose other files for -o and ` +
          '--report',
      );
  }
  checkWritable(o.output); // before the work, not after it
  if (o.report) checkWritable(o.report);
  const mode = choice(o.mode!, '--mode', MODES);
  if (o.kernels !== 'wasm' && o.kernels !== 'plain') throw badInput(`--kernels ${o.kernels}: use wasm or plain`);
  if (o.target !== undefined && o.target !== 'params' && o.target !== 'flops')
    throw badInput(`--target ${o.target}: use params or flops`);
  const given = [o.compression, o['keep-ratio'], o.budget].filter((x) => x !== undefined).length;
  if (given > 1) throw badInput('give one of --compression, --keep-ratio, --budget');
  let budget: Budget;
  if (o['keep-ratio'] !== undefined)
    budget = { keepRatio: num(o['keep-ratio'], '--keep-ratio', (v) => v > 0 && v <= 1, 'a fraction in (0, 1]')! };
  else if (o.budget !== undefined) budget = { keep: readBudget(o.budget) };
  else
    budget = {
      compression: num(o.compression ?? '2', '--compression', (v) => v >= 1, 'a ratio ≥ 1')!,
      target: (o.target ?? 'params') as 'params' | 'flops',
    };
  const batch = num(o.batch, '--batch', (v) => Number.isInteger(v) && v >= 1, 'a whole number ≥ 1');
  const backend = backendFlag(o.backend);

  const model = readModel(input);
  const how = methodFlags(o);
  const threads =
    num(o.threads, '--threads', (v) => Number.isInteger(v) && v >= 1 && v <= 60, 'a whole number from 1 to 60') ??
    defaultThreads();
  const inputs = openInputs(o.calib, '--calib', o.preprocess);
  const calib = inputs.data;
  const bars = new Map<string, Progress>();
  const labels: Record<string, string> = { capture: 'capture', select: 'select', group: 'groups', verify: 'verify' };
  let result;
  try {
    result = await prune(model, calib, {
      mode,
      refit: !o['no-refit'],
      biasRefit: !o['no-bias-refit'],
      refine: num(o.refine, '--refine', (v) => Number.isInteger(v) && v >= 0, 'a whole number ≥ 0'),
      budget,
      batch,
      kernels: o.kernels,
      threads,
      backend,
      method: how.method,
      seed: how.seed,
      allocation: how.allocation,
      verify: how.verify,
      grid: how.grid,
      onPlan: (p) => {
        // on stdout: stderr carries only progress and, on failure, the one error line
        if (p.groups && !o.quiet)
          console.log(
            `kernel memory: at most ${fmtBytes(p.capture)} to capture (${p.groups} ` +
              `group${p.groups > 1 ? 's' : ''}, ${p.passes} pass${p.passes > 1 ? 'es' : ''}) and ` +
              `${fmtBytes(p.select)} to select (${threads} thread${threads > 1 ? 's' : ''})`,
          );
      },
      onProgress: (stage, done, total) => {
        let bar = bars.get(stage);
        if (!bar) {
          bars.set(stage, (bar = new Progress(labels[stage] ?? stage, total)));
        }
        bar.update(done);
        if (done >= total) bar.done();
      },
    });
  } finally {
    inputs.close();
    for (const f of how.opened) f.close();
  }
  const { model: pruned, report } = result;
  const none = !report.groups.length; // an unchanged copy of the input is no output worth writing: say so and exit 0
  if (!none) writeModel(pruned, o.output);
  if (o.report)
    writeFileAtomic(
      o.report,
      Buffer.from(
        JSON.stringify(
          {
            model: input,
            output: o.output,
            budget,
            ...report,
            ...(inputs.preprocess ? { preprocess: inputs.preprocess } : {}),
          },
          null,
          1,
        ) + '\n',
      ),
    );
  if (none) {
    console.error(
      `subprune prune: ${input} has no prunable groups (${report.refused.length} candidates refused; subprune ` +
        `inspect says why); nothing to prune, so ${o.output} was not written`,
    );
    return;
  }
  if (o.quiet) return;
  console.log(
    table(
      ['group', 'producers', 'consumers', 'channels', 'kept', 'objective', 'FLOPs', 'seconds'],
      report.groups.map((u) => [
        u.id,
        u.producers.length,
        u.consumers.length,
        u.channels,
        u.kept,
        u.objective.toFixed(4),
        `${big(u.flops.before)} → ${big(u.flops.after)}`,
        u.seconds.toFixed(3),
      ]),
    ),
  );
  const r = report,
    s = r.seconds;
  console.log(
    `\nparams ${big(r.params.before)} → ${big(r.params.after)} ` +
      `(${(r.params.before / r.params.after).toFixed(2)}× smaller), FLOPs ${big(r.flops.before)} → ` +
      `${big(r.flops.after)} (${(r.flops.before / r.flops.after).toFixed(2)}×) per sample` +
      (r.tokens
        ? `; per token ${big(r.flops.before / r.tokens)} → ${big(r.flops.after / r.tokens)} (at ${r.tokens} tokens)`
        : ''),
  );
  console.log(
    `on the ${r.calibration.samples} calibration inputs: top-1 agreement with the original ` +
      `${pct(r.fidelity.agreement)}, relative output error ${r.fidelity.relError!.toFixed(4)}`,
  );
  console.log(
    `method ${r.method}, allocation ${r.allocation}, mode ${r.mode}, ${r.refit ? 're-fit' : 'no re-fit'}, ` +
      `onnxruntime-${r.backend}; seconds: analyze ${s.analyze.toFixed(2)}, allocate ${s.allocate.toFixed(2)}, ` +
      `capture ${s.capture.toFixed(2)}, select ${s.select.toFixed(2)}, rewrite ${s.rewrite.toFixed(2)}, verify ` +
      `${s.verify.toFixed(2)}, total ${s.total.toFixed(2)}`,
  );
  console.log(`wrote ${o.output}${o.report ? ` and ${o.report}` : ''}`);
}

function readBudget(path: string): Record<string, number> {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw badInput(`--budget ${path}: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v))
    throw badInput(`--budget ${path}: expected a JSON object {"group id": channels, ...}`);
  for (const [k, x] of Object.entries(v))
    if (typeof x !== 'number') throw badInput(`--budget ${path}: "${k}" must map to a number of channels`);
  return v as Record<string, number>;
}
