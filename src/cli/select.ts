import { parseArgs } from 'node:util';
import { openNpy, writeNpy } from '../npy.js';
import { badInput } from '../errors.js';
import { GramAccumulator } from '../kernels/gram.js';
import { selectChannels, selectionBytes } from '../select/greedy.js';
import { getKernels, defaultThreads } from '../kernels/instances.js';
import { fmtBytes } from '../kernels/memory.js';
import { gramBytes } from '../kernels/gram.js';
import { Progress } from './progress.js';

export const selectHelp = `subprune select: greedy channel selection for one layer problem given as .npy files

Usage: subprune select --acts B.npy --weights W.npy [options]

  --acts FILE        consumer input B, N×d (float32; float64 is converted). One row per sample
                     (per output position for a conv consumer: im2col patches). Streamed in chunks.
  --weights FILE     consumer weights W, d×m (consumer output = B W, bias aside)
  --target FILE      target input A, N×d: the asymmetric objective min ‖B_S W' − A W‖ (A from the
                     original model, B from the pruned one). Default: A = B.
  --group g          columns per channel (9 for a 3×3 conv consumer, h·w after a Flatten). Default 1.
  -k, --keep K       channels to keep. Default: half of them (rounded up).
  --refit-out FILE   write the re-fitted weights of the kept channels (K·g×m, float32, kept channels
                     in ascending order) to FILE as .npy
  --kernels NAME     wasm (SIMD WebAssembly, default) or plain (plain TypeScript, for comparison)
  --threads n        threads for the wasm kernels (default: the cores other processes leave free:
                     all cores less those others kept busy over 0.1 s, at least 1). Results are bit-identical for any n
  --json             print the result as JSON: order, objective (per step), keep, seconds
                     {gram, setup, greedy, refit, total}
  -h, --help         this help

The objective after step i is 1 − ‖B_S W' − A W‖²/‖A W‖² for the first i+1 channels of the order,
with W' the least-squares re-fit. The order is nested: its first j entries are the selection for j.`;

export function runSelect(argv: string[]): void {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      acts: { type: 'string' },
      weights: { type: 'string' },
      target: { type: 'string' },
      group: { type: 'string', default: '1' },
      keep: { type: 'string', short: 'k' },
      'refit-out': { type: 'string' },
      kernels: { type: 'string', default: 'wasm' },
      threads: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) {
    console.log(selectHelp);
    return;
  }
  if (!o.acts || !o.weights)
    throw badInput('select needs --acts B.npy and --weights W.npy (see subprune select --help)');
  if (o.kernels !== 'wasm' && o.kernels !== 'plain') throw badInput(`--kernels ${o.kernels}: use wasm or plain`);
  const g = wholeNumber(o.group!, '--group', 1);

  const t0 = performance.now();
  const B = openNpy(o.acts),
    Wf = openNpy(o.weights),
    A = o.target ? openNpy(o.target) : undefined;
  try {
    if (B.shape.length !== 2) throw badInput(`${o.acts}: activations must be 2-D (N×d), got shape [${B.shape}]`);
    if (B.rows === 0) throw badInput(`${o.acts}: no rows`);
    const d = B.rowSize;
    if (Wf.shape.length !== 2 || Wf.shape[0] !== d)
      throw badInput(
        `${o.weights}: weights must be d×m with d = ${d} (the activations' columns), got shape [${Wf.shape}]`,
      );
    if (A && (A.shape.length !== 2 || A.shape[0] !== B.rows || A.shape[1] !== d))
      throw badInput(`${o.target}: target must have the activations' shape [${B.shape}], got [${A.shape}]`);
    if (d % g !== 0) throw badInput(`--group ${g} does not divide d = ${d}`);
    const n = d / g,
      m = Wf.shape[1];
    const k = o.keep === undefined ? Math.ceil(n / 2) : wholeNumber(o.keep, '-k', 0);
    if (k > n) throw badInput(`-k ${k} is more than the ${n} channels`);
    const W = Wf.readF64();
    checkFinite(W, o.weights, m);

    const threads = o.threads === undefined ? defaultThreads() : wholeNumber(o.threads, '--threads', 1);
    console.error(
      `kernel memory: ${fmtBytes(gramBytes(d, !!A) + selectionBytes(d, m, g, k))} (d = ${d}, m = ${m}, k = ` +
        `${k}, ${threads} thread${threads > 1 ? 's' : ''})`,
    );
    const acc = new GramAccumulator(d, {
      asymmetric: !!A,
      kernels: getKernels(o.kernels as 'wasm' | 'plain', threads),
    });
    const chunk = Math.max(1, Math.floor((8 << 20) / (4 * d)));
    const bar = new Progress('gram', B.rows, !o.json && process.stderr.isTTY === true);
    for (let r0 = 0; r0 < B.rows; r0 += chunk) {
      const r1 = Math.min(B.rows, r0 + chunk);
      const b = B.readF32(r0, r1),
        a = A?.readF32(r0, r1);
      checkFinite(b, o.acts, d, r0);
      if (a) checkFinite(a, o.target!, d, r0);
      acc.add(b, a);
      bar.update(r1);
    }
    bar.done();
    const gm = acc.result();
    const t1 = performance.now();

    const sbar = new Progress('greedy', k, !o.json && process.stderr.isTTY === true);
    const sel = selectChannels({ d, m, g, G: gm.G, C: gm.C, H: gm.H, W }, k, {
      kernels: o.kernels,
      threads,
      onStep: (i) => sbar.update(i),
    });
    sbar.done();
    const t2 = performance.now();
    const fit = sel.refit(k);
    const t3 = performance.now();
    if (o['refit-out']) writeNpy(o['refit-out'], Float32Array.from(fit.W), [fit.keep.length * g, m]);

    const seconds = {
      gram: (t1 - t0) / 1000,
      setup: sel.seconds.setup,
      greedy: sel.seconds.greedy,
      refit: (t3 - t2) / 1000,
      total: (t3 - t0) / 1000,
    };
    if (o.json) {
      console.log(
        JSON.stringify({
          N: B.rows,
          d,
          m,
          g,
          channels: n,
          k,
          order: sel.order,
          objective: sel.objective,
          keep: fit.keep,
          seconds,
        }),
      );
      return;
    }
    const last = sel.objective.length ? sel.objective[sel.objective.length - 1] : 0;
    console.log(
      `layer: N = ${B.rows} rows, d = ${d} (${n} channels × g = ${g}), m = ${m}${A ? ', asymmetric objective' : ''}`,
    );
    console.log(
      `kept ${k} of ${n} channels; objective (1 − relative error of the consumer input) = ${last.toFixed(6)}`,
    );
    const marks = [
      ...new Set([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, k].filter((j) => j >= 1 && j <= k)),
    ];
    if (marks.length) {
      console.log('\n  kept   objective');
      for (const j of marks) console.log(`  ${String(j).padStart(5)}   ${sel.objective[j - 1].toFixed(6)}`);
    }
    console.log(`\norder: ${sel.order.join(' ')}`);
    const f = (s: number) => `${s.toFixed(3)} s`;
    console.log(
      `seconds: gram ${f(seconds.gram)}, setup ${f(seconds.setup)}, greedy ${f(seconds.greedy)}, refit ` +
        `${f(seconds.refit)}, total ${f(seconds.total)}`,
    );
    if (o['refit-out']) console.log(`re-fitted weights (${fit.keep.length * g}×${m}) written to ${o['refit-out']}`);
  } finally {
    for (const f of [B, Wf, A]) f?.close();
  }
}

function wholeNumber(s: string, flag: string, min: number): number {
  const v = Number(s);
  if (!Number.isInteger(v) || v < min) throw badInput(`${flag} ${s}: expected a whole number ≥ ${min}`);
  return v;
}

function checkFinite(x: ArrayLike<number>, file: string, rowSize: number, row0 = 0): void {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i]))
      throw badInput(
        `${file}: ${x[i]} at row ${row0 + Math.floor(i / rowSize)}, column ${i % rowSize}; calibration data ` +
          'must be finite',
      );
  }
}
