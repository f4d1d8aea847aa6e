import { describe, it, expect } from 'vitest';
import * as ort from 'onnxruntime-node';
import {
  DataType,
  float32Tensor,
  makeNode,
  makeTensorValueInfo,
  readModel,
  serializeModel,
  type Model,
} from '../src/onnx/index.js';
import { openNpy, type NpyFile } from '../src/npy.js';
import { Calibration } from '../src/calibration.js';
import { analyze } from '../src/graph/analyze.js';
import { inferShapes } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { outInfo, randomKeep, rng, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';

// Export patterns found on architectures the other fixtures do not cover (test/fixtures/make-more.py, torch's default
// export settings): a GPT-2-style decoder (position ids from a Range, a causal mask by Where, head_dim computed at run
// time as x.size(-1) // heads), a DistilBERT-style encoder (its padding mask expanded as the scores: Expand to the
// Shape of the scores), nn.MultiheadAttention (the batch merged with the heads: bsz · heads), an FPN upsampling to
// another level's size (Resize whose sizes are computed from shapes), PixelShuffle, and torchvision's Swin
// (shifted-window masks by ScatterND, Mod, a Pad whose pads are a reversed, transposed shape tensor), YOLOv5's SPPF
// (one group's channels four times in a Concat), T5 (a relative position bias computed from a constant table and
// added to every layer's scores), SVTR (torch's squeeze of a computed dimension: an If). Oracle:
// onnxruntime running the original with the dropped channels' consumer inputs zeroed, which is what removing a head
// or neuron means. The models run with onnxruntime's graph optimizations off: its ReshapeFusion replaces a shape
// computed from Shape nodes by 0 and -1 entries, which hides a wrong shape entry (a pruned GPT-2's head_dim) that
// ONNX's semantics and subprune's own captures (extra outputs) do not.

const FIX = 'test/fixtures';

const CASES = [
  // heads of the attention (8 features each; q, k and v are one fused c_attn cut by a Split), the FFN's neurons
  {
    model: `${FIX}/more-gpt2.onnx`,
    calib: `${FIX}/more-gpt2.calib.npy`,
    groups: [
      [4, 1, 8],
      [128, 1, 1],
    ],
  },
  // heads (the padding mask is expanded to the scores' shape at run time), FFN neurons
  {
    model: `${FIX}/more-distilbert.onnx`,
    calib: `${FIX}/more-distilbert.calib.npy`,
    groups: [
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
  // nn.MultiheadAttention: heads of the packed in_proj (q, k, v reshaped to [T, batch · heads, d]), FFN neurons
  {
    model: `${FIX}/more-mha.onnx`,
    calib: `${FIX}/more-mha.calib.npy`,
    groups: [
      [4, 1, 8],
      [64, 1, 1],
    ],
  },
  // PixelShuffle (DepthToSpace, CRD): a channel after it is a block of 4 filters of the conv before it
  {
    model: `${FIX}/more-pixel-shuffle.onnx`,
    calib: `${FIX}/more-pixel-shuffle.calib.npy`,
    groups: [
      [8, 1, 9],
      [8, 1, 9],
    ],
  },
  // backbone stages (each read by the next stage and its lateral), the FPN's laterals joined by the upsampling Adds
  // (one group of 4 producers), the smoothed maps (4 groups laid end to end by the Concat), the head's Conv and
  // ConvTranspose
  {
    model: `${FIX}/more-fpn-size.onnx`,
    calib: `${FIX}/more-fpn-size.calib.npy`,
    groups: [
      [4, 1, 9, 1],
      [8, 1, 9, 1],
      [12, 1, 9, 1],
      [16, 1, 1],
      [8, 4, 9],
      [2, 1, 9],
      [2, 1, 9],
      [2, 1, 9],
      [2, 1, 9],
      [2, 1, 1],
      [2, 1, 1],
    ],
  },
  // per block: heads (8 features each) and MLP neurons; the residual stream is refused (LayerNorm)
  {
    model: `${FIX}/more-swin.onnx`,
    calib: `${FIX}/more-swin.calib.npy`,
    groups: [
      [2, 1, 8],
      [64, 1, 1],
      [2, 1, 8],
      [64, 1, 1],
      [4, 1, 8],
      [128, 1, 1],
      [4, 1, 8],
      [128, 1, 1],
    ],
  },
  // YOLOv5's SPPF: the conv's channels four times in the Concat the next conv reads (x and three chained max pools);
  // the group-by-group captures must not cut that Concat as if it held them once
  {
    model: `${FIX}/more-sppf.onnx`,
    calib: `${FIX}/more-sppf.calib.npy`,
    groups: [
      [16, 1, 1],
      [8, 1, 1],
      [16, 1, 1],
    ],
  },
  // T5: the relative position bias, computed from one Embedding [buckets, heads] and added to both layers' scores,
  // is sliced along its heads, so both layers' heads are one group (6 producers: q, k, v of each layer); the gated
  // FFNs' neurons
  {
    model: `${FIX}/more-t5.onnx`,
    calib: `${FIX}/more-t5.calib.npy`,
    groups: [
      [4, 6, 8],
      [64, 2, 1],
      [64, 2, 1],
    ],
  },
  // T5 encoder-decoder: the encoder's heads; the decoder's self-attention heads of both layers (one relative position
  // bias plus the causal mask); its cross-attention heads of both layers (one torch.zeros((1, heads, T, S)) plus the
  // padding mask: the heads entry of that ConstantOfShape's shape shrinks once); the gated FFNs' neurons
  {
    model: `${FIX}/more-t5-seq2seq.onnx`,
    calib: `${FIX}/more-t5-seq2seq.calib.npy`,
    groups: [
      [4, 3, 8],
      [64, 2, 1],
      [4, 6, 8],
      [4, 6, 8],
      [64, 2, 1],
      [64, 2, 1],
    ],
  },
  // SVTR-tiny: the patch embedding's first conv, heads (a window mask on the local block) and FFN neurons of each
  // block; the last conv's channels pass torch's x.squeeze(2), an If whose branches are Squeeze and Identity
  {
    model: `${FIX}/more-svtr.onnx`,
    calib: `${FIX}/more-svtr.calib.npy`,
    groups: [
      [8, 1, 9],
      [2, 1, 8],
      [32, 1, 1],
      [2, 1, 8],
      [32, 1, 1],
      [4, 1, 8],
      [64, 1, 1],
      [48, 1, 1],
    ],
  },
];

/** The first output of `model` on the first n samples, by ONNX's semantics (no graph optimizations). */
async function outputs(model: Model, data: NpyFile, n = 8) {
  const session = await ort.InferenceSession.create(serializeModel(model), { graphOptimizationLevel: 'disabled' });
  try {
    const input = model.graph!.input[0]!.name,
      dims = [n, ...data.shape.slice(1)],
      x = data.readF32(0, n);
    const t =
      data.dtype === 'f4'
        ? new ort.Tensor('float32', x, dims)
        : new ort.Tensor('int64', BigInt64Array.from(x, BigInt), dims);
    const y = await session.run({ [input]: t });
    return (y[session.outputNames[0]!]!.data as Float32Array).slice();
  } finally {
    await session.release();
  }
}

describe.each(CASES)('$model', ({ model: path, calib, groups: expected }) => {
  it('every tensor has a shape, and the groups are the heads, neurons and channels expected', () => {
    const m = readModel(path),
      data = openNpy(calib);
    const shapes = Calibration.of(m, data).shapes;
    const known = inferShapes(m, shapes);
    expect(m.graph!.node.flatMap((n) => n.output).filter((o) => o && !known.has(o))).toEqual([]);
    const { groups } = analyze(m, shapes);
    data.close();
    expect(groups.map((g) => [g.channels, g.producers.length, ...new Set(g.consumers.map((c) => c.g))])).toEqual(
      expected,
    );
  });

  it('half of every group removed at random: the pruned model is the original with their inputs zeroed', async () => {
    const m = readModel(path),
      data = openNpy(calib);
    const { groups } = analyze(m, Calibration.of(m, data).shapes);
    const r = rng(5);
    const plans = groups.map((group) => ({ group, keep: randomKeep(group.channels, group.channels / 2, r) }));
    const got = await outputs(pruneGroups(m, plans), data);
    expect(relDiff(got, await outputs(zeroDroppedInputs(m, plans), data))).toBeLessThan(1e-4);
    data.close();
  });

  it('prunes end to end with the default mode', async () => {
    const m = readModel(path),
      data = openNpy(calib);
    const { model: pruned, report } = await prune(m, data, { budget: { keepRatio: 0.5 }, refit: false });
    expect(report.params.after).toBeLessThan(report.params.before);
    expect((await outputs(pruned, data, 4)).every(Number.isFinite)).toBe(true);
    data.close();
  });
});

describe('a table added per head (T5 relative position bias) that is also read elsewhere', () => {
  const BIAS = '/block.0/sa/Unsqueeze_5_output_0';
  const heads = (m: Model) => {
    const data = openNpy(`${FIX}/more-t5.calib.npy`);
    const a = analyze(m, Calibration.of(m, data).shapes);
    data.close();
    return a;
  };

  it('is sliced with every site that adds it to heads', () => {
    const { groups } = heads(readModel(`${FIX}/more-t5.onnx`));
    const g = groups.find((x) => x.id === '/block.0/sa/q/MatMul')!;
    const table = g.slices.filter((s) => s.tensor === 'block.0.sa.relative_attention_bias.weight');
    expect(table.map((s) => [s.axis, s.offset, s.per])).toEqual([[1, 0, 1]]);
  });

  it('carries the heads on the way from the constant (value_info declaring their old count is dropped)', () => {
    const m = readModel(`${FIX}/more-t5.onnx`);
    m.graph!.valueInfo.push(makeTensorValueInfo(BIAS, DataType.FLOAT, [1, 4, 'seq', 'seq']));
    const group = heads(m).groups.find((x) => x.id === '/block.0/sa/q/MatMul')!;
    expect(group.tensors.filter((t) => t.tensor === BIAS).map((t) => t.axis)).toEqual([1]);
    expect(pruneGroups(m, [{ group, keep: [0, 2] }]).graph!.valueInfo.map((v) => v.name)).not.toContain(BIAS);
  });

  it('refuses the heads when the bias is also added to a tensor whose heads no group owns', () => {
    const m = readModel(`${FIX}/more-t5.onnx`);
    const g = m.graph!;
    g.initializer.push(float32Tensor('per_head', [1, 4, 1, 1], new Float32Array(4).fill(1)));
    g.node.push(makeNode('Add', [BIAS, 'per_head'], ['bias_plus'], [], 'extra_add'));
    g.output.push(outInfo('bias_plus'));
    const { groups, refused } = heads(m);
    expect(groups.map((x) => x.id)).not.toContain('/block.0/sa/q/MatMul');
    const why = refused.find((r) => r.node === '/block.0/sa/q/MatMul')!.reason;
    expect(why).toContain('block.0.sa.relative_attention_bias.weight');
    expect(why).toContain('extra_add');
  });

  it('refuses the heads when the bias is a graph output', () => {
    const m = readModel(`${FIX}/more-t5.onnx`);
    m.graph!.output.push(outInfo(BIAS));
    const { groups } = heads(m);
    expect(groups.map((x) => x.id)).not.toContain('/block.0/sa/q/MatMul');
  });
});

describe("torch's squeeze If (more-svtr)", () => {
  it("the pruned If's branches declare no stale output shape (onnxruntime merges them only leniently)", () => {
    const m = readModel(`${FIX}/more-svtr.onnx`),
      data = openNpy(`${FIX}/more-svtr.calib.npy`);
    const { groups } = analyze(m, Calibration.of(m, data).shapes);
    data.close();
    const group = groups.find((g) => g.id === '/last/Conv')!;
    const pruned = pruneGroups(m, [{ group, keep: [0, 1, 2] }]);
    const branches = pruned.graph!.node.find((n) => n.opType === 'If')!.attribute.map((a) => a.g!);
    const declared = branches.flatMap((g) => g.output.map((o) => o.type?.value.value?.shape));
    expect(declared).toEqual([undefined, undefined]);
  });
});
