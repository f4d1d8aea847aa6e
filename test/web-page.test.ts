import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Server } from 'node:http';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import * as ort from 'onnxruntime-node';
import { readModel, serializeModel, tensorDims, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { prune, pruneSizes, type PruneReport } from '../src/prune/index.js';
// @ts-expect-error: a plain .mjs script, no types
import { serve } from '../scripts/serve-web.mjs';

// The browser page end to end, in headless Chromium (Debian's package; no browser download): build it, serve it on
// localhost, pick the bundled LeNet and its calibration data, prune, download the model and the report, and check
// them against onnxruntime-node and the node-backend pipeline; then several sizes from one run. The finished pages are
// saved as screenshots.

// @ts-expect-error: a plain .mjs script without types
import { CHROMIUM } from '../scripts/pretest.mjs';
const SCREENSHOT = resolve('test-output/web-page.png'),
  SIZES_SCREENSHOT = resolve('test-output/web-page-sizes.png');

let server: Server | undefined,
  url = '',
  context: BrowserContext | undefined,
  profile = '';

beforeAll(async () => {
  execFileSync(process.execPath, ['scripts/build-web.mjs'], { stdio: 'pipe' });
  ({ server, url } = await serve('dist/web'));
  if (!existsSync(CHROMIUM))
    throw new Error(
      `${CHROMIUM} is missing: this test needs Debian's chromium (npm test's pretest installs it, or says how)`,
    );
  profile = mkdtempSync(join(tmpdir(), 'subprune-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1100, height: 900 },
    // the machine may have no network: nothing may try to reach it
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

afterAll(async () => {
  await context?.close();
  server?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/** Clicks a download link, saves the file in the profile folder and checks the name the page gave it. */
async function saveDownload(page: Page, link: string, name: string): Promise<string> {
  const [download] = await Promise.all([page.waitForEvent('download'), page.click(link)]);
  const path = join(profile, name);
  await download.saveAs(path);
  expect(download.suggestedFilename()).toBe(name);
  return path;
}

/** A model file's parameters: every initializer, counted here. */
const paramsOf = (path: string) =>
  readModel(path).graph!.initializer.reduce((s, t) => s + tensorDims(t).reduce((a, b) => a * b, 1), 0);

/** The relative error of a downloaded model's output against the library's model, both in onnxruntime-node. */
async function outputError(path: string, want: Model, x: Float32Array): Promise<number> {
  const run = async (bytes: Uint8Array) => {
    const s = await ort.InferenceSession.create(bytes);
    const y = (await s.run({ [s.inputNames[0]]: new ort.Tensor('float32', x, [x.length / 784, 1, 28, 28]) }))[
      s.outputNames[0]
    ];
    await s.release();
    return y.data as Float32Array;
  };
  const a = await run(readFileSync(path)),
    b = await run(serializeModel(want));
  return Math.sqrt(a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0) / b.reduce((s, v) => s + v * v, 0));
}

/** Until the run shows `shown` (its result, or the report's link once every size has come) or an error. */
const finished = (page: Page, shown: string) =>
  page.waitForFunction(
    (id) => !document.querySelector<HTMLElement>(id)!.hidden || document.querySelector('#error')!.textContent,
    shown,
    { timeout: 100_000 },
  );

/** A fresh page of the browser, with the errors it logs. */
async function openPage(): Promise<{ page: Page; errors: string[] }> {
  const page = await context!.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  return { page, errors };
}

describe('the browser page', () => {
  it('prunes LeNet in a worker and downloads a model that runs in onnxruntime-node', async () => {
    const { page, errors } = await openPage();

    await page.goto(url);
    await page.setInputFiles('#model', 'models/lenet.onnx');
    await page.setInputFiles('#calib', 'models/calib.npy');
    await expect.poll(() => page.textContent('#calib-info')).toMatch(/calib\.npy/);
    await page.fill('#compression', '4');
    await page.selectOption('#mode', 'asymmetric');
    await page.selectOption('#method', 'greedy');
    await page.click('#run');
    await finished(page, '#result');
    mkdirSync(resolve(SCREENSHOT, '..'), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(await page.textContent('#error')).toBe('');
    expect(errors).toEqual([]);
    // the pipeline ran in the page's worker, not on the page's thread
    expect(page.workers().map((w) => new URL(w.url()).pathname)).toEqual(['/worker.js']);

    const save = (link: string, name: string) => saveDownload(page, link, name);
    const modelPath = await save('#dl-model-0', 'lenet-c4.onnx');
    const report = JSON.parse(readFileSync(await save('#dl-report', 'lenet-c4.json'), 'utf8'));

    // the same pruning in this process with onnxruntime-node: same channels, same parameter count
    const lenet = readModel('models/lenet.onnx'),
      calib = openNpy('models/calib.npy');
    const node = await prune(lenet, calib, {
      budget: { compression: 4 },
      mode: 'asymmetric',
      backend: 'node',
      threads: 1,
    }); // as the page
    expect(report.backend).toBe('web');
    expect(report.groups.map((u: { order: number[] }) => u.order)).toEqual(node.report.groups.map((u) => u.order));
    const rows = await page.$$eval('#groups tbody tr', (trs) =>
      trs.map((tr) => [...tr.children].map((td) => td.textContent)),
    );
    expect(rows.map((r) => [r[0], Number(r[4])])).toEqual(node.report.groups.map((u) => [u.id, u.kept]));

    // the downloaded model: its parameters (every initializer) counted here, and it runs in onnxruntime-node
    const params = paramsOf(modelPath);
    expect(params).toBe(node.report.params.after);
    expect(report.params.after).toBe(params);
    expect(params).toBeLessThanOrEqual(report.params.before / 4);
    expect(await outputError(modelPath, node.model, calib.readF32(0, 256))).toBeLessThan(1e-4);
    calib.close();

    // a wrong file: the worker's message reaches the page
    await page.setInputFiles('#calib', 'models/lenet.onnx');
    await expect.poll(() => page.textContent('#calib-info')).toMatch(/lenet\.onnx/);
    await page.click('#run');
    await expect.poll(() => page.textContent('#error')).toMatch(/lenet\.onnx: not a \.npy file/);
    expect(await page.isEnabled('#run')).toBe(true);

    // a model with three integer inputs, its calibration data an .npz (its 32 samples: no re-fit of the pooler)
    await page.setInputFiles('#model', 'test/fixtures/tf-bert-tiny-opset17.onnx');
    await page.setInputFiles('#calib', 'test/fixtures/tf-bert-tiny.calib.npz');
    await expect.poll(() => page.textContent('#calib-info')).toMatch(/calib\.npz/);
    await page.fill('#compression', '1.5');
    await page.selectOption('#target', 'flops');
    await page.selectOption('#mode', 'layerwise');
    await page.uncheck('#refit');
    await page.click('#run');
    await finished(page, '#result');
    expect(await page.textContent('#error')).toBe('');
    expect(await page.textContent('#summary')).toMatch(/per token .* at 16 tokens/);
    const bert = JSON.parse(readFileSync(await save('#dl-report', 'tf-bert-tiny-opset17-c1.5.json'), 'utf8'));
    expect(bert.groups.map((g: { channels: number }) => g.channels)).toEqual([4, 128, 4, 128, 64]);
    expect(bert.flops.after).toBeLessThanOrEqual(bert.flops.before / 1.5);

    // a click-through rate model, whose one output sits near its base rate: the summary says its error against the
    // spread of its values, as the CLI's does (more-rs16.test.ts), since the relative error flatters it
    await page.setInputFiles('#model', 'test/fixtures/rs16-dlrm.onnx');
    await page.setInputFiles('#calib', 'test/fixtures/rs16-dlrm.calib.npz');
    await expect.poll(() => page.textContent('#calib-info')).toMatch(/dlrm\.calib\.npz/);
    await page.fill('#compression', '2');
    await page.selectOption('#mode', 'asymmetric');
    await page.check('#refit');
    await page.click('#run');
    await finished(page, '#result');
    expect(await page.textContent('#error')).toBe('');
    expect(await page.textContent('#summary')).toMatch(
      /relative output error 0\.\d{4} \(0\.\d{4} of the spread of its values about their mean; no output holds class/,
    );
  });

  it('prunes LeNet to two sizes from one run, each as the library prunes it, and refuses a bad list', async () => {
    const { page, errors } = await openPage();
    await page.goto(url);
    await page.setInputFiles('#model', 'models/lenet.onnx');
    await page.setInputFiles('#calib', 'models/calib.npy');
    await expect.poll(() => page.textContent('#calib-info')).toMatch(/calib\.npy/);
    await page.fill('#compression', '2, 4');
    await page.selectOption('#mode', 'layerwise');
    await page.selectOption('#method', 'greedy');
    // every status line the run shows
    await page.evaluate(() => {
      const stage = document.querySelector('#stage')!,
        seen: string[] = [];
      (window as unknown as { seen: string[] }).seen = seen;
      new MutationObserver(() => seen.push(stage.textContent ?? '')).observe(stage, { childList: true });
    });
    await page.click('#run');
    // the report comes when every size has arrived
    await finished(page, '#dl-report');
    await page.screenshot({ path: SIZES_SCREENSHOT, fullPage: true });
    expect(await page.textContent('#error')).toBe('');
    expect(errors).toEqual([]);
    expect(await page.textContent('#stage')).toMatch(/^Done in /);
    // progress named the shared stages and each size's own
    const seen = await page.evaluate(() => (window as unknown as { seen: string[] }).seen);
    for (const line of [
      /^Capturing activations \(all 2 sizes\): \d+\/\d+$/,
      /^Selecting channels \(all 2 sizes\): \d+\/\d+$/,
      /^Size 2× \(1 of 2\): re-fitting/,
      /^Size 2× \(1 of 2\): verifying the pruned model: \d+\/\d+$/,
      /^Size 4× \(2 of 2\): re-fitting/,
      /^Size 4× \(2 of 2\): verifying the pruned model: \d+\/\d+$/,
    ])
      expect(seen).toContainEqual(expect.stringMatching(line));

    const models = [
      await saveDownload(page, '#dl-model-0', 'lenet-c2.onnx'),
      await saveDownload(page, '#dl-model-1', 'lenet-c4.onnx'),
    ];
    const report = JSON.parse(readFileSync(await saveDownload(page, '#dl-report', 'lenet-c2,4.json'), 'utf8'));
    expect(report.model).toBe('lenet.onnx');
    expect(report.shared).toMatch(/one capture and one ranking per group for every size/);
    expect(report.sizes.map((z: { output: string; budget: unknown }) => [z.output, z.budget])).toEqual([
      ['lenet-c2.onnx', { compression: 2, target: 'params' }],
      ['lenet-c4.onnx', { compression: 4, target: 'params' }],
    ]);

    // the library's pruneSizes in this process, with onnxruntime-node, at the same budgets
    const lenet = readModel('models/lenet.onnx'),
      calib = openNpy('models/calib.npy');
    const node: { model: Model; report: PruneReport }[] = [];
    for await (const sized of pruneSizes(lenet, calib, [{ compression: 2 }, { compression: 4 }], {
      backend: 'node',
      threads: 1,
      mode: 'layerwise',
    })) {
      if ('error' in sized) throw sized.error;
      node.push(sized);
    }
    const tableRows = await page.$$eval('#sizes tbody tr', (trs) =>
      trs.map((tr) => [...tr.children].map((td) => td.textContent)),
    );
    expect(tableRows.map((r) => [r[0], r[6]])).toEqual([
      ['2×', 'lenet-c2.onnx'],
      ['4×', 'lenet-c4.onnx'],
    ]);
    for (const [i, c] of [2, 4].entries()) {
      const r = report.sizes[i];
      expect(r.backend).toBe('web');
      expect(r.groups.map((u: { order: number[] }) => u.order)).toEqual(node[i]!.report.groups.map((u) => u.order));
      const params = paramsOf(models[i]!);
      expect(params).toBe(node[i]!.report.params.after);
      expect(r.params.after).toBe(params);
      expect(params).toBeLessThanOrEqual(r.params.before / c);
      expect(await outputError(models[i]!, node[i]!.model, calib.readF32(0, 256))).toBeLessThan(1e-4);
      // the details of this size: its groups' kept channels
      await page.selectOption('#shown', String(i));
      const groups = await page.$$eval('#groups tbody tr', (trs) =>
        trs.map((tr) => [...tr.children].map((td) => td.textContent)),
      );
      expect(groups.map((g) => [g[0], Number(g[4])])).toEqual(node[i]!.report.groups.map((u) => [u.id, u.kept]));
    }
    calib.close();

    // a bad entry in the list: one line naming it, and nothing reaches the worker
    await page.evaluate(() => {
      const w = window as unknown as { posted: number };
      w.posted = 0;
      const post = Worker.prototype.postMessage;
      Worker.prototype.postMessage = function (this: Worker, ...args: Parameters<Worker['postMessage']>) {
        w.posted++;
        return post.apply(this, args);
      } as Worker['postMessage'];
    });
    await page.fill('#compression', '2,x');
    await page.click('#run');
    expect(await page.textContent('#error')).toBe(
      'compression "x" is not a number ≥ 1; give one, or a list such as 2,4,8',
    );
    expect(await page.evaluate(() => (window as unknown as { posted: number }).posted)).toBe(0);
    expect(await page.isHidden('#result')).toBe(false); // the last run's sizes stay
    expect(await page.textContent('#stage')).toMatch(/^Done in /);
    expect(await page.isEnabled('#run')).toBe(true);
    expect(errors).toEqual([]);
  });
});
