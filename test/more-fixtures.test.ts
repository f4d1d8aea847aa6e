import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { readModel, serializeModel, type Model } from '../src/onnx/index.js';
import { openNpy, type NpyFile } from '../src/npy.js';
import { Calibration } from '../src/calibration.js';
import { analyze } from '../src/graph/analyze.js';
import { inferShapes } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { randomKeep, rng, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';

// Export patterns found on architectures the other fixtures do not cover (test/fixtures/make-more.py, torch's default
// export settings): a GPT-2-style decoder (position ids from a Range, a causal mask by Where, head_dim computed at run
// time as x.size(-1) // heads), a DistilBERT-style encoder (its padding mask expanded as the scores: Expand to the
// Shape of the scores), nn.MultiheadAttention (the batch merged with the heads: bsz · heads), an FPN upsampling to
// another level's size (Resize whose sizes are computed from shapes), PixelShuffle, and torchvision's Swin
// (shifted-window masks by ScatterND, Mod, a Pad whose pads are a reversed, transposed shape tensor), YOLOv5's SPPF
// (one group's channels four times in a Concat), GhostNet's modules (a Concat of a conv and its depthwise copy, sliced;
// the residual Add of one run of channels with it), PaddleOCR's DBFPN exported without constant folding (Resize's
// scales a Concat of Constants), a static export with a batch of 2. Oracle:
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
  // GhostNet: a ghost module's Concat of a conv and its depthwise copy, sliced to an odd width (the last channel once,
  // the others twice: the conv's output cut into two groups, whose ids must differ), and the residual stream, where
  // the block's input channels i and i + 4 become one channel with the second module's conv channel i
  {
    model: `${FIX}/more-ghost.onnx`,
    calib: `${FIX}/more-ghost.calib.npy`,
    groups: [
      [4, 3, 1],
      [7, 1, 1],
      [1, 1, 1],
      [11, 1, 1],
      [1, 1, 1],
    ],
  },
  // PaddleOCR's DBFPN exported with do_constant_folding=False: the nearest upsamplings' scales are a Concat of two
  // Constants (no Resize output shape before: the FPN and head were refused); groups as in more-fpn-size
  {
    model: `${FIX}/more-dbfpn-nofold.onnx`,
    calib: `${FIX}/more-dbfpn-nofold.calib.npy`,
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
    const plans = groups.map((group) => ({
      group,
      keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
    }));
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

describe("a model saved by onnxruntime's graph optimizer", () => {
  // optimizedModelFilePath writes com.microsoft ops (FusedConv: a Conv with its Relu; NCHWc Convs) that ONNX does not
  // define: refused, each refusal naming the op and saying to prune the exported model (before: "an op before it has
  // no shape rule", or at level all no refusal at all, since the NCHWc Convs were no candidates)
  it.each(['extended', 'all'] as const)('level %s: refused, naming the fused op', async (level) => {
    const dir = mkdtempSync(join(tmpdir(), 'subprune-ort-'));
    try {
      const optimized = join(dir, 'optimized.onnx');
      const session = await ort.InferenceSession.create(`${FIX}/more-pixel-shuffle.onnx`, {
        graphOptimizationLevel: level,
        optimizedModelFilePath: optimized,
      });
      await session.release();
      const m = readModel(optimized);
      expect(m.graph!.node.some((n) => n.domain.startsWith('com.microsoft'))).toBe(true);
      const { groups, refused } = analyze(m);
      expect(groups).toEqual([]);
      expect(refused.length).toBeGreaterThan(0);
      for (const r of refused.filter((x) => x.reason !== 'output layer: no consumer'))
        expect(r.reason).toMatch(/com\.microsoft(\.nchwc)?::\w+.*prune the model as exported, then optimize$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a static export with a batch of 2 (no dynamic_axes)', () => {
  // input [2, 3, 8, 8] and x.view(x.size(0), -1) as Reshape(x, [2, -1]): the analysis sized the model at batch 1,
  // which the declared input refused ("input shape [1, 3, 8, 8] does not match"); onnxruntime runs it 2 rows at a time
  const path = `${FIX}/more-static-batch2.onnx`,
    calib = `${FIX}/more-static-batch2.calib.npy`;

  it('half of every group removed at random: the pruned model is the original with their inputs zeroed', async () => {
    const m = readModel(path),
      data = openNpy(calib);
    const { groups } = analyze(m, Calibration.of(m, data).shapes);
    expect(groups.map((g) => [g.channels, g.consumers[0]!.g])).toEqual([
      [8, 9],
      [8, 16],
    ]);
    const r = rng(5);
    const plans = groups.map((group) => ({ group, keep: randomKeep(group.channels, group.channels / 2, r) }));
    const got = await outputs(pruneGroups(m, plans), data, 2);
    expect(relDiff(got, await outputs(zeroDroppedInputs(m, plans), data, 2))).toBeLessThan(1e-4);
    data.close();
  });

  it('prunes end to end with the default mode; FLOPs per sample as at batch 1', async () => {
    const m = readModel(path),
      data = openNpy(calib);
    const { model: pruned, report } = await prune(m, data, { budget: { compression: 2 } });
    // per sample: Conv 3→8 3×3 on 8×8, Conv 8→8 3×3 stride 2 to 4×4, Gemm 128→10, each 2 FLOPs per MAC
    expect(report.flops.before).toBe(2 * (64 * 8 * 27 + 16 * 8 * 72 + 128 * 10));
    expect(report.params.after).toBeLessThan(report.params.before);
    expect((await outputs(pruned, data, 2)).every(Number.isFinite)).toBe(true);
    data.close();
  });
});
