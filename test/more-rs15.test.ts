import { afterAll, describe, it, expect } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DataType, float32Tensor, makeNode, readModel, setTensorData } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { modelStats } from '../src/graph/shapes.js';
import { openNpy } from '../src/npy.js';
import { rng, randn, smallModel } from './graph-helpers.js';
import { describeFixtures } from './fixture-suite.js';
import { runCli } from './cli-helpers.js';

// Round rs15: quantized, super-resolution, audio and TCN models at their real sizes, written in plain torch
// (test/fixtures/make-more-rs15.py keeps what they showed small). Oracle: onnxruntime running the original with the
// dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const open = () => openNpy(`${FIX}/cnn-images.calib.npy`);
const DIR = mkdtempSync(join(tmpdir(), 'subprune-rs15-')),
  OUT = join(DIR, 'pruned.onnx');
afterAll(() => rmSync(DIR, { recursive: true, force: true }));

describeFixtures([
  {
    // the mean shift, the residual trunk (head, the blocks' second convs, the body conv; read by 4 convs), each
    // block's first conv, the two upsampler convs (blocks of 4 filters per channel after PixelShuffle), the tail conv
    model: `${FIX}/rs15-edsr-op10.onnx`,
    data: open,
    groups: [
      [3, 1, 9],
      [8, 4, 9],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 9],
      [8, 1, 9],
      [3, 1, 1],
    ],
  },
]);

describe('PixelShuffle before opset 11 (Reshape [N, C, r, r, H, W], Transpose, Reshape)', () => {
  // the split of the upsampler conv's 4·C filters into [C, 2, 2] was taken for a packed q/k/v and refused at the
  // second Reshape: EDSR-baseline x2 at full size lost its upsampler (11 % of the FLOPs)
  it('the conv before it is a group of whole blocks of r² filters', () => {
    const { groups, refused } = analyze(readModel(`${FIX}/rs15-edsr-op10.onnx`));
    const chains = [
      ['Reshape', 'Transpose', 'Reshape'],
      ['Unsqueeze', 'Reshape', 'Transpose', 'Reshape', 'Reshape', 'Squeeze'],
    ];
    chains.forEach((chain, i) => {
      const up = groups.find((u) => u.id === `/tail/tail.${2 * i}/Conv`)!;
      expect(up.chain.map((n) => n.opType)).toEqual(chain);
      expect(up.slices.find((x) => x.tensor === `tail.${2 * i}.weight`)).toMatchObject({ axis: 0, per: 4 });
    });
    expect(refused.map((r) => r.node)).toEqual(['/add_mean/Conv']);
  });

  it('its output, an image at 4× the input resolution, holds no class scores', () => {
    // the full EDSR's report gave "top-1 agreement 97.69 %", the argmax over R, G and B per pixel (ESPCN's, through
    // DepthToSpace, none); a segmentation map at the input's resolution still holds them
    expect(analyze(readModel(`${FIX}/rs15-edsr-op10.onnx`)).outputs).toEqual([{ name: 'sr' }]);
    expect(analyze(readModel(`${FIX}/task11-seg.onnx`)).outputs).toEqual([{ name: 'logits', classAxis: 1 }]);
  });
});

describe('a quantized model as torch exports it (QDQ: int8 weights behind DequantizeLinear)', () => {
  // torchvision's quantized MobileNetV2 and a ResNet-18 prepared for QAT are refused, rightly; inspect said "0 FLOPs
  // per sample" (QuantizeLinear and DequantizeLinear had no shape rule, so no layer's weight had a shape)
  const QUANTIZED = /; the model is quantized: prune the float model, then quantize the pruned one$/;

  it("counts its layers' FLOPs", () => {
    // conv1 3→8 and conv2 8→8, 3×3 on 32×32 (padding 1), fc 8→10: 2 × multiply-accumulates
    const flops = 2 * (8 * 3 * 9 * 32 * 32 + 8 * 8 * 9 * 32 * 32 + 8 * 10);
    expect(modelStats(readModel(`${FIX}/rs15-qdq.onnx`)).flops).toBe(flops);
  });

  it('refuses every layer, naming the DequantizeLinear that computes its weight', () => {
    const { groups, refused } = analyze(readModel(`${FIX}/rs15-qdq.onnx`));
    expect(groups).toEqual([]);
    expect(refused.map((r) => r.node)).toEqual(['/conv1/Conv', '/conv2/Conv', '/fc/Gemm']);
    for (const r of refused) {
      const layer = r.node.split('/')[1]!;
      expect(r.reason).toMatch(QUANTIZED);
      expect(r.reason).toContain(`(DequantizeLinear "/${layer}/DequantizeLinear_1" computes it from integers)`);
    }
  });

  it('prune says what to do', async () => {
    // before: only "(3 candidates refused; subprune inspect says why)"
    const r = await runCli('prune', `${FIX}/rs15-qdq.onnx`, '--calib', `${FIX}/cnn-images.calib.npy`, '-o', OUT);
    expect(r.code).toBe(0);
    expect(r.err).toContain(
      'rs15-qdq.onnx has no prunable groups (3 candidates refused, each: the model is quantized: prune the float ' +
        'model, then quantize the pruned one; subprune inspect says why); nothing to prune',
    );
    expect(existsSync(OUT)).toBe(false);
  });

  it('channels that reach a QuantizeLinear stop there, saying the model is quantized', () => {
    // a float layer's output quantized per tensor (activations only): before, only "is not known to act per channel"
    const r = rng(15),
      zero = float32Tensor('z', [], new Float32Array(1));
    setTensorData(zero, [], DataType.UINT8, new Uint8Array(1));
    const m = smallModel(
      [
        makeNode('MatMul', ['x', 'w1'], ['h'], [], 'fc1'),
        makeNode('QuantizeLinear', ['h', 's', 'z'], ['hq'], [], 'q'),
        makeNode('DequantizeLinear', ['hq', 's', 'z'], ['hd'], [], 'dq'),
        makeNode('MatMul', ['hd', 'w2'], ['y'], [], 'fc2'),
      ],
      [
        float32Tensor('w1', [6, 8], randn(48, r)),
        float32Tensor('w2', [8, 5], randn(40, r)),
        float32Tensor('s', [], new Float32Array([0.05])),
        zero,
      ],
      [2, 6],
    );
    const { groups, refused } = analyze(m);
    expect(groups).toEqual([]);
    expect(refused.find((x) => x.node === 'fc1')?.reason).toMatch(
      new RegExp(`^QuantizeLinear "q" is not known to act per channel.*${QUANTIZED.source}`),
    );
    expect(modelStats(m).flops).toBe(2 * (6 * 8 + 8 * 5));
  });
});
