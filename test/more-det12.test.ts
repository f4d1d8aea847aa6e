import { describe, it, expect } from 'vitest';
import { clone } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-node';
import {
  DataType,
  ModelProtoSchema,
  intAttr,
  makeNode,
  readModel,
  serializeModel,
  stringAttr,
  type Model,
} from '../src/onnx/index.js';
import { float32Tensor, int64Tensor, setTensorValues, tensorToFloat32 } from '../src/onnx/tensor.js';
import { inferShapes } from '../src/graph/shapes.js';
import { openNpy } from '../src/npy.js';
import { outputAxesOf } from '../src/graph/analyze.js';
import { verifyPruned } from '../src/prune/verify.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { analyzeFixture } from './fixture-suite.js';
import { randomKeep, rng, smallModel, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';

// Round 12 of real exports (test/fixtures/make-more-det12.py, random weights): detectors exported end to end with their
// post-processing (NonMaxSuppression, TopK, NonZero, If and Loop from torchvision's scripted helpers). Outputs whose
// shapes depend on the values are only checked to be finite (OutputAxis.uncompared).

const FIX = 'test/fixtures';
const CALIB = `${FIX}/det12-images64.calib.npy`;
const open = () => openNpy(CALIB);
const read = (name: string) => readModel(`${FIX}/${name}.onnx`);

/** Every output of `m` on the first `rows` calibration images, one session run per image, by ONNX's semantics. */
async function outputsOf(m: Model, rows = 4): Promise<Map<string, { dims: number[]; data: number[] }[]>> {
  const session = await ort.InferenceSession.create(serializeModel(m), {
      graphOptimizationLevel: 'disabled',
      logSeverityLevel: 3,
    }),
    x = open(),
    out = new Map(session.outputNames.map((o) => [o, [] as { dims: number[]; data: number[] }[]]));
  try {
    for (let r = 0; r < rows; r++) {
      const y = await session.run({ input: new ort.Tensor('float32', x.readF32(r, r + 1), [1, 3, 64, 64]) });
      for (const o of session.outputNames)
        out.get(o)!.push({ dims: [...y[o]!.dims], data: Array.from(y[o]!.data as ArrayLike<number | bigint>, Number) });
    }
    return out;
  } finally {
    x.close();
    await session.release();
  }
}

// The random-removal oracle of test/fixture-suite.ts, per output and image: the tensors after NonZero and
// NonMaxSuppression have no static shape (describeFixtures asks for one), and the outputs hold int64 labels.
describe.each([
  // the backbone and decoder; the last conv's single channel reaches Greater (the binarization): refused
  {
    name: 'det12-db',
    groups: [
      [8, 1, 9],
      [16, 1, 9, 1],
      [16, 1, 1],
      [8, 2, 9],
      [8, 1, 1],
    ],
  },
  // the backbone; the head's channels are the box fields, which the decoding slices: refused
  {
    name: 'det12-yolo',
    groups: [
      [8, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [32, 1, 1],
    ],
  },
  {
    name: 'det12-yolo-nms',
    groups: [
      [8, 1, 9],
      [16, 1, 9],
      [16, 1, 9],
      [32, 1, 1],
    ],
  },
  // the body and the FPN's top-down stream (its three lateral 1×1 convs and the upsampled Adds), read by the 3×3
  // layer_blocks; before: nothing, the transform's Resize and Pad having sizes computed in float arithmetic
  ...['det12-fasterrcnn', 'det12-maskrcnn', 'det12-keypointrcnn'].map((name) => ({
    name,
    groups: [
      [8, 1, 9],
      [8, 1, 9, 1],
      [16, 1, 9, 1],
      [16, 1, 1],
      [8, 3, 9],
    ],
  })),
])('$name', ({ name, groups: expected }) => {
  it('the groups are the channels expected', () => {
    const { groups } = analyzeFixture(read(name), open);
    expect(groups.map((g) => [g.channels, g.producers.length, ...new Set(g.consumers.map((c) => c.g))])).toEqual(
      expected,
    );
  });

  it('half of every group removed at random: every output is the original with their inputs zeroed', async () => {
    const m = read(name),
      { groups } = analyzeFixture(m, open),
      r = rng(5);
    const plans = groups.map((group) => ({
      group,
      keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
    }));
    const got = await outputsOf(pruneGroups(m, plans)),
      want = await outputsOf(zeroDroppedInputs(m, plans));
    for (const [o, images] of want)
      images.forEach((w, i) => {
        const g = got.get(o)![i]!;
        expect(g.dims, `${o} of image ${i}`).toEqual(w.dims);
        // (an image without detections: two empty tensors)
        if (w.data.length) expect(relDiff(Float64Array.from(g.data), Float64Array.from(w.data)), o).toBeLessThan(1e-4);
      });
    // the images have detections: the comparison is not of empty tensors
    expect([...want.values()].every((images) => images.some((w) => w.data.length > 0))).toBe(true);
  });

  it('prunes end to end (the check passes: data-shaped outputs finite)', async () => {
    const { model: pruned, report } = await prune(read(name), open(), { budget: { keepRatio: 0.5 }, refit: false });
    expect(report.params.after).toBeLessThan(report.params.before);
    for (const images of (await outputsOf(pruned)).values())
      for (const y of images) expect(y.data.every(Number.isFinite)).toBe(true);
  });
});

describe('outputs whose shapes depend on the values are not compared', () => {
  it.each([
    // NonZero (the binarized map): its coordinates and the probabilities gathered there; the map itself is compared
    ['det12-db', { prob: undefined, text: 'data-shaped', text_prob: 'data-shaped' }],
    ['det12-yolo', { boxes: 'data-shaped', scores: 'data-shaped', labels: 'data-shaped' }],
    // the NonMaxSuppression only inside an If's branch, under a condition known from shapes (before: boxes and scores
    // compared, labels 'integers')
    ['det12-yolo-nms', { boxes: 'data-shaped', scores: 'data-shaped', labels: 'data-shaped' }],
    ['det12-fasterrcnn', { boxes: 'data-shaped', scores: 'data-shaped', labels: 'data-shaped' }],
    // masks pasted and keypoints decoded by Loops
    ['det12-maskrcnn', { boxes: 'data-shaped', scores: 'data-shaped', labels: 'data-shaped', masks: 'data-shaped' }],
    [
      'det12-keypointrcnn',
      { boxes: 'data-shaped', labels: 'data-shaped', keypoints: 'data-shaped', keypoints_scores: 'data-shaped' },
    ],
  ])('%s', (name, want) => {
    const got = Object.fromEntries(outputAxesOf(read(name)).map((o) => [o.name, o.uncompared]));
    for (const [output, why] of Object.entries(want)) expect(got[output], output).toBe(why);
  });
});

/** The boxes output's row count on the first calibration image. */
async function boxCount(m: Model): Promise<number> {
  const session = await ort.InferenceSession.create(serializeModel(m), { logSeverityLevel: 3 });
  try {
    const x = open(),
      one = new ort.Tensor('float32', x.readF32(0, 1), [1, 3, 64, 64]);
    x.close();
    return (await session.run({ input: one })).boxes!.dims[0]!;
  } finally {
    await session.release();
  }
}

describe('the check of a pruned model: data-shaped outputs are checked finite, not for shape', () => {
  it('det12-yolo-nms: another number of boxes passes (the NonMaxSuppression inside an If)', async () => {
    const m = read('det12-yolo-nms'),
      other = clone(ModelProtoSchema, m);
    const bias = other.graph!.initializer.find((t) => t.name === 'head.bias')!,
      b = tensorToFloat32(bias);
    // larger boxes (the w, h entries of each anchor's fields) overlap more: NMS keeps fewer
    setTensorValues(
      bias,
      b.dims,
      b.data.map((v, i) => ([2, 3].includes(i % 8) ? v + 1.5 : v)),
    );
    expect(await boxCount(other)).not.toBe(await boxCount(m));
    await expect(verifyPruned(m, other, open())).resolves.toBeUndefined();
  });
});

describe('torchvision detectors: what stays refused, and why', () => {
  it.each(['det12-fasterrcnn', 'det12-maskrcnn', 'det12-keypointrcnn'])('%s', (name) => {
    const { refused } = analyzeFixture(read(name), open),
      why = (node: string) => refused.find((r) => r.node === node)?.reason;
    // the FPN's outputs reach the RPN head, whose convs the levels share
    expect(why('/det/backbone/fpn/layer_blocks.0/layer_blocks.0.0/Conv')).toMatch(
      /constant "det.rpn.head.conv.0.0.weight" is shared .*one layer applied to several inputs/,
    );
    // the RoI heads run on the proposals NMS kept: no static shape
    expect(why('/det/roi_heads/box_head/fc6/Gemm')).toMatch(/the shape of .* is unknown/);
  });
});

describe("a Resize's sizes computed in float arithmetic on the input's shape (GeneralizedRCNNTransform)", () => {
  // scale = 48 / min(h, w); each side ceil(floor(side · scale) / 32) · 32: at 20 × 30, 48 × 72 padded to 64 × 96
  const f32 = (name: string, v: number[]) => float32Tensor(name, v.length > 1 ? [v.length] : [], Float32Array.from(v));
  const model = smallModel(
    [
      makeNode('Shape', ['x'], ['shape']),
      makeNode('Slice', ['shape', 'two', 'four'], ['hw']),
      makeNode('Cast', ['hw'], ['hwf'], [intAttr('to', DataType.FLOAT)]),
      makeNode('ReduceMin', ['hwf'], ['short'], [intAttr('keepdims', 0)]),
      makeNode('Reciprocal', ['short'], ['inv']),
      makeNode('Mul', ['inv', 'target'], ['scale']),
      makeNode('Mul', ['hwf', 'scale'], ['scaled']),
      makeNode('Floor', ['scaled'], ['floored']),
      makeNode('Div', ['floored', 'stride'], ['blocks']),
      makeNode('Ceil', ['blocks'], ['ceiled']),
      makeNode('Mul', ['ceiled', 'stride'], ['padded']),
      makeNode('Cast', ['padded'], ['hw2'], [intAttr('to', DataType.INT64)]),
      makeNode('Concat', ['nc', 'hw2'], ['sizes'], [intAttr('axis', 0)]),
      makeNode('Resize', ['x', '', '', 'sizes'], ['y'], [stringAttr('mode', 'nearest')]),
    ],
    [
      int64Tensor('two', [1], [2]),
      int64Tensor('four', [1], [4]),
      int64Tensor('nc', [2], [1, 3]),
      f32('target', [48]),
      f32('stride', [32]),
    ],
    [1, 3, 20, 30],
  );

  it('has the shape onnxruntime computes', async () => {
    expect(inferShapes(model).get('y')).toEqual([1, 3, 64, 96]);
    const session = await ort.InferenceSession.create(serializeModel(model));
    const y = await session.run({ x: new ort.Tensor('float32', new Float32Array(3 * 20 * 30), [1, 3, 20, 30]) });
    await session.release();
    expect(y.y!.dims).toEqual([1, 3, 64, 96]);
  });
});
