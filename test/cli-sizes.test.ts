import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expectFailure, expectSameWeights, runCli } from './cli-helpers.js';

// Several sizes from one run (`--compression 2,4 -o out-{c}.onnx`): each model must be the one a separate single-size
// run writes (the oracle: that run, which ranks each group only as far as its own k), and the later sizes must not
// capture again.

const LENET = 'models/lenet.onnx',
  CALIB = 'models/calib.npy';
let dir: string;
const at = (name: string) => join(dir, name);
const json = (file: string) => JSON.parse(readFileSync(file, 'utf8'));

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'subprune-sizes-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const kept = (report: { groups: { id: string; order: number[] }[] }) =>
  Object.fromEntries(report.groups.map((g) => [g.id, [...g.order].sort((p, q) => p - q)]));

describe('prune --compression 2,4 -o out-{c}.onnx', () => {
  it('writes the models two single-size runs write, from one capture, and one report with both', async () => {
    const many = await runCli(
      'prune', LENET, '--calib', CALIB, '--compression', '2,4', '--mode', 'layerwise', '-o', at('many-{c}.onnx'),
      '--report', at('many.json'),
    ); // prettier-ignore
    expect(many.code, many.err).toBe(0);
    for (const c of ['2', '4']) {
      const out = at(`one-${c}.onnx`);
      const one = await runCli(
        'prune',
        LENET,
        '--calib',
        CALIB,
        '--compression',
        c,
        '--mode',
        'layerwise',
        '-o',
        out,
        '--report',
        at(`one-${c}.json`),
      );
      expect(one.code, one.err).toBe(0);
      expectSameWeights(at(`many-${c}.onnx`), at(`one-${c}.onnx`), 1e-6);
    }
    const r = json(at('many.json'));
    expect(r.model).toBe(LENET);
    expect(r.shared).toMatch(/one capture/);
    expect(r.sizes.map((s: { output: string }) => s.output)).toEqual([at('many-2.onnx'), at('many-4.onnx')]);
    expect(r.sizes.map((s: { budget: unknown }) => s.budget)).toEqual([
      { compression: 2, target: 'params' },
      { compression: 4, target: 'params' },
    ]);
    for (const [i, c] of ['2', '4'].entries()) {
      const size = r.sizes[i],
        one = json(at(`one-${c}.json`));
      expect(kept(size)).toEqual(kept(one));
      expect(size.params).toEqual(one.params);
      expect(size.flops).toEqual(one.flops);
      size.groups.forEach((g: { objective: number }, j: number) =>
        expect(g.objective).toBeCloseTo(one.groups[j].objective, 9),
      );
      expect(size.fidelity.relError).toBeCloseTo(one.fidelity.relError, 5);
    }
    // the first size pays for the capture and the ranking (the global allocation's, the default for --compression);
    // the second only for its re-fit, rewrite and verification
    expect(r.sizes[0].seconds.allocate).toBeGreaterThan(0);
    expect(r.sizes[1].seconds.capture).toBe(0);
    expect(r.sizes[1].seconds.allocate).toBe(0);
    expect(r.sizes[1].seconds.analyze).toBe(0);
    expect(many.out).toMatch(/wrote .*many-2\.onnx, .*many-4\.onnx, .*many\.json/);
  });

  it('--keep-ratio 0.5,0.25 -o k-{r}.onnx keeps those fractions of every group', async () => {
    const res = await runCli(
      'prune', LENET, '--calib', CALIB, '--keep-ratio', '0.5,0.25', '-o', at('k-{r}.onnx'), '--report', at('k.json'),
    ); // prettier-ignore
    expect(res.code, res.err).toBe(0);
    const r = json(at('k.json'));
    for (const [i, f] of [0.5, 0.25].entries()) {
      expect(existsSync(at(`k-${f}.onnx`))).toBe(true);
      for (const g of r.sizes[i].groups) expect(g.kept).toBe(Math.max(1, Math.round(f * g.channels)));
    }
  });

  it('sequential mode runs once per size and says so; each size is the single-size run', async () => {
    const res = await runCli(
      'prune', LENET, '--calib', CALIB, '--mode', 'sequential', '--compression', '2,4', '-o', at('seq-{c}.onnx'),
      '--report', at('seq.json'),
    ); // prettier-ignore
    expect(res.code, res.err).toBe(0);
    const r = json(at('seq.json'));
    expect(r.shared).toMatch(/one run per size/);
    expect(r.sizes[1].seconds.capture).toBeGreaterThan(0);
    const one = await runCli(
      'prune', LENET, '--calib', CALIB, '--mode', 'sequential', '--compression', '4', '-o', at('seq-one-4.onnx'),
    ); // prettier-ignore
    expect(one.code, one.err).toBe(0);
    expectSameWeights(at('seq-4.onnx'), at('seq-one-4.onnx'), 1e-6);
  });

  it('refuses a list without a placeholder, a placeholder of the other flag, and two sizes for one file', async () => {
    const before = readdirSync(dir).length;
    const run = (...a: string[]) => runCli('prune', LENET, '--calib', CALIB, ...a);
    expectFailure(await run('--compression', '2,4', '-o', at('x.onnx')), 2, /2 sizes need one file each; put \{c\}/);
    expectFailure(await run('--compression', '2,4', '-o', at('x-{r}.onnx')), 2, /\{r\} stands for a --keep-ratio/);
    expectFailure(await run('--keep-ratio', '0.5,0.25', '-o', at('x.onnx')), 2, /put \{r\} in the name/);
    expectFailure(await run('--compression', '2,2.0', '-o', at('x-{c}.onnx')), 2, /sizes 2 and 2 would both write/);
    expectFailure(
      await run('--compression', '2,x', '-o', at('x-{c}.onnx')),
      2,
      /--compression x: expected a ratio ≥ 1/,
    );
    expect(readdirSync(dir).length).toBe(before); // checked before any work: nothing written
  });
});
