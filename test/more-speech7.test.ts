import { describe, it, expect } from 'vitest';
import { int64Tensor, intAttr, intsAttr, makeNode, readModel, tensorToInt64, type Model } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { constantTensors } from '../src/graph/shapes.js';
import { openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { randInput, randomKeep, randTensor, rng, run1, smallModel, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';
import { analyzeFixture, describeFixtures } from './fixture-suite.js';

// Round 7 of real exports (test/fixtures/make-more-speech7.py, random weights): speech and audio sequence models as
// their reference code writes them: ESPnet's and torchaudio's Conformer, NeMo's QuartzNet and Citrinet, SpeechBrain's
// ECAPA-TDNN, HiFi-GAN's generator, WaveNet, a left-padded causal TCN, the DS-CNN keyword spotter, CTC heads on an
// LSTM and on DeepSpeech2's GRUs. Oracle: onnxruntime running the original with the dropped channels' consumer inputs
// zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const CALIB: Record<string, string> = {
  'speech7-conformer-rel': 'feats.calib.npz',
  'speech7-conformer-abs': 'feats.calib.npz',
  'speech7-tenc-kpm': 'feats.calib.npz',
  'speech7-quartznet': 'mels.calib.npy',
  'speech7-citrinet': 'mels.calib.npy',
  'speech7-ecapa': 'fbank.calib.npy',
  'speech7-hifigan': 'mels.calib.npy',
  'speech7-wavenet': 'wave.calib.npy',
  'speech7-tcn-leftpad': 'tcn.calib.npy',
  'speech7-dscnn': 'mfcc.calib.npy',
  'speech7-lstm-ctc': 'spec.calib.npy',
  'speech7-gru-ds2': 'spec.calib.npy',
};
const openCalib = (model: string) => {
  const file = `${FIX}/speech7-${CALIB[model]!}`;
  return file.endsWith('.npz') ? openNpz(file) : openNpy(file);
};

const CASES: { model: string; groups: number[][]; length?: number }[] = [
  // the subsampling convs (the second read by the Linear through view(b, t, c·f): f = 3 entries per channel), the
  // macaron FFNs' neurons, the 2 heads (q, k, v and linear_pos, with pos_bias_u/v; rel_shift's zero column follows
  // the heads), the GLU's halves; the residual stream is refused (LayerNorm)
  {
    model: 'speech7-conformer-rel',
    groups: [
      [16, 1, 9],
      [16, 1, 3],
      [32, 1, 1],
      [2, 4, 8],
      [16, 1, 1],
      [32, 1, 1],
    ],
    length: 20,
  },
  // the FFN neurons, nn.MultiheadAttention's 4 heads (the key_padding_mask expanded to them follows their count), the
  // convolution module's GLU halves
  {
    model: 'speech7-conformer-abs',
    groups: [
      [32, 1, 1],
      [4, 1, 4],
      [16, 1, 1],
      [32, 1, 1],
      [32, 1, 1],
      [4, 1, 4],
      [16, 1, 1],
      [32, 1, 1],
    ],
  },
  // the heads of both layers (the key_padding_mask expanded to them, at a free length) and the FFN neurons
  {
    model: 'speech7-tenc-kpm',
    groups: [
      [4, 1, 4],
      [32, 1, 1],
      [4, 1, 4],
      [32, 1, 1],
    ],
    length: 20,
  },
  // each separable conv's pointwise output (the depthwise passes it), joined with the residual 1×1 conv's at the Add
  {
    model: 'speech7-quartznet',
    groups: [
      [16, 1, 1],
      [16, 1, 1],
      [16, 2, 1],
      [24, 1, 1],
      [24, 2, 1],
      [24, 1, 1],
      [32, 1, 1],
    ],
  },
  // as QuartzNet, the SE's gate (its second Linear) a producer of the block's output, its first Linear a group
  {
    model: 'speech7-citrinet',
    groups: [
      [16, 1, 1],
      [16, 1, 1],
      [16, 3, 1],
      [4, 1, 1],
      [16, 1, 1],
      [16, 3, 1],
      [4, 1, 1],
      [24, 1, 1],
      [24, 3, 1],
      [6, 1, 1],
      [32, 2, 1],
      [8, 1, 1],
    ],
  },
  // the residual stream (7 producers) and the MFA's input cat; each Res2Net scale of 8, x_i + y_{i-1} joined; the
  // SE's reduction; the MFA output read by the attentive pooling (x, mean, std repeated: Tile) and the statistics
  {
    model: 'speech7-ecapa',
    groups: [
      [32, 7, 1],
      [8, 3, 3, 1],
      [8, 1, 1],
      [8, 1, 1],
      [8, 3, 3, 1],
      [8, 1, 1],
      [8, 1, 1],
      [8, 3, 3, 1],
      [8, 1, 1],
      [8, 1, 1],
      [96, 2, 1],
      [16, 1, 1],
    ],
  },
  // conv_pre read by a ConvTranspose1d; each upsampled stream joined with the MRF's residual convs (both kernels);
  // every dilated conv of the ResBlock1s its own group
  {
    model: 'speech7-hifigan',
    groups: [
      [32, 1, 1],
      [16, 7, 3, 7, 1],
      [16, 1, 3],
      [16, 1, 3],
      [16, 1, 3],
      [16, 1, 7],
      [16, 1, 7],
      [16, 1, 7],
      [8, 7, 3, 7],
      [8, 1, 3],
      [8, 1, 3],
      [8, 1, 3],
      [8, 1, 7],
      [8, 1, 7],
      [8, 1, 7],
    ],
  },
  // the residual stream, the summed skips (6 producers), each gate's tanh/sigmoid halves (one Split), the last 1×1
  {
    model: 'speech7-wavenet',
    groups: [
      [16, 6, 2],
      [16, 1, 1],
      [16, 6, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
      [16, 1, 1],
    ],
  },
  // the residual stream (the bottleneck and 4 pointwise convs) and each block's 1×1 conv through PReLU, BN, Pad and
  // the depthwise conv
  {
    model: 'speech7-tcn-leftpad',
    groups: [
      [16, 5, 1],
      [32, 1, 1],
      [32, 1, 1],
      [32, 1, 1],
      [32, 1, 1],
    ],
  },
  { model: 'speech7-dscnn', groups: Array.from({ length: 5 }, () => [16, 1, 1]) },
  // the conv front end; the LSTM reads the last conv's channels as 4 frequencies each; the LSTMs' hidden units refused
  {
    model: 'speech7-lstm-ctc',
    groups: [
      [8, 1, 9],
      [8, 1, 4],
    ],
  },
  {
    model: 'speech7-gru-ds2',
    groups: [
      [8, 1, 15],
      [8, 1, 4],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups, length }) => ({
    model: `${FIX}/${model}.onnx`,
    data: () => openCalib(model),
    groups,
    ...(length ? { length } : {}),
  })),
);

const groupsOf = (m: Model, name: string) => analyzeFixture(m, () => openCalib(name));

/** Half of every group removed at random (seed 5), as describeFixtures does: the plans, pruned and the oracle. */
function halfPruned(name: string) {
  const m = readModel(`${FIX}/${name}.onnx`),
    r = rng(5);
  const plans = groupsOf(m, name).groups.map((group) => ({
    group,
    keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
  }));
  return { m, plans, pruned: pruneGroups(m, plans), zeroed: zeroDroppedInputs(m, plans) };
}

describe('refusals name what couples the channels', () => {
  it.each([
    ['speech7-conformer-rel', '/embed/out/out.0/MatMul', /LayerNormalization .* normalises across the channels/],
    ['speech7-lstm-ctc', '/rnn/LSTM', /its hidden units feed back through its recurrence/],
    ['speech7-gru-ds2', '/rnns/rnns.1/rnn/GRU', /its hidden units feed back through its recurrence/],
    ['speech7-quartznet', '/encoder/encoder.0/mconv.0/Conv', /grouped or depthwise convolution \(group=16\)/],
  ])('%s: %s', (name, node, why) => {
    const { refused } = groupsOf(readModel(`${FIX}/${name}.onnx`), name);
    expect(refused.find((r) => r.node === node)?.reason).toMatch(why);
  });
});

describe("a positional table sliced to the length and added to the channels (ESPnet's pe[:, :x.size(1)])", () => {
  // Conv1d(4, 6), transposed to [N, T, 6], plus Slice(pe [1, 16, 6], axis 1, end T read from x's shape), then
  // Linear(6, 3): the table is sliced along its channel axis with the conv (refused before: 'computed from constants
  // and shapes alone')
  const r = rng(4);
  const m = smallModel(
    [
      makeNode('Conv', ['x', 'wc', 'bc'], ['c'], [], 'conv'),
      makeNode('Transpose', ['c'], ['ct'], [intsAttr('perm', [0, 2, 1])]),
      makeNode('Shape', ['x'], ['xs']),
      makeNode('Gather', ['xs', 'two'], ['t'], [intAttr('axis', 0)]),
      makeNode('Unsqueeze', ['t', 'zero'], ['end']),
      makeNode('Slice', ['pe', 'zero', 'end', 'one'], ['pos']),
      makeNode('Add', ['ct', 'pos'], ['a'], [], 'add_pos'),
      makeNode('MatMul', ['a', 'wf'], ['y'], [], 'fc'),
    ],
    [
      randTensor('wc', [6, 4, 1], r),
      randTensor('bc', [6], r),
      randTensor('pe', [1, 16, 6], r),
      randTensor('wf', [6, 3], r),
      int64Tensor('two', [], [2]),
      int64Tensor('zero', [1], [0]),
      int64Tensor('one', [1], [1]),
    ],
    ['N', 4, 'T'],
  );

  it("the conv's channels a group, the table cut with them; pruned = zeroed original at 8 and 5 steps", async () => {
    const { groups } = analyze(m, [1, 4, 8]);
    expect(groups.map((g) => [g.id, g.channels])).toEqual([['conv', 6]]);
    const plans = [{ group: groups[0]!, keep: [0, 2, 5] }],
      pruned = pruneGroups(m, plans);
    expect(pruned.graph!.initializer.find((t) => t.name === 'pe')!.dims.map(Number)).toEqual([1, 16, 3]);
    for (const steps of [8, 5]) {
      const x = randInput([2, 4, steps], steps);
      const [got, want] = [await run1(pruned, x), await run1(zeroDroppedInputs(m, plans), x)];
      expect(got.dims).toEqual([2, steps, 3]);
      expect(relDiff(got.data, want.data)).toBeLessThan(1e-5);
    }
  });
});

describe("nn.MultiheadAttention's key_padding_mask: expanded to H heads, reshape(B * H, 1, S)", () => {
  // refused before ('… which no group owns (its channels are refused: LayerNormalization …)', through the Shape of
  // the stream the mask is viewed to): 56.0 % of the FLOPs in groups, 95.7 % with the heads
  it("the heads' count in the Expand's shape and in B · heads (shared with q, k, v) shrinks once", () => {
    const { m, plans, pruned } = halfPruned('speech7-conformer-abs');
    const plan = plans.find((p) => p.group.id === '/conformer_layers.0/self_attn/MatMul')!;
    expect([plan.group.channels, plan.keep.length]).toEqual([4, 2]);
    const value = (model: Model, name: string) =>
      [...tensorToInt64(constantTensors(model.graph!).get(name)!).data].map(Number);
    const at = (name: string) => `/conformer_layers.0/self_attn/${name}_output_0`;
    expect(value(m, at('Constant_17'))).toEqual([-1, 4, -1, -1]);
    expect(value(pruned, at('Constant_17'))).toEqual([-1, 2, -1, -1]);
    expect([value(m, at('Constant_11')), value(pruned, at('Constant_11'))]).toEqual([[4], [2]]);
  });

  it('a mask computed from the input by no layer, added to channels, is refused with that reason', () => {
    // Conv(4 → 6) + Tile(ReduceMax(x over the channels), [1, 6, 1]): the added tensor comes from x alone
    const r = rng(6);
    const m = smallModel(
      [
        makeNode('Conv', ['x', 'wc'], ['c'], [], 'conv'),
        makeNode('ReduceMax', ['x'], ['mx'], [intsAttr('axes', [1]), intAttr('keepdims', 1)]),
        makeNode('Tile', ['mx', 'reps'], ['mask']),
        makeNode('Add', ['c', 'mask'], ['a'], [], 'add_mask'),
        makeNode('Conv', ['a', 'wd'], ['y'], [], 'conv_out'),
      ],
      [randTensor('wc', [6, 4, 1], r), randTensor('wd', [2, 6, 1], r), int64Tensor('reps', [3], [1, 6, 1])],
      ['N', 4, 'T'],
    );
    const { groups, refused } = analyze(m, [1, 4, 8]);
    expect(groups).toEqual([]);
    expect(refused.find((x) => x.node === 'conv')?.reason).toMatch(
      /"mask", which no group owns \(it is computed from the input "x" by no layer, e\.g\. an embedding lookup or a/,
    );
  });
});

describe('Tile: a repeat of 1 on the channel axis passes the channels (ECAPA-TDNN: mean.repeat(1, 1, L))', () => {
  // Conv(4 → 6), Tile by `reps`, Conv(6r → 2): with reps [1, 1, 2] the channels pass (time doubled); with [1, 2, 1]
  // every channel is copied to two places along the channel axis, which the walk refuses
  const model = (reps: number[]) => {
    const r = rng(8);
    return smallModel(
      [
        makeNode('Conv', ['x', 'wc'], ['c'], [], 'conv'),
        makeNode('Tile', ['c', 'reps'], ['t'], [], 'tile'),
        makeNode('Conv', ['t', 'wd'], ['y'], [], 'conv_out'),
      ],
      [randTensor('wc', [6, 4, 1], r), randTensor('wd', [2, 6 * reps[1]!, 1], r), int64Tensor('reps', [3], reps)],
      ['N', 4, 'T'],
    );
  };

  it('over time: one group, pruned equals the zeroed original', async () => {
    const m = model([1, 1, 2]),
      { groups } = analyze(m, [1, 4, 8]);
    expect(groups.map((g) => [g.id, g.channels])).toEqual([['conv', 6]]);
    const plans = [{ group: groups[0]!, keep: [1, 2, 4] }],
      x = randInput([2, 4, 8], 8);
    const [got, want] = [await run1(pruneGroups(m, plans), x), await run1(zeroDroppedInputs(m, plans), x)];
    expect(got.dims).toEqual([2, 2, 16]);
    expect(relDiff(got.data, want.data)).toBeLessThan(1e-5);
  });

  it('over the channels: refused with the reason', () => {
    const { groups, refused } = analyze(model([1, 2, 1]), [1, 4, 8]);
    expect(groups).toEqual([]);
    expect(refused.find((x) => x.node === 'conv')?.reason).toMatch(/Tile "tile" repeats the channel axis/);
  });
});
