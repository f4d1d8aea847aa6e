// The page's worker: the whole pipeline (onnxruntime-web and the wasm kernels) runs here, so the page stays responsive.
import { prune } from '../prune/index.js';
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
    const { model: pruned, report } = await prune(model, calib, {
      budget: { compression: job.compression, target: job.target },
      mode: job.mode,
      method: job.method,
      refit: job.refit,
      backend: 'web',
      threads: 1, // the kernels' thread pool needs Node's worker_threads
      onProgress: (stage, done, total) => scope.postMessage({ type: 'progress', stage, done, total }),
    });
    const out = serializeModel(pruned);
    scope.postMessage({ type: 'done', model: out, report }, [out.buffer]);
  } catch (e) {
    scope.postMessage({ type: 'error', message: (e as Error).message ?? String(e) });
  }
};
