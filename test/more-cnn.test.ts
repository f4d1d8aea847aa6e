import { describe, it, expect } from 'vitest';
import { readModel, tensorToFloat32, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { constantTensors } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { zeroDroppedInputs } from './graph-helpers.js';
import { analyzeFixture, describeFixtures, fixtureOutputs, weightRows } from './fixture-suite.js';
import { relDiff } from './objective.js';

// CNN blocks of segmentation, detection and OCR models (test/fixtures/make-more-cnn.py, torch's default export
// settings, random weights): torchvision's DeepLabV3 (ASPP, FCNHead) and LRASPP, Inception blocks, YOLOv8's C2f, SPPF
// and decoupled head, YOLOX's Focus stem and head, Res2Net, SKNet, CBAM, ECA, coordinate attention, GroupNorm and
// InstanceNorm, a PaddleOCR detector (PP-LCNet, ResNet-vd, RSE-FPN, DB head), RetinaNet's and FCOS's heads shared
// across FPN levels. Oracle: onnxruntime running the original with the dropped channels' consumer inputs zeroed,
// which is what removing a channel means. The models run with onnxruntime's graph optimizations off (see
// more-fixtures.test.ts).

const FIX = 'test/fixtures';
const CALIB = `${FIX}/cnn-images.calib.npy`;

const CASES: { model: string; groups: number[][] }[] = [
  // torchvision's DeepLabV3: backbone stages, ASPP's five branches (the pooling branch upsampled to x.shape[-2:]),
  // its projection read by the head's 3×3 conv, FCNHead's conv on layer3
  {
    model: 'cnn-deeplab',
    groups: [
      [8, 1, 9],
      [8, 1, 9],
      [12, 1, 9],
      [16, 1, 9],
      [16, 1, 1, 9],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [4, 1, 1],
    ],
  },
  // LRASPP on MobileNetV3-small: the backbone's expansions, SE gates and residual streams; the head's cbr gated by
  // Sigmoid(Conv(GlobalAveragePool(high))): cbr and the scale conv are one group of 2 producers
  {
    model: 'cnn-lraspp',
    groups: [
      [8, 2, 1],
      [8, 1, 1],
      [8, 1, 1],
      [24, 1, 1],
      [8, 2, 1],
      [24, 1, 1],
      [24, 2, 1],
      [8, 1, 1],
      [16, 5, 1],
      [64, 2, 1],
      [16, 1, 1],
      [64, 2, 1],
      [16, 1, 1],
      [32, 2, 1],
      [8, 1, 1],
      [40, 2, 1],
      [16, 1, 1],
      [72, 2, 1],
      [24, 1, 1],
      [16, 3, 1],
      [72, 2, 1],
      [24, 1, 1],
      [72, 2, 1],
      [24, 1, 1],
      [96, 1, 1],
      [16, 2, 1],
    ],
  },
  // GoogLeNet's Inception, InceptionC (1×7 and 7×1 kernels: 7 columns per channel) and an InceptionE-style block
  // (1×3 and 3×1 convs reading one conv); every branch a part of its Concat
  {
    model: 'cnn-inception',
    groups: [
      [16, 1, 1],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
      [4, 1, 9],
      [8, 1, 1],
      [8, 1, 1],
      [192, 1, 1],
      [8, 1, 7],
      [8, 1, 7],
      [192, 1, 1],
      [8, 1, 7],
      [8, 1, 7],
      [8, 1, 7],
      [8, 1, 7],
      [192, 1, 1],
      [192, 1, 1],
      [16, 1, 1],
      [8, 1, 1],
      [8, 1, 3],
      [8, 1, 1],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 3],
      [8, 1, 1],
      [8, 1, 1],
      [8, 1, 1],
    ],
  },
  // YOLOv8: each C2f's cv1 chunked in two (torch's chunk: Slices whose bounds are computed from the channel count),
  // its halves paired channel by channel (8 and 16 channels of 2 filters each), the second half joined with the
  // bottleneck's residual (2 producers); SPPF; the head's towers. Refused: the box convs read by DFL's Conv over a
  // reshaped axis, the output convs
  {
    model: 'cnn-yolov8',
    groups: [
      [8, 1, 9],
      [16, 1, 1],
      [8, 2, 9, 1],
      [8, 1, 9],
      [16, 1, 9, 1],
      [32, 1, 1],
      [16, 2, 9, 1],
      [16, 1, 9],
      [32, 1, 1],
      [16, 1, 1],
      [32, 1, 1],
      [8, 1, 9, 1],
      [8, 1, 9],
      [8, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [16, 1, 9, 1],
      [16, 1, 9],
      [16, 1, 1],
      [32, 1, 9],
      [16, 1, 9],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
    ],
  },
  // YOLOX: Focus (strided Slices of the input, concatenated), CSP layers (bottleneck residuals), the decoupled head
  {
    model: 'cnn-yolox',
    groups: [
      [8, 1, 9],
      [16, 1, 1],
      [8, 2, 9, 1],
      [8, 1, 9],
      [8, 1, 1],
      [16, 1, 9, 1],
      [32, 1, 1],
      [16, 2, 9, 1],
      [16, 1, 9],
      [16, 1, 1],
      [32, 1, 1],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
    ],
  },
  // Res2Net: the residual stream; the 1×1 conv's output split in four (each split its own group: the second and
  // third joined with the previous 3×3 conv's output), the last 3×3 conv
  {
    model: 'cnn-res2net',
    groups: [
      [32, 2, 1],
      [4, 1, 9],
      [4, 2, 9, 1],
      [4, 2, 9, 1],
      [4, 1, 1],
      [4, 1, 1],
    ],
  },
  // SKNet: both branches, stacked, summed and weighted by a softmax over the branches, are one group with the two
  // attention convs (4 producers); the fc
  {
    model: 'cnn-sknet',
    groups: [
      [16, 1, 9],
      [16, 4, 1, 9],
      [8, 1, 1],
      [16, 1, 1],
    ],
  },
  // CBAM: the gated conv is refused (its channel gate's MLP is one Linear on the avg- and max-pooled vectors)
  {
    model: 'cnn-cbam',
    groups: [
      [16, 1, 9],
      [16, 1, 1],
    ],
  },
  // CBAM's spatial gate alone: refused (ReduceMax and ReduceMean over the channel axis)
  {
    model: 'cnn-cbam-spatial',
    groups: [
      [16, 1, 9],
      [16, 1, 1],
    ],
  },
  // ECA: refused (a Conv1d slides over the pooled channels)
  {
    model: 'cnn-eca',
    groups: [
      [8, 1, 9],
      [16, 1, 1],
    ],
  },
  // coordinate attention: the gated conv with conv_h and conv_w (3 producers), the shared 1×1 conv of both directions
  {
    model: 'cnn-coordatt',
    groups: [
      [8, 1, 9],
      [16, 3, 1, 9],
      [8, 1, 1],
      [16, 1, 1],
    ],
  },
  // GroupNorm(4, 16): whole groups of 4 channels (36 columns of a 3×3 conv, 4 rows of the Linear); InstanceNorm
  {
    model: 'cnn-groupnorm',
    groups: [
      [4, 3, 36, 4],
      [4, 1, 36],
      [16, 1, 9],
    ],
  },
  // GroupNorm(4, 16) of a Concat of 8 + 8: each conv two whole groups; refused: GroupNorm(4, 16) of 6 + 10 channels
  // (a group straddles the convs) and GroupNorm(1, 16) (one group: a norm across all channels)
  {
    model: 'cnn-groupnorm-edges',
    groups: [
      [2, 1, 36],
      [2, 1, 36],
    ],
  },
  {
    model: 'cnn-groupnorm-opset13',
    groups: [
      [4, 3, 36, 4],
      [4, 1, 36],
      [16, 1, 9],
    ],
  },
  // PaddleOCR: PP-LCNet's depthwise and SE gates, ResNet-vd's pooled shortcut, RSE-FPN (x + SE(x) in each lateral and
  // smoothing conv; the laterals joined by the upsampling Adds), DB head with its ConvTranspose
  {
    model: 'cnn-ppocr',
    groups: [
      [8, 1, 1],
      [16, 2, 1],
      [4, 1, 1],
      [16, 1, 1, 9],
      [24, 3, 1],
      [24, 1, 9],
      [6, 1, 1],
      [32, 1, 1],
      [16, 6, 1, 9],
      [4, 1, 1],
      [4, 1, 1],
      [4, 1, 1],
      [4, 2, 1, 9],
      [1, 1, 1],
      [4, 2, 1, 9],
      [1, 1, 1],
      [4, 2, 1, 9],
      [1, 1, 1],
      [3, 1, 1],
      [3, 1, 1],
    ],
  },
  // RetinaNet, FCOS: the backbone and the FPN's laterals; refused: the head's towers (one conv per layer applied to
  // every level) and the FPN outputs they read
  {
    model: 'cnn-retinanet',
    groups: [
      [8, 1, 9],
      [12, 1, 9, 1],
      [16, 1, 9, 1],
      [16, 1, 1],
      [16, 3, 9],
    ],
  },
  {
    model: 'cnn-fcos',
    groups: [
      [8, 1, 9],
      [12, 1, 9, 1],
      [16, 1, 9, 1],
      [16, 1, 1],
      [32, 3, 9],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => openNpy(CALIB), groups })),
);

const groupsOf = (m: Model) => analyzeFixture(m, () => openNpy(CALIB));

describe("GroupNorm (torch's Reshape [N, G, -1], InstanceNormalization, Reshape back, Mul, Add)", () => {
  // before: refused ('Reshape to [1, 4, 1024] mixes the channels with other axes'): 46 % of the parameters prunable
  it.each(['cnn-groupnorm', 'cnn-groupnorm-opset13'])('%s: a channel is a whole group of 4 conv filters', (name) => {
    const m = readModel(`${FIX}/${name}.onnx`),
      stem = groupsOf(m).groups.find((g) => g.id === '/stem/stem.0/Conv')!;
    const pruned = pruneGroups(m, [{ group: stem, keep: [1, 3] }]);
    // the stem conv keeps filters 4..8 and 12..16 of the original: GroupNorm's groups 1 and 3, whole
    const before = weightRows(m, '/stem/stem.0/Conv');
    expect(weightRows(pruned, '/stem/stem.0/Conv')).toEqual([4, 5, 6, 7, 12, 13, 14, 15].map((o) => before[o]));
    // every GroupNorm on the stream normalises 2 groups of 4 channels
    const consts = constantTensors(pruned.graph!);
    const norms = pruned.graph!.node.filter((n) => n.opType === 'InstanceNormalization' && n.name.includes('/gn/n2'));
    for (const n of norms) expect(tensorToFloat32(consts.get(n.input[1]!)!).dims).toEqual([2]);
  });
});

describe("YOLOv8's C2f: torch's chunk(2, 1) of cv1's output", () => {
  // before: both halves refused ('computes its bounds from the size of the channel axis, so its parts must keep
  // equally many channels'): C2f's cv1 and the bottlenecks' residuals were not prunable
  it('pairs channel i of each half: cv1 keeps filters i and 8 + i, so the halves keep equally many', () => {
    const m = readModel(`${FIX}/cnn-yolov8.onnx`),
      g = groupsOf(m).groups.find((x) => x.id === '/b2/cv1/conv/Conv')!;
    expect(g.producers.map((p) => p.name)).toEqual(['/b2/cv1/conv/Conv', '/b2/m.0/cv2/conv/Conv']);
    const pruned = pruneGroups(m, [{ group: g, keep: [0, 5, 6] }]);
    const before = weightRows(m, '/b2/cv1/conv/Conv');
    expect(weightRows(pruned, '/b2/cv1/conv/Conv')).toEqual([0, 5, 6, 8, 13, 14].map((o) => before[o]));
  });
});

describe('Res2Net in the default (asymmetric) mode', () => {
  // torch.split of conv1's output into 4 is one Split with 4 outputs: a capture that had cached one of them but
  // needed another fed the cached one as a graph input while running the Split (before, with the global allocation:
  // 'onnxruntime cannot load the model: Duplicate definition of name (/block/Split_output_3)')
  it('prunes: the model is the original with the dropped channels zeroed at the kept channels it reports', async () => {
    const m = readModel(`${FIX}/cnn-res2net.onnx`),
      data = openNpy(CALIB);
    const { model: pruned, report } = await prune(m, data, { budget: { compression: 2 }, refit: false });
    expect(report.params.after).toBeLessThan(report.params.before);
    const plans = groupsOf(m).groups.map((group) => {
      const keep = [...report.groups.find((r) => r.id === group.id)!.order].sort((a, b) => a - b);
      return { group, keep };
    });
    expect(plans.some((p) => p.keep.length < p.group.channels)).toBe(true);
    expect(
      relDiff(await fixtureOutputs(pruned, data), await fixtureOutputs(zeroDroppedInputs(m, plans), data)),
    ).toBeLessThan(1e-4);
    data.close();
  });
});

describe('refusals name what couples the channels', () => {
  it.each([
    ['cnn-cbam-spatial', '/conv/conv.0/Conv', /ReduceMax "\/sg\/ReduceMax" reduces over the channel axis/],
    ['cnn-eca', '/conv/conv.0/Conv', /Conv "\/eca\/conv\/Conv" slides over the channels .*ECA-Net/],
    ['cnn-cbam', '/cg/mlp/mlp.1/Gemm', /is shared .*: one layer applied to several inputs/],
    ['cnn-groupnorm-edges', '/a6/Conv', /"\/gn_a\/Reshape" cuts the channels into blocks of 4 .* do not line up/],
    ['cnn-groupnorm-edges', '/a10/Conv', /"\/gn_a\/Reshape" cuts the channels into blocks of 4 .* do not line up/],
    ['cnn-groupnorm-edges', '/b/Conv', /InstanceNormalization .* normalises over axis 2, .*GroupNorm with one group/],
    ['cnn-retinanet', '/levels/fpn/layer_blocks.0/layer_blocks.0.0/Conv', /head shared across FPN levels/],
  ])('%s: %s', (name, node, why) => {
    const { refused } = groupsOf(readModel(`${FIX}/${name}.onnx`));
    expect(refused.find((r) => r.node === node)?.reason).toMatch(why);
  });
});
