import { describe, it, expect, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readModel } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { openNpy, writeNpy } from '../src/npy.js';
import { describeFixtures } from './fixture-suite.js';
import { randn, rng } from './graph-helpers.js';

// Models trained on Fashion-MNIST whose outputs are not one class per sample (test/fixtures/make-task11.py): a CTC
// recognizer of item lines ([N, T, 11] log-probabilities), a detector's box probability map ([N, 1, H, W], Sigmoid)
// and an 11-class pixel map ([N, 11, H, W]). Oracles: onnxruntime running the original with the dropped channels'
// consumer inputs zeroed (test/fixture-suite.ts). Their task metrics are task11-eval.mjs's (on make-task11.py's test
// sets, not committed).

const dir = mkdtempSync(join(tmpdir(), 'subprune-task11-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** 8 random inputs of `dims` (the trained models see [0, 1] images; values in [0, 1] keep them in range). */
function inputs(name: string, dims: number[]) {
  const path = join(dir, `${name}.npy`),
    r = rng(dims.length * 7),
    x = randn(8 * dims.reduce((a, b) => a * b, 1), r).map((v) => Math.min(1, Math.abs(v) / 2));
  writeNpy(path, x, [8, ...dims]);
  return () => openNpy(path);
}

const crnn = inputs('lines', [1, 32, 192]),
  image = inputs('images', [1, 64, 64]);

// per group [channels, producers, g of its consumers]
const DB = [
  [8, 1, 9, 1], // e1: read by e2 and, through the upsampled Concat skip, by d1
  [32, 2, 9], // e2 and the ConvTranspose, joined by the skip's Add: read by e3 and d2
  [48, 2, 9, 1], // e3 and the residual block's second conv: read by its first conv and the ConvTranspose
  [48, 1, 9], // the residual block's first conv
  [32, 1, 1], // d2, through the upsample and Concat into d1 (1×1)
  [16, 1, 1], // d1, read by the map's head
];
describeFixtures([
  {
    model: 'test/fixtures/task11-crnn.onnx',
    data: crnn,
    groups: [
      [16, 1, 9], // the stem
      [32, 2, 9, 1], // the residual stream: its first conv and the block's last; read by the block and the 1×1
      [32, 1, 9], // the residual block's inner conv
      [64, 1, 3], // the 1×1 conv, through the mean over height into the head's Conv1d (k = 3)
      [64, 1, 1], // the head's hidden Conv1d
    ],
  },
  { model: 'test/fixtures/task11-det.onnx', data: image, groups: DB },
  { model: 'test/fixtures/task11-seg.onnx', data: image, groups: DB },
]);

describe('how their outputs compare', () => {
  it.each([
    ['crnn', 2], // the CTC frames' classes
    ['det', undefined], // a Sigmoid's probability map of one channel
    ['seg', 1], // per-pixel classes
  ])('task11-%s', (name, axis) => {
    expect(analyze(readModel(`test/fixtures/task11-${name}.onnx`)).outputs.map((o) => o.classAxis)).toEqual([axis]);
  });
});
