import { describe, it, expect } from 'vitest';
import { readModel } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { openNpy } from '../src/npy.js';
import { OutputComparison, type Fidelity } from '../src/eval/index.js';
import { fidelityNotes } from '../src/eval/notes.js';
import { rng } from './graph-helpers.js';
import { describeFixtures, analyzeFixture } from './fixture-suite.js';

// Round cnn18: Res2Net, SKNet / ResNeSt, ConvNeXt V2, RegNetY, MobileNetV4, PP-LCNet / PP-HGNet and EfficientViT at
// their real sizes, written in plain torch (test/fixtures/make-more-cnn18.py keeps what they showed small). Oracle:
// onnxruntime running the original with the dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const open = () => openNpy(`${FIX}/cnn-images.calib.npy`);

const SK_GROUPS = [
  [16, 2, 1],
  [4, 2, 4],
  [8, 1, 1],
];

describeFixtures([
  {
    // the residual stream (stem, conv3: read by conv1 and fc); conv1's channels in blocks of 4 (the branches' conv
    // groups) with the fcs rows of both branches, read by fc (4 columns each) and conv3; fc's channels
    model: `${FIX}/cnn18-sk.onnx`,
    data: open,
    groups: SK_GROUPS,
  },
  // the same at opset 11: the softmax between two Transposes
  { model: `${FIX}/cnn18-sk-op11.onnx`, data: open, groups: SK_GROUPS },
]);

describe("SKNet's softmax over its branches ([B, branches, C, 1, 1], softmax over axis 1)", () => {
  // read as [channels = branches, C entries each] the softmax coupled them: conv1 and fcs of every SK unit were
  // refused, 10 % of the full SKNet-50's FLOPs and parameters
  it('normalises each channel over its branches: conv1, the branches and fcs are one group', () => {
    const { groups, refused } = analyzeFixture(readModel(`${FIX}/cnn18-sk.onnx`), open);
    const sk = groups.find((g) => g.id === '/unit/conv1/conv1.0/Conv')!;
    expect(sk.producers.map((n) => n.name)).toEqual(['/unit/conv1/conv1.0/Conv', '/unit/fcs/Conv']);
    expect(sk.consumers.map((c) => c.node.name)).toEqual(['/unit/fc/fc.0/Conv', '/unit/conv3/conv3.0/Conv']);
    // channel i owns fcs rows i and 16 + i (one per branch), as blocks of 4: the branches' conv groups
    expect(sk.slices.filter((s) => s.tensor === 'unit.fcs.weight')).toEqual([
      { tensor: 'unit.fcs.weight', axis: 0, offset: 0, per: 4 },
      { tensor: 'unit.fcs.weight', axis: 0, offset: 16, per: 4 },
    ]);
    expect(refused.map((r) => r.node)).toEqual(['/fc/Gemm']);
  });

  it('also before opset 13: the softmax over the last axis, between Transposes that move the branches there', () => {
    // before: refused as at opset 17, and once the reshape packed them, the Transpose ("moves packed parts of channels
    // after the channels")
    const { groups, refused } = analyzeFixture(readModel(`${FIX}/cnn18-sk-op11.onnx`), open);
    const sk = groups.find((g) => g.id === '/unit/conv1/conv1.0/Conv')!;
    expect(sk.chain.map((n) => n.opType)).toEqual(expect.arrayContaining(['Transpose', 'Softmax']));
    expect(sk.producers.map((n) => n.name)).toEqual(['/unit/conv1/conv1.0/Conv', '/unit/fcs/Conv']);
    expect(refused.map((r) => r.node)).toEqual(['/fc/Gemm']);
  });
});

describe("ConvNeXt V2's GRN (each channel's norm divided by the mean of the channels' norms)", () => {
  it('couples every hidden channel: refused, naming it', () => {
    // removing a channel changes the mean every other channel is divided by: no prune of them is exact
    const { refused } = analyze(readModel(`${FIX}/cnn18-grn.onnx`));
    expect(refused.find((r) => r.node === '/pwconv1/MatMul')?.reason).toBe(
      'ReduceMean "/grn/ReduceMean" reduces over the channel axis (LayerNorm\'s mean, CBAM\'s channel max and mean, ' +
        "GRN's mean of the channels' norms), which couples channels",
    );
  });
});

describe('class scores whose top-1 is one class for every input (random weights)', () => {
  // the real-size SKNet-50 of random weights pruned 2×: "relative output error 0.0026 (the original's top-1 is class
  // 923 at every position, so the agreement says little: read the error)"; its scores were off by 0.92 of how much
  // they vary across the 16 held-out inputs (MobileNetV4-Conv-S: 0.00001 and 0.65)
  const r = rng(18),
    rows = 8,
    classes = 5;
  // each class a constant far from 0 plus a little of the input; the model keeps the constants, not the rest
  const ref = Float32Array.from({ length: rows * classes }, (_, i) => 10 * (i % classes === 2 ? 2 : 1) + 0.1 * r());
  const y = Float32Array.from(ref, (v, i) => v + 0.1 * (r() - 0.5) * (i % 2 ? 1 : -1));
  const compare = () => {
    const cmp = new OutputComparison([{ name: 'logits', classAxis: 1 }]),
      act = (data: Float32Array) => new Map([['logits', { data, dims: [rows / 2, classes] }]]);
    // two batches of rows, as evaluate() adds them
    for (const h of [0, 1]) {
      const part = (a: Float32Array) => a.slice((h * rows * classes) / 2, ((h + 1) * rows * classes) / 2);
      cmp.add(act(part(y)), act(part(ref)));
    }
    return cmp.outputs()[0]!;
  };

  it('get the error against the spread of each score across the inputs', () => {
    // float64 sums written out here: each class's mean over the rows, the error and the spread about it
    const mean = [...Array(classes).keys()].map(
      (c) => [...Array(rows).keys()].reduce((a, i) => a + ref[i * classes + c]!, 0) / rows,
    );
    let err = 0,
      norm = 0,
      spread = 0;
    ref.forEach((v, i) => ((err += (y[i]! - v) ** 2), (norm += v * v), (spread += (v - mean[i % classes]!) ** 2)));
    const out = compare();
    expect(out.oneClass).toBe(2);
    expect(out.relError).toBeCloseTo(Math.sqrt(err / norm), 12);
    expect(out.acrossInputsRelError).toBeCloseTo(Math.sqrt(err / spread), 9);
    expect(out.acrossInputsRelError! / out.relError).toBeGreaterThan(50);
  });

  it('which the summary gives instead of "read the error"', () => {
    const out = compare(),
      f: Fidelity = { samples: rows, outputDims: [rows, classes], ...out, outputs: [out] };
    expect(fidelityNotes(f)).toEqual([
      "the original's top-1 is class 2 at every position, so the agreement says little: the error is " +
        `${out.acrossInputsRelError!.toFixed(4)} of how much its scores differ between inputs`,
    ]);
  });
});
