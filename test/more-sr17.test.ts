import { describe, it, expect } from 'vitest';
import { float32Tensor, intsAttr, makeNode, readModel } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { openNpy } from '../src/npy.js';
import { rng, randn, smallModel } from './graph-helpers.js';
import { describeFixtures } from './fixture-suite.js';
import { groupTooBigToSelect } from '../src/select/greedy.js';
import { KERNEL_BYTES } from '../src/kernels/memory.js';

// Round sr17: super-resolution, face-recognition and audio-separation models at their real sizes, written in plain
// torch (test/fixtures/make-more-sr17.py keeps what they showed small). Oracle: onnxruntime running the original with
// the dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const open = () => openNpy(`${FIX}/cnn-images.calib.npy`);

describeFixtures([
  {
    // conv1 (the residual stream: its conv, the bottleneck's project, read by the bottleneck's 1×1 and conv_6_sep),
    // the bottleneck's 16 (1×1, depthwise with per-channel PReLU, into project), conv_6_sep's 16 (through the GDConv
    // into the Linear); the embedding itself is an output
    model: `${FIX}/sr17-facenet.onnx`,
    data: open,
    groups: [
      [8, 2, 1],
      [16, 1, 1],
      [16, 1, 1],
    ],
  },
  {
    // the bottleneck's stream (it and the first block's residual conv; the last one's output is unused), read by each
    // block's 1×1, and the skips' sum (read by the mask conv through a PReLU); the encoder's and each block's 16 are
    // normalised by a gLN (refused)
    model: `${FIX}/sr17-tasnet.onnx`,
    data: () => openNpy(`${FIX}/speech7-wave.calib.npy`),
    groups: [
      [8, 2, 1],
      [8, 2, 1],
    ],
  },
]);

describe('separated waveforms: one decoder channel viewed as [B, sources, T]', () => {
  // Conv-TasNet at full size was reported as "top-1 agreement with the original 34.38 %": the argmax over the 8000
  // samples of each waveform, the decoder's one output channel laid along the time axis
  it('hold no class scores', () => {
    const { outputs, refused } = analyze(readModel(`${FIX}/sr17-tasnet.onnx`));
    expect(outputs).toEqual([{ name: 'separated' }]);
    // a global layer norm's statistics mix every channel: right to refuse
    expect(refused.find((r) => r.node === '/blocks.0/conv1/Conv')?.reason).toMatch(/^ReduceMean .* couples channels$/);
  });
});

describe('an embedding divided by its own L2 norm', () => {
  // MobileFaceNet's output at full size was reported as "top-1 agreement with the original 100.00 %": the argmax over
  // the 128 entries of a unit vector, which names no class
  it('holds no class scores, however torch writes the norm', () => {
    expect(analyze(readModel(`${FIX}/sr17-facenet.onnx`)).outputs).toEqual([
      { name: 'embedding' }, // torch.norm: ReduceL2, Div
      { name: 'normalized' }, // F.normalize: ReduceL2, Clip, Expand, Div
      { name: 'manual' }, // Pow, ReduceSum, Sqrt, Div
      // unnormalised, a Linear's outputs look as a classifier's logits do
      { name: 'features', classAxis: 1 },
    ]);
  });

  it('an L2 norm over other axes leaves the channels classes', () => {
    // a segmentation map divided by each class's norm over the image is still scores per class per pixel
    const r = rng(17);
    const model = (axes: number[]) =>
      smallModel(
        [
          makeNode('Conv', ['x', 'w'], ['s'], [], 'conv'),
          makeNode('ReduceL2', ['s'], ['n'], [intsAttr('axes', axes)], 'norm'),
          makeNode('Div', ['s', 'n'], ['y'], [], 'div'),
        ],
        [float32Tensor('w', [5, 3, 1, 1], randn(15, r))],
        [2, 3, 4, 4],
      );
    expect(analyze(model([2, 3])).outputs).toEqual([{ name: 'y', classAxis: 1 }]);
    expect(analyze(model([1])).outputs).toEqual([{ name: 'y' }]);
    expect(analyze(model([1, 2, 3])).outputs).toEqual([{ name: 'y' }]);
  });
});

describe('a group just too big to rank', () => {
  // ESRGAN's RRDBNet (23 RRDB blocks of 3 dense blocks): the trunk's 64 channels are read by every dense block's five
  // 3×3 convs (32, 32, 32, 32 and 64 filters), the trunk conv and the first upsampling conv. Refused with "needs 3.99
  // GiB of kernel memory, more than WebAssembly's 4 GiB": the limit is 4 GiB less the kernels' other buffers
  it('names the limit it exceeds', () => {
    const dense = [32, 32, 32, 32, 64].map((m) => ({ d: 576, m, g: 9 }));
    const consumers = [
      ...Array.from({ length: 69 }, () => dense).flat(),
      { d: 576, m: 64, g: 9 },
      { d: 576, m: 64, g: 9 },
    ];
    const reason = groupTooBigToSelect(consumers)!;
    const [, need, limit] = /needs (\d+\.\d+) GiB of kernel memory, more than the (\d+\.\d+) GiB/.exec(reason)!;
    expect(Number(need)).toBeGreaterThan(Number(limit));
    expect(Number(need)).toBeLessThan(4);
    expect(Number(limit)).toBe(Number((KERNEL_BYTES / 2 ** 30).toFixed(2)));
  });
});
