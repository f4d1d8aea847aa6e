import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readModel } from '../src/onnx/index.js';
import { modelStats } from '../src/graph/analyze.js';
import type { StudyResult } from '../src/study/index.js';
import { testAccuracy } from './test-accuracy.js';

// A small study through the CLI: the files are written, the SVG is well-formed, and a row is what `subprune prune`
// with that configuration gives, measured here with onnxruntime on the written model.

const cli = (...args: string[]) => execFileSync(process.execPath, ['bin/subprune.js', ...args], { encoding: 'utf8' });

/** Well-formed XML, checked by a tag stack (the SVG has no comments, CDATA or entities beyond &amp; &lt; &gt;). */
function wellFormed(xml: string): boolean {
  const stack: string[] = [];
  for (const m of xml.matchAll(/<(\/?)([a-zA-Z]+)([^>]*?)(\/?)>/g)) {
    const [, close, name, attrs, self] = m;
    if (!/^(\s+[a-zA-Z][a-zA-Z0-9:-]*="[^"<]*")*\s*$/.test(attrs)) return false;
    if (close) {
      if (stack.pop() !== name) return false;
    } else if (!self) stack.push(name);
  }
  return stack.length === 0 && !/&(?!amp;|lt;|gt;)/.test(xml);
}

describe('subprune study on lenet, 2 compressions (and one out of reach)', () => {
  it('writes table.md, results.json and a valid plot.svg; a row is what subprune prune gives', async () => {
    const out = mkdtempSync(join(tmpdir(), 'subprune-study-'));
    try {
      await check(out);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

async function check(out: string): Promise<void> {
  const log = cli(
    'study',
    'models/lenet.onnx',
    '--calib',
    'models/calib.npy',
    '--data',
    'models/test.npy',
    '--labels',
    'models/test-labels.npy',
    '--compressions',
    '4,16,1000',
    '--methods',
    'greedy,weight-norm',
    '--modes',
    'layerwise,asymmetric',
    '--out',
    out,
  );
  expect(log).toMatch(/re-fitting helps every selection method/);
  for (const f of ['table.md', 'results.json', 'plot.svg']) expect(existsSync(join(out, f))).toBe(true);

  const res = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as StudyResult;
  // greedy: 2 re-fit × 3 allocations × 2 modes; weight-norm: 2 re-fit × 2 allocations (uniform, sensitivity),
  // layerwise
  expect(res.rows.length).toBe((12 + 4) * 2);
  // 1000× is beyond LeNet's reach (every group at one channel leaves the output layer and more): left out, and said
  expect(res.compressions).toEqual([4, 16]);
  expect(res.unreachable.compressions).toEqual([1000]);
  expect(res.unreachable.max).toBeGreaterThan(16);
  expect(res.unreachable.max).toBeLessThan(1000);
  expect(readFileSync(join(out, 'table.md'), 'utf8')).toContain(
    `Not run: 1000×, beyond this model's reach (every group at one channel gives ${res.unreachable.max.toFixed(1)}×`,
  );
  const full = modelStats(readModel('models/lenet.onnx'), [1, 1, 28, 28]).params;
  for (const r of res.rows) expect(r.params).toBeLessThanOrEqual(full / r.compression);

  const row = res.rows.find(
    (r) =>
      r.method === 'greedy' &&
      r.mode === 'layerwise' &&
      r.refit &&
      r.allocation === 'sensitivity' &&
      r.compression === 16,
  )!;
  const wn = res.rows.find(
    (r) => r.method === 'weight-norm' && !r.refit && r.allocation === 'uniform' && r.compression === 4,
  )!;
  for (const [r, flags] of [
    [row, ['--allocation', 'sensitivity']],
    [wn, ['--method', 'weight-norm', '--no-refit', '--allocation', 'uniform']],
  ] as const) {
    const file = join(out, 'pruned.onnx');
    cli(
      'prune',
      'models/lenet.onnx',
      '--calib',
      'models/calib.npy',
      '--compression',
      String(r.compression),
      '--mode',
      'layerwise',
      ...flags,
      '-o',
      file,
      '--quiet',
    );
    expect(await testAccuracy(file)).toBe(r.accuracy);
    expect(modelStats(readModel(file), [1, 1, 28, 28]).params).toBe(r.params);
  }

  const table = readFileSync(join(out, 'table.md'), 'utf8');
  expect(table).toContain('| method | mode | re-fit | allocation | 4× | 16× |');
  expect(table.split('\n').find((l) => l.startsWith('| greedy | layerwise | yes | sensitivity |'))).toContain(
    row.accuracy.toFixed(3),
  );
  expect(table).toMatch(/## The paper's claims on this model/);

  const svg = readFileSync(join(out, 'plot.svg'), 'utf8');
  expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
  expect(wellFormed(svg)).toBe(true);
  // one line per method (greedy: per mode) with re-fit + sensitivity, and one without re-fit, uniform
  const polylines = [...svg.matchAll(/<polyline [^>]*points="([^"]*)"/g)];
  expect(polylines.length).toBe(2 * (2 + 1));
  for (const [, pts] of polylines) {
    const xy = pts
      .trim()
      .split(' ')
      .map((p) => p.split(',').map(Number));
    expect(xy.length).toBe(2);
    expect(xy.flat().every(Number.isFinite)).toBe(true);
    expect(xy[1][0]).toBeGreaterThan(xy[0][0]); // 16× right of 4×
  }
}
