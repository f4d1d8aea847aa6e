import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { externalDataFiles, readModel, type Model } from '../onnx/index.js';
import { checkWritable, writeFileAtomic } from '../atomic.js';
import { badInput, internal } from '../errors.js';
import { defaultMode, MODES, pruneSizes, type PruneReport, type Sized } from '../prune/index.js';
import { writeVerified } from '../prune/verify.js';
import { fidelityNotes } from '../eval/notes.js';
import { runReport } from '../prune/report.js';
import { AUTO_ROUND, type Budget } from '../budget/index.js';
import { Progress } from './progress.js';
import { fmtBytes } from '../kernels/memory.js';
import { defaultThreads } from '../kernels/instances.js';
import { num, sameFile, table, pct, big, backendFlag } from './util.js';
import { inputsHelp, openInputs } from './inputs.js';
import { choice, methodFlags, methodHelp, methodOptions } from './args.js';
import { checkStatsPreprocess, readMergedStats } from '../capture/shards.js';

export const pruneHelp = `subprune prune: remove channels from an ONNX model with unlabeled calibration data

Usage: subprune prune MODEL.onnx --calib X.npy -o OUT.onnx [options]
       subprune prune MODEL.onnx --stats A.stats --stats B.stats ... --calib SMALL.npy -o OUT.onnx [options]

${inputsHelp('--calib DATA', 'calibration inputs')};
                      a few hundred samples are enough, no labels needed; with --stats: a few samples
                      (64 will do) that only verify the pruned model and measure its fidelity
  --stats FILE        statistics of a part of the calibration data from 'subprune capture' (once per part):
                      merged, they stand for the capture, which then does not run. Layerwise mode only (the
                      default mode with --stats); refused if captured from another model, input shape,
                      --preprocess, --method's statistics or subprune version, or if a file is corrupted or
                      given twice (subprune capture --help)
  --preprocess SPEC   how images become the model's input (resize, crop, channels, scale, mean, std; or a
                      preset: imagenet, paddleocr-rec, paddleocr-det), for --calib FOLDER and --verify
                      FOLDER; or the JSON a report recorded as "preprocess"; see the README
  -o, --output FILE   where to write the pruned model (after onnxruntime has run it; atomically; never the input);
                      for several sizes a pattern: {c} stands for the compression, {r} for the keep ratio
  --external-data     write the weights to OUT.onnx.data next to it (ONNX's external data); automatic when the
                      model would reach protobuf's 2 GB limit for one .onnx file
Budget (one of; default --compression 2):
  --compression c     make the model c times smaller: total parameter count ÷ c (every initializer),
                      split over the groups by --allocation
  --target WHAT       with --compression: params (default) or flops
  --keep-ratio r      keep the fraction r of the channels of every group (0 < r ≤ 1)
  --budget FILE       JSON {"<group id, producer node or weight name>": channels to keep, ...}; groups not
                      named keep all
  --round-to auto|N   channel counts onnxruntime runs fast. auto (default): every group a 2-D convolution
                      produces or reads with 32 channels or more keeps a multiple of 8 channels, or all of them;
                      other groups any count. N: every group keeps a multiple of N channels, or all of them (attention
                      heads: any count whose weights' entries are multiples of N); 1: any count. 8 (16 on
                      AVX-512 cores) lets onnxruntime run the pruned convolutions with its blocked (NCHWc)
                      kernels, which its default optimization level uses on x86 only for such counts (README,
                      Rounding). A --budget file's counts are kept as written unless --round-to is given
Several sizes from one run: --compression 2,4,8 -o out-{c}.onnx (or --keep-ratio 0.5,0.25 -o out-{r}.onnx)
                      writes one model per size and one --report with an entry per size. In layerwise mode one
                      capture and one ranking per group serve every size (the greedy's order is nested), so each
                      further size costs only its re-fit, rewrite and verification; sequential and asymmetric
                      modes capture the model pruned so far, so they run once per size. Each model is written
                      when it passes verification; a size that fails is not written, the others are, and the
                      run ends with exit 1 naming it (the report holds its error)
Method:
  --mode M            asymmetric (default; layerwise with --stats): group by group, from the model whose
                      earlier groups are already pruned, fitting the original model's activations; the most
                      accurate on the bundled models at 2-5× the seconds of layerwise, its sweep included
                      (README, The default setting); layerwise: every group from the original model's
                      activations, one capture, no sweep;
                      sequential: as asymmetric, but fit the pruned model's own activations
  --no-refit          keep the consumers' weights (only slice them) instead of the least-squares re-fit
  --no-bias-refit     re-fit the weights only, as the paper does (default: the consumers' biases too, where
                      a per-channel bias fits: Conv, Gemm, MatMul; one is added where absent)
  --refine N          after the greedy, up to N swaps of a kept and a removed channel per group, each the
                      best that raises the objective (default 0: none; each round costs k greedy runs)
  --all-tokens        count every token of the calibration data as a row of the consumers' inputs, padding
                      included (default: the tokens an input named attention_mask or input_mask marks 0 are
                      left out, in the layers whose input is [batch, tokens, features] or [tokens, batch,
                      features]; the summary says how many)
  --sweep N           when every group is pruned, re-fit every consumer once more, in graph order, from the
                      pruned model's inputs to the original model's outputs, keeping the channels (groups
                      pruned later changed what earlier consumers read: a ResNet's residual stream); then N
                      ReLU-aware fits where a Relu follows (0: least squares only); each fit one pass over
                      the calibration data; fewer than 10 rows per column: the ridge toward the
                      current weights; a consumer's bias is re-fitted only where it has one (default: 1 in
                      asymmetric and sequential modes, which it made more accurate on the bundled models at
                      1.4-2.2× the seconds of the prune without it (README, The default setting); none in
                      layerwise mode or with --no-refit)
  --no-sweep          no sweep: each consumer keeps the re-fit its group's pruning gave it
${methodHelp}
Other:
  --report FILE       write a JSON report: per group the kept channels in greedy order (and the --round-to
                      step of a rounded group) and the objective (of its own re-fit, before the sweep),
                      params and FLOPs before/after, seconds per stage, the sweep's fits (sweep: N or
                      false), fidelity on --verify or the calibration data (each output's relative error;
                      top-1 agreement and KL along the class axis of the first output that holds class
                      scores, per sample, token or pixel), and warnings (consumers not re-fitted for want
                      of calibration rows, a relative output error past 1; also printed on stderr);
                      several sizes: {"model", "sizes": [one such report per size, with its output]}
  --fidelity-rows n   measure the fidelity on n rows of --verify or the calibration data, evenly spaced
                      (default 512), or all
  --batch n           calibration batch size (default 64, fewer where 64 samples' activations pass 96 MiB: 2 for
                      ResNet-50 at 224×224; a model with a fixed batch size uses its own)
  --kernels NAME      selection kernels: wasm (SIMD WebAssembly, default) or plain (TypeScript)
  --threads n         threads for the wasm kernels (default: the cores other processes leave free:
                      all cores less those others kept busy over 0.1 s, at least 1). Results are bit-identical for any n
  --backend NAME      model runtime for capture and verification: node (onnxruntime-node, the default where it
                      loads) or web (onnxruntime-web's WebAssembly backend: no native addon needed)
  --quiet             no summary table (nor the kernel memory line printed before the run)
  -h, --help          this help

The objective of a group is 1 − the relative error of its consumers' inputs
(‖B_S W' − A W‖²/‖A W‖², the mean over its consumers) on the calibration data. Groups are listed by
'subprune inspect MODEL'.`;

export async function runPrune(argv: string[]): Promise<void> {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      calib: { type: 'string', multiple: true },
      stats: { type: 'string', multiple: true },
      preprocess: { type: 'string' },
      output: { type: 'string', short: 'o' },
      compression: { type: 'string' },
      target: { type: 'string' },
      'keep-ratio': { type: 'string' },
      budget: { type: 'string' },
      mode: { type: 'string' },
      'no-refit': { type: 'boolean', default: false },
      'no-bias-refit': { type: 'boolean', default: false },
      'all-tokens': { type: 'boolean', default: false },
      'round-to': { type: 'string' },
      refine: { type: 'string' },
      sweep: { type: 'string' },
      'no-sweep': { type: 'boolean', default: false },
      report: { type: 'string' },
      'fidelity-rows': { type: 'string' },
      'external-data': { type: 'boolean', default: false },
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
  if (!o.calib?.length)
    throw badInput(
      o.stats?.length
        ? 'prune --stats needs --calib SMALL.npy too: a few samples (64 will do) to verify the pruned model on'
        : 'prune needs --calib X.npy (calibration inputs)',
    );
  if (!o.output) throw badInput('prune needs -o OUT.onnx');
  if (o.target !== undefined && o.target !== 'params' && o.target !== 'flops')
    throw badInput(`--target ${o.target}: use params or flops`);
  const sizes = sizesOf(o);
  const outputs = outputsOf(o.output, sizes);
  for (const out of outputs)
    if (sameFile(input, out))
      throw badInput(`-o ${out} is the input model; subprune never overwrites its input, choose another file`);
  if (o.report && (sameFile(o.report, input) || outputs.some((out) => sameFile(o.report!, out))))
    throw badInput('--report must be another file than the models');
  const calibPaths = o.calib.map((v) => v.slice(v.indexOf('=') + 1));
  for (const given of [input, ...calibPaths, ...(o.stats ?? []), o.budget, o.report])
    for (const out of outputs)
      if (given && sameFile(given, `${out}.data`))
        throw badInput(`${given} is where -o ${out} would put its weights (.data); choose another -o`);
  for (const given of [...calibPaths, ...(o.stats ?? []), o.budget]) {
    if (given && [...outputs, o.report].some((out) => out && sameFile(given, out)))
      throw badInput(
        `${given} is an input of this run; subprune never overwrites its inputs, choose other files for -o and ` +
          '--report',
      );
  }
  for (const out of outputs) checkWritable(out); // before the work, not after it
  if (o.report) checkWritable(o.report);
  const asked = o.mode === undefined ? undefined : choice(o.mode, '--mode', MODES);
  if (o.kernels !== 'wasm' && o.kernels !== 'plain') throw badInput(`--kernels ${o.kernels}: use wasm or plain`);
  const batch = num(o.batch, '--batch', (v) => Number.isInteger(v) && v >= 1, 'a whole number ≥ 1');
  const backend = backendFlag(o.backend);
  const fidelityRows =
    o['fidelity-rows'] === 'all'
      ? Infinity
      : num(o['fidelity-rows'], '--fidelity-rows', (v) => Number.isInteger(v) && v >= 1, 'a whole number ≥ 1 or all');

  const model = readModel(input);
  // the input's own data files are inputs too: an output or its .data there would destroy the model being read
  for (const data of externalDataFiles(model))
    for (const out of outputs)
      if (sameFile(data, out) || sameFile(data, `${out}.data`))
        throw badInput(`${data} holds the input model's weights; -o ${out} would write over it, choose another -o`);
  const how = methodFlags(o);
  const threads =
    num(o.threads, '--threads', (v) => Number.isInteger(v) && v >= 1 && v <= 60, 'a whole number from 1 to 60') ??
    defaultThreads();
  const stats = o.stats?.length ? readMergedStats(o.stats) : undefined;
  const mode = asked ?? defaultMode(stats);
  const inputs = openInputs(o.calib, '--calib', o.preprocess, !!o.verify);
  if (o.preprocess && !inputs.preprocess && !how.opened.some((x) => x.preprocess))
    throw badInput('--preprocess is for a folder of images; --calib and --verify are files');
  const calib = inputs.data;
  if (stats && inputs.preprocess) checkStatsPreprocess(stats, inputs.preprocess);
  const bars = new Map<string, Progress>();
  const labels: Record<string, string> = {
    capture: 'capture',
    select: 'select',
    group: 'groups',
    sweep: 'sweep',
    verify: 'verify',
  };
  const externalData = o['external-data'] || 'auto';
  const results: SizeResult[] = [];
  try {
    if (o['no-sweep'] && o.sweep !== undefined) throw badInput('--sweep and --no-sweep: give one of them');
    const run = pruneSizes(
      model,
      calib,
      sizes.map((z) => z.budget),
      {
        mode,
        refit: !o['no-refit'],
        biasRefit: !o['no-bias-refit'],
        allTokens: o['all-tokens'],
        roundTo:
          o['round-to'] === 'auto'
            ? 'auto'
            : num(o['round-to'], '--round-to', (v) => Number.isInteger(v) && v >= 1, 'a whole number ≥ 1 or auto'),
        refine: num(o.refine, '--refine', (v) => Number.isInteger(v) && v >= 0, 'a whole number ≥ 0'),
        sweep: o['no-sweep']
          ? false
          : num(o.sweep, '--sweep', (v) => Number.isInteger(v) && v >= 0, 'a whole number ≥ 0'),
        batch,
        kernels: o.kernels,
        threads,
        backend,
        method: how.method,
        seed: how.seed,
        allocation: how.allocation,
        verify: how.verify,
        grid: how.grid,
        fidelityRows,
        stats,
        onPlan: (p) => {
          // on stdout: stderr carries only progress and, on failure, the one error line
          const capture = stats
            ? 'none to capture (--stats)'
            : `at most ${fmtBytes(p.capture)} to capture (${p.groups} group${p.groups > 1 ? 's' : ''}, ` +
              `${p.passes} pass${p.passes > 1 ? 'es' : ''})`;
          if (p.groups && !o.quiet)
            console.log(
              `kernel memory: ${capture} and ${fmtBytes(p.select)} to select ` +
                `(${threads} thread${threads > 1 ? 's' : ''})`,
            );
        },
        onProgress: (stage, done, total) => {
          let bar = bars.get(stage);
          if (!bar) {
            bars.set(stage, (bar = new Progress(labels[stage] ?? stage, total)));
          }
          bar.update(done);
          if (done >= total) {
            bar.done();
            bars.delete(stage); // the next size draws its own
          }
        },
      },
    );
    for await (const sized of run) {
      const i = results.length;
      // each size on disk as soon as it is verified: a later failure or interruption loses nothing written
      const written =
        !('error' in sized) && sized.report.groups.length
          ? await writeVerified(sized.model, outputs[i]!, { backend: sized.report.backend, externalData })
          : undefined;
      results.push({ output: outputs[i]!, name: sizes[i]!.name, sized, data: written?.data?.location });
    }
  } finally {
    inputs.close();
    for (const f of how.opened) f.close();
  }
  const preprocess = inputs.preprocess ? { preprocess: inputs.preprocess } : {};
  const made = results.map(({ output, sized }) => ({
    output,
    budget: sized.budget,
    result: 'error' in sized ? { error: sized.error.message } : sized.report,
  }));
  const one = results.length === 1 ? results[0]!.sized : undefined;
  if (one && 'error' in one) throw one.error; // one size: nothing written, as ever
  if (o.report) writeJson(o.report, runReport(input, mode, made, preprocess));
  // warnings go to stderr, --quiet or not: they are about whether the output is usable
  for (const { output, sized } of results)
    if (!('error' in sized)) for (const w of sized.report.warnings) console.error(`warning: ${output}: ${w}`);
  if (one) summarize(input, o.output, o.report, one.report, o.quiet, results[0]!.data, roundingNote(model, one.report));
  else summarizeSizes(input, results, o.report, o.quiet);
}

/**
 * A prune that costs the model onnxruntime's blocked convolutions (README, Rounding): groups of convolutions cut to
 * counts off a multiple of 8, with no --round-to.
 */
function roundingNote(model: Model, r: PruneReport): string | undefined {
  if (r.roundTo) return undefined;
  const convs = new Set(model.graph!.node.filter((n) => n.opType === 'Conv').map((n) => n.name));
  const off = r.groups.filter((u) => u.kept < u.channels && u.kept % 8 && u.producers.some((p) => convs.has(p)));
  if (!off.length) return undefined;
  return (
    `note: ${off.length} group${off.length > 1 ? 's' : ''} of convolutions keep counts that are not multiples of 8, ` +
    "which onnxruntime's default optimization level runs with slower kernels on x86 CPUs; --round-to 8 keeps " +
    'multiples (README, Rounding)'
  );
}

/** The summary's words for a report's roundTo. */
const rounding = (roundTo: PruneReport['roundTo']) =>
  roundTo === 'auto'
    ? ` (groups of 2-D convolutions of ${AUTO_ROUND.channels}+ channels in multiples of ${AUTO_ROUND.step})`
    : roundTo
      ? ` (channels in multiples of ${roundTo})`
      : '';

/** A size the flags ask for: its budget and, for a --compression or --keep-ratio list, its value in -o's pattern. */
interface Size {
  budget: Budget;
  /** The value as -o's placeholder spells it. */
  name?: string;
  placeholder?: '{c}' | '{r}';
}

function sizesOf(o: { compression?: string; target?: string; 'keep-ratio'?: string; budget?: string }): Size[] {
  const given = [o.compression, o['keep-ratio'], o.budget].filter((x) => x !== undefined).length;
  if (given > 1) throw badInput('give one of --compression, --keep-ratio, --budget');
  if (o.budget !== undefined) return [{ budget: { keep: readBudget(o.budget) } }];
  const list = (s: string, flag: string, ok: (v: number) => boolean, what: string) =>
    s.split(',').map((x) => num(x.trim(), flag, ok, what)!);
  if (o['keep-ratio'] !== undefined)
    return list(
      o['keep-ratio'],
      '--keep-ratio',
      (v) => v > 0 && v <= 1,
      'a fraction in (0, 1] (or a list: 0.5,0.25)',
    ).map((keepRatio) => ({ budget: { keepRatio }, name: String(keepRatio), placeholder: '{r}' }));
  const target = (o.target ?? 'params') as 'params' | 'flops';
  return list(o.compression ?? '2', '--compression', (v) => v >= 1, 'a ratio ≥ 1 (or a list: 2,4,8)').map(
    (compression) => ({
      budget: { compression, target },
      name: String(compression),
      placeholder: '{c}',
    }),
  );
}

/** The output file of each size: -o itself, or -o's pattern with each size's value; never one file for two sizes. */
function outputsOf(pattern: string, sizes: Size[]): string[] {
  const key = sizes[0]!.placeholder,
    flag = key === '{r}' ? '--keep-ratio' : '--compression';
  for (const p of ['{c}', '{r}'] as const)
    if (pattern.includes(p) && p !== key)
      throw badInput(
        `-o ${pattern}: ${p} stands for a ${p === '{c}' ? '--compression' : '--keep-ratio'} value, ` +
          (key ? `use ${key} with ${flag}` : 'and --budget gives one size: name the file plainly'),
      );
  if (sizes.length > 1 && !pattern.includes(key!))
    throw badInput(
      `-o ${pattern}: ${sizes.length} sizes need one file each; put ${key} in the name for the ${flag} value, ` +
        `e.g. -o model-${key}.onnx`,
    );
  const outs = sizes.map((z) => (key ? pattern.replaceAll(key, z.name!) : pattern));
  outs.forEach((a, i) => {
    const j = outs.findIndex((b, jj) => jj > i && sameFile(a, b));
    if (j >= 0)
      throw badInput(
        `${flag}: sizes ${sizes[i]!.name} and ${sizes[j]!.name} would both write ${a}; give each size once`,
      );
  });
  return outs;
}

function writeJson(file: string, value: unknown): void {
  writeFileAtomic(file, Buffer.from(JSON.stringify(value, null, 1) + '\n'));
}

const noGroups = (input: string, report: PruneReport, what: string) =>
  `subprune prune: ${input} has no prunable groups (${report.refused.length} candidates refused` +
  `${sharedAdvice(report.refused)}; subprune inspect says why); nothing to prune, so ${what}`;

/**
 * What every refusal ends with after its last "; ", when two or more share it: the advice of a quantized or an
 * optimized model (prune the float model, then quantize), said where the user looks first.
 */
function sharedAdvice(refused: PruneReport['refused']): string {
  const advice = (reason: string) => (reason.includes('; ') ? reason.slice(reason.lastIndexOf('; ') + 2) : undefined);
  const first = advice(refused[0]?.reason ?? '');
  return refused.length > 1 && first && refused.every((r) => advice(r.reason) === first) ? `, each: ${first}` : '';
}

/** The one-size summary: per group the kept channels and objective; the model's sizes, fidelity and seconds. */
function summarize(
  input: string,
  output: string,
  reportFile: string | undefined,
  r: PruneReport,
  quiet: boolean,
  data?: string,
  note?: string,
): void {
  if (!r.groups.length) {
    // an unchanged copy of the input is no output worth writing: say so and exit 0
    console.error(noGroups(input, r, `${output} was not written`));
    return;
  }
  if (quiet) return;
  console.log(
    table(
      ['group', 'producers', 'consumers', 'channels', 'kept', 'objective', 'FLOPs', 'seconds'],
      r.groups.map((u) => [
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
  const s = r.seconds;
  console.log(
    `\nparams ${big(r.params.before)} → ${big(r.params.after)} ` +
      `(${(r.params.before / r.params.after).toFixed(2)}× smaller), FLOPs ${big(r.flops.before)} → ` +
      `${big(r.flops.after)} (${(r.flops.before / r.flops.after).toFixed(2)}×) per sample` +
      (r.tokens
        ? `; per token ${big(r.flops.before / r.tokens)} → ${big(r.flops.after / r.tokens)} (at ${r.tokens} tokens)`
        : ''),
  );
  if (r.padding)
    console.log(
      `padding: ${r.padding.padded} of the ${r.padding.tokens} calibration tokens (${r.padding.input} = 0) left ` +
        "out of the consumers' rows (--all-tokens counts them)",
    );
  if (r.stats)
    console.log(
      `Gram matrices from ${r.stats.shards} stats shard${r.stats.shards > 1 ? 's' : ''}: ${r.stats.samples} ` +
        `samples (${r.stats.distinct} distinct); no capture ran`,
    );
  const f = r.fidelity,
    notes = fidelityNotes(f),
    inputs = r.verification.inputs === 'verify' ? '--verify' : 'calibration';
  console.log(
    `on ${f.samples} of the ${r.verification.rows} ${inputs} inputs: ` +
      (f.accuracy === undefined ? '' : `top-1 accuracy ${pct(f.accuracy)}, `) +
      (f.agreement === undefined ? '' : `top-1 agreement with the original ${pct(f.agreement)}, `) +
      `relative output error ${f.relError?.toFixed(4) ?? '—'}${notes.length ? ` (${notes.join('; ')})` : ''}`,
  );
  if (r.search) {
    const { start, score, evaluations } = r.search;
    const accuracy =
      start.accuracy === undefined ? '' : `, accuracy ${pct(start.accuracy)} → ${pct(score.accuracy ?? NaN)}`;
    const agreement =
      start.agreement === undefined ? '' : `, top-1 agreement ${pct(start.agreement)} → ${pct(score.agreement)}`;
    console.log(
      `search (global allocation → search, ${evaluations} allocations measured on the verification rows): ` +
        `divergence from the original ${start.divergence.toFixed(4)} → ${score.divergence.toFixed(4)}` +
        `${agreement}${accuracy}`,
    );
  }
  console.log(
    `method ${r.method}, allocation ${r.allocation}${rounding(r.roundTo)}, ` +
      `mode ${r.mode}, ${r.refit ? 're-fit' : 'no re-fit'}${r.sweep === false ? '' : `, sweep ${r.sweep}`}, ` +
      `onnxruntime-${r.backend}; seconds: analyze ${s.analyze.toFixed(2)}, allocate ${s.allocate.toFixed(2)}, ` +
      `capture ${s.capture.toFixed(2)}, select ${s.select.toFixed(2)}, ` +
      `${r.sweep === false ? '' : `sweep ${s.sweep.toFixed(2)}, `}rewrite ${s.rewrite.toFixed(2)}, verify ` +
      `${s.verify.toFixed(2)}, total ${s.total.toFixed(2)}`,
  );
  if (note) console.log(note);
  const weights = data ? ` (weights in ${data} next to it)` : '';
  console.log(`wrote ${output}${weights}${reportFile ? ` and ${reportFile}` : ''}`);
}

/** A size's outcome: its output file, its value in -o's pattern, its model and report, its data file if any. */
interface SizeResult {
  output: string;
  name?: string;
  sized: Sized;
  data?: string;
}

/** Several sizes: one line each; then the sizes that failed, as the run's error. */
function summarizeSizes(input: string, results: SizeResult[], reportFile: string | undefined, quiet: boolean): void {
  const ok = results.flatMap(({ sized }) => ('error' in sized ? [] : [sized.report]));
  if (ok.length && !ok[0]!.groups.length) {
    console.error(noGroups(input, ok[0]!, 'no model was written'));
    return;
  }
  const failed = results.filter(({ sized }) => 'error' in sized);
  if (!quiet)
    console.log(
      table(
        [
          'size',
          'output',
          'params',
          'FLOPs',
          'agreement',
          'rel. error',
          'capture s',
          'select s',
          'rewrite s',
          'verify s',
          'total s',
        ],
        results.map(({ output, name, sized }) => {
          if ('error' in sized) return [name!, 'failed', '', '', '', '', '', '', '', '', ''];
          const r = sized.report,
            s = r.seconds;
          return [
            name!,
            output,
            `${big(r.params.before)} → ${big(r.params.after)}`,
            `${big(r.flops.before)} → ${big(r.flops.after)}`,
            pct(r.fidelity.agreement),
            r.fidelity.relError?.toFixed(4) ?? '—',
            ...[s.capture + s.allocate, s.select, s.rewrite, s.verify, s.total].map((x) => x.toFixed(2)),
          ];
        }),
      ),
    );
  const written = results.filter(({ sized }) => !('error' in sized)).map((r) => r.output);
  if (!quiet) console.log(`wrote ${[...written, ...(reportFile ? [reportFile] : [])].join(', ')}`);
  if (failed.length) {
    const what = failed.map(({ name, sized }) => `size ${name}: ${(sized as { error: Error }).error.message}`);
    const rest = written.length ? `the other sizes were written (${written.join(', ')})` : 'nothing was written';
    throw internal(`${what.join('; ')}; ${rest}`);
  }
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
