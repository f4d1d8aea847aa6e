import { describe, it, expect } from 'vitest';
import { create } from '@bufbuild/protobuf';
import {
  float32Tensor,
  floatAttr,
  intAttr,
  makeNode,
  OperatorSetIdProtoSchema,
  readModel,
  stringAttr,
  type Model,
  type NodeProto,
} from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { analyze } from '../src/graph/analyze.js';
import { opOf } from '../src/graph/ops.js';
import { constantTensors } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { randInput, randn, randomKeep, rng, run1, smallModel, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';
import { analyzeFixture, describeFixtures } from './fixture-suite.js';

// Round 8 (test/fixtures/make-more-ort8.py and .mjs, random weights): models as onnxruntime's graph optimizer writes
// them (optimizedModelFilePath, levels basic, extended and all) and after other post-export tools (com.microsoft in
// the opset imports, a float16 conversion keeping float32 inputs and outputs). Oracle: onnxruntime running the
// original with the dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const CALIB: Record<string, string> = {
  bert: 'more-distilbert',
  gpt2: 'more-gpt2',
  llama14: 'more-gpt2',
  crnn: 'ocr6-lines',
};
const calibOf = (model: string) => `${FIX}/${CALIB[model.split('-')[1]!] ?? 'cnn-images'}.calib.npy`;
const MBV3 = [
  [16, 3, 1],
  [8, 1, 1],
  [48, 1, 1],
  [24, 2, 1],
  [72, 1, 1],
  [72, 2, 1],
  [18, 1, 1],
  [32, 2, 1],
  [96, 2, 1],
  [24, 1, 1],
  [96, 1, 1],
  [64, 1, 1],
];
const RESNET = [
  [16, 2, 9, 1],
  [16, 1, 9],
  [24, 2, 1, 9],
  [24, 1, 9],
  [32, 2, 1],
  [32, 1, 9],
];

const CASES: { model: string; groups: number[][] }[] = [
  // HardSwish written as HardSigmoid and Mul (level basic), then the Convs with their Relu or HardSigmoid as FusedConv
  // (the SE gates' too; the depthwise ones pass channels as Conv's): the same groups
  { model: 'ort8-mbv3-basic', groups: MBV3 },
  { model: 'ort8-mbv3-extended', groups: MBV3 },
  // Conv + Relu as FusedConv; the residual Adds stay Adds: the exported model's groups, in the optimizer's node order
  {
    model: 'ort8-resnet-extended',
    groups: [
      [16, 2, 9, 1],
      [16, 1, 9],
      [24, 1, 9],
      [24, 2, 9, 1],
      [32, 1, 9],
      [32, 2, 1],
    ],
  },
  // heads through FusedMatMul (q·kᵀ/√d, transpose and scale fused), the FFN through BiasGelu (its bias cut with
  // the neurons); the residual stream through SkipLayerNormalization: refused, as the LayerNorms of the export
  {
    model: 'ort8-bert-extended',
    groups: [
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
    ],
  },
  // gelu_new as FastGelu
  {
    model: 'ort8-gpt2-extended',
    groups: [
      [4, 1, 8],
      [128, 1, 1],
      [4, 1, 8],
      [128, 1, 1],
    ],
  },
  // opset 14: RMSNorm fused into SimplifiedLayerNormalization (onnxruntime's op in ONNX's own domain: before, no shape
  // rule, everything refused), SiLU into QuickGelu (alpha 1) gating the up projection, q·kᵀ/√d into FusedMatMul
  {
    model: 'ort8-llama14-extended',
    groups: [
      [4, 3, 8],
      [64, 2, 1],
      [4, 3, 8],
      [64, 2, 1],
    ],
  },
  // FusedConv + MaxPool to a height of 1, read by the BiLSTM
  {
    model: 'ort8-crnn-extended',
    groups: [
      [16, 1, 9],
      [32, 1, 9],
      [32, 1, 9],
      [48, 1, 1],
    ],
  },
  // the exported ResNet with com.microsoft in its opset imports, every node of ai.onnx
  { model: 'ort8-ms-import', groups: RESNET },
  // float16 initializers between a Cast of the float32 input and a Cast to the float32 output
  { model: 'ort8-fp16-io', groups: RESNET },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => openNpy(calibOf(model)), groups })),
);

const fixture = (name: string) => readModel(`${FIX}/${name}.onnx`);
const groupsOf = (name: string) => analyzeFixture(fixture(name), () => openNpy(calibOf(name)));
/** Each group as its channels, its producers' and its consumers' names, order-free. */
const signature = (name: string) =>
  groupsOf(name)
    .groups.map((g) =>
      JSON.stringify([g.channels, g.producers.map((p) => p.name).sort(), g.consumers.map((c) => c.node.name).sort()]),
    )
    .sort();

describe('the optimizer fuses the layers, the groups stay the same channels of the same layers', () => {
  // FusedConv and FusedGemm keep their Conv's and Gemm's names: the groups are those of the unfused model
  it.each([
    ['ort8-mbv3-extended', 'ort8-mbv3-basic'],
    ['ort8-resnet-extended', 'ort8-ms-import'],
  ])('%s: the groups of %s', (optimized, plain) => {
    expect(fixture(optimized).graph!.node.filter((n) => opOf(n) === 'com.microsoft::FusedConv').length).toBeGreaterThan(
      3,
    );
    expect(fixture(plain).graph!.node.some((n) => n.domain !== '')).toBe(false);
    expect(signature(optimized)).toEqual(signature(plain));
  });

  it("BiasGelu's bias is cut with the FFN's neurons", () => {
    const m = fixture('ort8-bert-extended'),
      r = rng(4);
    const plans = groupsOf('ort8-bert-extended')
      .groups.filter((g) => g.channels === 64)
      .map((group) => ({ group, keep: randomKeep(64, 5, r) }));
    const dims = (x: Model) => constantTensors(x.graph!).get('layers.0.intermediate.bias')!.dims.map(Number);
    expect(dims(m)).toEqual([64]);
    expect(dims(pruneGroups(m, plans))).toEqual([5]);
  });
});

describe("level all: onnxruntime's NCHWc ops are refused, naming the op, its domain and what to do", () => {
  // the Convs in com.microsoft.nchwc (blocked channels for the CPU that optimized the model) are no ONNX layers, and no
  // shape rule follows them; before, the message did not say the layout is the machine's
  it.each(['ort8-mbv3-all', 'ort8-resnet-all'])('%s', (name) => {
    const m = fixture(name);
    expect(m.graph!.node.some((n) => opOf(n) === 'com.microsoft.nchwc::Conv')).toBe(true);
    const { groups, refused } = groupsOf(name);
    expect(groups).toEqual([]);
    const convs = refused.filter((r) => r.reason.startsWith('com.microsoft.nchwc::Conv is not an ONNX layer'));
    expect(convs.length).toBeGreaterThan(8);
    for (const r of refused)
      expect(r.reason).toMatch(/com\.microsoft\.nchwc::\w+.*at level 'all': channels in blocks laid out for the CPU/);
    for (const r of refused) expect(r.reason).toMatch(/that wrote them\): prune the model as exported, then optimize$/);
  });
});

/** A contrib node of onnxruntime (domain com.microsoft), in a model importing that domain. */
const contrib = (n: NodeProto) => Object.assign(n, { domain: 'com.microsoft' });
const withContrib = (m: Model) => {
  m.opsetImport.push(create(OperatorSetIdProtoSchema, { domain: 'com.microsoft', version: 1n }));
  return m;
};

/** x [N, 6] → MatMul [6, 8] → Relu → `head` (reading "h", writing "y"). */
function denseModel(head: NodeProto, weight: { name: string; dims: number[] }) {
  const r = rng(11);
  return withContrib(
    smallModel(
      [makeNode('MatMul', ['x', 'w1'], ['t'], [], 'fc1'), makeNode('Relu', ['t'], ['h'], [], 'act'), head],
      [
        float32Tensor('w1', [6, 8], randn(48, r)),
        float32Tensor(weight.name, weight.dims, randn(weight.dims[0]! * weight.dims[1]!, r)),
      ],
      ['N', 6],
    ),
  );
}

describe("onnxruntime's fused layers as consumers: cut as their ONNX layers, the output the zeroed original's", () => {
  const x = randInput([4, 6], 3);
  it.each([
    ['FusedMatMul transB=1, weight [m, d]', [intAttr('transB', 1)], 'FusedMatMul', [5, 8], [5, 3]],
    ['FusedMatMul, weight [d, m]', [], 'FusedMatMul', [8, 5], [3, 5]],
    ['FusedGemm with Tanh', [intAttr('transB', 1), stringAttr('activation', 'Tanh')], 'FusedGemm', [5, 8], [5, 3]],
  ] as const)('%s', async (_, attrs, op, dims, cut) => {
    const m = denseModel(contrib(makeNode(op, ['h', 'w2'], ['y'], [...attrs], 'head')), {
      name: 'w2',
      dims: [...dims],
    });
    const { groups, refused } = analyze(m);
    expect(refused.map((x) => x.reason)).toEqual(['output layer: no consumer']);
    expect(groups.map((g) => [g.channels, g.consumers.map((c) => c.node.name)])).toEqual([[8, ['head']]]);
    const plans = [{ group: groups[0]!, keep: [1, 4, 6] }];
    const pruned = pruneGroups(m, plans);
    expect(constantTensors(pruned.graph!).get('w2')!.dims.map(Number)).toEqual(cut);
    const [got, want] = await Promise.all([run1(pruned, x), run1(zeroDroppedInputs(m, plans), x)]);
    expect(relDiff(got.data, want.data)).toBeLessThan(1e-5);
  });

  it.each([
    [
      'FusedMatMul',
      [floatAttr('alpha', 0.5)],
      /^consumer com\.microsoft::FusedMatMul "head" scales its product by alpha=0.5/,
    ],
    ['FusedMatMul', [intAttr('transBatchB', 1)], /^consumer com\.microsoft::FusedMatMul "head" has transBatchB=1/],
    [
      'FusedGemm',
      [stringAttr('activation', 'Gelu')],
      /^consumer com\.microsoft::FusedGemm "head" applies the activation "Gelu", which/,
    ],
  ] as const)('%s %#: refused, saying why', (op, attrs, why) => {
    const m = denseModel(contrib(makeNode(op, ['h', 'w2'], ['y'], [...attrs], 'head')), { name: 'w2', dims: [8, 5] });
    const { groups, refused } = analyze(m);
    expect(groups).toEqual([]);
    expect(refused.find((r) => r.node === 'fc1')?.reason).toMatch(why);
  });

  it('a FusedConv that adds a residual Z before its activation is refused as a consumer', () => {
    const r = rng(2);
    const m = withContrib(
      smallModel(
        [
          makeNode('Conv', ['x', 'w1'], ['t'], [], 'conv1'),
          contrib(makeNode('FusedConv', ['t', 'w2', 'b2', 'x'], ['y'], [stringAttr('activation', 'Relu')], 'conv2')),
        ],
        [
          float32Tensor('w1', [4, 4, 1, 1], randn(16, r)),
          float32Tensor('w2', [4, 4, 1, 1], randn(16, r)),
          float32Tensor('b2', [4], randn(4, r)),
        ],
        ['N', 4, 5, 5],
      ),
    );
    const { groups, refused } = analyze(m);
    expect(groups).toEqual([]);
    const why = /com\.microsoft::FusedConv "conv2" adds "x" to the convolution before its activation \(a residual /;
    expect(refused.find((x) => x.node === 'conv1')?.reason).toMatch(new RegExp(`^${why.source}`));
    expect(refused.find((x) => x.node === 'conv2')?.reason).toMatch(why);
  });
});

describe('contrib ops subprune does not know are refused, saying what to do', () => {
  // MatMulNBits (onnxruntime's 4-bit weight quantizer) is a quantized layer: before, "prune the model as exported,
  // then optimize"; Attention (onnxruntime.transformers' optimizer) is an optimizer's fusion
  const QUANTIZED = /; the model is quantized: prune the float model, then quantize the pruned one$/;
  const FUSED = new RegExp(
    "; onnxruntime's optimizers write such ops \\(optimizedModelFilePath, onnxruntime\\.transformers\\.optimizer\\): " +
      'prune the model as exported, then optimize$',
  );
  it.each([
    ['MatMulNBits', [intAttr('K', 8), intAttr('N', 5), intAttr('bits', 4), intAttr('block_size', 16)], QUANTIZED],
    ['Attention', [intAttr('num_heads', 2)], FUSED],
  ] as const)('%s', (op, attrs, hint) => {
    const m = denseModel(contrib(makeNode(op, ['h', 'w2'], ['y'], [...attrs], 'head')), { name: 'w2', dims: [8, 5] });
    const { groups, refused } = analyze(m);
    expect(groups).toEqual([]);
    expect(refused.map((r) => r.node)).toEqual(['fc1', 'head']);
    expect(refused[1]!.reason).toMatch(
      new RegExp(`^com\\.microsoft::${op}( "head" is a layer of integers| is not an ONNX layer)`),
    );
    expect(refused[0]!.reason).toMatch(new RegExp(`^com\\.microsoft::${op} "head" is not known to act per channel`));
    for (const r of refused) expect(r.reason).toMatch(hint);
  });
});

describe('an op is known by its domain and its op type', () => {
  // a custom op named as an ONNX one is not that op: before, shape inference took Relu's rule for it (by op type)
  it("a Relu of another domain is not ONNX's Relu: it stops the channels, named with its domain", () => {
    const r = rng(1);
    const m = smallModel(
      [
        makeNode('MatMul', ['x', 'w1'], ['t'], [], 'fc1'),
        Object.assign(makeNode('Relu', ['t'], ['h'], [], 'custom'), { domain: 'com.example' }),
        makeNode('MatMul', ['h', 'w2'], ['y'], [], 'fc2'),
      ],
      [float32Tensor('w1', [6, 8], randn(48, r)), float32Tensor('w2', [8, 5], randn(40, r))],
      [2, 6],
    );
    const { groups, refused } = analyze(m);
    expect(groups).toEqual([]);
    expect(refused.find((x) => x.node === 'fc1')?.reason).toMatch(
      /^com\.example::Relu "custom" is not known to act per channel/,
    );
  });
});
