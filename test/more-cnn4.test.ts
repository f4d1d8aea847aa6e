import { describe, it, expect } from 'vitest';
import { attrInt, readModel, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { inferShapes } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { analyzeFixture, describeFixtures, weightRows } from './fixture-suite.js';

// CNN architectures users export (test/fixtures/make-more-cnn4.py, torch's default export settings, random weights):
// torchvision's EfficientNet, ConvNeXt, DenseNet and ResNeXt, RepVGG's training-form blocks, a U-Net, an HRNet-style
// fusion, ConvNeXt-V2's GRN and PoolFormer. Oracle: onnxruntime running the original with the dropped channels'
// consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const CALIB = `${FIX}/cnn-images.calib.npy`;

const CASES: { model: string; groups: number[][] }[] = [
  // MBConv: the expansion and the depthwise conv one group with the SE gate's scale conv (x · sigmoid(se)), the SE's
  // squeeze conv, the projection (a residual stream where the block keeps its width); stage 1 has no expansion
  {
    model: 'cnn4-efficientnet',
    groups: [
      [8, 3, 1],
      [2, 1, 1],
      [48, 2, 1],
      [2, 1, 1],
      [8, 1, 1],
      [48, 2, 1],
      [2, 1, 1],
      [16, 1, 1],
      [96, 2, 1],
      [4, 1, 1],
      [24, 1, 1],
      [144, 2, 1],
      [6, 1, 1],
      [32, 1, 1],
      [128, 1, 1],
    ],
  },
  // the stream is normalised by LayerNorm across its channels (refused); the MLP's hidden neurons, a MatMul of
  // [B, H, W, C] read by another, are groups
  {
    model: 'cnn4-convnext',
    groups: [
      [64, 1, 1],
      [128, 1, 1],
    ],
  },
  // every conv's output is a part of each later Concat, read through its consumer's BatchNorm at its offset
  {
    model: 'cnn4-densenet',
    groups: [
      [16, 1, 1],
      [16, 1, 9],
      [8, 1, 1],
      [16, 1, 9],
      [8, 1, 1],
      [16, 1, 1],
      [16, 1, 9],
      [8, 1, 1],
      [16, 1, 9],
      [8, 1, 1],
      [16, 1, 1],
      [16, 1, 9],
      [8, 1, 1],
      [16, 1, 9],
      [8, 1, 1],
    ],
  },
  // a bottleneck's conv1 in whole groups of its 4-group 3×3 conv (channels of 2, 4, 6, 8 filters), read by conv3
  {
    model: 'cnn4-resnext',
    groups: [
      [16, 1, 1],
      [4, 1, 2],
      [32, 2, 1],
      [4, 1, 4],
      [64, 2, 1],
      [4, 1, 6],
      [96, 2, 1],
      [4, 1, 8],
      [128, 2, 1],
    ],
  },
  // three summed branches (3×3, 1×1, BN of the input) make each stage one stream; the groups=2 block makes stage 2's
  // channels its two conv groups of 16
  {
    model: 'cnn4-repvgg',
    groups: [
      [16, 6, 9, 1],
      [2, 4, 144, 16],
    ],
  },
  // Pytorch-UNet: ConvTranspose consumes the bottleneck's channels and produces a part of the decoder's Concat, after
  // F.pad to the skip's size (pads computed from both sizes at run time; before, refused as not a constant)
  {
    model: 'cnn4-unet',
    groups: [
      [8, 1, 9],
      [8, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [32, 1, 9],
      [32, 1, 1],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 1],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 1],
    ],
  },
  // the same with bilinear upsampling: every decoder conv reads a Concat of a skip and a padded upsampled map
  {
    model: 'cnn4-unet-bilinear',
    groups: [
      [8, 1, 9],
      [8, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 1],
    ],
  },
  // each resolution one group with the conv fused into it (upsampled 1×1 or strided 3×3)
  {
    model: 'cnn4-hrnet',
    groups: [
      [16, 1, 9],
      [16, 2, 9],
      [24, 2, 1, 9],
      [16, 2, 9, 1],
      [24, 2, 1],
      [16, 1, 1],
    ],
  },
  // CenterNet's IDAUp: each depthwise ConvTranspose passes its projection's channels on to the finer level's Add
  {
    model: 'cnn4-centernet-up',
    groups: [
      [16, 2, 9],
      [24, 1, 9],
      [32, 1, 9],
      [16, 2, 9],
      [16, 1, 9],
      [16, 1, 1],
    ],
  },
  // only the stem: LayerNorm couples the stream, GRN's mean over the channels the MLP's hidden neurons
  { model: 'cnn4-grn', groups: [[16, 1, 4]] },
  // GroupNorm(1, C) couples the stream; the MLP's hidden channels are a group
  {
    model: 'cnn4-poolformer',
    groups: [
      [16, 1, 9],
      [64, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => openNpy(CALIB), groups })),
);

const groupsOf = (m: Model) => analyzeFixture(m, () => openNpy(CALIB));

describe("CenterNet's depthwise ConvTranspose (IDAUp's upsampling, group = channels)", () => {
  // before: its output shape had C_out/group channels (1, not 16), so the finer level's Add took it for a broadcast
  // along the channels and pruned that level alone: the default prune stopped with 'onnxruntime cannot run a part of
  // the model ... Attempting to broadcast an axis by a dimension other than 1. 14 by 16'
  const up = '/ida/up_1/ConvTranspose';

  it('has C_out = (weight axis 1) · group output channels', () => {
    const m = readModel(`${FIX}/cnn4-centernet-up.onnx`);
    expect(inferShapes(m).get(`${up}_output_0`)).toEqual([1, 16, 16, 16]);
  });

  it('passes each channel through its own filter: the kept filters stay, group counts them', () => {
    const m = readModel(`${FIX}/cnn4-centernet-up.onnx`),
      g = groupsOf(m).groups.find((x) => x.id === '/c1/c1.0/Conv')!;
    expect(g.producers.map((p) => p.name)).toEqual(['/c1/c1.0/Conv', '/ida/proj_1/proj_1.0/Conv']);
    const pruned = pruneGroups(m, [{ group: g, keep: [1, 4, 9] }]);
    expect(weightRows(pruned, up)).toEqual([1, 4, 9].map((o) => weightRows(m, up)[o]));
    expect(
      attrInt(
        pruned.graph!.node.find((n) => n.name === up)!,
        'group',
      ),
    ).toBe(3);
  });
});

describe('refusals name what couples the channels', () => {
  it.each([
    ['cnn4-convnext', '/features/features.0/features.0.0/Conv', /LayerNormalization .* normalises across the channels/],
    // before: 'ReduceL2 "/block/grn/ReduceL2" is not known to act per channel': the L2 norm over H, W is per channel,
    // GRN's mean of it over the channels is what couples them
    ['cnn4-grn', '/block/pwconv1/MatMul', /ReduceMean "\/block\/grn\/ReduceMean" reduces over the channel axis/],
    ['cnn4-poolformer', '/embed/Conv', /InstanceNormalization .* \(GroupNorm with one group\)/],
    // the MLP's output is added to the stream, whose channels the LayerNorm (GroupNorm(1, C)) refused: the reason
    // names it (before: "which no group owns (e.g. a branch subprune cannot prune)")
    [
      'cnn4-convnext',
      '/features/features.1/features.1.0/block/block.5/MatMul',
      /which no group owns \(its channels are refused: LayerNormalization .* normalises across the channels/,
    ],
    ['cnn4-poolformer', '/block/mlp/mlp.2/Conv', /which no group owns \(its channels are refused: InstanceNorm/],
    // a depthwise conv passes the channels it reads: those of the normalised stream
    [
      'cnn4-convnext',
      '/features/features.1/features.1.0/block/block.0/Conv',
      /^Conv .* passes on the channels it reads, which are refused: LayerNormalization .* normalises across/,
    ],
  ])('%s: %s', (name, node, why) => {
    const { refused } = groupsOf(readModel(`${FIX}/${name}.onnx`));
    expect(refused.find((r) => r.node === node)?.reason).toMatch(why);
  });
});
