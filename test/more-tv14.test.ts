import { describe, it, expect } from 'vitest';
import { makeNode, readModel, type Model } from '../src/onnx/index.js';
import { encodeNpy, npyFromBytes, openNpy } from '../src/npy.js';
import { Calibration } from '../src/calibration.js';
import { constantTensors } from '../src/graph/shapes.js';
import { tensorToFloat32 } from '../src/onnx/tensor.js';
import { analyze } from '../src/graph/analyze.js';
import { prune } from '../src/prune/index.js';
import { smallModel } from './graph-helpers.js';
import { fixtureOutputs } from './fixture-suite.js';

// Round 14: torchvision models at their real sizes (test/fixtures/make-more-tv14.py keeps what they showed small).

describe('calibration samples for a model input without a batch axis', () => {
  // torchvision's SSDlite exported whole takes one [3, 320, 320] image (a list of images in torch): 16 such samples
  // were refused as "rank 4; the model input has rank 3", which does not say what is wrong or what to do
  const relu = (dims: (number | string)[]) => smallModel([makeNode('Relu', ['x'], ['y'], [], 'relu')], [], dims);
  const npy = (shape: number[]) =>
    npyFromBytes(encodeNpy(new Float32Array(shape.reduce((a, b) => a * b)), shape), 'x.npy');

  it('is refused with the export that gives it one', () => {
    expect(() => Calibration.of(relu([3, 4, 4]), npy([2, 3, 4, 4]))).toThrow(
      'x.npy holds 2 samples of [3,4,4], but the model input x ([3,4,4]) has no batch axis to feed them along: ' +
        "export it with one, e.g. torch.onnx.export(..., dynamic_axes={'x': {0: 'batch'}})",
    );
  });

  it.each([
    // a dynamic first axis is the samples' axis: the data's rank is wrong
    [
      'a dynamic first axis',
      ['n', 4],
      [2, 3, 4],
      /x\.npy has shape \[2,3,4\] \(rank 3\); the model input x has rank 2/,
    ],
    // the data's sample shape differs from the input's: a rank mismatch as before
    ['other sample dims', [3, 4, 4], [2, 3, 5, 4], /has shape \[2,3,5,4\] \(rank 4\); the model input x has rank 3/],
  ])('%s is a rank mismatch', (_, dims, shape, message) => {
    expect(() => Calibration.of(relu(dims as (number | string)[]), npy(shape as number[]))).toThrow(message);
  });

  it('a batched input takes the same samples', () => {
    expect(Calibration.of(relu(['n', 3, 4, 4]), npy([2, 3, 4, 4])).arrays[0]!.rows).toBe(2);
  });
});

describe('asymmetric mode: the groups kept whole before the first cut', () => {
  // VGG-16-BN at compression 2 (params) cut only its classifier: its 12 conv groups, kept whole, were each captured,
  // ranked and re-fitted on the original model (4 of its 8 minutes), where a re-fit can only move their weights along
  // the null space of their inputs (planOf keeps them in layerwise mode)
  const m = readModel('test/fixtures/cnn5-vgg11-bn-nofold.onnx'),
    data = () => openNpy('test/fixtures/cnn-images.calib.npy');
  const groups = analyze(m).groups,
    cut = groups[3]!;
  const keep = Object.fromEntries(groups.map((u) => [u.id, u === cut ? u.channels / 2 : u.channels]));
  const weight = (x: Model, node: string) => {
    const n = x.graph!.node.find((v) => v.name === node)!;
    return tensorToFloat32(constantTensors(x.graph!).get(n.input[1]!)!).data;
  };

  it('keep their weights, and the model stays the original until the cut', async () => {
    const seen: Model[] = [];
    const { model: pruned, report } = await prune(m, data(), {
      budget: { keep },
      mode: 'asymmetric',
      onGroupPruned: (_, x) => seen.push(x),
    });
    expect(seen.slice(0, 3).every((x) => x === m)).toBe(true);
    expect(seen[3]).not.toBe(m);
    expect(report.groups.slice(0, 3).map((u) => [u.kept, u.objective])).toEqual(
      groups.slice(0, 3).map((u) => [u.channels, 1]),
    );
    // the consumers of the first two groups: not re-fitted, not cut (the third's is the cut group's producer)
    for (const u of groups.slice(0, 2))
      for (const c of u.consumers) expect(weight(pruned, c.node.name)).toEqual(weight(m, c.node.name));
    expect(report.groups[3]!.kept).toBe(cut.channels / 2);
    expect(report.params.after).toBeLessThan(report.params.before);
    expect((await fixtureOutputs(pruned, data(), 4)).every(Number.isFinite)).toBe(true);
  });
});
