import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initializerMap, readModel, replaceInitializerData, tensorToFloat32, writeModel } from '../src/onnx/index.js';
import { encodeNpy, openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import { captureStats, decodeStats, encodeStats, mergeStats, type CaptureStats } from '../src/capture/shards.js';
import { Runner } from '../src/capture/index.js';
import { prune } from '../src/prune/index.js';
import { analyze } from '../src/graph/analyze.js';
import { Calibration } from '../src/calibration.js';
import { ensureBuilt, expectFailure, expectSameWeights, runCli, spawnCli } from './cli-helpers.js';

// Sharded capture: the calibration set split in parts, each captured by its own `subprune capture` process, and one
// `prune --stats ...` must give what one `prune` on the whole set gives (the oracle: that run, which captures itself).
// The parts are cut at multiples of the capture batch and of 64 samples: onnxruntime's float32 results depend on a
// batch's size (its kernels block the batch), and the Gram matrices add their rows 64 samples at a time
// (FLUSH_SAMPLES), so parts cut elsewhere give sums that differ in the last bits (measured on LeNet, cut at 200 and 350
// of 512: objectives within 5e-9 relative, the same picks), while aligned parts run the very batches the whole run
// does and differ only in the order the float64 sums are added.

const LENET = 'models/lenet.onnx',
  RESNET = 'models/resnet20.onnx',
  CALIB = 'models/calib.npy';
const dir = mkdtempSync(join(tmpdir(), 'subprune-shards-'));
const at = (name: string) => join(dir, name);
const json = (file: string) => JSON.parse(readFileSync(file, 'utf8'));

/** Rows [r0, r1) of models/calib.npy as an .npy file in the temporary folder. */
function writePart(name: string, r0: number, r1: number): string {
  const f = openNpy(CALIB);
  try {
    writeFileSync(at(name), encodeNpy(f.readF32(r0, r1), [r1 - r0, ...f.shape.slice(1)]));
  } finally {
    f.close();
  }
  return at(name);
}

interface Report {
  groups: { id: string; order: number[]; objective: number; consumers: { objective: number }[] }[];
  stats?: { samples: number; distinct: number; shards: number };
  seconds: { capture: number };
}

/** The two runs chose the same channels in the same order, with objectives equal to 1e-9 relative. */
function expectSameSelection(a: Report, b: Report): void {
  expect(a.groups.map((g) => g.id)).toEqual(b.groups.map((g) => g.id));
  a.groups.forEach((g, i) => {
    const h = b.groups[i]!;
    expect(g.order, g.id).toEqual(h.order);
    expect(Math.abs(g.objective - h.objective), g.id).toBeLessThanOrEqual(1e-9 * Math.abs(h.objective));
    g.consumers.forEach((c, j) =>
      expect(Math.abs(c.objective - h.consumers[j]!.objective)).toBeLessThanOrEqual(1e-9 * Math.abs(c.objective)),
    );
  });
}

const PARTS = [
  [0, 192],
  [192, 384],
  [384, 512],
] as const;

beforeAll(() => {
  ensureBuilt();
  PARTS.forEach(([r0, r1], i) => writePart(`part${i}.npy`, r0, r1));
  writePart('small.npy', 0, 64);
}, 180_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('subprune capture → prune --stats (LeNet, 3 parts of 512 samples)', () => {
  const stats = PARTS.map((_, i) => at(`part${i}.stats`));
  const statsFlags = () => stats.flatMap((s) => ['--stats', s]);

  beforeAll(() => {
    // each part in its own process, as on separate machines
    for (const [i, s] of stats.entries()) {
      const r = spawnCli('capture', LENET, '--calib', at(`part${i}.npy`), '-o', s);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toMatch(new RegExp(`captured 4 groups on ${PARTS[i]![1] - PARTS[i]![0]} samples`));
    }
  }, 180_000);

  it.each([[[] as string[]], [['--no-bias-refit']]])(
    'with %j: the picks, objectives and weights of one prune on the whole set',
    { timeout: 120_000 },
    async (flags) => {
      const tag = flags.length ? 'nobias' : 'bias';
      const whole = await runCli(
        'prune', LENET, '--calib', CALIB, '--compression', '4', '--mode', 'layerwise', '-o', at(`whole-${tag}.onnx`),
        '--report', at(`whole-${tag}.json`), ...flags,
      ); // prettier-ignore
      expect(whole.code, whole.err).toBe(0);
      const sharded = await runCli(
        'prune', LENET, ...statsFlags(), '--calib', at('small.npy'), '--compression', '4',
        '-o', at(`sharded-${tag}.onnx`), '--report', at(`sharded-${tag}.json`), ...flags,
      ); // prettier-ignore
      expect(sharded.code, sharded.err).toBe(0);
      expect(sharded.out).toMatch(/Gram matrices from 3 stats shards: 512 samples \(512 distinct\); no capture ran/);
      const [a, b] = [json(at(`sharded-${tag}.json`)) as Report, json(at(`whole-${tag}.json`)) as Report];
      expectSameSelection(a, b);
      expect(a.stats).toEqual({ samples: 512, distinct: 512, shards: 3 });
      expect(a.seconds.capture).toBe(0);
      expectSameWeights(at(`sharded-${tag}.onnx`), at(`whole-${tag}.onnx`), 1e-6);
    },
  );

  it('--method activation-norm: parts captured with it rank as the whole set; greedy parts are refused', async () => {
    const mean = PARTS.map((_, i) => at(`mean${i}.stats`));
    for (const [i, s] of mean.entries()) {
      const r = await runCli('capture', LENET, '--calib', at(`part${i}.npy`), '-o', s, '--method', 'activation-norm');
      expect(r.code, r.err).toBe(0);
    }
    const common = ['--compression', '4', '--method', 'activation-norm'];
    const whole = await runCli(
      'prune',
      LENET,
      '--calib',
      CALIB,
      ...common,
      '--mode',
      'layerwise', // the mode --stats runs in when none is asked for
      '-o',
      at('wm.onnx'),
      '--report',
      at('wm.json'),
    );
    expect(whole.code, whole.err).toBe(0);
    const sharded = await runCli(
      'prune', LENET, ...mean.flatMap((s) => ['--stats', s]), '--calib', at('small.npy'), ...common,
      '-o', at('sm.onnx'), '--report', at('sm.json'),
    ); // prettier-ignore
    expect(sharded.code, sharded.err).toBe(0);
    expectSameSelection(json(at('sm.json')), json(at('wm.json')));
    expectSameWeights(at('sm.onnx'), at('wm.onnx'), 1e-6);
    const refused = await runCli(
      'prune',
      LENET,
      ...statsFlags(),
      '--calib',
      at('small.npy'),
      ...common,
      '-o',
      at('x.onnx'),
    );
    expectFailure(
      refused,
      2,
      /without the absMean statistics the method needs \(capture with --method activation-norm\)/,
    );
    const mixed = await runCli(
      'prune',
      LENET,
      '--stats',
      stats[0]!,
      '--stats',
      mean[1]!,
      '--calib',
      at('small.npy'),
      '-o',
      at('x.onnx'),
    );
    expectFailure(
      mixed,
      2,
      /mean1\.stats does not match .*part0\.stats: captured with channel statistics \[absMean\], not \[\]/,
    );
    expect(existsSync(at('x.onnx'))).toBe(false);
  }, 120_000);

  it('refuses stats of another model, with or without stats of this one', async () => {
    // LeNet with one weight changed: the same groups and shapes, another model
    const m = readModel(LENET),
      w = tensorToFloat32(initializerMap(m.graph!).get('fc3.weight')!);
    w.data[0] += 1;
    replaceInitializerData(m.graph!, 'fc3.weight', w.dims, w.data);
    writeModel(m, at('other.onnx'));
    const r = await runCli('capture', at('other.onnx'), '--calib', at('part0.npy'), '-o', at('other.stats'));
    expect(r.code, r.err).toBe(0);
    const alone = await runCli(
      'prune',
      LENET,
      '--stats',
      at('other.stats'),
      '--calib',
      at('small.npy'),
      '-o',
      at('x.onnx'),
    );
    expectFailure(
      alone,
      2,
      /the stats do not match this run: captured from another model \(SHA-256 [0-9a-f]{12}…, not/,
    );
    const mixed = await runCli(
      'prune', LENET, '--stats', stats[1]!, '--stats', at('other.stats'), '--calib', at('small.npy'),
      '-o', at('x.onnx'),
    ); // prettier-ignore
    expectFailure(mixed, 2, /other\.stats does not match .*part1\.stats: captured from another model/);
    expect(existsSync(at('x.onnx'))).toBe(false);
  }, 60_000);

  it('refuses a truncated, a corrupted or a foreign file, and a shard given twice', async () => {
    const bytes = readFileSync(stats[0]!);
    writeFileSync(at('trunc.stats'), bytes.subarray(0, bytes.length - 1000));
    const flipped = Buffer.from(bytes);
    flipped[bytes.length - 5000] ^= 0x10; // a bit of a Gram entry
    writeFileSync(at('flip.stats'), flipped);
    const prune = (...files: string[]) =>
      runCli('prune', LENET, ...files.flatMap((f) => ['--stats', f]), '--calib', at('small.npy'), '-o', at('x.onnx'));
    expectFailure(await prune(stats[1]!, at('trunc.stats')), 2, /trunc\.stats: it is truncated \(\d+ of \d+ bytes\)/);
    expectFailure(await prune(at('flip.stats')), 2, /flip\.stats: it is corrupted \(its SHA-256 does not match\)/);
    expectFailure(await prune(CALIB), 2, /calib\.npy is not a subprune stats file/);
    expectFailure(await prune(at('none.stats')), 2, /none\.stats: cannot open \(ENOENT\)/);
    expectFailure(
      await prune(stats[0]!, stats[1]!, stats[0]!),
      2,
      /part0\.stats holds the same 192 samples as a shard already in .*; give each shard once/,
    );
    expect(existsSync(at('x.onnx'))).toBe(false);
  });

  it('refuses --stats with --mode sequential, without --calib or without -o; never writes over an input', async () => {
    const seq = await runCli(
      'prune', LENET, ...statsFlags(), '--calib', at('small.npy'), '--mode', 'sequential', '-o', at('x.onnx'),
    ); // prettier-ignore
    expectFailure(seq, 2, /stats need --mode layerwise: sequential mode captures the model pruned so far/);
    const noCalib = await runCli('prune', LENET, ...statsFlags(), '-o', at('x.onnx'));
    expectFailure(noCalib, 2, /prune --stats needs --calib SMALL\.npy too/);
    expectFailure(await runCli('prune', LENET, ...statsFlags(), '--calib', at('small.npy')), 2, /prune needs -o/);
    expectFailure(await runCli('capture', LENET, '--calib', at('part0.npy')), 2, /capture needs -o PART\.stats/);
    const before = readFileSync(stats[2]!);
    const over = await runCli('prune', LENET, ...statsFlags(), '--calib', at('small.npy'), '-o', stats[2]!);
    expectFailure(over, 2, /part2\.stats is an input of this run; subprune never overwrites its inputs/);
    expect(readFileSync(stats[2]!).equals(before)).toBe(true);
    const calibOver = await runCli('capture', LENET, '--calib', at('part0.npy'), '-o', at('part0.npy'));
    expectFailure(calibOver, 2, /-o .*part0\.npy is an input of this run/);
    expect(existsSync(at('x.onnx'))).toBe(false);
  });

  it('an existing output is replaced, as prune -o replaces one', async () => {
    writeFileSync(at('again.stats'), 'old');
    const r = await runCli('capture', LENET, '--calib', at('part2.npy'), '-o', at('again.stats'), '--quiet');
    expect(r.code, r.err).toBe(0);
    expect(readFileSync(at('again.stats')).equals(readFileSync(stats[2]!))).toBe(true);
  });

  it('--help of capture and prune lists the new flags', async () => {
    const c = await runCli('capture', '--help');
    for (const flag of ['--calib', '--preprocess', '-o, --output', '--method', '--batch', '--threads', '--backend'])
      expect(c.out).toContain(flag);
    expect((await runCli('prune', '--help')).out).toMatch(/--stats FILE/);
    expect((await runCli('--help')).out).toMatch(/capture {4}/);
  });
});

// Parts of 64 samples (FLUSH_SAMPLES) sum as one pass does, whatever the batch size of their runs
describe('ResNet-20 (channel groups across residual Adds): 2 parts of 64 samples', () => {
  it(
    'prune --stats gives the picks, objectives and weights of one prune on the 128',
    { timeout: 300_000 },
    async () => {
      writePart('r0.npy', 0, 64);
      writePart('r1.npy', 64, 128);
      writePart('r01.npy', 0, 128);
      for (const i of [0, 1]) {
        const r = spawnCli('capture', RESNET, '--calib', at(`r${i}.npy`), '-o', at(`r${i}.stats`), '--batch', '32');
        expect(r.code, r.err).toBe(0);
      }
      const common = ['--compression', '2', '--batch', '32'];
      const whole = await runCli(
      'prune', RESNET, '--calib', at('r01.npy'), ...common, '--mode', 'layerwise', '-o', at('rw.onnx'),
      '--report', at('rw.json'),
    ); // prettier-ignore
      expect(whole.code, whole.err).toBe(0);
      const sharded = await runCli(
      'prune', RESNET, '--stats', at('r0.stats'), '--stats', at('r1.stats'), '--calib', at('r0.npy'), ...common,
      '-o', at('rs.onnx'), '--report', at('rs.json'),
    ); // prettier-ignore
      expect(sharded.code, sharded.err).toBe(0);
      const [a, b] = [json(at('rs.json')) as Report, json(at('rw.json')) as Report];
      expect(a.groups.some((g) => g.consumers.length > 1)).toBe(true);
      expectSameSelection(a, b);
      expectSameWeights(at('rs.onnx'), at('rw.onnx'), 1e-6);
    },
  );
});

describe('the library: captureStats, encodeStats/decodeStats, mergeStats', () => {
  it('two shards merged hold G = BᵀB, Bᵀ1 and the rows of both parts (float64, from onnxruntime)', async () => {
    const model = readModel(LENET);
    const parts = ['part0.npy', 'part1.npy'].map((p) => openNpy(at(p)));
    try {
      const [a, b] = [await captureStats(model, parts[0]!), await captureStats(model, parts[1]!)];
      const merged = mergeStats(a, b);
      expect(merged.samples).toBe(384);
      expect(merged.shards.map((s) => s.samples)).toEqual([192, 192]);
      // the oracle: the consumer input of fc1's group (fc2's input, d = 120) from onnxruntime, summed in float64
      const group = analyze(model, Calibration.of(model, parts[0]!).shapes).groups.find((u) => u.id === '/fc1/Gemm')!;
      const input = group.consumers[0]!.input,
        d = group.consumers[0]!.d,
        run = await Runner.open(model, [input]);
      const G = new Float64Array(d * d),
        sums = new Float64Array(d);
      let rows = 0;
      for (const part of parts)
        for (const batch of Calibration.of(model, part).batches(64)) {
          const x = (await run.run(batch, [input])).get(input)!.data;
          for (let r = 0; r < x.length / d; r++, rows++)
            for (let i = 0; i < d; i++) {
              sums[i] += x[r * d + i]!;
              for (let j = 0; j < d; j++) G[i * d + j] += x[r * d + i]! * x[r * d + j]!;
            }
        }
      await run.release();
      const got = merged.grams.get('/fc1/Gemm')![0]!;
      expect(got.rows).toBe(rows);
      const scale = Math.max(...G.map(Math.abs));
      // the kernels sum G in f32 blocks of 128 rows (docs/DESIGN.md), as in test/gram.test.ts
      expect(Math.max(...got.G.map((v, i) => Math.abs(v - G[i]!)))).toBeLessThanOrEqual(1e-6 * scale);
      expect(Math.max(...got.sums!.map((v, i) => Math.abs(v - sums[i]!)))).toBeLessThanOrEqual(1e-9 * rows);
      // the file holds every number as it was, and starts with its magic
      const bytes = encodeStats(merged);
      expect(Buffer.from(bytes.subarray(0, 14)).toString()).toBe('subprune-stats');
      const back: CaptureStats = decodeStats(bytes);
      expect(back).toEqual(merged);
      // merging is the same in either order, up to float64 rounding of the sums
      const other = mergeStats(b, a).grams.get('/fc1/Gemm')![0]!;
      expect(Math.max(...other.G.map((v, i) => Math.abs(v - got.G[i]!)))).toBeLessThanOrEqual(1e-12 * scale);
    } finally {
      parts.forEach((p) => p.close());
    }
  }, 60_000);

  it('a padded token model: shards with and without allTokens do not merge, nor does prune take them', async () => {
    const model = readModel('test/fixtures/tf-bert-tiny-opset17.onnx'),
      data = openNpz('test/fixtures/tf-bert-tiny.calib.npz');
    try {
      const masked = await captureStats(model, data),
        all = await captureStats(model, data, { allTokens: true });
      expect([masked.key.tokens, all.key.tokens]).toEqual(['masked', 'all']);
      // the FFN's rows: the real tokens alone, or every token
      const mask = data.get('attention_mask')!.readF64(),
        ffn = (s: CaptureStats) => s.grams.get('/layer.0/intermediate_dense/MatMul')![0]!.rows;
      expect([ffn(masked), ffn(all)]).toEqual([mask.filter((v) => v === 1).length, mask.length]);
      expect(() => mergeStats(masked, all)).toThrow(
        /another does not match one stats: captured with --all-tokens, not without --all-tokens/,
      );
      await expect(prune(model, data, { budget: { compression: 2 }, mode: 'layerwise', stats: all })).rejects.toThrow(
        /the stats do not match this run: captured with --all-tokens/,
      );
    } finally {
      for (const f of data.values()) f.close();
    }
  });

  it('prune({ stats }) refuses another mode in one line, before any capture', async () => {
    const model = readModel(LENET),
      small = openNpy(at('small.npy'));
    try {
      const stats = await captureStats(model, small);
      await expect(prune(model, small, { budget: { compression: 2 }, mode: 'asymmetric', stats })).rejects.toThrow(
        /^stats need --mode layerwise: asymmetric mode captures the model pruned so far/,
      );
    } finally {
      small.close();
    }
  });
});
