import { describe, it, expect } from 'vitest';
import { readModel, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { randomKeep, randInput, rng, run1, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';
import { analyzeFixture, describeFixtures, weightRows } from './fixture-suite.js';

// Round 5 of real CNN exports (test/fixtures/make-more-cnn5.py, random weights): torchvision's EfficientNet-V2,
// GoogLeNet, VGG11_bn, RegNetY, VideoResNet and MNASNet, YOLOv5, an FPN at opset 9, PixelUnshuffle, torchaudio's M5;
// export settings that differ from the default (no constant folding with BatchNorm kept, initializers listed as graph
// inputs, dynamic height and width at opsets 9 and 11). Oracle: onnxruntime running the original with the dropped
// channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const IMAGES = `${FIX}/cnn-images.calib.npy`;
const AUDIO = `${FIX}/cnn5-audio.calib.npy`;
const CALIB: Record<string, string> = {
  'cnn5-r3d': `${FIX}/cnn5-video.calib.npy`,
  'cnn5-m5': AUDIO,
  'cnn5-weightnorm-nofold': AUDIO,
};
const calibOf = (model: string) => CALIB[model] ?? IMAGES;

const CASES: { model: string; groups: number[][] }[] = [
  // the stem and the two stride-1 FusedMBConvs (one 3×3 conv each) a residual stream; the strided FusedMBConv's
  // 3×3 expansion a group of its own, read by its 1×1 projection
  {
    model: 'cnn5-efficientnet-v2',
    groups: [
      [8, 3, 9],
      [32, 1, 1],
      [16, 2, 9, 1],
      [64, 1, 1],
      [64, 2, 1],
      [4, 1, 1],
      [24, 2, 1],
      [96, 2, 1],
      [6, 1, 1],
      [64, 1, 1],
    ],
  },
  // every branch conv of every Inception module its own group; the Concat's parts read at their offsets
  {
    model: 'cnn5-googlenet',
    groups: [
      [8, 1, 1],
      [8, 1, 9],
      [24, 1, 1],
      [8, 1, 1],
      [12, 1, 9],
      [16, 1, 1],
      [2, 1, 9],
      [4, 1, 1],
      [4, 1, 1],
      [16, 1, 1],
      [16, 1, 9],
      [24, 1, 1],
      [4, 1, 9],
      [12, 1, 1],
      [8, 1, 1],
      [24, 1, 1],
      [12, 1, 9],
      [26, 1, 1],
      [2, 1, 9],
      [6, 1, 1],
      [8, 1, 1],
      [20, 1, 1],
      [14, 1, 9],
      [28, 1, 1],
      [3, 1, 9],
      [8, 1, 1],
      [8, 1, 1],
      [16, 1, 1],
      [16, 1, 9],
      [32, 1, 1],
      [3, 1, 9],
      [8, 1, 1],
      [8, 1, 1],
      [14, 1, 1],
      [18, 1, 9],
      [36, 1, 1],
      [4, 1, 9],
      [8, 1, 1],
      [8, 1, 1],
      [32, 1, 1],
      [20, 1, 9],
      [40, 1, 1],
      [4, 1, 9],
      [16, 1, 1],
      [16, 1, 1],
      [32, 1, 1],
      [20, 1, 9],
      [40, 1, 1],
      [4, 1, 9],
      [16, 1, 1],
      [16, 1, 1],
      [48, 1, 1],
      [24, 1, 9],
      [48, 1, 1],
      [6, 1, 9],
      [16, 1, 1],
      [16, 1, 1],
    ],
  },
  // a chain of 8 convs, each followed by its BatchNormalization, and the classifier's two hidden Linear layers
  {
    model: 'cnn5-vgg11-bn-nofold',
    groups: [
      [4, 1, 9],
      [8, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [32, 1, 9],
      [32, 1, 9],
      [32, 1, 9],
      [32, 1, 1],
      [32, 1, 1],
      [32, 1, 1],
    ],
  },
  // the bottleneck's conv a in whole groups of its grouped 3×3 (group width 8), which the SE's gate also scales
  {
    model: 'cnn5-regnety',
    groups: [
      [16, 1, 1],
      [16, 2, 1],
      [2, 2, 8],
      [4, 1, 1],
      [32, 3, 1],
      [4, 2, 8],
      [4, 1, 1],
      [4, 2, 8],
      [8, 1, 1],
    ],
  },
  // torchvision's VideoResNet: the stem's residual stream, layer1's inner conv, and the R(2+1)-D blocks' spatial
  // (1×3×3) and temporal (3×1×1) convs' channels; the last stage's output (residual Add) read by the classifier.
  // Before 3-D Conv consumers, only that last group: the rest was read by 3-D convolutions
  {
    model: 'cnn5-r3d',
    groups: [
      [8, 2, 27, 9, 1],
      [8, 1, 27],
      [28, 1, 3],
      [16, 1, 9],
      [28, 1, 3],
      [16, 2, 1],
    ],
  },
  // MobileNet-V2-like inverted residuals, the weights also graph inputs
  {
    model: 'cnn5-mnasnet-initializers',
    groups: [
      [16, 1, 1],
      [8, 1, 1],
      [24, 1, 1],
      [16, 3, 1],
      [48, 1, 1],
      [48, 1, 1],
      [48, 1, 1],
      [24, 3, 1],
      [72, 1, 1],
      [72, 1, 1],
      [64, 1, 1],
    ],
  },
  // C3's halves, SPPF's four copies, the upsampled lateral in the neck's Concats; Detect's convs are outputs
  {
    model: 'cnn5-yolov5-opset11',
    groups: [
      [8, 1, 9],
      [16, 1, 1],
      [8, 2, 1],
      [8, 1, 9],
      [8, 1, 1],
      [16, 1, 9, 1],
      [32, 1, 1],
      [16, 2, 1],
      [16, 1, 9],
      [16, 1, 1],
      [32, 1, 1],
      [16, 1, 1],
      [32, 1, 1],
      [16, 1, 1],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
      [8, 1, 1],
      [16, 1, 9, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [16, 1, 1],
      [32, 1, 1],
    ],
  },
  // the lateral and the upsampled (Upsample op) coarse level one group, read by the smoothing conv
  {
    model: 'cnn5-fpn-opset9',
    groups: [
      [16, 2, 9, 1],
      [16, 1, 9],
      [24, 1, 9],
      [24, 2, 1],
      [16, 2, 9],
      [8, 1, 1],
      [8, 1, 1],
    ],
  },
  // the stem's channel c is the unshuffled channels 4c..4c+3: with the 1×1 conv added to them, one group of 8 whose
  // consumers read 4 inputs per channel (the 1×1 conv) and 4 · 9 (the 3×3 conv)
  {
    model: 'cnn5-pixel-unshuffle',
    groups: [
      [8, 2, 4, 36],
      [16, 1, 1],
    ],
  },
  // Conv1d chain; the classifier before LogSoftmax is the output layer
  {
    model: 'cnn5-m5',
    groups: [
      [8, 1, 3],
      [8, 1, 3],
      [16, 1, 3],
      [16, 1, 1],
    ],
  },
  // ghost1's primary conv: channels 0-4 are in the slice once as themselves and twice (multiplier 2) in the cheap
  // conv's output, channel 5 only as itself (its copies are cut off): two groups; ghost2 and the stream refused
  {
    model: 'cnn5-ghost-ratio3',
    groups: [
      [5, 1, 1, 2],
      [1, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => openNpy(calibOf(model)), groups })),
);

const groupsOf = (m: Model, name: string) => analyzeFixture(m, () => openNpy(calibOf(name)));

/** Half of every group removed at random (seed 5), as describeFixtures does: the plans, pruned and the oracle. */
function halfPruned(name: string) {
  const m = readModel(`${FIX}/${name}.onnx`),
    r = rng(5);
  const plans = groupsOf(m, name).groups.map((group) => ({
    group,
    keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
  }));
  return { m, plans, pruned: pruneGroups(m, plans), zeroed: zeroDroppedInputs(m, plans) };
}

describe('dynamic height and width (YOLOv5 at opset 11, an FPN with Upsample at opset 9)', () => {
  // the groups are found at the calibration's 32×32; the pruned graph must not have baked that size in
  it.each(['cnn5-yolov5-opset11', 'cnn5-fpn-opset9'])(
    '%s: pruned equals the zeroed original at 48×64',
    async (name) => {
      const { pruned, zeroed } = halfPruned(name),
        x = randInput([2, 3, 48, 64], 3);
      const [got, want] = [await run1(pruned, x), await run1(zeroed, x)];
      expect(got.dims).toEqual(want.dims);
      expect(relDiff(got.data, want.data)).toBeLessThan(1e-4);
    },
  );
});

describe('PixelUnshuffle: the stem channel c is the unshuffled channels 4c..4c+3', () => {
  it('keeps the 1×1 conv filters (and 3×3 conv inputs) of the kept channels, 4 each', () => {
    const m = readModel(`${FIX}/cnn5-pixel-unshuffle.onnx`),
      g = groupsOf(m, 'cnn5-pixel-unshuffle').groups.find((x) => x.id === '/stem/stem.0/Conv')!;
    expect(g.producers.map((p) => p.name)).toEqual(['/stem/stem.0/Conv', '/mix/Conv']);
    const keep = [1, 4, 6],
      entries = keep.flatMap((c) => [4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3]);
    const pruned = pruneGroups(m, [{ group: g, keep }]);
    expect(weightRows(pruned, '/mix/Conv')).toEqual(
      entries.map((o) => entries.flatMap((i) => weightRows(m, '/mix/Conv')[o]![i]!)),
    );
  });
});

describe('initializers also listed as graph inputs (keep_initializers_as_inputs=True)', () => {
  it("each pruned initializer's graph-input entry has its new shape; the data input stays the only one to feed", () => {
    const { m, pruned } = halfPruned('cnn5-mnasnet-initializers');
    const g = pruned.graph!,
      dims = new Map(g.initializer.map((t) => [t.name, t.dims.map(Number)]));
    expect(g.input.length).toBe(m.graph!.input.length);
    const listed = g.input.filter((i) => dims.has(i.name));
    expect(listed.length).toBe(g.input.length - 1);
    let changed = 0;
    for (const i of listed) {
      const shape = i.type!.value.case === 'tensorType' ? i.type!.value.value.shape!.dim : [];
      const declared = shape.map((d) => (d.value.case === 'dimValue' ? Number(d.value.value) : -1));
      expect(declared, i.name).toEqual(dims.get(i.name));
      const before = m.graph!.initializer.find((t) => t.name === i.name)!.dims.map(Number);
      if (before.join() !== declared.join()) changed++;
    }
    expect(changed).toBeGreaterThan(10);
  });
});

describe('BatchNormalization kept (VGG11_bn, do_constant_folding=False, TrainingMode.PRESERVE)', () => {
  it('every BatchNormalization stays, its four parameters cut to the kept channels', () => {
    const { m, plans, pruned } = halfPruned('cnn5-vgg11-bn-nofold');
    const bns = pruned.graph!.node.filter((n) => n.opType === 'BatchNormalization');
    expect(bns.length).toBe(8);
    expect(bns.length).toBe(m.graph!.node.filter((n) => n.opType === 'BatchNormalization').length);
    const inits = new Map(pruned.graph!.initializer.map((t) => [t.name, t.dims.map(Number)]));
    for (const bn of bns) {
      const conv = pruned.graph!.node.find((n) => n.output[0] === bn.input[0])!;
      const kept = plans.find((p) => p.group.producers.some((q) => q.name === conv.name))!.keep.length;
      expect(bn.input.slice(1).map((t) => inits.get(t))).toEqual([[kept], [kept], [kept], [kept]]);
    }
  });
});

describe('refusals name what couples the channels', () => {
  const weight = /its weight .* is not a constant; it is computed at run time from constants alone/;
  it.each([
    // before: only 'its weight "/stem/Reshape_output_0" is not a constant'
    ['cnn5-bit', '/stem/Conv', weight],
    ['cnn5-bit', '/conv2/Conv', weight],
    ['cnn5-weightnorm-nofold', '/c1/Conv', weight],
    ['cnn5-ghost-ratio3', '/ghost2/primary_conv/primary_conv.0/Conv', /Slice .* cuts a channel of the channel axis/],
    ['cnn5-m5', '/fc1/MatMul', /LogSoftmax "\/LogSoftmax" normalises across the channels/],
  ])('%s: %s', (name, node, why) => {
    const { refused } = groupsOf(readModel(`${FIX}/${name}.onnx`), name);
    expect(refused.find((r) => r.node === node)?.reason).toMatch(why);
  });

  it.each(['cnn5-bit', 'cnn5-weightnorm-nofold'])('%s: no group (every conv computes its weight)', (name) => {
    expect(groupsOf(readModel(`${FIX}/${name}.onnx`), name).groups).toEqual([]);
  });
});
