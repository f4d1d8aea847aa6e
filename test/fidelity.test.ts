import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { readModel, serializeModel, type Model } from '../src/onnx/index.js';
import { openNpy, writeNpy, type NpyFile } from '../src/npy.js';
import { prune, pruneSizes } from '../src/prune/index.js';
import { Runner } from '../src/capture/index.js';
import { fidelitySampleRows } from '../src/prune/verify.js';
import { expectFailure, runCli } from './cli-helpers.js';

// The report's fidelity is measured on a bounded, evenly spaced sample of the calibration rows (default 512). The
// oracle: onnxruntime-node run directly on exactly those rows, agreement and relative error summed in float64.

const lenet = readModel('models/lenet.onnx');
let dir: string, big: string, calib: NpyFile;
const ROWS = 1300; // more than the default bound, not a multiple of it

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'subprune-fidelity-'));
  // the bundled 512 images, then scaled and shifted copies: 1300 distinct rows
  const base = openNpy('models/calib.npy'),
    x = base.readF32(),
    per = base.rowSize;
  const data = new Float32Array(ROWS * per);
  for (let r = 0; r < ROWS; r++) {
    const src = x.subarray((r % base.rows) * per, ((r % base.rows) + 1) * per),
      copy = Math.floor(r / base.rows);
    for (let j = 0; j < per; j++) data[r * per + j] = src[j]! * (1 - 0.15 * copy) + 0.05 * copy;
  }
  big = join(dir, 'calib-1300.npy');
  writeNpy(big, data, [ROWS, ...base.shape.slice(1)]);
  base.close();
  calib = openNpy(big);
});
afterAll(() => {
  calib.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Agreement and relative output error of `model` against `reference` on the given rows of `from`. */
async function oracle(model: Model, reference: Model, rows: number[], from: NpyFile = calib, labels?: number[]) {
  const per = from.rowSize,
    x = new Float32Array(rows.length * per);
  rows.forEach((r, i) => x.set(from.readF32(r, r + 1), i * per));
  const run = async (m: Model) => {
    const s = await ort.InferenceSession.create(serializeModel(m), { logSeverityLevel: 3 });
    try {
      const feed = new ort.Tensor('float32', x, [rows.length, ...from.shape.slice(1)]);
      return (await s.run({ [s.inputNames[0]!]: feed }))[s.outputNames[0]!]!.data as Float32Array;
    } finally {
      await s.release();
    }
  };
  const [y, ref] = [await run(model), await run(reference)];
  const c = y.length / rows.length;
  let agree = 0,
    correct = 0,
    err = 0,
    norm = 0;
  for (let i = 0; i < rows.length; i++) {
    const top = (v: Float32Array) => {
      let b = 0;
      for (let j = 1; j < c; j++) if (v[i * c + j]! > v[i * c + b]!) b = j;
      return b;
    };
    if (top(y) === top(ref)) agree++;
    if (labels && top(y) === labels[rows[i]!]) correct++;
  }
  for (let i = 0; i < y.length; i++) {
    err += (y[i]! - ref[i]!) ** 2;
    norm += ref[i]! ** 2;
  }
  return { agreement: agree / rows.length, relError: Math.sqrt(err / norm), accuracy: correct / rows.length };
}

describe('fidelity sample', () => {
  it('takes n evenly spaced rows, the first included; all rows when n ≥ the total', () => {
    expect(fidelitySampleRows(10, 4)).toEqual([0, 2, 5, 7]);
    expect(fidelitySampleRows(5, 512)).toEqual([0, 1, 2, 3, 4]);
    const rows = fidelitySampleRows(ROWS, 512);
    expect(rows.length).toBe(512);
    expect(new Set(rows).size).toBe(512);
    expect(rows[511]).toBeGreaterThan(ROWS - 4); // the sample reaches the end of the set
  });

  it('by default measures 512 of 1300 rows, as onnxruntime does on those rows', async () => {
    const { model, report } = await prune(lenet, calib, { budget: { compression: 4 }, threads: 1 });
    expect(report.calibration.samples).toBe(ROWS);
    expect(report.fidelity.samples).toBe(512);
    const want = await oracle(model, lenet, fidelitySampleRows(ROWS, 512));
    expect(want.agreement).toBeLessThan(1); // pruned 4×: the check below can tell a wrong sample
    expect(report.fidelity.agreement).toBe(want.agreement);
    expect(report.fidelity.relError).toBeCloseTo(want.relError, 6);
    // another sample gives another number: the rows matter
    const first = await oracle(model, lenet, [...Array(512).keys()]);
    expect(first.relError).not.toBeCloseTo(want.relError, 6);
  });

  it('several sizes: each measured as onnxruntime measures it, the original opened once for all', async () => {
    const open = vi.spyOn(Runner, 'open');
    const sized = [];
    for await (const s of pruneSizes(lenet, calib, [{ compression: 2 }, { compression: 4 }], { mode: 'layerwise' }))
      sized.push(s);
    // whole-model sessions (captures open parts): the original's once; each pruned model's twice, checked as ONNX
    // defines it (no optimizations) and measured as onnxruntime runs it
    const whole = open.mock.calls.filter(([, extra, , only]) => !only && !extra?.length);
    open.mockRestore();
    expect(whole.filter(([m]) => m === lenet).length).toBe(1);
    const pruned = whole.filter(([m]) => m !== lenet);
    expect(pruned.map(([, , o]) => o?.optimize !== false)).toEqual([false, true, false, true]);
    for (const s of sized) {
      // the second size is measured against the original's outputs kept from the first
      const want = await oracle(s.model!, lenet, fidelitySampleRows(ROWS, 512));
      expect(s.report!.fidelity.agreement).toBe(want.agreement);
      expect(s.report!.fidelity.relError).toBeCloseTo(want.relError, 6);
    }
  });

  it('a sample of every calibration row: the capture of the original hands its outputs over, any mode', async () => {
    const all = openNpy('models/calib.npy'),
      rows = [...Array(all.rows).keys()];
    try {
      const cases = [
        { mode: 'layerwise' as const },
        { mode: 'sequential' as const },
        { mode: 'asymmetric' as const, allocation: 'uniform' as const },
        {},
        // the first group's capture runs its part of the original alone: verification runs the original itself
        { mode: 'sequential' as const, allocation: 'uniform' as const, sessions: 1 },
      ];
      for (const { sessions = 0, ...opts } of cases) {
        const open = vi.spyOn(Runner, 'open');
        const { model, report } = await prune(lenet, all, { ...opts, budget: { compression: 4 }, threads: 1 });
        // no session of the whole original: verification compares with the outputs its first capture computed
        const whole = open.mock.calls.filter(([m, , , only]) => m === lenet && !only);
        open.mockRestore();
        expect(whole.length).toBe(sessions);
        expect(report.fidelity.samples).toBe(all.rows);
        const want = await oracle(model, lenet, rows, all);
        expect(want.agreement).toBeLessThan(1);
        expect(report.fidelity.agreement).toBe(want.agreement);
        expect(report.fidelity.relError).toBeCloseTo(want.relError, 6);
      }
    } finally {
      all.close();
    }
  });

  it("a sequence's scores ([batch, tokens, vocabulary]): agreement per token, as onnxruntime gives them", async () => {
    const gpt2 = readModel('test/fixtures/more-gpt2.onnx'),
      ids = openNpy('test/fixtures/more-gpt2.calib.npy');
    const { model, report } = await prune(gpt2, ids, { budget: { keepRatio: 0.5 }, refit: false });
    const logits = async (m: Model) => {
      const session = await ort.InferenceSession.create(serializeModel(m));
      const x = new ort.Tensor('int64', BigInt64Array.from(ids.readF32(), BigInt), ids.shape);
      const y = (await session.run({ input_ids: x }))[session.outputNames[0]!]!;
      await session.release();
      return { data: y.data as Float32Array, dims: y.dims };
    };
    const [a, b] = [await logits(model), await logits(gpt2)];
    ids.close();
    const V = a.dims[a.dims.length - 1]!,
      rows = a.data.length / V;
    expect(a.dims.length).toBe(3);
    const top = (v: Float32Array, r: number) => {
      let best = 0;
      for (let j = 1; j < V; j++) if (v[r * V + j]! > v[r * V + best]!) best = j;
      return best;
    };
    let agree = 0;
    for (let r = 0; r < rows; r++) if (top(a.data, r) === top(b.data, r)) agree++;
    expect(report.fidelity.agreement).toBe(agree / rows);
  });

  it('on held-out --verify inputs (library, CLI): agreement, error, accuracy as onnxruntime gives them', async () => {
    const test = openNpy('models/test.npy'),
      labelFile = openNpy('models/test-labels.npy'),
      labels = Array.from(labelFile.readF32());
    labelFile.close();
    try {
      const verify = { data: test, labels };
      const { model, report } = await prune(lenet, calib, { budget: { compression: 8 }, threads: 1, verify });
      expect(report.verification).toEqual({ inputs: 'verify', rows: test.rows });
      expect(report.fidelity.samples).toBe(512);
      const want = await oracle(model, lenet, fidelitySampleRows(test.rows, 512), test, labels);
      expect(want.agreement).toBeLessThan(1);
      expect(report.fidelity.agreement).toBe(want.agreement);
      expect(report.fidelity.accuracy).toBe(want.accuracy);
      expect(report.fidelity.relError).toBeCloseTo(want.relError, 6);
      // the same prune verified on its calibration rows, which the fit has seen: fewer errors there
      const seen = await oracle(model, lenet, fidelitySampleRows(ROWS, 512));
      expect(seen.relError).toBeLessThan(want.relError);
      await expect(
        prune(lenet, calib, { budget: { compression: 8 }, verify: { data: test, labels: labels.slice(1) } }),
      ).rejects.toThrow(/1999 labels for 2000 --verify samples/);
    } finally {
      test.close();
    }
    const out = join(dir, 'held-out.onnx');
    const args = ['--calib', big, '--compression', '8', '--verify', 'models/test.npy', '-o', out];
    const r = await runCli('prune', 'models/lenet.onnx', ...args, '--verify-labels', 'models/test-labels.npy');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/on 512 of the 2000 --verify inputs: top-1 accuracy \d+\.\d\d%, top-1 agreement/);
  });

  it('measures on n rows or on all of them (library and CLI), and refuses other sizes', async () => {
    const { model, report } = await prune(lenet, calib, { budget: { keepRatio: 0.5 }, fidelityRows: 100 });
    expect(report.fidelity.samples).toBe(100);
    const want = await oracle(model, lenet, fidelitySampleRows(ROWS, 100));
    expect(report.fidelity.agreement).toBe(want.agreement);
    expect(report.fidelity.relError).toBeCloseTo(want.relError, 6);
    await expect(prune(lenet, calib, { budget: { keepRatio: 0.5 }, fidelityRows: 0 })).rejects.toThrow(
      /fidelity rows 0: use a whole number ≥ 1/,
    );

    const out = join(dir, 'all.onnx'),
      rep = join(dir, 'all.json');
    const r = await runCli('prune', 'models/lenet.onnx', '--calib', big, '--keep-ratio', '0.5', '-o', out);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/on 512 of the 1300 calibration inputs/);
    const all = await runCli(
      'prune',
      'models/lenet.onnx',
      '--calib',
      big,
      '--keep-ratio',
      '0.5',
      '--fidelity-rows',
      'all',
      '-o',
      out,
      '--report',
      rep,
    );
    expect(all.code).toBe(0);
    expect(all.out).toMatch(/on 1300 of the 1300 calibration inputs/);
    const json = JSON.parse(readFileSync(rep, 'utf8'));
    expect(json.fidelity.samples).toBe(ROWS);
    const oracleAll = await oracle(readModel(out), lenet, [...Array(ROWS).keys()]);
    expect(json.fidelity.relError).toBeCloseTo(oracleAll.relError, 6);
    for (const bad of ['0', '-3', '2.5', 'some'])
      expectFailure(
        await runCli('prune', 'models/lenet.onnx', '--calib', big, `--fidelity-rows=${bad}`, '-o', out),
        2,
        /--fidelity-rows .*: expected a whole number ≥ 1 or all/,
      );
  });
});
