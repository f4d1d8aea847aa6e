import { describe, it, expect, beforeAll } from 'vitest';
import { Calibration } from '../src/calibration.js';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { readModel, serializeModel, type Model } from '../src/onnx/index.js';
import { openNpy, writeNpy, type NpyFile } from '../src/npy.js';
import { prune, type Mode } from '../src/prune/index.js';
import { evaluate } from '../src/eval/index.js';
import { Runner } from '../src/capture/index.js';
import { analyze } from '../src/graph/analyze.js';

// onnxruntime-web's WebAssembly backend against onnxruntime-node (the oracle: called directly, not through subprune):
// the same kept channels in the same order and pruned models with the same outputs, on every bundled model; and the
// whole CLI (prune, eval, inspect, select) under `node --no-addons`, where onnxruntime-node cannot load.

const MODELS = ['lenet', 'vgg', 'resnet20'].filter((m) => existsSync(`models/${m}.onnx`));
const calibPath = 'models/calib.npy';

async function outputs(model: Model, calib: NpyFile, rows = 256): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(serializeModel(model));
  const x = calib.readF32(0, rows);
  const r = await s.run({ [s.inputNames[0]]: new ort.Tensor('float32', x, [rows, ...calib.shape.slice(1)]) });
  const y = r[s.outputNames[0]].data as Float32Array;
  await s.release();
  return y;
}

const relDiff = (a: Float32Array, b: Float32Array) =>
  Math.sqrt(a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0) / b.reduce((s, v) => s + v * v, 0));

describe.each(MODELS)('%s: web backend against node backend', (name) => {
  const model = readModel(`models/${name}.onnx`);

  it('onnxruntime-web runs the model like onnxruntime-node', async () => {
    const calib = openNpy(calibPath);
    const run = await Runner.open(model, [], { backend: 'web' });
    expect(run.backend).toBe('web');
    const first = Calibration.of(model, calib).batches(256).next().value!,
      out = model.graph!.output[0].name;
    const y = (await run.run(first, [out])).get(out)!;
    await run.release();
    expect(relDiff(y.data, await outputs(model, calib))).toBeLessThan(1e-5);
    calib.close();
  });

  // every mode on LeNet; the larger models in the one-pass mode (a sequential mode captures once per group)
  const modes: Mode[] = name === 'lenet' ? ['layerwise', 'sequential', 'asymmetric'] : ['layerwise'];
  it.each(modes)(
    '%s, compression 4: same kept channels in the same order, same pruned outputs',
    async (mode) => {
      const calib = openNpy(calibPath);
      // one kernel thread: the comparison is about the model runtime (results do not depend on the kernel threads)
      const node = await prune(model, calib, { budget: { compression: 4 }, mode, backend: 'node', threads: 1 });
      const web = await prune(model, calib, { budget: { compression: 4 }, mode, backend: 'web', threads: 1 });
      expect([node.report.backend, web.report.backend]).toEqual(['node', 'web']);
      expect(web.report.groups.length).toBeGreaterThan(0);
      expect(web.report.groups.map((u) => u.order)).toEqual(node.report.groups.map((u) => u.order));
      expect(web.report.params).toEqual(node.report.params);
      expect(relDiff(await outputs(web.model, calib), await outputs(node.model, calib))).toBeLessThan(1e-4);
      calib.close();
    },
    600_000,
  );
});

describe('the CLI under node --no-addons', () => {
  const dir = mkdtempSync(join(tmpdir(), 'subprune-noaddons-'));
  const cli = (...args: string[]) => {
    const r = spawnSync(process.execPath, ['--no-addons', 'bin/subprune.js', ...args], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    return { code: r.status, out: r.stdout, err: r.stderr };
  };
  const lenet = readModel('models/lenet.onnx');

  beforeAll(() => {
    // bin/subprune.js runs the compiled CLI; `npm install` (prepare) builds it.
    if (!existsSync('dist/src/cli/main.js'))
      throw new Error('dist/src/cli/main.js is missing: run `npm run build` first');
  });

  it('onnxruntime-node really cannot load there', () => {
    const r = spawnSync(
      process.execPath,
      ['--no-addons', '--input-type=module', '-e', "await import('onnxruntime-node')"],
      { encoding: 'utf8' },
    );
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/addons/);
  });

  it('prune --backend web: the kept channels and the model of the node backend', async () => {
    const out = join(dir, 'web.onnx'),
      rep = join(dir, 'web.json');
    const r = cli(
      'prune',
      'models/lenet.onnx',
      '--calib',
      calibPath,
      '--compression',
      '4',
      '--mode',
      'asymmetric',
      '-o',
      out,
      '--report',
      rep,
      '--backend',
      'web',
      '--threads',
      '1',
    );
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^kernel memory: .* \(1 thread\)\n/);
    expect(r.out).toMatch(/onnxruntime-web/);
    const report = JSON.parse(readFileSync(rep, 'utf8'));
    const calib = openNpy(calibPath);
    const node = await prune(lenet, calib, {
      budget: { compression: 4 },
      mode: 'asymmetric',
      backend: 'node',
      threads: 1,
    });
    expect(report.backend).toBe('web');
    expect(report.groups.map((u: { order: number[] }) => u.order)).toEqual(node.report.groups.map((u) => u.order));
    expect(relDiff(await outputs(readModel(out), calib), await outputs(node.model, calib))).toBeLessThan(1e-4);
    calib.close();
  });

  it('prune without --backend falls back to the web backend and says so', () => {
    const out = join(dir, 'auto.onnx'),
      rep = join(dir, 'auto.json');
    const r = cli(
      'prune',
      'models/lenet.onnx',
      '--calib',
      calibPath,
      '--compression',
      '4',
      '-o',
      out,
      '--report',
      rep,
      '--quiet',
    );
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/onnxruntime-node cannot be loaded \(.*addons.*\); using onnxruntime-web.*--backend web/);
    expect(JSON.parse(readFileSync(rep, 'utf8')).backend).toBe('web');
  });

  it('prune --backend node fails with exit 2 and says how to use the web backend', () => {
    const r = cli(
      'prune',
      'models/lenet.onnx',
      '--calib',
      calibPath,
      '-o',
      join(dir, 'node.onnx'),
      '--backend',
      'node',
    );
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/onnxruntime-node cannot be loaded .*--backend web/);
    expect(existsSync(join(dir, 'node.onnx'))).toBe(false);
  });

  it('eval --backend web: accuracy, agreement and error of the node backend', async () => {
    const pruned = join(dir, 'web.onnx');
    if (!existsSync(pruned))
      cli(
        'prune',
        'models/lenet.onnx',
        '--calib',
        calibPath,
        '--compression',
        '4',
        '--mode',
        'asymmetric',
        '-o',
        pruned,
        '--backend',
        'web',
        '--threads',
        '1',
        '--quiet',
      );
    const r = cli(
      'eval',
      pruned,
      '--data',
      'models/test.npy',
      '--labels',
      'models/test-labels.npy',
      '--reference',
      'models/lenet.onnx',
      '--backend',
      'web',
      '--json',
    );
    expect(r.code).toBe(0);
    const got = JSON.parse(r.out);
    const data = openNpy('models/test.npy'),
      labels = openNpy('models/test-labels.npy');
    const want = await evaluate(readModel(pruned), data, {
      labels: labels.readF64(),
      reference: lenet,
      backend: 'node',
    });
    data.close();
    labels.close();
    expect(got.samples).toBe(2000);
    expect(Math.abs(got.accuracy - want.accuracy!)).toBeLessThanOrEqual(1 / 2000);
    expect(Math.abs(got.agreement - want.agreement!)).toBeLessThanOrEqual(1 / 2000);
    expect(Math.abs(got.relError - want.relError!)).toBeLessThan(1e-4 * want.relError!);
  });

  it('inspect lists the groups', () => {
    const r = cli('inspect', 'models/lenet.onnx', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).groups.map((u: { id: string }) => u.id)).toEqual(
      analyze(lenet, [1, 1, 28, 28]).groups.map((u) => u.id),
    );
  });

  it('select runs the greedy', () => {
    // a layer problem whose best single channel is known: channel 2 alone reproduces the target
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5;
    const N = 200,
      n = 6,
      m = 3;
    const B = Float32Array.from({ length: N * n }, rand),
      W = new Float32Array(n * m);
    for (let j = 0; j < m; j++) W[2 * m + j] = 1 + j;
    writeNpy(join(dir, 'B.npy'), B, [N, n]);
    writeNpy(join(dir, 'W.npy'), W, [n, m]);
    const r = cli(
      'select',
      '--acts',
      join(dir, 'B.npy'),
      '--weights',
      join(dir, 'W.npy'),
      '--group',
      '1',
      '-k',
      '2',
      '--json',
    );
    expect(r.code).toBe(0);
    const got = JSON.parse(r.out);
    expect(got.order[0]).toBe(2);
    expect(got.objective[0]).toBeCloseTo(1, 6);
  });
});
