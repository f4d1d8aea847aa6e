import { parseArgs } from 'node:util';
import { mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { readModel } from '../onnx/index.js';
import { writeFileAtomic } from '../npy.js';
import { openInputs, type Inputs } from './inputs.js';
import { badInput } from '../errors.js';
import { runStudy } from '../study/index.js';
import { studyMarkdown, studySvg, claimsMarkdown } from '../study/report.js';
import { METHODS } from '../select/baselines.js';
import { ALLOCATIONS } from '../prune/allocation.js';
import { MODES } from '../prune/index.js';
import { Progress } from './progress.js';
import { num, backendFlag } from './util.js';
import { readLabels, choice, choices, gridFlag } from './args.js';

export const studyHelp = `subprune study: the paper's study on one model: accuracy against compression for every method

Usage: subprune study MODEL.onnx --calib X.npy --data T.npy --labels L.npy --out DIR [options]

Runs every method × re-fit on/off × mode (the greedy's three) × allocation at each compression and writes to DIR:
table.md (test accuracy without fine-tuning, parameters, FLOPs, seconds; the paper's claims checked),
results.json (every run) and plot.svg (accuracy against compression, one line per method).

  --calib DATA          calibration inputs (unlabeled), as for prune (.npy, .npz, NAME=FILE.npy)
  --data DATA           test inputs, likewise; --labels FILE their integer labels: what the table reports
  --verify DATA         the sensitivity allocation's verification inputs (default: the calibration inputs,
                        measuring top-1 agreement with the original model, so no labels are needed)
  --verify-labels FILE  labels of --verify: the allocation then measures accuracy
  --grid STEP           the sensitivity allocation's fractions STEP, 2·STEP, …, 1 (default 0.01)
  --compressions LIST   comma-separated ratios (default 2,4,8,16,32)
  --target WHAT         params (default) or flops
  --methods LIST        of ${METHODS.join(', ')} (default all)
  --modes LIST          the greedy's modes: layerwise, sequential, asymmetric (default all; baselines run layerwise)
  --allocations LIST    uniform, sensitivity, global (default all; global is the greedy's)
  --seeds n             seeds of the random and sampling methods (default 3; their sensitivity allocation
                        is measured once, with seed 0)
  --out DIR             output folder (created)
  --batch n, --backend NAME   as for prune
  -h, --help            this help`;

export async function runStudyCommand(argv: string[]): Promise<void> {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      calib: { type: 'string', multiple: true },
      data: { type: 'string', multiple: true },
      labels: { type: 'string' },
      verify: { type: 'string', multiple: true },
      'verify-labels': { type: 'string' },
      grid: { type: 'string' },
      compressions: { type: 'string', default: '2,4,8,16,32' },
      target: { type: 'string', default: 'params' },
      methods: { type: 'string' },
      modes: { type: 'string' },
      allocations: { type: 'string' },
      seeds: { type: 'string', default: '3' },
      out: { type: 'string' },
      batch: { type: 'string' },
      backend: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) {
    console.log(studyHelp);
    return;
  }
  if (positionals.length !== 1)
    throw badInput(
      'study takes one model: subprune study MODEL.onnx --calib X.npy --data T.npy --labels L.npy --out DIR',
    );
  for (const f of ['calib', 'data', 'labels', 'out'] as const) if (!o[f]) throw badInput(`study needs --${f}`);
  if (o['verify-labels'] && !o.verify) throw badInput('--verify-labels needs --verify');
  const compressions = o
    .compressions!.split(',')
    .map((s) => num(s.trim(), '--compressions', (v) => v >= 1, 'ratios ≥ 1, comma-separated')!);
  const target = choice(o.target!, '--target', ['params', 'flops'] as const);
  const seeds = num(o.seeds, '--seeds', (v) => Number.isInteger(v) && v >= 1, 'a whole number ≥ 1')!;
  const model = readModel(positionals[0]);
  try {
    mkdirSync(o.out!, { recursive: true });
  } catch (e) {
    throw badInput(`--out ${o.out}: cannot create it (${(e as Error).message}); choose another folder`);
  } // before hours of work
  const opened: Inputs[] = [];
  const open = (values: string[], flag: string) => {
    const f = openInputs(values, flag);
    opened.push(f);
    return f.data;
  };
  let bar: Progress | undefined; // its total is known at the first report
  try {
    const res = await runStudy(model, {
      name: basename(positionals[0]),
      calib: open(o.calib!, '--calib'),
      test: { data: open(o.data!, '--data'), labels: readLabels(o.labels!) },
      ...(o.verify
        ? {
            verify: {
              data: open(o.verify, '--verify'),
              ...(o['verify-labels'] ? { labels: readLabels(o['verify-labels']) } : {}),
            },
          }
        : {}),
      compressions,
      target,
      seeds,
      grid: gridFlag(o.grid),
      methods: choices(o.methods, '--methods', METHODS),
      modes: choices(o.modes, '--modes', MODES),
      allocations: choices(o.allocations, '--allocations', ALLOCATIONS),
      batch: num(o.batch, '--batch', (v) => Number.isInteger(v) && v >= 1, 'a whole number ≥ 1'),
      backend: backendFlag(o.backend),
      onProgress: (done, total) => (bar ??= new Progress('study', total)).update(done),
    });
    bar?.done();
    writeFileAtomic(join(o.out!, 'results.json'), Buffer.from(JSON.stringify(res, null, 1) + '\n'));
    writeFileAtomic(join(o.out!, 'table.md'), Buffer.from(studyMarkdown(res)));
    writeFileAtomic(join(o.out!, 'plot.svg'), Buffer.from(studySvg(res)));
    console.log(
      `${res.model}: ${res.rows.length} runs in ${res.seconds.toFixed(1)} s; wrote ` +
        `${join(o.out!, 'table.md')}, results.json, plot.svg\n\n${claimsMarkdown(res)}`,
    );
  } finally {
    for (const f of opened) f.close();
  }
}
