import { badInput } from '../errors.js';

// Which onnxruntime runs the models: onnxruntime-node (native addon, the default where it loads) or onnxruntime-web's
// WebAssembly backend (no native code: browsers, `node --no-addons`, serverless). Both are imported lazily, so the
// web path never touches the addon.

export type Backend = 'node' | 'web';

/** How models are run. */
export interface RuntimeOptions {
  /** onnxruntime-node or onnxruntime-web's WebAssembly backend (default: node if it loads, else web). */
  backend?: Backend;
  /** Batch size of the model runs (a model with a fixed batch size uses its own). */
  batch?: number;
}

/** onnxruntime's JS API, the same for both packages (they re-export onnxruntime-common). */
export type Ort = typeof import('onnxruntime-web');

const loading = new Map<Backend, Promise<Ort>>();
let fallback: Promise<{ ort: Ort; backend: Backend }> | undefined;

const CHOOSE_WEB = `--backend web (library: { backend: 'web' })`;

function load(backend: Backend): Promise<Ort> {
  let p = loading.get(backend);
  if (!p) {
    // onnxruntime-web picks its own threads: min(4, cores / 2) where it can share memory (Node, a cross-origin isolated
    // page), else 1.
    p = backend === 'node' ? import('onnxruntime-node') : import('onnxruntime-web');
    loading.set(backend, p);
  }
  return p;
}

/**
 * onnxruntime for `backend`; without one, onnxruntime-node if it loads, else (with a notice on stderr saying why and
 * how to choose the web backend) onnxruntime-web.
 */
export async function loadRuntime(backend?: Backend): Promise<{ ort: Ort; backend: Backend }> {
  if (backend === 'web') return { ort: await load('web'), backend };
  if (backend === 'node') {
    try {
      return { ort: await load('node'), backend };
    } catch (e) {
      throw badInput(
        `onnxruntime-node cannot be loaded (${reason(e)}); use onnxruntime-web's WebAssembly backend instead: ` +
          `${CHOOSE_WEB}`,
        e,
      );
    }
  }
  fallback ??= load('node').then(
    (ort) => ({ ort, backend: 'node' as Backend }),
    async (e) => {
      console.warn(
        `subprune: onnxruntime-node cannot be loaded (${reason(e)}); using onnxruntime-web's WebAssembly ` +
          `backend, which is slower. Choose it with ${CHOOSE_WEB} to skip this attempt.`,
      );
      return { ort: await load('web'), backend: 'web' as Backend };
    },
  );
  return fallback;
}

const reason = (e: unknown) => (e as Error).message?.split('\n')[0] ?? String(e);
