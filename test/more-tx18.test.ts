import { afterAll, describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { OutputComparison } from '../src/eval/index.js';
import { fidelityNotes } from '../src/eval/notes.js';
import { encodeNpy } from '../src/npy.js';
import { rng } from './graph-helpers.js';
import { runCli } from './cli-helpers.js';

// Round tx18: PVT-v2, a sentence-transformers MiniLM, LayoutLM, an ABINet-style recognizer, CrossViT, PointNet and
// FastSpeech2 at their real sizes, written in plain torch with random weights.

const FIX = 'test/fixtures';
const DIR = mkdtempSync(join(tmpdir(), 'subprune-tx18-')),
  OUT = join(DIR, 'pruned.onnx');
afterAll(() => rmSync(DIR, { recursive: true, force: true }));

/** ‖y − ref‖ / ‖ref − r̄‖ in float64, r̄ each entry's mean over the rows (axis 0): the oracle. */
function acrossInputs(ref: ArrayLike<number>, y: ArrayLike<number>, rows: number): number {
  const per = ref.length / rows,
    mean = new Float64Array(per);
  for (let i = 0; i < ref.length; i++) mean[i % per]! += ref[i]! / rows;
  let err = 0,
    spread = 0;
  for (let i = 0; i < ref.length; i++) {
    err += (y[i]! - ref[i]!) ** 2;
    spread += (ref[i]! - mean[i % per]!) ** 2;
  }
  return Math.sqrt(err / spread);
}

describe('class scores that barely follow the input (one top-1 class everywhere)', () => {
  // the real-size ABINet-style recognizer and PointNet of random weights pruned 2×: "top-1 agreement 100.00 %,
  // relative output error 0.0001 (the original's top-1 is class 5 at every position, so the agreement says little:
  // read the error)"; the pruned scores were 0.55 (PointNet 0.12) of how much the original's differ between inputs
  it('get the error against how much the scores differ between inputs, over every batch', () => {
    // [rows, positions, classes]: one large constant score per position plus a small spread, in two batches
    const r = rng(18),
      rows = 6,
      dims = [3, 2, 4],
      base = [0, 9, 1, 2, 3, 7, 1, 0];
    const ref = Float32Array.from({ length: rows * 8 }, (_, i) => base[i % 8]! + 0.01 * (r() - 0.5)),
      y = Float32Array.from(ref, (v) => v + 0.003 * (r() - 0.5));
    const cmp = new OutputComparison([{ name: 'logits', classAxis: 2 }]);
    for (const b of [0, 1]) {
      const part = (a: Float32Array) => new Map([['logits', { data: a.slice(b * 24, b * 24 + 24), dims }]]);
      cmp.add(part(y), part(ref));
    }
    const [out] = cmp.outputs();
    expect(out!.oneClass).toBe(1);
    expect(out!.acrossInputsRelError).toBeCloseTo(acrossInputs(ref, y, rows), 9);
    expect(out!.acrossInputsRelError! / out!.relError).toBeGreaterThan(100);
  });

  it('and so do other outputs: an embedding that barely follows the input', () => {
    // the real-size MiniLM sentence embedding (mean-pooled, L2-normalised) of random weights pruned 2× by FLOPs:
    // "relative output error 0.0535", and 0.49 of how much the embeddings differ between inputs
    const r = rng(181),
      rows = 8,
      base = Array.from({ length: 6 }, () => r() - 0.5);
    const ref = Float32Array.from({ length: rows * 6 }, (_, i) => base[i % 6]! + 0.01 * (r() - 0.5)),
      y = Float32Array.from(ref, (v) => v + 0.004 * (r() - 0.5));
    const cmp = new OutputComparison([{ name: 'embedding' }]);
    cmp.add(
      new Map([['embedding', { data: y, dims: [rows, 6] }]]),
      new Map([['embedding', { data: ref, dims: [rows, 6] }]]),
    );
    const [out] = cmp.outputs(),
      want = acrossInputs(ref, y, rows);
    expect(out!.acrossInputsRelError).toBeCloseTo(want, 9);
    // its values spread about their mean as much as they are far from 0: that figure does not flatter here
    expect(out!.centeredRelError! / out!.relError).toBeLessThan(2);
    const notes = fidelityNotes({ samples: rows, outputDims: [rows, 6], relError: out!.relError, outputs: [out!] });
    expect(notes).toContain(`${want.toFixed(4)} of how much its values differ between inputs`);
  });

  it('absent when every row is the same', () => {
    const ref = Float32Array.from({ length: 12 }, (_, i) => [0, 5, 1][i % 3]!);
    const cmp = new OutputComparison([{ name: 'logits', classAxis: 1 }]);
    cmp.add(
      new Map([['logits', { data: ref.map((v) => v + 0.1), dims: [4, 3] }]]),
      new Map([['logits', { data: ref, dims: [4, 3] }]]),
    );
    expect(cmp.outputs()[0]).not.toHaveProperty('acrossInputsRelError');
  });

  it('which the prune summary and eval give instead of "read the error"', async () => {
    // tr17-decay's y [B, 5, 6] are scores per position: inputs alike up to a small spread pick one class everywhere
    const r = rng(180),
      x = Float32Array.from({ length: 16 * 5 * 8 }, () => 0.5 + 0.02 * (r() - 0.5)),
      path = join(DIR, 'alike.npy');
    writeFileSync(path, encodeNpy(x, [16, 5, 8]));
    const p = await runCli('prune', `${FIX}/tr17-decay.onnx`, '--calib', path, '--keep-ratio', '0.5', '-o', OUT);
    expect(p.code).toBe(0);
    const note = p.out.match(
      new RegExp(
        "the original's top-1 is class \\d at every position, so the agreement says little: " +
          'the error is ([\\d.]+) of how much its scores differ between inputs',
      ),
    );
    expect(note).not.toBeNull();
    // the oracle: onnxruntime running both files on the 16 rows the fidelity measures
    const run = async (file: string) => {
      const s = await ort.InferenceSession.create(file);
      const y = await s.run({ [s.inputNames[0]!]: new ort.Tensor('float32', x, [16, 5, 8]) });
      await s.release();
      return y[s.outputNames[0]!]!.data as Float32Array;
    };
    const want = acrossInputs(await run(`${FIX}/tr17-decay.onnx`), await run(OUT), 16);
    expect(Number(note![1])).toBeCloseTo(want, 3);
    const e = await runCli('eval', OUT, '--data', path, '--reference', `${FIX}/tr17-decay.onnx`);
    expect(e.code).toBe(0);
    expect(e.out).toContain(`(${want.toFixed(5)} of how much it differs between inputs)`);
  });
});
