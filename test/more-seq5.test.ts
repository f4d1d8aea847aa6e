import { describe, it, expect } from 'vitest';
import { readModel, tensorToFloat32 } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import { type InputData } from '../src/calibration.js';
import { constantTensors } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { analyzeFixture, describeFixtures } from './fixture-suite.js';

// torchvision's ViT, torch.nn.Transformer*, a GPT-2 step with its KV cache, ALBERT, RoBERTa, ELECTRA, ConvBERT,
// MobileViT and LeViT (test/fixtures/make-more-seq5.py): small random-weight versions written as torch, torchvision
// or the HuggingFace code writes them, exported with torch's defaults. Oracle (describeFixtures): onnxruntime running
// the original with the dropped channels' consumer inputs zeroed.

const FIX = 'test/fixtures';

/** The calibration data of a fixture: an .npz (several inputs) or an .npy. */
const dataOf = (name: string) => (): InputData & { close?: () => void } =>
  name.endsWith('.npz') ? openNpz(`${FIX}/${name}`) : openNpy(`${FIX}/${name}`);

// Each group as [channels, producers, g of its consumers], in graph order; length: a shorter axis 1 to run at too.
const CASES: { model: string; calib: string; length?: number; groups: number[][] }[] = [
  // torchvision's VisionTransformer: per EncoderBlock nn.MultiheadAttention's heads (the packed in_proj's q, k, v
  // cut by Slice) and the MLP's neurons; the class token's Concat keeps the stream
  {
    model: 'seq5-vit',
    calib: 'seq5-vit.calib.npy',
    groups: [
      [4, 1, 8],
      [64, 1, 1],
      [4, 1, 8],
      [64, 1, 1],
    ],
  },
  {
    model: 'seq5-vit-opset13',
    calib: 'seq5-vit.calib.npy',
    groups: [
      [4, 1, 8],
      [64, 1, 1],
      [4, 1, 8],
      [64, 1, 1],
    ],
  },
  // nn.TransformerEncoder, post-LN and pre-LN
  {
    model: 'seq5-tenc-post',
    calib: 'seq5-tenc-post.calib.npy',
    length: 5,
    groups: [
      [4, 1, 8],
      [64, 1, 1],
      [4, 1, 8],
      [64, 1, 1],
    ],
  },
  {
    model: 'seq5-tenc-pre',
    calib: 'seq5-tenc-pre.calib.npy',
    length: 5,
    groups: [
      [4, 1, 8],
      [64, 1, 1],
      [4, 1, 8],
      [64, 1, 1],
    ],
  },
  // nn.Transformer: the encoder's and the decoder's self-attention heads and FFN neurons (the cross-attention's q and
  // kv weights are Slices of in_proj_weight at run time, no layers)
  {
    model: 'seq5-transformer',
    calib: 'seq5-transformer.calib.npz',
    length: 5,
    groups: [
      [4, 1, 8],
      [64, 1, 1],
      [4, 1, 8],
      [64, 1, 1],
    ],
  },
  // GPT-2 with a KV cache: the MLP's neurons; the heads stay (the past keys and values are concatenated to them)
  { model: 'seq5-kv-cache', calib: 'seq5-kv-cache.calib.npz', length: 3, groups: [[64, 1, 1]] },
  // ALBERT: the one shared layer stays; the pooler's units
  { model: 'seq5-albert', calib: 'seq5-albert.calib.npz', length: 5, groups: [[32, 1, 1]] },
  // RoBERTa: heads, neurons, the classification head's dense units; at opset 11 the same
  {
    model: 'seq5-roberta',
    calib: 'seq5-roberta.calib.npz',
    length: 5,
    groups: [
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
      [32, 1, 1],
    ],
  },
  {
    model: 'seq5-roberta-opset11',
    calib: 'seq5-roberta.calib.npz',
    length: 5,
    groups: [
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
      [32, 1, 1],
    ],
  },
  // ELECTRA: heads, neurons, the discriminator's dense units
  {
    model: 'seq5-electra',
    calib: 'seq5-electra.calib.npz',
    length: 5,
    groups: [
      [4, 3, 8],
      [64, 1, 1],
      [32, 1, 1],
    ],
  },
  // ConvBERT: the self-attention heads with the span conv's key channels they multiply (query · key_conv, read by
  // conv_kernel_layer); neurons; the classifier's dense units
  {
    model: 'seq5-convbert',
    calib: 'seq5-convbert.calib.npz',
    length: 5,
    groups: [
      [2, 4, 8],
      [64, 1, 1],
      [32, 1, 1],
    ],
  },
  // MobileViT: the stem's channels (read by conv_kxk and, through the Concat, by the fusion conv), conv_kxk's, the
  // transformer's heads and neurons, conv_projection's (through the Concat), the fusion conv's, conv_1x1_exp's
  {
    model: 'seq5-mobilevit',
    calib: 'seq5-mobilevit.calib.npy',
    groups: [
      [16, 1, 9],
      [16, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [48, 1, 1],
    ],
  },
  // LeViT: the residual stream (no LayerNorm: BatchNorm1d on the flattened tokens), the heads of the packed qkv
  // (q, k, v of 8, 8, 16 per head), the MLP's neurons
  {
    model: 'seq5-levit',
    calib: 'seq5-levit.calib.npy',
    groups: [
      [32, 3, 1],
      [4, 1, 16],
      [64, 1, 1],
    ],
  },
  {
    model: 'seq5-levit-opset11',
    calib: 'seq5-levit.calib.npy',
    groups: [
      [32, 3, 1],
      [4, 1, 16],
      [64, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, calib, length, groups }) => ({
    model: `${FIX}/${model}.onnx`,
    data: dataOf(calib),
    groups,
    length,
  })),
);

/** The groups and refusals of a fixture at its calibration shapes. */
const analysisOf = (model: string, calib: string) => analyzeFixture(readModel(`${FIX}/${model}.onnx`), dataOf(calib));

describe('what stays, and why', () => {
  it("the KV cache's heads are refused: the past keys and values, graph inputs, are concatenated to them", () => {
    const { groups, refused } = analysisOf('seq5-kv-cache', 'seq5-kv-cache.calib.npz');
    expect(groups.map((g) => g.id)).toEqual(['/c_fc/MatMul']);
    const why = refused.filter((r) => r.node === '/attn/Gemm').map((r) => r.reason);
    expect(why).toContain('Concat "/attn/Concat_5" joins the channels with "past_key_0", which no group owns');
    expect(why).toContain('Concat "/attn/Concat_6" joins the channels with "past_value_0", which no group owns');
  });

  it("nn.Transformer's cross-attention projections are refused: their weights are sliced by shapes at run time", () => {
    const { refused } = analysisOf('seq5-transformer', 'seq5-transformer.calib.npz'),
      inProj = 'transformer.decoder.layers.0.multihead_attn.in_proj_weight';
    // the query's projection and the memory's key and value projection, both Slices of in_proj_weight by E =
    // query.size(-1); before, they were taken for products of activations and left out of both lists
    for (const node of ['MatMul', 'MatMul_1'])
      expect(refused.find((r) => r.node === `/transformer/decoder/layers.0/multihead_attn/${node}`)?.reason).toMatch(
        new RegExp(`its weight is computed from "${inProj.replace(/\./g, '\\.')}" at run time, by tensor shapes`),
      );
  });

  it("a refused stream's later Adds cite the refusal it began with, not each other's", () => {
    const { refused } = analysisOf('seq5-transformer', 'seq5-transformer.calib.npz'),
      why = refused.find((r) => r.node === '/transformer/decoder/layers.0/linear2/MatMul')!.reason;
    // the third residual Add of the decoder layer, whose stream was refused at the first (tgt, a graph input)
    expect(why).toMatch(/^Add "\/transformer\/decoder\/layers\.0\/Add_2" combines the channels with /);
    expect(why.split('its channels are refused').length).toBe(2);
    expect(why).toMatch(/its channels are refused: Add "\/transformer\/decoder\/layers\.0\/Add" combines .* "tgt"/);
  });

  it("ALBERT's one layer run twice is refused: its weights are shared", () => {
    const { groups, refused } = analysisOf('seq5-albert', 'seq5-albert.calib.npz');
    expect(groups.map((g) => g.id)).toEqual(['/pooler/Gemm']);
    for (const layer of ['query', 'key', 'value'])
      for (const run of ['', '_1'])
        expect(refused.find((r) => r.node === `/attention/${layer}${run}/MatMul`)!.reason).toMatch(
          new RegExp(`constant "attention\\.${layer}\\.bias" is shared`),
        );
  });
});

describe("LeViT's attention biases", () => {
  it('attention_biases[:, attention_bias_idxs] keeps the rows of the kept heads', () => {
    const m = readModel(`${FIX}/seq5-levit.onnx`),
      heads = analysisOf('seq5-levit', 'seq5-levit.calib.npy').groups.find((g) => g.channels === 4)!;
    const biases = (x: typeof m) => tensorToFloat32(constantTensors(x.graph!).get('attention.attention_biases')!);
    const before = biases(m),
      after = biases(pruneGroups(m, [{ group: heads, keep: [0, 2] }]));
    expect(before.dims).toEqual([4, 16]);
    expect(after.dims).toEqual([2, 16]);
    expect([...after.data]).toEqual([...before.data.subarray(0, 16), ...before.data.subarray(32, 48)]);
  });
});
