import { describe, it, expect } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { readModel, serializeModel, tensorDims, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { modelStats } from '../src/graph/analyze.js';
import { prune } from '../src/prune/index.js';
import type { RoundTo } from '../src/prune/allocation.js';
import { runCli } from './cli-helpers.js';

// --round-to on a real export (the bundled MobileNetV3-style model: depthwise convs, squeeze-and-excitation, residual
// Adds): the kept counts, the rewritten weights, and what it is for, judged by onnxruntime itself: the convolutions
// its default optimization level turns into blocked NCHWc ones (com.microsoft.nchwc), as it writes the optimized
// model out. Machines without those kernels (not x86) turn none, and the counts compare equal.

const dir = mkdtempSync(join(tmpdir(), 'subprune-round-'));

/** How many Conv nodes onnxruntime's level `all` makes NCHWc ones, and how many convolutions there are in all. */
async function nchwcConvs(model: Model, name: string): Promise<{ nchwc: number; convs: number }> {
  const path = join(dir, `${name}.onnx`);
  const s = await ort.InferenceSession.create(serializeModel(model), {
    graphOptimizationLevel: 'all',
    optimizedModelFilePath: path,
    logSeverityLevel: 3,
  });
  await s.release();
  const nodes = readModel(path).graph!.node.filter((n) => /Conv$/.test(n.opType));
  return { nchwc: nodes.filter((n) => n.domain === 'com.microsoft.nchwc').length, convs: nodes.length };
}

/** MobileNet pruned 2× by parameters, layerwise (fast), rounded as asked (undefined: the default). */
function run(original: Model, roundTo?: RoundTo) {
  const calib = openNpy('models/calib.npy');
  return prune(original, calib, {
    budget: { compression: 2 },
    mode: 'layerwise',
    threads: 2,
    ...(roundTo ? { roundTo } : {}),
  }).finally(() => calib.close());
}

describe('mobilenet: --round-to 8', () => {
  it('groups keep 8·j channels or all, the weights agree, onnxruntime blocks all the original blocked', async () => {
    const original = readModel('models/mobilenet.onnx');
    const rounded = await run(original, 8),
      plain = await run(original, 1);
    expect(rounded.report.roundTo).toBe(8);
    expect(plain.report.roundTo).toBeUndefined();
    expect(plain.report.groups.every((g) => g.step === undefined)).toBe(true);
    expect(rounded.report.params.after).toBeLessThanOrEqual(rounded.report.params.before / 2);
    let cut = 0;
    for (const g of rounded.report.groups) {
      expect(g.kept === g.channels || g.kept % 8 === 0, `${g.id}: ${g.kept} of ${g.channels}`).toBe(true);
      if (g.kept < g.channels) cut++;
    }
    expect(cut).toBeGreaterThan(5);
    expect(plain.report.groups.some((g) => g.kept < g.channels && g.kept % 8 !== 0)).toBe(true);
    // every conv weight of the rounded model: output channels, and input channels per group, as the original's or
    // multiples of 8
    const dims = (m: Model) => new Map(m.graph!.initializer.map((t) => [t.name, tensorDims(t)]));
    const before = dims(original),
      after = dims(rounded.model);
    for (const n of rounded.model.graph!.node.filter((x) => x.opType === 'Conv')) {
      const [o, i] = after.get(n.input[1]!)!,
        [o0, i0] = before.get(n.input[1]!)!;
      expect(o === o0 || o! % 8 === 0, `${n.name} out ${o}`).toBe(true);
      expect(i === i0 || i! % 8 === 0, `${n.name} in ${i}`).toBe(true);
    }
    expect(modelStats(rounded.model, [1, 1, 28, 28]).params).toBe(rounded.report.params.after);
    const [o, r, p] = [
      await nchwcConvs(original, 'original'),
      await nchwcConvs(rounded.model, 'rounded'),
      await nchwcConvs(plain.model, 'plain'),
    ];
    expect(r.convs).toBe(o.convs);
    expect(r.nchwc).toBeGreaterThanOrEqual(o.nchwc);
    expect(r.nchwc).toBeGreaterThanOrEqual(p.nchwc);
    if (o.nchwc > 0) expect(p.nchwc).toBeLessThan(r.nchwc); // where onnxruntime blocks convs, rounding is what lets it
  }, 120_000);
});

describe('mobilenet: the default, --round-to auto', () => {
  it('rounds groups of 32+ channels, not smaller ones; onnxruntime blocks more convs than unrounded', async () => {
    const original = readModel('models/mobilenet.onnx');
    const auto = await run(original),
      plain = await run(original, 1);
    expect(auto.report.roundTo).toBe('auto');
    // the groups by hand, from the model: 21 groups, every producer a Conv; the stem (16 channels), the residual
    // stream of blocks 1–2 (24) and the SE squeezes below 32 channels (8–30) take any count
    const small = new Set([
      '/stem/Conv',
      '/blocks/blocks.1/project/Conv',
      ...[0, 1, 2, 3, 4, 5].map((b) => `/blocks/blocks.${b}/se/fc1/Conv`),
    ]);
    expect(auto.report.groups).toHaveLength(21);
    for (const g of auto.report.groups) {
      expect(g.channels >= 32, g.id).toBe(!small.has(g.id));
      expect(g.step, g.id).toBe(small.has(g.id) ? undefined : 8); // the report says which groups were rounded
      if (!small.has(g.id)) expect(g.kept === g.channels || g.kept % 8 === 0, `${g.id}: ${g.kept}`).toBe(true);
    }
    // the small groups are free: some keeps a count off 8 (the rounding does not reach them)
    expect(auto.report.groups.some((g) => small.has(g.id) && g.kept < g.channels && g.kept % 8 !== 0)).toBe(true);
    expect(auto.report.params.after).toBeLessThanOrEqual(auto.report.params.before / 2);
    const [a, p, o] = [
      await nchwcConvs(auto.model, 'auto'),
      await nchwcConvs(plain.model, 'plain-auto'),
      await nchwcConvs(original, 'original-auto'),
    ];
    if (o.nchwc > 0) expect(a.nchwc).toBeGreaterThan(p.nchwc);
  }, 120_000);

  it('a --budget file keeps its counts as written: off multiples of 8, not refused, not rounded', async () => {
    const calib = openNpy('models/calib.npy');
    const { report } = await prune(readModel('models/mobilenet.onnx'), calib, {
      budget: { keep: { '/blocks/blocks.1/expand/Conv': 37, '/head/Conv': 101 } },
      mode: 'layerwise',
      threads: 2,
    }).finally(() => calib.close());
    expect(report.roundTo).toBeUndefined();
    const kept = new Map(report.groups.map((g) => [g.id, g.kept]));
    expect([kept.get('/blocks/blocks.1/expand/Conv'), kept.get('/head/Conv')]).toEqual([37, 101]);
  }, 120_000);
});

describe('the CLI: a prune that loses the blocked convolutions says so', () => {
  it('with --round-to 1: a note naming the count and the flag; with 8 or auto: none, the summary says so', async () => {
    const prune = (...more: string[]) =>
      runCli(
        'prune',
        'models/mobilenet.onnx',
        '--calib',
        'models/calib.npy',
        '--compression',
        '4',
        '--mode',
        'layerwise',
        '--threads',
        '2',
        '-o',
        join(dir, 'cli.onnx'),
        ...more,
      );
    const plain = await prune('--round-to', '1'),
      rounded = await prune('--round-to', '8'),
      auto = await prune();
    for (const r of [plain, rounded, auto]) expect(r.code, r.err).toBe(0);
    expect(auto.out).not.toMatch(/note:/);
    expect(auto.out).toMatch(/allocation global \(groups of 2-D convolutions of 32\+ channels in multiples of 8\)/);
    expect(plain.out).toMatch(/note: \d+ groups of convolutions keep counts that are not multiples of 8.*--round-to 8/);
    expect(rounded.out).not.toMatch(/note:/);
    expect(rounded.out).toMatch(/allocation global \(channels in multiples of 8\)/);
  }, 120_000);
});
