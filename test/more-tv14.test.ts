import { describe, it, expect } from 'vitest';
import { makeNode } from '../src/onnx/index.js';
import { encodeNpy, npyFromBytes } from '../src/npy.js';
import { Calibration } from '../src/calibration.js';
import { smallModel } from './graph-helpers.js';

// Round 14: torchvision models at their real sizes; what they showed needs no fixture file (models built here).

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
