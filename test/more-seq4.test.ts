import { describe, it, expect } from 'vitest';
import { readModel, tensorToInt64, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { constantTensors } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { outInfo } from './graph-helpers.js';
import { analyzeFixture, describeFixtures } from './fixture-suite.js';

// Decoder LLMs, CLIP, MLP-Mixer, SegFormer and DETR (test/fixtures/make-more-seq4.py): small random-weight versions
// written in plain torch as the HuggingFace/timm code writes them, exported with torch's defaults. Oracle
// (describeFixtures): onnxruntime running the original with the dropped channels' consumer inputs zeroed.

const FIX = 'test/fixtures';

// Each group as [channels, producers, g of its consumers], in graph order; length: a shorter sequence to run at too.
const CASES: { model: string; length?: number; groups: number[][] }[] = [
  // LLaMA: per layer the heads under grouped-query attention (a channel is one key/value head with its 2 query
  // heads: 16 columns of o_proj), rotary embeddings on whole heads; SwiGLU's gate and up projections
  {
    model: 'seq4-llama',
    length: 5,
    groups: [
      [2, 3, 16],
      [64, 2, 1],
      [2, 3, 16],
      [64, 2, 1],
    ],
  },
  // Qwen2: the same with q/k/v biases (sliced with the heads) and a tied lm_head
  {
    model: 'seq4-qwen2',
    length: 5,
    groups: [
      [2, 3, 16],
      [64, 2, 1],
    ],
  },
  // Gemma: multi-query attention's one value head (its 16 dimensions: Expand repeats it for the query heads, and the
  // Reshape that merges the heads with the last axis repeats the channels once per head, which o_proj reads); GeGLU's
  // neurons
  {
    model: 'seq4-gemma',
    length: 5,
    groups: [
      [16, 1, 1],
      [64, 2, 1],
    ],
  },
  // GPT-NeoX: per layer the heads of the fused query_key_value viewed as [B, T, heads, 3·d] (its one producer; their
  // count also shapes the zeros [B·heads, T, T] that baddbmm adds the scores to), partial rotary; the MLP's neurons
  {
    model: 'seq4-neox',
    length: 5,
    groups: [
      [2, 1, 16],
      [128, 1, 1],
      [2, 1, 16],
      [128, 1, 1],
    ],
  },
  // Phi: heads (partial rotary on half of each head) and neurons, both read the one LayerNorm
  {
    model: 'seq4-phi',
    length: 5,
    groups: [
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
  // CLIP: heads and neurons of the text encoder and of the image tower
  {
    model: 'seq4-clip-text',
    length: 5,
    groups: [
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
  {
    model: 'seq4-clip-vision',
    groups: [
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
  // MLP-Mixer: per block the token-mixing MLP's hidden units (a Linear over the token axis) and the channel MLP's
  {
    model: 'seq4-mixer',
    groups: [
      [32, 1, 1],
      [64, 1, 1],
      [32, 1, 1],
      [64, 1, 1],
    ],
  },
  // SegFormer: heads (keys and values from the strided conv over the tokens as an image) and Mix-FFN's neurons,
  // through its depthwise conv
  {
    model: 'seq4-segformer',
    groups: [
      [2, 3, 16],
      [128, 1, 1],
    ],
  },
  // DETR: per decoder layer self-attention heads, cross-attention heads, FFN neurons; the box MLP's hidden units
  {
    model: 'seq4-detr',
    length: 7,
    groups: [
      [4, 3, 8],
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [4, 3, 8],
      [64, 1, 1],
      [32, 1, 1],
      [32, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, length, groups }) => ({
    model: `${FIX}/${model}.onnx`,
    data: () => openNpy(`${FIX}/${model}.calib.npy`),
    groups,
    length,
  })),
);

/** The analysis of a fixture at its calibration shapes. */
const analysisOf = (m: Model, name: string) => analyzeFixture(m, () => openNpy(`${FIX}/${name}.calib.npy`));

describe("GPT-NeoX's baddbmm onto torch.zeros(B · heads, T, T)", () => {
  const QKV = '/layers.0/attention/query_key_value/MatMul',
    HEADS = '/layers.0/attention/Constant_66_output_0', // the factor of B · heads
    ZEROS = '/layers.0/attention/ConstantOfShape_output_0';

  it('the factor of B · heads, read by the q and k reshapes and by the zeros, shrinks with the heads once', () => {
    const m = readModel(`${FIX}/seq4-neox.onnx`),
      heads = analysisOf(m, 'seq4-neox').groups.find((g) => g.id === QKV)!;
    const count = (x: Model) => [...tensorToInt64(constantTensors(x.graph!).get(HEADS)!).data].map(Number);
    expect(count(m)).toEqual([2]);
    expect(count(pruneGroups(m, [{ group: heads, keep: [1] }]))).toEqual([1]);
  });

  it('refuses the heads when the zeros are also a graph output', () => {
    const m = readModel(`${FIX}/seq4-neox.onnx`);
    m.graph!.output.push(outInfo(ZEROS));
    const { groups, refused } = analysisOf(m, 'seq4-neox');
    expect(groups.map((g) => g.id)).not.toContain(QKV);
    expect(refused.find((r) => r.node === QKV)!.reason).toMatch(/head count .* is read by other nodes than reshapes/);
  });

  it('refuses the heads when no group meets the zeros: the factor their reshapes shrink would change only them', () => {
    const m = readModel(`${FIX}/seq4-neox.onnx`),
      node = (name: string) => m.graph!.node.find((n) => n.name === `/layers.0/attention/${name}`)!;
    // the scores go on without the zeros, which are added to themselves and read by nothing
    node('Reshape_3').input[0] = node('Add_2').input[0]!;
    node('Add_2').input[0] = node('Add_2').input[1]!;
    const { groups, refused } = analysisOf(m, 'seq4-neox');
    expect(groups.map((g) => g.id)).not.toContain(QKV);
    const why = refused.find((r) => r.node === QKV)!.reason;
    expect(why).toBe(
      `its count "${HEADS}" also shapes ConstantOfShape "/layers.0/attention/ConstantOfShape", ` +
        "which no group's channels meet",
    );
  });
});

describe("DETR's decoder stream", () => {
  it('is refused saying that it starts from a tensor computed from constants (zeros), not from a branch', () => {
    const { refused } = analysisOf(readModel(`${FIX}/seq4-detr.onnx`), 'seq4-detr');
    const why = refused.find((r) => r.node === '/layers.0/self_attn/out_proj/MatMul')!.reason;
    // before: "(e.g. a branch subprune cannot prune)"
    expect(why).toMatch(/with "\/ConstantOfShape_1_output_0", which no group owns \(it is computed from constants and/);
  });
});
