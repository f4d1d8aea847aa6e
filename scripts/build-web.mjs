// Builds the browser page into dist/web: a static folder any file server can serve (scripts/serve-web.mjs).
// Usage: node scripts/build-web.mjs   (npm run build:web also type-checks the page first)
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'web');

// The file-system entry points (readModel, openNpy, writeModel, the kernels from disk) are never called in the page;
// their node: imports resolve to an empty module.
const nodeStubs = {
  name: 'node-stubs',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (a) => ({ path: a.path, namespace: 'node-stub' }));
    b.onLoad({ filter: /.*/, namespace: 'node-stub' }, () => ({ contents: 'module.exports = {};', loader: 'js' }));
  },
};

rmSync(out, { recursive: true, force: true });
await build({
  entryPoints: { main: join(root, 'src/web/main.ts'), worker: join(root, 'src/web/worker.ts') },
  outdir: out,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  logLevel: 'warning',
  plugins: [nodeStubs],
  alias: { 'onnxruntime-web': 'onnxruntime-web/wasm' }, // the WebAssembly backend only (no WebGL/WebGPU code)
  external: ['onnxruntime-node'], // imported only for backend 'node', which the page never asks for
});
const copy = (from, to) => {
  mkdirSync(dirname(join(out, to)), { recursive: true });
  copyFileSync(join(root, from), join(out, to));
};
copy('src/web/index.html', 'index.html');
copy('build/subprune.wasm', 'subprune.wasm');
copy('node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm', 'ort-wasm-simd-threaded.wasm');
copy('models/lenet.onnx', 'examples/lenet.onnx');
copy('models/calib.npy', 'examples/calib.npy');
console.log(`built the page in ${out}`);
