// The page's worker: the whole pipeline (onnxruntime-web and the wasm kernels) runs here, so the page stays responsive.
import { pruneSizes } from '../prune/index.js';
import { parseModel, serializeModel } from '../onnx/index.js';
import { npyFromBytes } from '../npy.js';
import { npzFromBytes } from '../npz.js';
import { provideWasm } from '../kernels/wasm.js';
import type { FromWorker, Job } from './protocol.js';

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<Job>) => void) | null;
  postMessage(m: FromWorker, transfer?: Transferable[]): void;
};

// A page has no file system: the build copies build/subprune.wasm next to this script.
let kernels: Promise<void> | undefined;
async function loadKernels(): Promise<void> {
  const res = await fetch(new URL('subprune.wasm', import.meta.url));
  if (!res.ok) throw new Error(`cannot load the kernels (subprune.wasm: HTTP ${res.status})`);
  provideWasm('subprune.wasm', await WebAssembly.compile(await res.arrayBuffer()));
}

scope.onmessage = async ({ data: job }) => {
  try {
    await (kernels ??= loadKernels().catch((e) => {
      kernels = undefined;
      throw e;
    })); // a failed fetch is retried next run
    const model = parseModel(new Uint8Array(job.model));
    const bytes = new Uint8Array(job.calib),
      npz = job.calibName.toLowerCase().endsWith('.npz');
    const calib = npz ? npzFromBytes(bytes, job.calibName) : npyFromBytes(bytes, job.calibName);
    const budgets = job.compressions.map((compression) => ({ compression, target: job.target }));
    let making = 0; // the size being made: pruneSizes yields the sizes in order, each when it is verified
    const run = pruneSizes(model, calib, budgets, {
      mode: job.mode,
      method: job.method,
      refit: job.refit,
      backend: 'web',
      threads: 1, // the kernels' thread pool needs Node's worker_threads
      onProgress: (stage, done, total) => scope.postMessage({ type: 'progress', size: making, stage, done, total }),
    });
    for await (const sized of run) {
      const size = making++;
      if ('error' in sized) {
        scope.postMessage({ type: 'size', size, error: sized.error.message ?? String(sized.error) });
        continue;
      }
      const out = serializeModel(sized.model);
      scope.postMessage({ type: 'size', size, model: out, report: sized.report }, [out.buffer]);
    }
    scope.postMessage({ type: 'done' });
  } catch (e) {
    scope.postMessage({ type: 'error', message: (e as Error).message ?? String(e) });
  }
};
