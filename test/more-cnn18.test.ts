import { describe, it, expect } from 'vitest';
import { readModel } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { openNpy } from '../src/npy.js';
import { describeFixtures, analyzeFixture } from './fixture-suite.js';

// Round cnn18: Res2Net, SKNet / ResNeSt, ConvNeXt V2, RegNetY, MobileNetV4, PP-LCNet / PP-HGNet and EfficientViT at
// their real sizes, written in plain torch (test/fixtures/make-more-cnn18.py keeps what they showed small). Oracle:
// onnxruntime running the original with the dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const open = () => openNpy(`${FIX}/cnn-images.calib.npy`);

describeFixtures([
  {
    // the residual stream (stem, conv3: read by conv1 and fc); conv1's channels in blocks of 4 (the branches' conv
    // groups) with the fcs rows of both branches, read by fc (4 columns each) and conv3; fc's channels
    model: `${FIX}/cnn18-sk.onnx`,
    data: open,
    groups: [
      [16, 2, 1],
      [4, 2, 4],
      [8, 1, 1],
    ],
  },
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
