// The page: picks the files and options, hands them to the worker, shows progress and the result.
import type { PruneReport, Mode } from '../prune/index.js';
import { METHODS, type Method } from '../select/baselines.js';
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

const STAGES: Record<string, string> = {
  capture: 'Capturing activations',
  select: 'Selecting channels',
  group: 'Pruning group by group',
  verify: 'Verifying the pruned model',
};

const worker = new Worker(new URL('worker.js', import.meta.url), { type: 'module' });
let started = 0,
  clock: ReturnType<typeof setInterval> | undefined,
  job: Job | undefined;

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

$('run').addEventListener('click', () => {
  if (!model || !calib) return;
  const compression = Number(input('compression').value);
  if (!(compression >= 1)) {
    showError('compression must be a number ≥ 1');
    return;
  }
  job = {
    model: model.bytes,
    modelName: model.name,
    calib: calib.bytes,
    calibName: calib.name,
    compression,
    target: select('target').value as Job['target'],
    mode: select('mode').value as Mode,
    method: select('method').value as Method,
    refit: input('refit').checked,
  };
  showError('');
  $('result').hidden = true;
  $<HTMLButtonElement>('run').disabled = true;
  started = performance.now();
  status('Starting (loading onnxruntime-web and the kernels)…');
  clock = setInterval(() => {
    $('elapsed').textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
  }, 100);
  worker.postMessage(job); // a copy: the page keeps the files for another run
});

worker.onmessage = ({ data: m }: MessageEvent<FromWorker>) => {
  if (m.type === 'progress') {
    status(`${STAGES[m.stage] ?? m.stage}: ${m.done}/${m.total}`, m.done, m.total);
    return;
  }
  stopClock();
  if (m.type === 'error') {
    status('');
    showError(m.message);
    return;
  }
  status(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  showResult(m.model, m.report);
};

worker.onerror = (e) => {
  stopClock();
  status('');
  showError(`the worker failed: ${e.message}`);
};

function showResult(bytes: Uint8Array, report: PruneReport): void {
  const j = job!,
    r = report;
  const rows = r.groups.map((u) => [
    u.id,
    u.producers.length,
    u.consumers.length,
    u.channels,
    u.kept,
    u.objective.toFixed(4),
    u.seconds.toFixed(3),
  ]);
  const tbody = $('groups').querySelector('tbody')!;
  tbody.replaceChildren(
    ...rows.map((cells) => {
      const tr = document.createElement('tr');
      for (const c of cells) tr.appendChild(document.createElement('td')).textContent = String(c);
      return tr;
    }),
  );
  $('refused').replaceChildren(
    ...r.refused.map((x) => {
      const li = document.createElement('li');
      li.textContent = `not pruned: ${x.node}: ${x.reason}`;
      return li;
    }),
  );
  const f = r.fidelity;
  $('summary').textContent =
    `Parameters ${big(r.params.before)} → ${big(r.params.after)} ` +
    `(${(r.params.before / r.params.after).toFixed(2)}× smaller), ` +
    `FLOPs ${big(r.flops.before)} → ${big(r.flops.after)}` +
    (r.tokens
      ? ` (per token ${big(r.flops.before / r.tokens)} → ${big(r.flops.after / r.tokens)} at ${r.tokens} tokens)`
      : '') +
    `. On the ${r.calibration.samples} calibration inputs: top-1 agreement with the original ` +
    `${((f.agreement ?? 0) * 100).toFixed(2)}%, relative output error ${(f.relError ?? 0).toFixed(4)}. ` +
    `${r.groups.length} groups, ${r.refused.length} refused; mode ${r.mode}, method ${r.method}, ` +
    `${r.refit ? 're-fit' : 'no re-fit'}, onnxruntime-${r.backend}; ${r.seconds.total.toFixed(2)} s.`;
  const base = `${j.modelName.replace(/\.onnx$/i, '')}-c${j.compression}`;
  const link = (id: string, name: string, blob: Blob) => {
    const a = $<HTMLAnchorElement>(id);
    if (a.href) URL.revokeObjectURL(a.href);
    a.href = URL.createObjectURL(blob);
    a.download = name;
  };
  link('dl-model', `${base}.onnx`, new Blob([bytes as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }));
  const budget = { compression: j.compression, target: j.target };
  link(
    'dl-report',
    `${base}.json`,
    new Blob([JSON.stringify({ model: j.modelName, output: `${base}.onnx`, budget, ...r }, null, 1) + '\n'], {
      type: 'application/json',
    }),
  );
  $('result').hidden = false;
}
