import { describe, it, expect } from 'vitest';
import { DataType, readModel, tensorToFloat32, tensorToInt64, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import { Calibration, type InputData } from '../src/calibration.js';
import { analyze } from '../src/graph/analyze.js';
import { constantTensors } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { outInfo } from './graph-helpers.js';
import { describeFixtures } from './fixture-suite.js';

// Sequence models (test/fixtures/make-more-seq.py): small random-weight versions of HuggingFace architectures written
// in torch and exported with torch's defaults. Oracle: onnxruntime running the original with the dropped channels'
// consumer inputs zeroed, which is what removing a head or neuron means, on every input of the model (token ids,
// masks, audio, images); graph optimizations off, as in more-fixtures.test.ts (ReshapeFusion hides wrong shape
// entries).

const FIX = 'test/fixtures';

/** The calibration data of a fixture: an .npz (several inputs) or an .npy. */
const dataOf = (name: string): InputData =>
  name.endsWith('.npz') ? openNpz(`${FIX}/${name}`) : openNpy(`${FIX}/${name}`);

// Each group as [channels, producers, g of its consumers], in graph order; length: a shorter axis 1 to run at too, for
// the inputs whose axis 1 is free (tokens, audio samples).
const CASES: { model: string; calib: string; length?: number; groups: number[][] }[] = [
  // BLOOM: the heads of both layers are one group (the ALiBi slopes [heads, 1] are one table added to both layers'
  // scores); the fused query_key_value viewed as [B, T, heads, 3, d] (8 features a head); FFN neurons
  {
    model: 'seq-bloom',
    calib: 'seq-bloom.calib.npz',
    length: 5,
    groups: [
      [4, 2, 8],
      [128, 1, 1],
      [128, 1, 1],
    ],
  },
  // Falcon (parallel block, multi-query): FFN neurons; the query heads of the fused query_key_value (its one key and
  // value head stay); rotary embedding on half of each head
  {
    model: 'seq-falcon',
    calib: 'seq-falcon.calib.npy',
    length: 5,
    groups: [
      [128, 1, 1],
      [4, 1, 8],
      [128, 1, 1],
      [4, 1, 8],
    ],
  },
  // DeBERTa: FFN neurons and the pooler; the heads are refused (query_proj and key_proj also project the relative
  // embeddings)
  {
    model: 'seq-deberta',
    calib: 'seq-deberta.calib.npz',
    length: 5,
    groups: [
      [64, 1, 1],
      [64, 1, 1],
      [32, 1, 1],
    ],
  },
  // BART: encoder heads and neurons; per decoder layer self-attention heads, cross-attention heads, neurons
  {
    model: 'seq-bart',
    calib: 'seq-bart.calib.npz',
    length: 5,
    groups: [
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
  // MobileBERT (NoNorm: nothing normalises across channels): the hidden stream (the embedding transformation and both
  // output bottlenecks), per layer the intra-bottleneck stream (input bottleneck, attention output, FFN outputs), the
  // shared q/k bottleneck, heads, FFN neurons; the ELECTRA head's neurons
  {
    model: 'seq-mobilebert',
    calib: 'seq-mobilebert.calib.npz',
    length: 5,
    groups: [
      [64, 3, 1],
      [32, 4, 1],
      [32, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
      [64, 1, 1],
      [32, 4, 1],
      [32, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
      [64, 1, 1],
      [64, 1, 1],
    ],
  },
  // Wav2Vec2: the feature encoder's first two convs (GroupNorm with a group per channel), heads, neurons, projector
  {
    model: 'seq-wav2vec2',
    calib: 'seq-wav2vec2.calib.npy',
    length: 300,
    groups: [
      [32, 1, 3],
      [32, 1, 3],
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
      [16, 1, 1],
    ],
  },
  // Perceiver: the cross-attention's heads (2 of 16) and the self-attention's (4 of 8), whose merge reshape reads
  // heads · v_head_dim; neurons
  {
    model: 'seq-perceiver',
    calib: 'seq-perceiver.calib.npy',
    length: 5,
    groups: [
      [2, 3, 16],
      [64, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
  // DeiT: heads and neurons (the residual stream, with the class and distillation tokens, is normalised: it stays)
  {
    model: 'seq-deit',
    calib: 'seq-deit.calib.npy',
    groups: [
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
  // TrOCR-like: the conv encoder's stem, the decoder's self- and cross-attention heads and neurons
  {
    model: 'seq-ocr',
    calib: 'seq-ocr.calib.npz',
    length: 5,
    groups: [
      [16, 1, 9],
      [32, 1, 1],
      [4, 3, 8],
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, calib, length, groups }) => ({
    model: `${FIX}/${model}.onnx`,
    data: () => dataOf(calib),
    groups,
    length,
  })),
);

/** The analysis of a fixture at its calibration shapes. */
const analysisOf = (m: Model, calib: string) => analyze(m, Calibration.of(m, dataOf(calib)).shapes);

/** The INT64 or float values of a node's constant input, in `m`. */
function inputValues(m: Model, node: string, slot: number): number[] {
  const n = m.graph!.node.find((x) => x.name === node)!,
    t = constantTensors(m.graph!).get(n.input[slot]!)!;
  return t.dataType === DataType.INT64 ? [...tensorToInt64(t).data].map(Number) : [...tensorToFloat32(t).data];
}

describe("BLOOM's ALiBi: per-head slopes [heads, 1] times the positions, reshaped to [B · heads, 1, T]", () => {
  const SLOPES = { node: '/Mul_1', slot: 0 }, // the constant slopes times the positions [B, 1, T]
    COUNT = { node: '/Mul_2', slot: 1 }; // B · heads in the shape of the reshape to [B · heads, 1, T]

  it('slices the slopes with the heads and rewrites the head count of their reshape', () => {
    const m = readModel(`${FIX}/seq-bloom.onnx`),
      heads = analysisOf(m, 'seq-bloom.calib.npz').groups[0]!;
    const slopes = inputValues(m, SLOPES.node, SLOPES.slot);
    expect(slopes).toHaveLength(4);
    expect(inputValues(m, COUNT.node, COUNT.slot)).toEqual([4]);
    const pruned = pruneGroups(m, [{ group: heads, keep: [1, 3] }]);
    expect(inputValues(pruned, SLOPES.node, SLOPES.slot)).toEqual([slopes[1], slopes[3]]);
    expect(inputValues(pruned, COUNT.node, COUNT.slot)).toEqual([2]);
  });

  it('refuses the heads when the ALiBi tensor is also a graph output', () => {
    const m = readModel(`${FIX}/seq-bloom.onnx`);
    m.graph!.output.push(outInfo('/Reshape_output_0'));
    const { groups, refused } = analysisOf(m, 'seq-bloom.calib.npz');
    expect(groups.map((g) => g.id)).not.toContain('/h.0/self_attention/query_key_value/MatMul');
    const why = refused.find((r) => r.node === '/h.0/self_attention/query_key_value/MatMul')!.reason;
    expect(why).toMatch(/combines the channels with .*which no group owns/);
  });
});

// q = x[..., :-2, :], k = x[..., [-2], :], v = x[..., [-1], :]
describe("Falcon's fused query_key_value [B, T, heads + 2, d]", () => {
  it('pruning query heads keeps the key and value head: the bound and indices from the end become positive', () => {
    const m = readModel(`${FIX}/seq-falcon.onnx`),
      heads = analysisOf(m, 'seq-falcon.calib.npy').groups.find(
        (g) => g.id === '/h.0/self_attention/query_key_value/MatMul',
      )!;
    const at = (x: Model) => [
      inputValues(x, '/h.0/self_attention/Slice', 2),
      inputValues(x, '/h.0/self_attention/Gather_2', 1),
      inputValues(x, '/h.0/self_attention/Gather_3', 1),
    ];
    expect(at(m)).toEqual([[-2], [-2], [-1]]);
    expect(at(pruneGroups(m, [{ group: heads, keep: [0, 2, 3] }]))).toEqual([[3], [3], [4]]);
  });
});

describe("Perceiver's merge reshape to heads · v_head_dim (v_head_dim read from the values' shape)", () => {
  it('rewrites the head count of the product to the kept heads', () => {
    const m = readModel(`${FIX}/seq-perceiver.onnx`),
      heads = analysisOf(m, 'seq-perceiver.calib.npy').groups[0]!;
    const count = (x: Model) => inputValues(x, '/cross_attention/attention/Mul', 1);
    expect(count(m)).toEqual([2]);
    expect(count(pruneGroups(m, [{ group: heads, keep: [1] }]))).toEqual([1]);
  });
});

describe("DeBERTa's disentangled attention", () => {
  it('refuses the heads, saying that the projections are also applied to the relative embeddings', () => {
    const { refused } = analysisOf(readModel(`${FIX}/seq-deberta.onnx`), 'seq-deberta.calib.npz');
    const why = (node: string) => refused.find((r) => r.node === node)?.reason;
    expect(why('/layer.0/self/query_proj/MatMul')).toMatch(/layer\.0\.self\.query_proj\.bias" is shared/);
    expect(why('/layer.0/self/key_proj/MatMul')).toMatch(/layer\.0\.self\.key_proj\.bias" is shared/);
    expect(why('/layer.0/self/value_proj/MatMul')).toMatch(/pairs the channels with .*which no group owns/);
  });
});
