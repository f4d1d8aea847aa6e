import { describe, it, expect } from 'vitest';
import { readModel, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { constantTensors } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { randomKeep, rng, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';
import { analyzeFixture, describeFixtures, fixtureOutputs } from './fixture-suite.js';

// Round 7 of real exports (test/fixtures/make-more-det7.py, random weights): detectors and segmenters (EfficientDet's
// BiFPN, YOLOX, BiSeNetV2 and V1, DDRNet, CRAFT, EAST) and vision transformers (PVTv2, CaiT, BEiT, EfficientFormer,
// FastViT). Oracle: onnxruntime running the original with the dropped channels' consumer inputs zeroed
// (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const IMAGES64 = new Set(['det7-bisenetv1', 'det7-ddrnet', 'det7-east', 'det7-efficientformer', 'det7-fastvit']);
const calibOf = (model: string) => `${FIX}/${IMAGES64.has(model) ? 'det7-images64' : 'cnn-images'}.calib.npy`;

const CASES: { model: string; groups: number[][] }[] = [
  // the backbone's MBConvs (SE gates) and the first BiFPN's P4/P5 inputs; the BiFPN outputs reach the heads' convs,
  // whose weights the three levels share: refused
  {
    model: 'det7-efficientdet',
    groups: [
      [8, 3, 1],
      [2, 1, 1],
      [32, 2, 1],
      [2, 1, 1],
      [12, 1, 1],
      [48, 2, 1],
      [3, 1, 1],
      [16, 1, 1],
      [64, 2, 1],
      [4, 1, 1],
      [24, 1, 1],
      [16, 2, 1],
    ],
  },
  // CSP halves, SPP's four copies, the PAN's Concats, every head conv; the preds are outputs
  {
    model: 'det7-yolox',
    groups: [
      [2, 1, 9],
      [4, 1, 1],
      [2, 2, 1],
      [2, 1, 1],
      [2, 1, 9],
      [4, 1, 9],
      [8, 1, 1],
      [4, 2, 1],
      [4, 1, 1],
      [4, 1, 9],
      [8, 1, 9, 1],
      [16, 1, 1],
      [8, 2, 1],
      [8, 1, 1],
      [8, 1, 9],
      [16, 1, 9, 1],
      [32, 1, 1],
      [16, 1, 1],
      [32, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [32, 1, 1],
      [16, 1, 1],
      [8, 1, 1],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
      [16, 1, 1],
      [8, 1, 1],
      [4, 1, 1],
      [4, 1, 1],
      [4, 1, 9],
      [4, 1, 1],
      [8, 1, 9, 1],
      [8, 1, 1],
      [8, 1, 1],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
      [16, 1, 9, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [32, 1, 1],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
    ],
  },
  // both branches, the GE layers' residual streams, the BGA's gated sum (4 producers) read by its 3×3 conv
  {
    model: 'det7-bisenetv2',
    groups: [
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 1, 9],
      [4, 1, 1, 9],
      [2, 1, 9],
      [4, 1, 9],
      [4, 1, 9, 1],
      [4, 1, 6],
      [8, 3, 9, 1],
      [8, 1, 6],
      [8, 1, 6],
      [16, 3, 9, 1],
      [16, 1, 6],
      [16, 1, 6],
      [16, 6, 9, 1],
      [16, 1, 6],
      [16, 1, 6],
      [16, 1, 6],
      [16, 1, 9, 1],
      [16, 4, 9],
      [16, 1, 9],
      [32, 1, 1],
    ],
  },
  // the ResNet-18 streams, the ARMs' gated maps (the global context added to one), the FFM's gated residual
  {
    model: 'det7-bisenetv1',
    groups: [
      [8, 3, 9, 1],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 9],
      [8, 3, 9, 1],
      [8, 1, 9],
      [16, 1, 9],
      [16, 3, 9, 1],
      [16, 1, 9],
      [32, 1, 9],
      [32, 3, 9, 1],
      [32, 1, 9],
      [16, 3, 1, 9],
      [16, 3, 1, 9],
      [16, 1, 1],
      [32, 2, 1, 9],
      [32, 1, 1],
    ],
  },
  // the high- and low-resolution streams, each joined with the other's down / compression convs by the Adds
  {
    model: 'det7-ddrnet',
    groups: [
      [4, 1, 9],
      [4, 3, 9, 1],
      [4, 1, 9],
      [4, 1, 9],
      [8, 1, 9],
      [8, 9, 9, 1],
      [8, 1, 9],
      [16, 1, 9],
      [16, 4, 9, 1],
      [16, 1, 9],
      [8, 1, 9],
      [8, 1, 9],
      [32, 1, 9],
      [32, 4, 9, 1],
      [32, 1, 9],
      [8, 1, 9],
      [8, 1, 9],
      [16, 1, 9],
      [8, 1, 9],
      [8, 1, 1],
      [16, 4, 9],
      [32, 1, 9],
      [32, 1, 1],
      [64, 2, 1],
      [8, 2, 9, 1],
      [8, 2, 9, 1],
      [8, 2, 9, 1],
      [8, 2, 9, 1],
      [8, 1, 1],
      [8, 1, 1],
    ],
  },
  // the VGG slices ending on a BatchNorm read by the next slice and by the decoder's Concat; `feature` is an output
  {
    model: 'det7-craft',
    groups: [
      [4, 1, 9],
      [4, 1, 9],
      [8, 1, 9],
      [8, 1, 9, 1],
      [16, 1, 9],
      [16, 1, 9, 1],
      [16, 1, 9],
      [32, 1, 9],
      [32, 1, 9, 1],
      [32, 1, 9],
      [32, 1, 9],
      [32, 1, 9, 1],
      [64, 1, 1],
      [64, 1, 1],
      [32, 1, 9],
      [16, 1, 1],
      [16, 1, 9],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 9],
      [4, 1, 1],
      [4, 1, 1],
    ],
  },
  // the pooled VGG maps read by the next conv and by the merge branch's Concats
  {
    model: 'det7-east',
    groups: [
      [4, 1, 9],
      [4, 1, 9],
      [8, 1, 9],
      [8, 1, 9, 1],
      [16, 1, 9],
      [16, 1, 9],
      [16, 1, 9, 1],
      [32, 1, 9],
      [32, 1, 9],
      [32, 1, 9, 1],
      [32, 1, 9],
      [32, 1, 9],
      [32, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [8, 1, 9],
      [8, 1, 1],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 1],
    ],
  },
  // heads (q with kv, the keys and values from the reduced map) and MLP neurons through the depthwise conv
  {
    model: 'det7-pvt',
    groups: [
      [2, 2, 8],
      [64, 1, 1],
      [4, 2, 8],
      [128, 1, 1],
    ],
  },
  // talking heads: q, k and v of head i and proj_w's output i one channel, read by proj_l (the scores' head axis) and
  // proj (d each); the heads between proj_l and proj_w; the MLPs; the class attention's heads (q from the class token)
  {
    model: 'det7-cait',
    groups: [
      [4, 2, 1, 8],
      [4, 1, 1],
      [128, 1, 1],
      [4, 2, 1, 8],
      [4, 1, 1],
      [128, 1, 1],
      [4, 3, 8],
      [128, 1, 1],
      [4, 3, 8],
      [128, 1, 1],
    ],
  },
  // heads (each block's relative position bias cut with them) and MLP neurons
  {
    model: 'det7-beit',
    groups: [
      [4, 1, 8],
      [128, 1, 1],
      [4, 1, 8],
      [128, 1, 1],
    ],
  },
  // the 4-D stages' streams and 1×1-conv MLPs; the attention's heads (q, k, v split per head) and its MLP
  {
    model: 'det7-efficientformer',
    groups: [
      [4, 1, 9],
      [8, 2, 1, 9],
      [32, 1, 1],
      [16, 2, 1, 9],
      [64, 1, 1],
      [24, 2, 1, 9],
      [96, 1, 1],
      [128, 1, 1],
      [2, 1, 32],
      [128, 1, 1],
    ],
  },
  // one stream from the stem to conv_exp (grouped convs with channel multipliers), the ConvFFNs, the heads, the SE
  {
    model: 'det7-fastvit',
    groups: [
      [16, 8, 1, 2, 4],
      [48, 1, 1],
      [4, 1, 8],
      [96, 1, 1],
      [4, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => openNpy(calibOf(model)), groups })),
);

const groupsOf = (name: string) => analyzeFixture(readModel(`${FIX}/${name}.onnx`), () => openNpy(calibOf(name)));

describe('FastViT: the attention reads its reshape counts from the stream, which another group prunes', () => {
  // reshape(B, N, C) of the heads (attn @ v) reads C = x.shape[1] of the BatchNorm'd stream: the heads group makes it a
  // constant of its own, and pruning the stream without the heads must write that constant too (before: the pruned
  // model failed in onnxruntime, "cannot reshape {2, 64, 4, 8} to {2, 64, 24}", and the default sequential prune threw
  // "group /stage2/token_mixer/qkv/MatMul is no longer prunable after pruning the groups before it")
  const name = 'det7-fastvit';
  it.each([
    ['the stream alone', ['/patch_embed/patch_embed.0/rbr_scale/conv/Conv']],
    ['the heads alone', ['/stage2/token_mixer/qkv/MatMul']],
    ['both, unequally', ['/patch_embed/patch_embed.0/rbr_scale/conv/Conv', '/stage2/token_mixer/qkv/MatMul']],
  ])('%s: the pruned model is the zeroed original', async (_, ids) => {
    const m = readModel(`${FIX}/${name}.onnx`),
      r = rng(7);
    const plans = groupsOf(name)
      .groups.filter((g) => ids.includes(g.id))
      .map((group) => ({ group, keep: randomKeep(group.channels, group.channels === 16 ? 11 : 3, r) }));
    expect(plans.map((p) => p.group.id)).toEqual(ids);
    const data = openNpy(calibOf(name));
    const got = await fixtureOutputs(pruneGroups(m, plans), data, 4),
      want = await fixtureOutputs(zeroDroppedInputs(m, plans), data, 4);
    expect(relDiff(got, want)).toBeLessThan(1e-4);
  });
});

describe("CaiT's talking heads: head i's q, k and v, proj_l's input i and proj_w's output i are one channel", () => {
  // proj_l mixes the heads of the scores, so q · k of head i is read by proj_l alone; proj_w's output i weighs v's
  // head i. Before, the parts of the qkv reshape were two groups, refused ("the parts must keep equally many
  // channels"): 58.3 % of the FLOPs in groups, now 96.4 %
  const name = 'det7-cait';
  it.each([[1], [3]])('%i of the 4 heads kept: the weights cut so, the output the zeroed original', async (k) => {
    const m = readModel(`${FIX}/${name}.onnx`),
      r = rng(k);
    const group = groupsOf(name).groups.find((g) => g.id === '/blocks.0/attn/qkv/MatMul')!;
    expect(group.producers.map((p) => p.name)).toEqual(['/blocks.0/attn/qkv/MatMul', '/blocks.0/attn/proj_w/MatMul']);
    const plans = [{ group, keep: randomKeep(4, k, r) }];
    const pruned = pruneGroups(m, plans),
      data = openNpy(calibOf(name));
    const dims = (x: Model, node: string) => {
      const n = x.graph!.node.find((y) => y.name === node)!;
      return constantTensors(x.graph!).get(n.input[1]!)!.dims.map(Number);
    };
    expect(['qkv', 'proj_l', 'proj_w', 'proj'].map((l) => dims(pruned, `/blocks.0/attn/${l}/MatMul`))).toEqual([
      [32, 3 * k * 8],
      [k, 4],
      [4, k],
      [k * 8, 32],
    ]);
    const got = await fixtureOutputs(pruned, data, 4),
      want = await fixtureOutputs(zeroDroppedInputs(m, plans), data, 4);
    expect(relDiff(got, want)).toBeLessThan(1e-4);
  });
});

describe('attention biases gathered from a table by an index buffer are cut with the heads', () => {
  // BEiT's relative_position_bias_table[index] and EfficientFormer's attention_biases[:, idxs], folded by the exporter
  // into one constant [1, heads, N, N] (BEiT, per block) or [heads, N, N] (EfficientFormer) added to the scores
  it.each([
    ['det7-beit', 2, [1, 4, 65, 65]],
    ['det7-efficientformer', 1, [2, 4, 4]],
  ] as const)('%s: %i bias constants %j keep the kept heads', (name, count, dims) => {
    const m = readModel(`${FIX}/${name}.onnx`),
      r = rng(3);
    const rows = (x: Model) =>
      [...constantTensors(x.graph!)].filter(([, t]) => t.dims.map(Number).join() === dims.join()).map(([n]) => n);
    expect(rows(m).length).toBe(count);
    const heads = groupsOf(name).groups.filter((g) => g.channels === dims[dims.length - 3]);
    const plans = heads.map((group) => ({ group, keep: randomKeep(group.channels, 1, r) }));
    const pruned = pruneGroups(m, plans),
      after = new Map([...constantTensors(pruned.graph!)].map(([n, t]) => [n, t.dims.map(Number)]));
    for (const n of rows(m)) expect(after.get(n)![dims.length - 3], n).toBe(1);
  });
});

describe('refusals name what couples the channels', () => {
  const shared = /constant "regressor.conv_list.0.depthwise_conv.conv.weight" is shared .*one layer applied to several/;
  it.each([
    // before: 'is a grouped or depthwise convolution (group=16); its channels are coupled by the groups'
    [
      'det7-efficientdet',
      '/regressor/conv_list.0/depthwise_conv/conv/Conv',
      new RegExp(`^Conv .* passes on the channels it reads, which are refused: ${shared.source}`),
    ],
    ['det7-efficientdet', '/bifpn/bifpn.0/p3_down_channel/p3_down_channel.0/conv/Conv', shared],
    // before: 'Concat "/Concat_1" joins the channels with "/Expand_output_0", which no group owns'
    [
      'det7-beit',
      '/patch_embed/proj/Conv',
      /^Concat "\/Concat_1" joins the channels with "\/Expand_output_0", which no group owns \(it is computed from/,
    ],
    ['det7-cait', '/blocks_token_only.0/attn/proj/MatMul', /combines the channels with "\/Expand_output_0", which no/],
    [
      'det7-pvt',
      '/block1.0/attn/sr/Conv',
      /LayerNormalization "\/block1.0\/attn\/norm\/LayerNormalization" normalises/,
    ],
    ['det7-efficientformer', '/network/network.5/proj/Conv', /LayerNormalization .* normalises across the channels/],
  ])('%s: %s', (name, node, why) => {
    expect(groupsOf(name).refused.find((r) => r.node === node)?.reason).toMatch(why);
  });
});
