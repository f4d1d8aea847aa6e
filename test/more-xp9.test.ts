import { describe, it, expect } from 'vitest';
import {
  int64Tensor,
  intsAttr,
  makeNode,
  readModel,
  setTensorValues,
  stringAttr,
  tensorToInt64,
} from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { openNpy, readNpy } from '../src/npy.js';
import { constantTensors, inferShapes } from '../src/graph/shapes.js';
import { isNormalized, normalizeModel } from '../src/graph/normalize.js';
import { pruneGroups } from '../src/rewrite/index.js';
import {
  maxAbsDiff,
  randInput,
  randomKeep,
  randTensor,
  rng,
  run1,
  smallModel,
  zeroDroppedInputs,
} from './graph-helpers.js';
import { relDiff } from './objective.js';
import { analyzeFixture, describeFixtures, fixtureOutputs } from './fixture-suite.js';

// Round 9 of real exports (test/fixtures/make-more-xp9.py): graphs as exporters other than torch write them, each
// written node by node from a torch module's weights: tf2onnx (NHWC Keras models, with and without its transpose
// optimizer), paddle2onnx (PP-OCR's det and rec, PP-LCNet), onnx-simplifier (shapes folded, batch fixed) and onnx's
// version converter. Oracle: onnxruntime running the original with the dropped channels' consumer inputs zeroed
// (test/fixture-suite.ts); the files themselves against torch (xp9-<name>.ref.npy).

const FIX = 'test/fixtures';
const CALIB: Record<string, string> = { 'xp9-tf-conv1d': 'xp9-feats', 'xp9-p2o-rec': 'ocr6-lines' };
const calibName = (model: string) => CALIB[model] ?? (model.startsWith('xp9-tf-') ? 'xp9-nhwc' : 'cnn-images');
const calibOf = (model: string) => `${FIX}/${calibName(model)}.calib.npy`;

const CASES: { model: string; groups: number[][] }[] = [
  // every Conv2D between Transposes (NHWC ↔ NCHW), BatchNorm as Mul + Add on NHWC, the depthwise conv; the last
  // conv's channels through Keras' Flatten of NHWC into the Dense rows (each channel 64 times, one per position)
  {
    model: 'xp9-tf-keras-cnn',
    groups: [
      [8, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [32, 1, 1],
    ],
  },
  // one Transpose at the input, ReLU6 as Max(Min(x, 6), 0), residual Adds, ReduceMean over NHWC's [1, 2] into Dense
  {
    model: 'xp9-tf-mobilenet-opt',
    groups: [
      [8, 2, 1],
      [24, 1, 1],
      [12, 2, 1],
      [36, 1, 1],
      [32, 1, 1],
    ],
  },
  // SE gates on NHWC (ReduceMean keepdims → 1×1 convs between Transposes, or Dense → Reshape [-1, 1, 1, C]), a
  // BatchNormalization between Transposes
  {
    model: 'xp9-tf-efficientnet-se',
    groups: [
      [8, 2, 1],
      [16, 2, 1],
      [2, 1, 1],
      [24, 2, 1],
      [2, 1, 1],
      [12, 2, 1],
      [36, 2, 1],
      [3, 1, 1],
    ],
  },
  // Conv1D as Unsqueeze → Transpose → Conv [1, k] → Transpose → Squeeze; Keras' Flatten with a free batch,
  // Reshape(x, Concat(Slice(Shape(x), 0, 1), [-1])), of [N, 16, 16] channels last into the Dense rows
  {
    model: 'xp9-tf-conv1d',
    groups: [
      [16, 1, 3],
      [16, 1, 1],
      [32, 1, 1],
    ],
  },
  // conv biases added as Reshape(bias, [1, C, 1, 1]); SE convs with HardSigmoid(0.2, 0.5); the DBFPN and DB head
  {
    model: 'xp9-p2o-det',
    groups: [
      [8, 1, 1],
      [8, 2, 1],
      [2, 1, 1],
      [8, 1, 1],
      [24, 1, 1],
      [12, 2, 1],
      [24, 1, 1],
      [24, 2, 1],
      [6, 1, 1],
      [16, 1, 1],
      [48, 2, 1],
      [12, 1, 1],
      [24, 1, 1],
      [16, 4, 9],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 1],
      [4, 1, 1],
    ],
  },
  // the backbone's SE blocks and the last conv through MaxPool, Squeeze and Transpose into the CTC head
  {
    model: 'xp9-p2o-rec',
    groups: [
      [8, 1, 1],
      [16, 1, 1],
      [16, 2, 1],
      [4, 1, 1],
      [24, 2, 1],
      [6, 1, 1],
      [32, 1, 1],
    ],
  },
  {
    model: 'xp9-p2o-lcnet',
    groups: [
      [8, 1, 1],
      [16, 1, 1],
      [24, 2, 1],
      [6, 1, 1],
      [32, 2, 1],
      [8, 1, 1],
      [32, 1, 1],
      [64, 1, 1],
    ],
  },
  // SVTR's global mixing block: the heads through Reshape [0, -1, 3, 2, 8] and Slice + Squeeze per part, the MLP; the
  // token stream is LayerNorm'd (refused)
  {
    model: 'xp9-p2o-svtr',
    groups: [
      [8, 1, 9],
      [2, 1, 8],
      [32, 1, 1],
      [24, 1, 1],
    ],
  },
  // heads split by constant shapes [1, 17, 3, 4, 8] and merged by [1, 17, 32]; the stream is LayerNorm'd (refused)
  {
    model: 'xp9-sim-vit',
    groups: [
      [4, 1, 8],
      [64, 1, 1],
      [4, 1, 8],
      [64, 1, 1],
    ],
  },
  // batch fixed to 4, the flatten a Reshape to the constant [4, 128]
  {
    model: 'xp9-sim-resnet',
    groups: [
      [8, 2, 9, 1],
      [8, 1, 9],
      [16, 1, 9],
      [16, 2, 9, 1],
      [32, 1, 9],
      [32, 2, 4],
    ],
  },
  // the same module exported by torch: x.permute(0, 2, 3, 1).reshape(x.shape[0], -1), the flatten torch writes
  {
    model: 'xp9-torch-nhwc-flatten',
    groups: [
      [8, 1, 1],
      [16, 1, 9],
      [16, 1, 1],
      [32, 1, 1],
    ],
  },
  // the converter's Split and Unsqueeze with constant inputs
  {
    model: 'xp9-vc-ghost',
    groups: [
      [16, 1, 1],
      [8, 2, 1, 9],
      [4, 1, 1],
      [8, 1, 1],
      [8, 1, 1],
      [8, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => openNpy(calibOf(model)), groups })),
);

describe('the hand-written graphs compute what their torch modules do', () => {
  it.each(CASES.map((c) => c.model))('%s: onnxruntime against torch', async (name) => {
    const got = await fixtureOutputs(readModel(`${FIX}/${name}.onnx`), openNpy(calibOf(name)), 4);
    const want = readNpy(`${FIX}/${name}.ref.npy`);
    // a model with a fixed batch runs that many samples at a time (1 for the ViT)
    expect(want.data.length % got.length).toBe(0);
    expect(relDiff(got, want.data.subarray(0, got.length))).toBeLessThan(1e-4);
  });
});

const groupsOf = (name: string) => analyzeFixture(readModel(`${FIX}/${name}.onnx`), () => openNpy(calibOf(name)));

describe("Keras' Flatten of an NHWC map: each channel's entries repeat once per position", () => {
  // [N, 8, 8, 16] → Reshape [-1, 1024] → Dense: entry (h·8 + w)·16 + c is channel c. Before: refused ("mixes the
  // channels with other axes"), so conv2d_2's 16 channels and dense's 1024 input rows stayed (28.6× the largest
  // compression in params, now 244.5×)
  const name = 'xp9-tf-keras-cnn',
    conv = 'sequential/conv2d_2/BiasAdd';
  it.each([
    ["-1, 1024 (tf2onnx's): the count rewritten", [-1, 1024], [-1, 64 * 5]],
    ['0, -1: the count follows', [0, -1], [0, -1]],
  ])('shape %s: the Dense rows of the dropped channels go, the output is the zeroed original', async (_, shape, to) => {
    const m = readModel(`${FIX}/${name}.onnx`);
    const target = m.graph!.initializer.find((t) => t.name === 'const_fold_opt__21')!;
    setTensorValues(target, [2], BigInt64Array.from(shape.map(BigInt)));
    const data = () => openNpy(calibOf(name));
    const group = analyzeFixture(m, data).groups.find((x) => x.id === conv)!;
    expect(group.consumers.length).toBe(64);
    const keep = randomKeep(16, 5, rng(3)),
      plans = [{ group, keep }];
    const pruned = pruneGroups(m, plans);
    const dense = constantTensors(pruned.graph!).get('sequential/dense/MatMul/ReadVariableOp:0')!;
    expect(dense.dims.map(Number)).toEqual([64 * 5, 32]);
    expect(Array.from(tensorToInt64(constantTensors(pruned.graph!).get('const_fold_opt__21')!).data, Number)).toEqual(
      to,
    );
    const got = await fixtureOutputs(pruned, data(), 4),
      want = await fixtureOutputs(zeroDroppedInputs(m, plans), data(), 4);
    expect(relDiff(got, want)).toBeLessThan(1e-4);
  });
});

describe("paddle2onnx's conv bias, Add(y, Reshape(bias, [1, C, 1, 1])): a constant per channel", () => {
  // elementwise_add along axis 1 of a [C] bias: normalizeModel folds the Reshape of the constant into a [1, C, 1, 1]
  // constant, which the analysis slices. Before: every conv with a bias (the SE convs, the DB head's ConvTranspose)
  // was refused ("combines the channels with ..., which no group owns"), and the SE gates refused their blocks:
  // 94.2 / 68.3 % of the FLOPs / params in groups (det), 73.0 / 53.5 % (rec), 81.8 / 58.3 % (lcnet); now 100 / 98.9,
  // 100 / 98.5 and 100 / 98.6 %
  it('the views of constants are folded, the constants they read dropped with them', () => {
    const m = readModel(`${FIX}/xp9-p2o-det.onnx`);
    const reshapes = m.graph!.node.filter((n) => n.opType === 'Reshape').length;
    expect(reshapes).toBe(8);
    expect(isNormalized(m)).toBe(false);
    const nodes = m.graph!.node.length;
    normalizeModel(m);
    expect(isNormalized(m)).toBe(true);
    expect(m.graph!.node.filter((n) => n.opType === 'Reshape')).toEqual([]);
    expect(m.graph!.node.length).toBe(nodes - 2 * reshapes); // each Reshape and its Constant shape
    // the first SE's reduce conv: 8 → 2 channels
    expect(constantTensors(m.graph!).get('tmp_15')!.dims.map(Number)).toEqual([1, 2, 1, 1]);
    expect(constantTensors(m.graph!).has('conv2_0_se_1_bias')).toBe(false); // read by the Reshape alone: dropped
  });

  it.each(['xp9-p2o-det', 'xp9-p2o-rec', 'xp9-p2o-lcnet'])('%s: nothing refused but the head', (name) => {
    expect(groupsOf(name).refused.map((r) => r.node)).toEqual([
      name === 'xp9-p2o-det' ? 'p2o.ConvTranspose.1' : 'p2o.MatMul.0',
    ]);
  });

  it("the SE conv's bias is cut with its channels", async () => {
    const name = 'xp9-p2o-det',
      m = readModel(`${FIX}/${name}.onnx`);
    const data = () => openNpy(calibOf(name));
    // the third SE's reduce conv, 24 → 6 channels, its bias Reshape(conv4_0_se_1_bias, [1, 6, 1, 1]) → tmp_56
    const group = groupsOf(name).groups.find((x) => x.id === 'p2o.Conv.14')!;
    expect(group.channels).toBe(6);
    const plans = [{ group, keep: randomKeep(6, 2, rng(4)) }];
    const pruned = pruneGroups(m, plans);
    expect(constantTensors(pruned.graph!).get('tmp_56')!.dims.map(Number)).toEqual([1, 2, 1, 1]);
    const got = await fixtureOutputs(pruned, data(), 4),
      want = await fixtureOutputs(zeroDroppedInputs(m, plans), data(), 4);
    expect(relDiff(got, want)).toBeLessThan(1e-4);
  });
});

describe('views of constants with constant axes or shapes are folded: the per-channel bias they give is sliced', () => {
  // y = Conv2(Relu(Conv1(x) + view(b))) · b, view(b) of b [4] as [4, 1, 1]: an Unsqueeze (opset 13: axes as an input)
  // or a Reshape; b is read by the Mul too, so it stays
  const r = rng(11);
  const model = (view: 'Unsqueeze' | 'Reshape') => {
    const viewNode =
      view === 'Unsqueeze'
        ? makeNode('Unsqueeze', ['b', 'axes'], ['bv'], [], 'view')
        : makeNode('Reshape', ['b', 'shape'], ['bv'], [], 'view');
    return smallModel(
      [
        makeNode('Conv', ['x', 'w1'], ['c1'], [], 'conv1'),
        viewNode,
        makeNode('Add', ['c1', 'bv'], ['a'], [], 'add'),
        makeNode('Relu', ['a'], ['h'], [], 'relu'),
        makeNode('Conv', ['h', 'w2'], ['c2'], [], 'conv2'),
        makeNode('Mul', ['c2', 'b'], ['y'], [], 'mul'),
      ],
      [
        randTensor('w1', [4, 3, 1, 1], r),
        randTensor('w2', [4, 4, 1, 1], r),
        randTensor('b', [4], r),
        int64Tensor('axes', [2], [1, 2]),
        int64Tensor('shape', [3], [-1, 1, 1]),
      ],
      ['N', 3, 4, 4],
    );
  };
  it.each(['Unsqueeze', 'Reshape'] as const)('%s', async (view) => {
    const m = model(view);
    expect(isNormalized(m)).toBe(false);
    const { groups, refused } = analyze(m);
    expect(m.graph!.node.map((n) => n.name)).toEqual(['conv1', 'add', 'relu', 'conv2', 'mul']);
    expect(constantTensors(m.graph!).get('bv')!.dims.map(Number)).toEqual([4, 1, 1]);
    expect(constantTensors(m.graph!).has('b')).toBe(true); // the Mul reads it too
    expect(constantTensors(m.graph!).has(view === 'Unsqueeze' ? 'axes' : 'shape')).toBe(false);
    expect(groups.map((g) => g.id)).toEqual(['conv1']);
    expect(refused.map((x) => x.node)).toEqual(['conv2']);
    const plans = [{ group: groups[0]!, keep: [0, 2] }];
    const pruned = pruneGroups(m, plans);
    expect(constantTensors(pruned.graph!).get('bv')!.dims.map(Number)).toEqual([2, 1, 1]);
    const x = randInput([2, 3, 4, 4], 5);
    expect(maxAbsDiff(await run1(pruned, x), await run1(zeroDroppedInputs(m, plans), x))).toBeLessThan(1e-5);
  });
});

describe("a layer whose weight is a view of a constant is a layer (tf2onnx's EinsumDense kernel [C, heads, d])", () => {
  // tf2onnx's einsum optimizer writes 'abc,cde->abde' as MatMul(x, Reshape(kernel, [C, heads·d])); its bias
  // [heads, d] as Reshape(bias, [heads·d]). Before the fold: "non-constant weights" (the layer refused)
  it('the folded kernel and bias are cut with the layer’s outputs', async () => {
    const r = rng(12);
    const m = smallModel(
      [
        makeNode('Reshape', ['kernel', 'kshape'], ['w1'], [], 'kernel_view'),
        makeNode('MatMul', ['x', 'w1'], ['h'], [], 'einsum_dense'),
        makeNode('Reshape', ['bias', 'bshape'], ['b1'], [], 'bias_view'),
        makeNode('Add', ['h', 'b1'], ['hb'], [], 'add'),
        makeNode('Relu', ['hb'], ['a'], [], 'relu'),
        makeNode('MatMul', ['a', 'w2'], ['y'], [], 'dense'),
      ],
      [
        randTensor('kernel', [8, 2, 4], r),
        randTensor('bias', [2, 4], r),
        randTensor('w2', [8, 4], r),
        int64Tensor('kshape', [2], [8, 8]),
        int64Tensor('bshape', [1], [8]),
      ],
      ['N', 5, 8],
    );
    const { groups } = analyze(m);
    expect(groups.map((g) => [g.id, g.channels])).toEqual([['einsum_dense', 8]]);
    const plans = [{ group: groups[0]!, keep: [1, 2, 6] }];
    const pruned = pruneGroups(m, plans),
      consts = constantTensors(pruned.graph!);
    expect([consts.get('w1')!.dims.map(Number), consts.get('b1')!.dims.map(Number)]).toEqual([[8, 3], [3]]);
    const x = randInput([2, 5, 8], 6);
    expect(maxAbsDiff(await run1(pruned, x), await run1(zeroDroppedInputs(m, plans), x))).toBeLessThan(1e-5);
  });
});

describe("Keras' Conv2DTranspose as tf2onnx writes it: ConvTranspose with auto_pad between Transposes", () => {
  // SAME_UPPER: the output is the input times the strides; VALID: no pads. Before, either had no shape ("its output
  // shape is unknown"), so everything after it was refused
  it.each(['SAME_UPPER', 'VALID'])(
    'auto_pad %s: shapes known, the up-conv prunable, the zeroed original',
    async (pad) => {
      const r = rng(13);
      const m = smallModel(
        [
          makeNode('Transpose', ['x'], ['xt'], [intsAttr('perm', [0, 3, 1, 2])], 'to_nchw'),
          makeNode(
            'Conv',
            ['xt', 'w1', 'b1'],
            ['c1'],
            [intsAttr('kernel_shape', [3, 3]), stringAttr('auto_pad', 'SAME_UPPER')],
            'conv',
          ),
          makeNode('Relu', ['c1'], ['h1'], [], 'relu1'),
          makeNode(
            'ConvTranspose',
            ['h1', 'w2', 'b2'],
            ['c2'],
            [intsAttr('kernel_shape', [3, 3]), intsAttr('strides', [2, 2]), stringAttr('auto_pad', pad)],
            'up',
          ),
          makeNode('Relu', ['c2'], ['h2'], [], 'relu2'),
          makeNode('Conv', ['h2', 'w3'], ['c3'], [intsAttr('kernel_shape', [1, 1])], 'head'),
          makeNode('Transpose', ['c3'], ['y'], [intsAttr('perm', [0, 2, 3, 1])], 'to_nhwc'),
        ],
        [
          randTensor('w1', [6, 3, 3, 3], r),
          randTensor('b1', [6], r),
          randTensor('w2', [6, 5, 3, 3], r),
          randTensor('b2', [5], r),
          randTensor('w3', [2, 5, 1, 1], r),
        ],
        ['N', 4, 4, 3],
      );
      const shapes = inferShapes(m);
      expect(shapes.get('c2')).toEqual(pad === 'VALID' ? [1, 5, 9, 9] : [1, 5, 8, 8]);
      const { groups } = analyze(m);
      expect(groups.map((g) => [g.id, g.channels])).toEqual([
        ['conv', 6],
        ['up', 5],
      ]);
      const plans = groups.map((group, i) => ({ group, keep: i === 0 ? [0, 3, 4] : [1, 2] }));
      const x = randInput([2, 4, 4, 3], 7);
      const got = await run1(pruneGroups(m, plans), x),
        want = await run1(zeroDroppedInputs(m, plans), x);
      expect(got.dims).toEqual(pad === 'VALID' ? [2, 9, 9, 2] : [2, 8, 8, 2]); // onnxruntime's output agrees
      expect(maxAbsDiff(got, want)).toBeLessThan(1e-5);
    },
  );
});
