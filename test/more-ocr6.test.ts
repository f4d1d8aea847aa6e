import { describe, it, expect } from 'vitest';
import { int64Tensor, intAttr, makeNode, readModel } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { openNpy } from '../src/npy.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { randInput, randomKeep, randTensor, rng, run1, smallModel, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';
import { analyzeFixture, describeFixtures, weightRows } from './fixture-suite.js';

// Round 6 of real exports (test/fixtures/make-more-ocr6.py, random weights): OCR recognizers and detectors (PP-OCRv3's
// SVTR-LCNet, a CRNN with a convolutional sequence model, a PARSeq-style decoder, PP-OCRv4's LK-PAN with the DB head)
// and mobile families (timm's MobileNetV3 and MobileNetV4, MobileOne, FBNet, EfficientViT, MobileViTv2, SENet's
// SELayer, PP-LCNetV3). Oracle:
// onnxruntime running the original with the dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const LINES = new Set(['ocr6-ppocrv3-rec', 'ocr6-crnn-convctc', 'ocr6-parseq', 'ocr6-lcnetv3-rec']);
const calibOf = (model: string) => `${FIX}/${LINES.has(model) ? 'ocr6-lines' : 'cnn-images'}.calib.npy`;

const CASES: { model: string; groups: number[][] }[] = [
  // every LCNet conv and SE; the SVTR neck's convs, heads and swish MLP; its post-LN stream refused; conv3's output
  // read at its offset in the Concat with the shortcut
  {
    model: 'ocr6-ppocrv3-rec',
    groups: [
      [8, 1, 1],
      [16, 1, 1],
      [24, 1, 1],
      [24, 2, 1],
      [6, 1, 1],
      [32, 2, 1],
      [8, 1, 1],
      [48, 1, 9],
      [6, 1, 1],
      [4, 1, 6],
      [48, 1, 1],
      [48, 1, 9],
      [6, 1, 1],
      [16, 1, 1],
    ],
  },
  // the last conv and the two residual Conv(1×3) one stream, read through [B, C, W] → [W, B, C] by the CTC Linear
  {
    model: 'ocr6-crnn-convctc',
    groups: [
      [8, 1, 9],
      [16, 1, 9],
      [24, 1, 9],
      [24, 1, 9],
      [32, 1, 4],
      [32, 3, 3, 1],
    ],
  },
  // the encoder's heads and MLP, the decoder's MLP; nn.MultiheadAttention's cross-attention projections refused
  {
    model: 'ocr6-parseq',
    groups: [
      [4, 1, 8],
      [64, 1, 1],
      [64, 1, 1],
    ],
  },
  // the top-down stream (4 laterals), each 9×9 conv with the PAN head conv added to it, the PAN laterals in the Concat
  {
    model: 'ocr6-lkpan-db',
    groups: [
      [8, 1, 9, 1],
      [12, 1, 9, 1],
      [16, 1, 9, 1],
      [24, 1, 1],
      [16, 4, 81],
      [4, 2, 81],
      [4, 2, 9, 81],
      [4, 2, 9, 81],
      [4, 1, 9, 81],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 1],
      [4, 1, 1],
    ],
  },
  // SE gates (hard_sigmoid as relu6(x + 3) / 6) join the expansion; residual streams across blocks
  {
    model: 'ocr6-timm-mnv3',
    groups: [
      [8, 2, 1],
      [32, 1, 1],
      [16, 2, 1],
      [48, 1, 1],
      [48, 2, 1],
      [8, 1, 1],
      [24, 2, 1],
      [72, 2, 1],
      [8, 1, 1],
      [144, 1, 1],
      [40, 3, 1],
      [104, 1, 1],
      [120, 2, 1],
      [16, 1, 1],
      [64, 1, 1],
    ],
  },
  // depthwise convs before and after the expansion pass the stream's channels; layer scales sliced with them
  {
    model: 'ocr6-mnv4-uib',
    groups: [
      [16, 2, 1],
      [32, 1, 1],
      [48, 1, 1],
      [24, 4, 1],
      [48, 1, 1],
      [48, 1, 1],
      [48, 1, 1],
      [48, 1, 1],
      [32, 2, 1],
      [64, 1, 1],
      [64, 1, 1],
    ],
  },
  // the parallel conv-BN, 1×1 and BatchNorm-identity branches of each block one stream
  {
    model: 'ocr6-mobileone',
    groups: [
      [16, 4, 1],
      [24, 5, 1],
      [6, 1, 1],
    ],
  },
  // the blocks around the channel shuffle refused; the stem stream, the plain blocks' expansions and the head
  {
    model: 'ocr6-fbnet-lite',
    groups: [
      [16, 2, 1],
      [16, 1, 1],
      [96, 1, 1],
      [96, 1, 1],
      [64, 1, 1],
    ],
  },
  // LiteMLA's heads (q, k, v of 8 each, with their aggregated copies) a group of 2; the MBConv's neurons
  {
    model: 'ocr6-efficientvit',
    groups: [
      [16, 1, 9],
      [16, 3, 1],
      [2, 1, 8],
      [64, 1, 1],
    ],
  },
  // the separable attention's key and value channels one group (relu(v) times the context expanded to v's shape)
  {
    model: 'ocr6-mobilevitv2',
    groups: [
      [16, 1, 1],
      [24, 1, 1],
      [48, 1, 1],
      [16, 1, 1],
    ],
  },
  // the SE's fc.2 in the stream it gates (its output viewed as [b, c, 1, 1] and expanded to x's shape, c read from x)
  {
    model: 'ocr6-senet-expand',
    groups: [
      [16, 3, 9, 1],
      [16, 1, 9],
      [4, 1, 1],
      [32, 3, 1],
      [32, 1, 9],
      [8, 1, 1],
    ],
  },
  // LearnableRepLayer's branches one stream; the scalar learnable affines pass the channels
  {
    model: 'ocr6-lcnetv3-rec',
    groups: [
      [8, 1, 1],
      [16, 4, 1],
      [24, 3, 1],
      [6, 1, 1],
      [32, 4, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => openNpy(calibOf(model)), groups })),
);

const groupsOf = (name: string) => analyzeFixture(readModel(`${FIX}/${name}.onnx`), () => openNpy(calibOf(name)));

/** Half of every group removed at random (seed 5), as describeFixtures does: the pruned model and the oracle. */
function halfPruned(name: string) {
  const m = readModel(`${FIX}/${name}.onnx`),
    r = rng(5);
  const plans = groupsOf(name).groups.map((group) => ({
    group,
    keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
  }));
  return { pruned: pruneGroups(m, plans), zeroed: zeroDroppedInputs(m, plans) };
}

describe('free widths (text lines, as PaddleOCR and CRNN export them) and a free page size (the detector)', () => {
  // the groups are found at the calibration's 32×128 (32×32); the pruned graph must not have baked that size in
  it.each([
    ['ocr6-ppocrv3-rec', [2, 3, 32, 200]],
    ['ocr6-crnn-convctc', [2, 3, 32, 72]],
    ['ocr6-lcnetv3-rec', [2, 3, 32, 96]],
    ['ocr6-lkpan-db', [2, 3, 64, 96]],
  ])('%s: pruned equals the zeroed original at %j', async (name, dims) => {
    const { pruned, zeroed } = halfPruned(name),
      x = randInput(dims, 3);
    const [got, want] = [await run1(pruned, x), await run1(zeroed, x)];
    expect(got.dims).toEqual(want.dims);
    expect(relDiff(got.data, want.data)).toBeLessThan(1e-4);
  });
});

describe("a shape reading another group's channel count (x.expand_as(y), y.view(b, c, 1, 1)) joins them", () => {
  // before: refused ("its shape entry 1 … does not follow the channels"): SENet's streams, 93.5 % of the FLOPs
  // prunable (now 100 %); MobileViTv2's attention, 67.6 % (now 99.6 %)
  it("SENet's SELayer: the fc that computes the gate is a producer of the stream it gates", () => {
    const { groups } = groupsOf('ocr6-senet-expand');
    expect(groups.map((g) => g.producers.map((p) => p.name)).filter((p) => p.length > 1)).toEqual([
      ['/stem/stem.0/Conv', '/layer1/conv2/Conv', '/layer1/se/fc/fc.2/MatMul'],
      ['/layer2/downsample/downsample.0/Conv', '/layer2/conv2/Conv', '/layer2/se/fc/fc.2/MatMul'],
    ]);
  });

  it("MobileViTv2: qkv_proj keeps the query and the kept channels' keys and values; out_proj their inputs", () => {
    const m = readModel(`${FIX}/ocr6-mobilevitv2.onnx`),
      qkv = '/transformer/transformer.0/attn/qkv_proj/Conv',
      out = '/transformer/transformer.0/attn/out_proj/Conv';
    const group = groupsOf('ocr6-mobilevitv2').groups.find((g) => g.id === qkv)!;
    const keep = [1, 5, 9, 20],
      pruned = pruneGroups(m, [{ group, keep }]);
    const rows = weightRows(m, qkv);
    // split [1, 24, 24]: the query's row, then keys, then values
    expect(weightRows(pruned, qkv)).toEqual(
      [0, ...keep.map((c) => 1 + c), ...keep.map((c) => 25 + c)].map((r) => rows[r]),
    );
    expect(weightRows(pruned, out)).toEqual(weightRows(m, out).map((r) => keep.map((c) => r[c])));
  });
});

describe('a shape reading the count of channels refused for their own reasons: that count stays', () => {
  // s = Relu(Conv_b(mean(x))) viewed as [b, c, 1, 1] with b, c = a.shape, a = Conv_a(x) normalised by a Softmax over
  // its channels: a keeps its 8 channels, so the view's c is rewritten to the kept count, and b's channels are pruned
  // (joining them to a's would refuse them)
  const r = rng(3);
  const dim = (i: number) => [
    makeNode('Gather', ['ash', `i${i}`], [`g${i}`], [intAttr('axis', 0)]),
    makeNode('Unsqueeze', [`g${i}`, 'zero'], [`u${i}`]),
  ];
  const m = smallModel(
    [
      makeNode('Conv', ['x', 'wa'], ['a'], [], 'conv_a'),
      makeNode('Softmax', ['a'], ['sa'], [intAttr('axis', 1)]),
      makeNode('Conv', ['sa', 'wd'], ['d'], [], 'conv_d'),
      makeNode('GlobalAveragePool', ['x'], ['p']),
      makeNode('Conv', ['p', 'wb'], ['b'], [], 'conv_b'),
      makeNode('Relu', ['b'], ['rb']),
      makeNode('Shape', ['a'], ['ash']),
      ...dim(0),
      ...dim(1),
      makeNode('Concat', ['u0', 'u1', 'ones'], ['shape'], [intAttr('axis', 0)]),
      makeNode('Reshape', ['rb', 'shape'], ['v'], [], 'view'),
      makeNode('Conv', ['v', 'wc'], ['c'], [], 'conv_c'),
      makeNode('Add', ['d', 'c'], ['y']),
    ],
    [
      randTensor('wa', [8, 4, 1, 1], r),
      randTensor('wb', [8, 4, 1, 1], r),
      randTensor('wc', [2, 8, 1, 1], r),
      randTensor('wd', [2, 8, 1, 1], r),
      int64Tensor('i0', [], [0]),
      int64Tensor('i1', [], [1]),
      int64Tensor('zero', [1], [0]),
      int64Tensor('ones', [2], [1, 1]),
    ],
    ['N', 4, 4, 4],
  );

  it("conv_b's channels are a group; conv_a's are refused by the Softmax", () => {
    const { groups, refused } = analyze(m, [1, 4, 4, 4]);
    expect(groups.map((g) => g.id)).toEqual(['conv_b']);
    expect(refused.find((x) => x.node === 'conv_a')?.reason).toMatch(/Softmax .* normalises across the channels/);
  });

  it('pruned, the view reads the kept count and the output is the zeroed original', async () => {
    const group = analyze(m, [1, 4, 4, 4]).groups[0]!,
      plans = [{ group, keep: [1, 3, 6] }];
    const x = randInput([2, 4, 4, 4], 4);
    const [got, want] = [await run1(pruneGroups(m, plans), x), await run1(zeroDroppedInputs(m, plans), x)];
    expect(got.dims).toEqual(want.dims);
    expect(relDiff(got.data, want.data)).toBeLessThan(1e-5);
  });
});

describe('refusals name what couples the channels', () => {
  const sliced = /its weight is computed from "(self|cross)_attn.in_proj_weight" at run time, by tensor shapes/;
  it.each([
    ['ocr6-parseq', '/self_attn/MatMul', sliced],
    ['ocr6-parseq', '/cross_attn/MatMul_1', sliced],
    // the decoder's stream starts from the learned position queries expanded to the batch
    ['ocr6-parseq', '/self_attn/Gemm', /Add "\/Add_3" combines the channels with "\/Expand_output_0"/],
    // FBNet's channel shuffle interleaves the grouped conv's two halves
    ['ocr6-fbnet-lite', '/blocks/blocks.1/pwl/pwl.0/Conv', /shuffle\/Reshape_1" to \[1, 72, 8, 8\] mixes the channels/],
    ['ocr6-mobilevitv2', '/conv_1x1/Conv', /InstanceNormalization .* \(GroupNorm with one group\)/],
    ['ocr6-ppocrv3-rec', '/neck/conv2/conv/Conv', /LayerNormalization .* normalises across the channels/],
  ])('%s: %s', (name, node, why) => {
    expect(groupsOf(name).refused.find((r) => r.node === node)?.reason).toMatch(why);
  });
});
