import { openNpy } from '../src/npy.js';
import { describeFixtures } from './fixture-suite.js';

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
  // Gemma: GeGLU's neurons
  { model: 'seq4-gemma', length: 5, groups: [[64, 2, 1]] },
  // GPT-NeoX: the MLP's neurons
  {
    model: 'seq4-neox',
    length: 5,
    groups: [
      [128, 1, 1],
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
