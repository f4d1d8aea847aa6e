import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNpy } from '../src/npy.js';
import { readModel } from '../src/onnx/index.js';
import { modelStats } from '../src/graph/analyze.js';
import {
  designRuns,
  runSettings,
  settingKey,
  type Block,
  type Setting,
  type SettingRow,
  type SettingsResult,
} from '../src/study/settings.js';
import type { PruneReport } from '../src/prune/index.js';
import { candidates, chooseDefault, PLAIN } from '../src/study/settings-report.js';
import { runCli } from './cli-helpers.js';
import { testAccuracy } from './test-accuracy.js';

// The settings grid shares the capture, rankings and searches between its rows; a row must still be what
// `subprune prune` with that setting gives on its own, measured here with onnxruntime on the written model.

/** What `subprune prune --compression c` does with no other flag (README, "The default setting"). */
const DEFAULT: Setting = { mode: 'asymmetric', allocation: 'global', bias: true, refine: 0 };

const DESIGN: Block[] = [
  { modes: ['layerwise'], allocations: ['global', 'search'], bias: [true], refine: [2], compressions: [8] },
  { modes: ['layerwise'], allocations: ['uniform'], bias: [false], refine: [0] },
  { modes: ['asymmetric'], allocations: ['search'], bias: [true], refine: [0], compressions: [16] },
  { modes: ['sequential'], allocations: ['uniform'], bias: [true], refine: [2], compressions: [16] },
  // the default setting: run below with no flag at all
  { modes: ['asymmetric'], allocations: ['global'], bias: [true], refine: [0], compressions: [8] },
  // repeats a run of the first block: run once
  { modes: ['layerwise'], allocations: ['global'], bias: [true], refine: [2], compressions: [8] },
];

describe('the settings grid on lenet', () => {
  it('runs each setting once; each row is what prune --no-sweep gives with its flags (the default: none)', async () => {
    const calib = openNpy('models/calib.npy'),
      test = openNpy('models/test.npy'),
      labels = openNpy('models/test-labels.npy');
    const out = mkdtempSync(join(tmpdir(), 'subprune-settings-'));
    try {
      const model = readModel('models/lenet.onnx');
      const seen: number[] = [];
      const res = await runSettings(model, {
        name: 'lenet',
        calib,
        test: { data: test, labels: labels.readF64() },
        compressions: [8, 16],
        design: DESIGN,
        onRow: (rows) => seen.push(rows.length),
      });
      expect(designRuns(DESIGN, [8, 16]).length).toBe(7);
      expect(res.rows.length).toBe(7);
      expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7]);
      for (const r of res.rows) expect(r.seconds).toBeGreaterThan(0);

      for (const r of res.rows) {
        const file = join(out, 'pruned.onnx');
        // the grid measures the settings without the sweep the default adds
        const flags = [
          '--no-sweep',
          ...(settingKey(r) === settingKey(DEFAULT)
            ? []
            : [
                ...['--mode', r.mode, '--allocation', r.allocation, '--refine', String(r.refine)],
                ...(r.bias ? [] : ['--no-bias-refit']),
              ]),
        ];
        const cli = await runCli(
          'prune',
          'models/lenet.onnx',
          '--calib',
          'models/calib.npy',
          '--compression',
          String(r.compression),
          ...flags,
          '-o',
          file,
          '--report',
          join(out, 'report.json'),
          '--quiet',
        );
        expect(cli.code, cli.err).toBe(0);
        const report = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')) as PruneReport;
        expect([report.mode, report.allocation]).toEqual([r.mode, r.allocation]);
        expect(await testAccuracy(file), flags.join(' ')).toBe(r.accuracy);
        expect(modelStats(readModel(file), [1, 1, 28, 28]).params).toBe(r.params);
      }

      // resumed: the rows given are kept as they are and not run again
      const marked: SettingRow[] = res.rows.map((r) => ({ ...r, accuracy: -1 }));
      const again = await runSettings(model, {
        name: 'lenet',
        calib,
        test: { data: test, labels: labels.readF64() },
        compressions: [8, 16],
        design: DESIGN,
        done: marked,
      });
      expect(again.rows.map((r) => r.accuracy)).toEqual(marked.map(() => -1));
    } finally {
      calib.close();
      test.close();
      labels.close();
      rmSync(out, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('the choice of the default', () => {
  // two models, three settings; hand-made rows: accuracy and seconds per compression
  const row = (
    mode: SettingRow['mode'],
    allocation: SettingRow['allocation'],
    c: number,
    accuracy: number,
    seconds: number,
  ) =>
    ({
      mode,
      allocation,
      bias: true,
      refine: 0,
      compression: c,
      accuracy,
      seconds,
      params: 0,
      flops: 0,
      keeps: {},
    }) as SettingRow;
  const result = (model: string, rows: SettingRow[]) =>
    ({ model, compressions: [2, 4], rows }) as unknown as SettingsResult;
  const a = result('a', [
    row('layerwise', 'uniform', 2, 0.8, 1),
    row('layerwise', 'uniform', 4, 0.6, 1),
    row('layerwise', 'global', 2, 0.85, 1),
    row('layerwise', 'global', 4, 0.75, 1),
    row('asymmetric', 'search', 2, 0.9, 30), // best, but 30× the plain prune here
    row('asymmetric', 'search', 4, 0.9, 30),
    row('sequential', 'global', 2, 0.99, 1), // only at 2×: no mean, not a candidate
  ]);
  const b = result('b', [
    row('layerwise', 'uniform', 2, 0.7, 2),
    row('layerwise', 'uniform', 4, 0.5, 2),
    row('layerwise', 'global', 2, 0.7, 4),
    row('layerwise', 'global', 4, 0.6, 4),
    row('asymmetric', 'search', 2, 0.8, 10),
    row('asymmetric', 'search', 4, 0.8, 10),
  ]);

  it('ranks the settings measured everywhere by their mean over models, and keeps to the cost bound', () => {
    const cs = candidates([a, b]);
    expect(cs.map((c) => c.setting.allocation)).toEqual(['search', 'global', 'uniform']);
    expect(cs[0].mean).toBeCloseTo((0.9 + 0.8) / 2, 12);
    expect(cs[0].cost).toBe(30);
    expect(cs[0].total).toBeCloseTo((30 + 10) / (1 + 2), 12);
    expect(cs[1].mean).toBeCloseTo((0.8 + 0.65) / 2, 12);
    expect(cs[1].cost).toBe(2);
    const chosen = chooseDefault([a, b])!;
    expect(chosen.setting).toEqual({ ...PLAIN, allocation: 'global' });
  });
});
