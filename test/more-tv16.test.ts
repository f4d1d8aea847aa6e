import { describe, it, expect } from 'vitest';
import { DataType, intAttr, makeNode, readModel, type NodeProto } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { modelStats, realValue, type RealScope } from '../src/graph/shapes.js';
import { openNpy } from '../src/npy.js';
import { prune } from '../src/index.js';
import { runCli } from './cli-helpers.js';
import { describeFixtures } from './fixture-suite.js';

// Round tv16: torchvision's video classifiers, a GPT-2 decoder with its KV cache, a mixture-of-experts encoder and a
// 3-D UNet at their real sizes, written in plain torch (test/fixtures/make-more-tv16.py keeps what they showed small).

const FIX = 'test/fixtures';

describe('a model with no prunable group (BiT: every conv computes its weight at run time)', () => {
  // the video nets this round showed it on (every consumer a Conv3d) are prunable now: more-conv3d.test.ts
  const model = () => readModel(`${FIX}/cnn5-bit.onnx`),
    images = () => openNpy(`${FIX}/cnn-images.calib.npy`);

  it('prune returns the model unchanged without running it to measure a fidelity', async () => {
    // r3d_18 at full size spent 87 s verifying its 16 held-out clips on a model nothing had changed
    const original = model();
    const { model: out, report } = await prune(original, images(), {
      budget: { compression: 2 },
      verify: { data: images() },
      threads: 1,
    });
    expect(analyze(original).groups).toEqual([]);
    expect(report.groups).toEqual([]);
    expect(report.params.after).toBe(report.params.before);
    expect(out.graph!.node.length).toBe(original.graph!.node.length);
    expect(report.seconds.verify).toBe(0);
    expect(report.fidelity).toEqual({ samples: 0, outputDims: [] });
  });
});

describe("torch's tensor_split (a Loop filling a sequence, as MViT splits off its class token)", () => {
  const SPLIT = `${FIX}/tv16-split.onnx`;

  it('the layers after it have no shapes, and the FLOPs leave them out', () => {
    // embed: 2 × 5 tokens × 8 × 16; fc1 and fc2 (16→32, 32→4) are past the sequence ops
    const stats = modelStats(readModel(SPLIT));
    expect(stats.flops).toBe(2 * 5 * 8 * 16);
    expect(stats.unknown).toEqual(['/fc1/MatMul', '/fc2/MatMul']);
  });

  it('inspect says the FLOPs leave out those layers, in the text and the JSON', async () => {
    // mvit_v2_s showed "3.51G FLOPs per sample" for a model of about 130 GFLOPs and did not say why
    const text = await runCli('inspect', SPLIT);
    expect(text.code).toBe(0);
    expect(text.out.split('\n')[0]).toBe(
      `${SPLIT}: opset 17, inputs tokens [1,5,8], 832 params, 1.3k FLOPs per sample (not counted: 2 layers whose ` +
        'shapes are unknown, e.g. /fc1/MatMul; the refusals say why)',
    );
    const json = JSON.parse((await runCli('inspect', SPLIT, '--json')).out);
    expect(json.flopsUncounted).toEqual(['/fc1/MatMul', '/fc2/MatMul']);
  });
});

describeFixtures([
  {
    // each layer's 4 experts' hidden neurons (Linear 8→16, GELU, Linear 16→8), the second layer's after a TopK
    model: `${FIX}/tv16-moe.onnx`,
    data: () => openNpy(`${FIX}/tv16-moe.calib.npy`),
    groups: Array.from({ length: 8 }, () => [16, 1, 1]),
  },
]);

describe('a mixture of experts routed by TopK', () => {
  it('TopK and OneHot have shapes: the layers after the first router are sized', () => {
    // the full-size encoder (4 layers of 8 experts of 1024, top-2 by gather): 22.3 % of the parameters in prunable
    // groups, the experts of layers 2 to 4 refused with "it comes from TopK, an op with no shape rule"; now 89.0 %
    const m = readModel(`${FIX}/tv16-moe.onnx`);
    expect(modelStats(m, [1, 6, 8]).unknown).toEqual([]);
    const { groups } = analyze(m, [1, 6, 8]);
    expect(groups.map((u) => u.id.replace(/\/experts\.\d\.0\/Gemm$/, ''))).toEqual([
      ...Array.from({ length: 4 }, (_, e) => `/layers/layers.0/experts.${e}`),
      ...Array.from({ length: 4 }, (_, e) => `/layers/layers.1/experts.${e}`),
    ]);
  });

  it("routed as Mixtral's code does (each expert on its own tokens): refused, the rows depending on values", () => {
    const { groups, refused } = analyze(readModel(`${FIX}/tv16-moe-nonzero.onnx`), [1, 6, 8]);
    expect(groups).toEqual([]);
    const experts = refused.filter((r) => r.node.includes('/experts.'));
    expect(experts).toHaveLength(16);
    const nonZero = /it comes from NonZero "\/layers\/layers\.[01]\/NonZero(_\d)?"/,
      why = 'whose output shape depends on the values it reads';
    for (const r of experts) {
      expect(r.reason).toMatch(/^the shape of "[^"]+" is unknown: /);
      expect(r.reason).toMatch(nonZero);
      expect(r.reason).toContain(why);
    }
  });
});

describe("Mixtral's routing: the experts' outputs scattered into zeros_like(h) (index_add, as ScatterElements)", () => {
  it('the report warns that its FLOPs leave out the experts, whose rows are counted at run time', async () => {
    // the full-size encoder's summary said "FLOPs 152.57M → 95.94M (1.59×)" of a model of 2.3 GFLOPs, unsaid
    const { report } = await prune(readModel(`${FIX}/tv16-moe-nonzero.onnx`), openNpy(`${FIX}/tv16-moe.calib.npy`), {
      budget: { compression: 2 },
      threads: 1,
    });
    expect(report.warnings).toEqual([
      'the FLOPs leave out 16 layers whose shapes are unknown (e.g. /layers/layers.0/experts.0/experts.0.0/Gemm; ' +
        'subprune inspect says why): they count only the rest of the model',
    ]);
  });

  it('the logits after it have a fixed shape and are compared', () => {
    // the scatter's output has its data's shape, whatever the rows torch.where picked: the full-size encoder's prune
    // (its heads pruned) reported no fidelity at all, "not compared: logits (shapes that depend on the values)"
    expect(analyze(readModel(`${FIX}/tv16-moe-nonzero.onnx`), [1, 6, 8]).outputs).toEqual([
      { name: 'logits', classAxis: 2 },
    ]);
  });
});

describe('the float sizes read back by a Cast to integers (realValue)', () => {
  // a chain of 200 Relus over [1, 256], then Shape, Cast to float, Mul 0.5, Floor: the size is computed from the
  // Shape alone, and no walk goes up the Relus (MViTv2-S's 680 such Casts each walked the graph above them)
  const nodes = new Map<string, NodeProto>();
  for (let i = 0; i < 200; i++) nodes.set(`r${i + 1}`, makeNode('Relu', [`r${i}`], [`r${i + 1}`]));
  nodes.set('size', makeNode('Shape', ['r200'], ['size']));
  nodes.set('sizeF', makeNode('Cast', ['size'], ['sizeF'], [intAttr('to', DataType.FLOAT)]));
  nodes.set('half', makeNode('Mul', ['sizeF', 'c'], ['half']));
  nodes.set('floor', makeNode('Floor', ['half'], ['floor']));
  const lookups: string[] = [];
  const scope: RealScope = {
    constant: () => undefined,
    producer: (t) => (lookups.push(t), nodes.get(t)),
    value: (t) => ({ size: [1, 256], c: [0.5] })[t],
    shape: (t) => (t.startsWith('r') ? [1, 256] : t === 'c' ? [] : [2]),
  };

  it('computes the size from known values, and walks no large tensor', () => {
    expect(realValue('floor', scope)).toEqual([0, 128]);
    expect(lookups).toEqual(['floor', 'half', 'sizeF']);
    lookups.length = 0;
    expect(realValue('r200', scope)).toBeUndefined();
    expect(lookups).toEqual([]);
  });
});
