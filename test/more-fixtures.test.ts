import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import {
  DataType,
  float32Tensor,
  numel,
  setTensorData,
  makeNode,
  makeTensorValueInfo,
  readModel,
  tensorToFloat32,
  tensorToInt64,
  type Model,
} from '../src/onnx/index.js';
import { openNpy, type NpyFile } from '../src/npy.js';
import { Calibration } from '../src/calibration.js';
import { analyze } from '../src/graph/analyze.js';
import { opOf } from '../src/graph/ops.js';
import { constantTensors } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { refitSweep } from '../src/prune/sweep.js';
import { captureGrams } from '../src/capture/index.js';
import { outInfo, randomKeep, rng, run, smallModel, zeroDroppedInputs } from './graph-helpers.js';
import { describeFixtures, fixtureOutputs } from './fixture-suite.js';
import { relDiff } from './objective.js';
import { channelCols, gramOf, leastSquares, withOnes, type Mat } from './oracle.js';

// Export patterns found on architectures the other fixtures do not cover (test/fixtures/make-more.py, torch's default
// export settings): a GPT-2-style decoder (position ids from a Range, a causal mask by Where, head_dim computed at run
// time as x.size(-1) // heads), a DistilBERT-style encoder (its padding mask expanded as the scores: Expand to the
// Shape of the scores), nn.MultiheadAttention (the batch merged with the heads: bsz · heads), an FPN upsampling to
// another level's size (Resize whose sizes are computed from shapes), PixelShuffle, and torchvision's Swin
// (shifted-window masks by ScatterND, Mod, a Pad whose pads are a reversed, transposed shape tensor), YOLOv5's SPPF
// (one group's channels four times in a Concat), 1-D convolutions (Whisper's front end, a TCN, Conformer's conv module,
// a 1-D U-Net with ConvTranspose1d), GhostNet's modules (a Concat of a conv and its depthwise copy, sliced; the
// residual Add of one run of channels with it), PaddleOCR's DBFPN exported without constant folding (Resize's scales a
// Concat of Constants), a static export with a batch of 2, T5 (a relative position bias computed from a constant table
// and added to every layer's scores), SVTR (torch's squeeze of a computed dimension: an If). Oracle:
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
  // Conv1d (input [b, C, L], weight [m, C, k]): Whisper's front end, its first conv's channels read by the strided
  // second conv (3 taps each); the heads (q, k, v; the scale (C // heads) ** -0.25 computed from q's shape at run
  // time, its divisor rewritten to the kept heads); the MLP's neurons. Refused: the residual stream (LayerNorm)
  {
    model: `${FIX}/more-whisper.onnx`,
    calib: `${FIX}/more-whisper.calib.npy`,
    groups: [
      [16, 1, 3],
      [2, 3, 8],
      [64, 1, 1],
    ],
  },
  // a TCN: each block's first conv read by its dilated causal second conv (the padding cut by a Slice on the time
  // axis); the residual stream of the three blocks and the 1×1 downsample, read by the next blocks' convs and, through
  // a Gather of the last time step, the Linear
  {
    model: `${FIX}/more-tcn.onnx`,
    calib: `${FIX}/more-tcn.calib.npy`,
    groups: [
      [8, 1, 3],
      [8, 4, 3, 1],
      [8, 1, 3],
      [8, 1, 3],
    ],
  },
  // Conformer's conv module: the pointwise conv's halves joined by GLU (Split, Sigmoid, Mul), through the depthwise
  // Conv1d to the second pointwise conv
  {
    model: `${FIX}/more-conformer-conv.onnx`,
    calib: `${FIX}/more-conformer-conv.calib.npy`,
    groups: [[16, 1, 1]],
  },
  // a 1-D encoder-decoder: 1-D MaxPool, AveragePool (after a Pad) and a BatchNormalization kept after a
  // ConvTranspose1d; ConvTranspose1d as producer and as consumer (its input pixels: 1 column per channel)
  {
    model: `${FIX}/more-unet1d.onnx`,
    calib: `${FIX}/more-unet1d.calib.npy`,
    groups: [
      [8, 1, 3],
      [16, 1, 1],
      [8, 1, 1],
      [8, 1, 1],
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

describeFixtures(CASES.map(({ model, calib, groups }) => ({ model, data: () => openNpy(calib), groups })));

// A Conv1d consumer (input [b, C, L], weight [m, C, k]) against a float64 oracle: its input as onnxruntime computes it,
// patches built here from the definition of a 1-D convolution (stride, dilation, zero padding), G = BᵀB and the
// layerwise re-fit (with its intercept) by least squares on those patches.

/** Patches of x [N, C, L] for a kernel of k taps: a row per sample and output position, columns c·k + j. */
function patches1d(x: Float32Array, [N, C, L]: number[], k: number, stride: number, pad: number, dil: number): Mat {
  const out = Math.floor((L + 2 * pad - dil * (k - 1) - 1) / stride) + 1,
    d = C * k,
    a = new Float64Array(N * out * d);
  for (let s = 0; s < N; s++)
    for (let t = 0; t < out; t++)
      for (let c = 0; c < C; c++)
        for (let j = 0; j < k; j++) {
          const at = t * stride - pad + j * dil;
          if (at >= 0 && at < L) a[(s * out + t) * d + c * k + j] = x[(s * C + c) * L + at]!;
        }
  return { rows: N * out, cols: d, a };
}

/** A Conv's weight as the d×m matrix W (its [m, C, k] transposed) and its bias. */
function convMatrix(model: Model, name: string): { W: Float64Array; bias: Float32Array; m: number } {
  const node = model.graph!.node.find((n) => n.name === name)!,
    consts = constantTensors(model.graph!);
  const { dims, data } = tensorToFloat32(consts.get(node.input[1]!)!),
    m = dims[0]!,
    d = data.length / m,
    W = new Float64Array(d * m);
  for (let o = 0; o < m; o++) for (let i = 0; i < d; i++) W[i * m + o] = data[o * d + i]!;
  return { W, bias: tensorToFloat32(consts.get(node.input[2]!)!).data, m };
}

describe.each([
  // Whisper's second conv: stride 2, padding 1
  { model: 'more-whisper', consumer: '/conv2/Conv', k: 3, stride: 2, pad: 1, dil: 1 },
  // a TCN block's second conv: dilation 2, causal padding (k − 1)·2 on both sides
  { model: 'more-tcn', consumer: '/blocks/blocks.1/conv2/Conv', k: 3, stride: 1, pad: 4, dil: 2 },
])(
  'a Conv1d consumer ($model $consumer) against a float64 oracle',
  ({ model: name, consumer, k, stride, pad, dil }) => {
    const path = `${FIX}/${name}.onnx`,
      calibPath = `${FIX}/${name}.calib.npy`;

    /** The consumer's input from onnxruntime on every calibration sample, and its patches. */
    async function oracleInput(m: Model, data: NpyFile): Promise<Mat> {
      const input = m.graph!.node.find((n) => n.name === consumer)!.input[0]!,
        dims = data.shape;
      const x = (await run(m, { data: data.readF32(0, dims[0]!), dims }, [input])).get(input)!;
      expect(x.dims.length).toBe(3);
      return patches1d(x.data, x.dims, k, stride, pad, dil);
    }

    it('its G and column sums are those of the patches', async () => {
      const m = readModel(path),
        data = openNpy(calibPath),
        calib = Calibration.of(m, data);
      const group = analyze(m, calib.shapes).groups.find((g) => g.consumers.some((c) => c.node.name === consumer))!;
      const at = group.consumers.findIndex((c) => c.node.name === consumer),
        got = (await captureGrams(m, [group], calib)).get(group.id)![at]!;
      const B = await oracleInput(m, data);
      data.close();
      expect([got.d, got.rows]).toEqual([B.cols, B.rows]);
      const G = gramOf(B),
        scale = Math.max(...G.map(Math.abs));
      G.forEach((v, i) => expect(Math.abs(got.G[i]! - v)).toBeLessThan(1e-5 * scale));
      const sums = new Float64Array(B.cols);
      for (let r = 0; r < B.rows; r++) for (let j = 0; j < B.cols; j++) sums[j] += B.a[r * B.cols + j]!;
      expect(relDiff(got.sums!, sums)).toBeLessThan(1e-5);
    });

    it('its layerwise re-fit: least squares of the original outputs on the kept channels, intercept', async () => {
      const m = readModel(path),
        data = openNpy(calibPath);
      const consumed = analyze(m, Calibration.of(m, data).shapes).groups.find((g) =>
        g.consumers.some((c) => c.node.name === consumer),
      )!;
      const { model: pruned, report } = await prune(m, data, { budget: { keepRatio: 0.5 }, mode: 'layerwise' });
      const B = await oracleInput(m, data);
      data.close();
      const before = convMatrix(m, consumer),
        after = convMatrix(pruned, consumer);
      // the kept input channels (the group it consumes), the kept outputs (the group it produces, if any)
      const sorted = (id: string) => [...report.groups.find((g) => g.id === id)!.order].sort((a, b) => a - b);
      const keep = sorted(consumed.id);
      const made = report.groups.find((g) => g.producers.includes(consumer));
      const outs = made ? sorted(made.id) : Array.from({ length: before.m }, (_, i) => i);
      expect(keep.length).toBeLessThan(B.cols / k);
      expect(after.m).toBe(outs.length);
      // T = B W (the original outputs, bias aside) for the kept outputs; W' and δ from [B_S | 1]
      const T: Mat = { rows: B.rows, cols: outs.length, a: new Float64Array(B.rows * outs.length) };
      for (let r = 0; r < B.rows; r++)
        outs.forEach((o, j) => {
          let v = 0;
          for (let i = 0; i < B.cols; i++) v += B.a[r * B.cols + i]! * before.W[i * before.m + o]!;
          T.a[r * outs.length + j] = v;
        });
      const cols = channelCols(keep, k),
        want = fitWithIntercept(B, cols, T);
      expect(relDiff(after.W, want.W)).toBeLessThan(2e-3);
      const delta = Array.from(after.bias, (b, j) => b - before.bias[outs[j]!]!);
      expect(relDiff(delta, want.bias)).toBeLessThan(2e-3);
      // the weights changed: not the original's rows of the kept channels
      const sliced = cols.flatMap((c) => outs.map((o) => before.W[c * before.m + o]!));
      expect(relDiff(after.W, sliced)).toBeGreaterThan(1e-2);
    });

    it("--sweep's re-fit: least squares of the original outputs on the pruned model's input", async () => {
      const m = readModel(path),
        data = openNpy(calibPath);
      const { model: pruned, report } = await prune(m, data, { budget: { keepRatio: 0.5 }, mode: 'layerwise' });
      const keeps = new Map(report.groups.map((g) => [g.id, [...g.order].sort((a, b) => a - b)]));
      const swept = await refitSweep(m, pruned, keeps, Calibration.of(pruned, data), {
        intercept: true,
        only: (n) => n === consumer,
      });
      const B = await oracleInput(pruned, data),
        output = m.graph!.node.find((n) => n.name === consumer)!.output[0]!,
        dims = data.shape;
      const y = (await run(m, { data: data.readF32(0, dims[0]!), dims }, [output])).get(output)!;
      data.close();
      const made = report.groups.find((g) => g.producers.includes(consumer)),
        [N, M, L] = y.dims as [number, number, number],
        outs = made ? keeps.get(made.id)! : Array.from({ length: M }, (_, i) => i);
      // T: the original model's outputs (bias included) of the kept output channels, a row per sample and position
      const T: Mat = { rows: N * L, cols: outs.length, a: new Float64Array(N * L * outs.length) };
      for (let s = 0; s < N; s++)
        for (let t = 0; t < L; t++)
          outs.forEach((o, j) => (T.a[(s * L + t) * outs.length + j] = y.data[(s * M + o) * L + t]!));
      const want = fitWithIntercept(
          B,
          Array.from({ length: B.cols }, (_, i) => i),
          T,
        ),
        got = convMatrix(swept, consumer);
      expect(relDiff(got.W, want.W)).toBeLessThan(2e-3);
      expect(relDiff(got.bias, want.bias)).toBeLessThan(2e-3);
    });
  },
);

/** min ‖B_cols W + 1 biasᵀ − T‖ by QR of [1 | B_cols] in float64 (oracle.ts's least squares). */
function fitWithIntercept(B: Mat, cols: number[], T: Mat): { W: Float64Array; bias: Float64Array } {
  const d = cols.length,
    BS: Mat = { rows: B.rows, cols: d, a: new Float64Array(B.rows * d) };
  for (let r = 0; r < B.rows; r++) cols.forEach((c, j) => (BS.a[r * d + j] = B.a[r * B.cols + c]!));
  const X = leastSquares(withOnes(BS), T, [d, ...Array.from({ length: d }, (_, i) => i)]);
  return { W: X.slice(T.cols), bias: X.slice(0, T.cols) };
}

describe("Whisper's attention scale (C // heads) ** -0.25, C read from q's shape at run time", () => {
  const divisorOf = (m: Model) => {
    const shape = m.graph!.node.find((n) => n.opType === 'Shape' && n.input[0] === '/query/Add_output_0')!;
    const gather = m.graph!.node.find((n) => n.opType === 'Gather' && n.input[0] === shape.output[0])!;
    return m.graph!.node.find((n) => n.opType === 'Div' && n.input[0] === gather.output[0])!.input[1]!;
  };
  const shapes = (m: Model) => {
    const data = openNpy(`${FIX}/more-whisper.calib.npy`);
    const s = Calibration.of(m, data).shapes;
    data.close();
    return s;
  };

  it('pruning a head writes the kept heads into the divisor (the random-removal case checks the outputs)', () => {
    const m = readModel(`${FIX}/more-whisper.onnx`),
      heads = analyze(m, shapes(m)).groups.find((g) => g.id === '/query/MatMul')!;
    const divisor = divisorOf(m),
      value = (x: Model) => [...tensorToInt64(constantTensors(x.graph!).get(divisor)!).data];
    expect(value(m)).toEqual([2n]);
    expect(value(pruneGroups(m, [{ group: heads, keep: [1] }]))).toEqual([1n]);
  });

  it('refuses the heads when another node reads the divisor too', () => {
    const m = readModel(`${FIX}/more-whisper.onnx`),
      divisor = divisorOf(m);
    m.graph!.node.push(makeNode('Identity', [divisor], ['divisor_copy'], [], 'copy'));
    m.graph!.output.push(outInfo('divisor_copy'));
    const heads = analyze(m, shapes(m)).refused.find((r) => r.node === '/query/MatMul')!;
    expect(heads.reason).toMatch(/Shape "\/Shape": the channel count it reads becomes a value \(Cast .* to float\)/);
  });
});

describe("a model saved by onnxruntime's graph optimizer", () => {
  // optimizedModelFilePath writes com.microsoft ops. Level extended: FusedConv (a Conv with its Relu), a layer of the
  // table, so the groups are the exported model's (before: all refused). Level all: NCHWc Convs (a blocked channel
  // layout for the CPU that wrote them), refused, each refusal naming the op and saying to prune the exported model
  // (before: "an op before it has no shape rule", or no refusal at all, since the NCHWc Convs were no candidates)
  const optimize = async (level: 'extended' | 'all') => {
    const dir = mkdtempSync(join(tmpdir(), 'subprune-ort-'));
    try {
      const optimized = join(dir, 'optimized.onnx');
      const session = await ort.InferenceSession.create(`${FIX}/more-pixel-shuffle.onnx`, {
        graphOptimizationLevel: level,
        optimizedModelFilePath: optimized,
        logSeverityLevel: 3,
      });
      await session.release();
      return readModel(optimized);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const signature = (m: Model) =>
    analyze(m).groups.map((g) => [g.channels, g.producers.map((p) => p.name).sort(), g.consumers.length]);

  it("level extended: FusedConv is a Conv, the groups are the exported model's", async () => {
    const m = await optimize('extended');
    expect(m.graph!.node.some((n) => opOf(n) === 'com.microsoft::FusedConv')).toBe(true);
    const want = signature(readModel(`${FIX}/more-pixel-shuffle.onnx`));
    expect(want.length).toBeGreaterThan(0);
    expect(signature(m)).toEqual(want);
  });

  it('level all: refused, naming the fused op', async () => {
    const m = await optimize('all');
    expect(m.graph!.node.some((n) => n.domain === 'com.microsoft.nchwc')).toBe(true);
    const { groups, refused } = analyze(m);
    expect(groups).toEqual([]);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused.filter((x) => x.reason !== 'output layer: no consumer'))
      expect(r.reason).toMatch(/com\.microsoft(\.nchwc)?::\w+.*prune the model as exported, then optimize$/);
  });
});

describe('a quantized model', () => {
  // what to do is prune the float model, then quantize: every refusal says so (before, "its weight is not a constant",
  // or for QLinearConv no refusal at all: nothing listed)
  const QUANTIZED = /the model is quantized: prune the float model, then quantize the pruned one$/;

  it('quantization-aware training as torch exports it: every layer refused, saying so', () => {
    const { groups, refused } = analyze(readModel(`${FIX}/more-qat.onnx`));
    expect(groups).toEqual([]);
    expect(refused.map((r) => r.node)).toEqual(['/c1/Conv', '/c2/Conv', '/fc/Gemm']);
    for (const r of refused) expect(r.reason).toMatch(QUANTIZED);
  });

  it('a QLinearConv (integer weights in the layer) is refused, saying so', () => {
    const int8 = (name: string, dims: number[], dataType = DataType.INT8) => {
      const t = float32Tensor(name, dims, new Float32Array(numel(dims)));
      setTensorData(t, dims, dataType, new Uint8Array(numel(dims)));
      return t;
    };
    const scale = (name: string) => float32Tensor(name, [], new Float32Array([0.1]));
    const m = smallModel(
      [
        makeNode('QuantizeLinear', ['x', 's', 'z'], ['xq'], [], 'q'),
        makeNode('QLinearConv', ['xq', 's', 'z', 'w', 's', 'z', 's', 'z'], ['yq'], [], 'qconv'),
        makeNode('DequantizeLinear', ['yq', 's', 'z'], ['y'], [], 'dq'),
      ],
      [scale('s'), int8('z', [], DataType.UINT8), int8('w', [4, 3, 1, 1])],
      [1, 3, 4, 4],
    );
    const { refused } = analyze(m);
    expect(refused).toHaveLength(1);
    expect(refused[0]!.node).toBe('qconv');
    expect(refused[0]!.reason).toMatch(QUANTIZED);
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
    const got = await fixtureOutputs(pruneGroups(m, plans), data, 2);
    expect(relDiff(got, await fixtureOutputs(zeroDroppedInputs(m, plans), data, 2))).toBeLessThan(1e-4);
    data.close();
  });

  it('prunes end to end with the default mode; FLOPs per sample as at batch 1', async () => {
    const m = readModel(path),
      data = openNpy(calib);
    const { model: pruned, report } = await prune(m, data, { budget: { compression: 2 } });
    // per sample: Conv 3→8 3×3 on 8×8, Conv 8→8 3×3 stride 2 to 4×4, Gemm 128→10, each 2 FLOPs per MAC
    expect(report.flops.before).toBe(2 * (64 * 8 * 27 + 16 * 8 * 72 + 128 * 10));
    expect(report.params.after).toBeLessThan(report.params.before);
    expect((await fixtureOutputs(pruned, data, 2)).every(Number.isFinite)).toBe(true);
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
