// The page: picks the files and options, hands them to the worker, shows progress and each size as it arrives.
import type { PruneReport, Mode } from '../prune/index.js';
import { METHODS, type Method } from '../select/baselines.js';
import { runReport } from '../prune/report.js';
import { fidelityNotes } from '../eval/notes.js';
import type { FromWorker, Job } from './protocol.js';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const input = (id: string) => $<HTMLInputElement>(id),
  select = (id: string) => $<HTMLSelectElement>(id);

interface Picked {
  name: string;
  bytes: ArrayBuffer;
}
let model: Picked | undefined, calib: Picked | undefined;

const kb = (n: number) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${(n / 1024).toFixed(0)} kB`);
const big = (v: number) => (v >= 1e6 ? `${(v / 1e6).toFixed(2)}M` : v >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : String(v));

function pick(which: 'model' | 'calib', p: Picked): void {
  if (which === 'model') model = p;
  else calib = p;
  $(`${which}-info`).textContent = `${p.name}, ${kb(p.bytes.byteLength)}`;
  $<HTMLButtonElement>('run').disabled = !(model && calib);
}

select('method').append(...METHODS.map((m) => new Option(m, m)));

for (const which of ['model', 'calib'] as const) {
  input(which).addEventListener('change', async () => {
    const f = input(which).files?.[0];
    if (f) pick(which, { name: f.name, bytes: await f.arrayBuffer() });
  });
}

$('example').addEventListener('click', async () => {
  showError('');
  try {
    for (const [which, file] of [
      ['model', 'lenet.onnx'],
      ['calib', 'calib.npy'],
    ] as const) {
      const res = await fetch(`examples/${file}`);
      if (!res.ok) throw new Error(`examples/${file}: HTTP ${res.status}`);
      pick(which, { name: file, bytes: await res.arrayBuffer() });
    }
  } catch (e) {
    showError(`cannot load the bundled example: ${(e as Error).message}`);
  }
});

/** The compression field: one ratio ≥ 1 or a comma-separated list of them, each once; or what is wrong with it. */
function compressionsOf(text: string): number[] | { error: string } {
  const list: number[] = [];
  for (const entry of text.split(',').map((x) => x.trim())) {
    const c = Number(entry);
    if (entry === '' || !Number.isFinite(c) || c < 1)
      return { error: `compression "${entry}" is not a number ≥ 1; give one, or a list such as 2,4,8` };
    if (list.includes(c)) return { error: `compression ${c} is given twice; give each size once` };
    list.push(c);
  }
  return list;
}

const STAGES: Record<string, string> = {
  capture: 'capturing activations',
  select: 'selecting channels',
  group: 'pruning group by group',
  sweep: 're-fitting the pruned model',
  verify: 'verifying the pruned model',
};
const capital = (s: string) => s[0]!.toUpperCase() + s.slice(1);

/** A size's outcome, as the worker sent it. */
type Made = { model: Uint8Array; report: PruneReport } | { error: string };

const worker = new Worker(new URL('worker.js', import.meta.url), { type: 'module' });
let started = 0,
  clock: ReturnType<typeof setInterval> | undefined,
  job: Job | undefined,
  made: (Made | undefined)[] = [],
  urls: string[] = [];

function status(text: string, done?: number, total?: number): void {
  const bar = $<HTMLProgressElement>('bar');
  bar.hidden = total === undefined;
  if (total !== undefined) {
    bar.max = total || 1;
    bar.value = done ?? 0;
  }
  $('stage').textContent = text;
}

function stopClock(): void {
  clearInterval(clock);
  $('elapsed').textContent = '';
  $<HTMLButtonElement>('run').disabled = false;
}

function showError(message: string): void {
  $('error').textContent = message;
}

/** What a stage's progress is for: with several sizes, the size (or every size, for the stages they share). */
function stageText(j: Job, size: number, stage: string): string {
  const what = STAGES[stage] ?? stage,
    n = j.compressions.length;
  if (n === 1) return capital(what);
  if (j.mode === 'layerwise' && (stage === 'capture' || stage === 'select')) return `${capital(what)} (all ${n} sizes)`;
  return `Size ${j.compressions[size]}× (${size + 1} of ${n}): ${what}`;
}

/** Layerwise, after the shared ranking: re-fit and rewrite the size, which reports no progress until its check. */
function rewriting(j: Job, size: number): void {
  const n = j.compressions.length;
  const what = 're-fitting the next layers and rewriting the model…';
  status(n === 1 ? capital(what) : `Size ${j.compressions[size]}× (${size + 1} of ${n}): ${what}`);
}

$('run').addEventListener('click', () => {
  if (!model || !calib) return;
  const compressions = compressionsOf(input('compression').value);
  if ('error' in compressions) {
    showError(compressions.error);
    return;
  }
  job = {
    model: model.bytes,
    modelName: model.name,
    calib: calib.bytes,
    calibName: calib.name,
    compressions,
    target: select('target').value as Job['target'],
    mode: select('mode').value as Mode,
    method: select('method').value as Method,
    refit: input('refit').checked,
  };
  showError('');
  clearResult(job);
  $<HTMLButtonElement>('run').disabled = true;
  started = performance.now();
  status('Starting (loading onnxruntime-web and the kernels)…');
  clock = setInterval(() => {
    $('elapsed').textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
  }, 100);
  worker.postMessage(job); // a copy: the page keeps the files for another run
});

worker.onmessage = ({ data: m }: MessageEvent<FromWorker>) => {
  const j = job!;
  if (m.type === 'progress') {
    status(`${stageText(j, m.size, m.stage)}: ${m.done}/${m.total}`, m.done, m.total);
    if (m.stage !== 'capture' && m.stage !== 'select') pending(m.size, 'in progress');
    if (j.mode === 'layerwise' && m.stage === 'select' && m.done === m.total) rewriting(j, m.size);
    return;
  }
  if (m.type === 'size') {
    made[m.size] = 'error' in m ? { error: m.error } : { model: m.model, report: m.report };
    showSize(j, m.size);
    if (j.mode === 'layerwise' && m.size + 1 < j.compressions.length) rewriting(j, m.size + 1);
    return;
  }
  stopClock();
  if (m.type === 'error') {
    status('');
    showError(m.message);
    return;
  }
  finish(j);
};

worker.onerror = (e) => {
  stopClock();
  status('');
  showError(`the worker failed: ${e.message}`);
};

const stem = (j: Job) => j.modelName.replace(/\.onnx$/i, '');
const outputOf = (j: Job, size: number) => `${stem(j)}-c${j.compressions[size]}.onnx`;

/** A new run: the sizes table with a row waiting for each size, no details, no downloads. */
function clearResult(j: Job): void {
  for (const u of urls) URL.revokeObjectURL(u);
  urls = [];
  made = [];
  $('result').hidden = true;
  $('dl-report').hidden = true;
  $('shared').hidden = !(j.mode === 'layerwise' && j.compressions.length > 1);
  $('shown-label').hidden = j.compressions.length === 1;
  select('shown').replaceChildren();
  $('sizes')
    .querySelector('tbody')!
    .replaceChildren(...j.compressions.map((c) => row([`${c}×`], 'waiting', 'pending')));
}

/** A table row: its cells, then (if given) one cell spanning the rest of the sizes table. */
function row(cells: (string | Node)[], rest?: string, className?: string): HTMLTableRowElement {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(document.createElement('td')).append(c);
  if (rest !== undefined) {
    const td = tr.appendChild(document.createElement('td'));
    td.colSpan = 6;
    td.className = className ?? '';
    td.textContent = rest;
  }
  return tr;
}

function pending(size: number, text: string): void {
  const cell = $('sizes').querySelector('tbody')!.rows[size]?.querySelector('.pending');
  if (cell) cell.textContent = text;
}

function download(id: string, name: string, blob: Blob, text: string): HTMLAnchorElement {
  const a = document.createElement('a');
  a.id = id;
  a.className = 'download';
  a.href = URL.createObjectURL(blob);
  urls.push(a.href);
  a.download = name;
  a.textContent = text;
  return a;
}

/** A size that arrived: its row of the sizes table, with its model's download; the first one also in the details. */
function showSize(j: Job, size: number): void {
  const m = made[size]!,
    c = j.compressions[size]!,
    tbody = $('sizes').querySelector('tbody')!;
  if ('error' in m) {
    tbody.rows[size]!.replaceWith(row([`${c}×`], `failed: ${m.error}`, 'failed'));
    return;
  }
  const r = m.report,
    name = outputOf(j, size);
  const bytes = new Blob([m.model as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' });
  tbody.rows[size]!.replaceWith(
    row([
      `${c}×`,
      `${big(r.params.before)} → ${big(r.params.after)} (${(r.params.before / r.params.after).toFixed(2)}×)`,
      `${big(r.flops.before)} → ${big(r.flops.after)} (${(r.flops.before / r.flops.after).toFixed(2)}×)`,
      r.fidelity.agreement === undefined ? '—' : `${(r.fidelity.agreement * 100).toFixed(2)}%`,
      (r.fidelity.relError ?? 0).toFixed(4),
      r.seconds.total.toFixed(2),
      download(`dl-model-${size}`, name, bytes, name),
    ]),
  );
  const shown = select('shown'),
    first = !shown.options.length;
  // the sizes arrive in order, but keep the list in the table's order whatever comes
  const after = Array.from(shown.options).find((o) => Number(o.value) > size) ?? null;
  shown.add(new Option(`${c}×`, String(size)), after);
  if (first) showDetails(j, size);
  $('result').hidden = false;
}

select('shown').addEventListener('change', () => showDetails(job!, Number(select('shown').value)));

/** One size's details: its summary and its groups. */
function showDetails(j: Job, size: number): void {
  const r = (made[size] as { report: PruneReport }).report;
  select('shown').value = String(size);
  const rows = r.groups.map((u) => [
    u.id,
    u.producers.length,
    u.consumers.length,
    u.channels,
    u.kept,
    u.objective.toFixed(4),
    u.seconds.toFixed(3),
  ]);
  $('groups')
    .querySelector('tbody')!
    .replaceChildren(...rows.map((cells) => row(cells.map(String))));
  $('refused').replaceChildren(
    ...r.refused.map((x) => {
      const li = document.createElement('li');
      li.textContent = `not pruned: ${x.node}: ${x.reason}`;
      return li;
    }),
  );
  const f = r.fidelity,
    notes = fidelityNotes(f);
  $('summary').textContent =
    `Parameters ${big(r.params.before)} → ${big(r.params.after)} ` +
    `(${(r.params.before / r.params.after).toFixed(2)}× smaller), ` +
    `FLOPs ${big(r.flops.before)} → ${big(r.flops.after)}` +
    (r.tokens
      ? ` (per token ${big(r.flops.before / r.tokens)} → ${big(r.flops.after / r.tokens)} at ${r.tokens} tokens)`
      : '') +
    `. On the ${r.calibration.samples} calibration inputs: ` +
    (f.agreement === undefined ? '' : `top-1 agreement with the original ${(f.agreement * 100).toFixed(2)}%, `) +
    `relative output error ${(f.relError ?? 0).toFixed(4)}${notes.length ? ` (${notes.join('; ')})` : ''}. ` +
    `${r.groups.length} groups, ${r.refused.length} refused; mode ${r.mode}, method ${r.method}, ` +
    `${r.refit ? 're-fit' : 'no re-fit'}, onnxruntime-${r.backend}; ${r.seconds.total.toFixed(2)} s.` +
    r.warnings.map((w) => ` Warning: ${w}.`).join('');
}

/** The run's report, shaped as `prune --report` writes it (runReport). */
function reportOf(j: Job): object {
  const sizes = j.compressions.map((compression, size) => {
    const m = made[size]!;
    return {
      output: outputOf(j, size),
      budget: { compression, target: j.target },
      result: 'error' in m ? m : m.report,
    };
  });
  return runReport(j.modelName, j.mode, sizes);
}

/** Every size arrived: the report's download, and the sizes that failed as the run's error. */
function finish(j: Job): void {
  const failed = j.compressions.flatMap((c, i) => {
    const m = made[i];
    return m && 'error' in m ? [{ c, error: m.error }] : [];
  });
  if (j.compressions.length === 1 && failed.length) {
    status('');
    showError(failed[0]!.error); // one size: as a run that failed
    return;
  }
  status(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  if (failed.length) {
    const rest = failed.length < j.compressions.length ? 'the other sizes are ready' : 'no size was made';
    showError(`${failed.map((f) => `size ${f.c}×: ${f.error}`).join('; ')}; ${rest}`);
  }
  if (failed.length === j.compressions.length) return;
  const name = `${stem(j)}-c${j.compressions.join(',')}.json`;
  const json = new Blob([JSON.stringify(reportOf(j), null, 1) + '\n'], { type: 'application/json' });
  $('dl-report').replaceWith(download('dl-report', name, json, 'Download the report (JSON)'));
}
