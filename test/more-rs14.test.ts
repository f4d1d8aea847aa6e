import { describe, it, expect } from 'vitest';
import { readModel } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { prune } from '../src/prune/index.js';
import { analyze } from '../src/graph/analyze.js';
import { describeFixtures } from './fixture-suite.js';

// Round rs14: transformers, OCR and detection models at their real sizes, written in plain torch
// (test/fixtures/make-more-rs14.py keeps what they showed small). Oracle: onnxruntime running the original with the
// dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const open = () => openNpy(`${FIX}/cnn-images.calib.npy`);

describeFixtures([
  {
    // stem, C3 (its cv1 with the bottleneck's residual), SPPF, lateral conv, the fused C3; the Detect convs are outputs
    model: `${FIX}/rs14-yolo-raw.onnx`,
    data: open,
    groups: [
      [8, 1, 1],
      [4, 2, 1],
      [4, 1, 9],
      [4, 1, 1],
      [8, 1, 9, 1],
      [16, 1, 1],
      [8, 1, 1],
      [16, 1, 1],
      [8, 1, 1],
      [4, 2, 1],
      [4, 1, 9],
      [4, 1, 1],
      [8, 1, 1],
    ],
  },
]);

describe('a YOLO Detect head exported raw ([B, 3, H, W, 5 + classes]) holds no class scores', () => {
  // the head conv's 3 × 8 channels viewed as [B, 3, 8, H, W]: the anchor axis holds 3 runs of 8 fields (box,
  // objectness, classes). Before, it was taken for a class axis, and the full YOLOv5s's report gave "top-1 agreement
  // 100 %" over its 3 anchors (the sensitivity and search allocations score by that agreement and its KL too).
  it('its outputs compare by relative error alone', () => {
    const { outputs } = analyze(readModel(`${FIX}/rs14-yolo-raw.onnx`));
    expect(outputs).toEqual([{ name: 'p2' }, { name: 'p4' }]);
    // a classifier's output still holds class scores along its conv's channels
    expect(analyze(readModel(`${FIX}/tv13-aspp.onnx`)).outputs).toEqual([{ name: 'out', classAxis: 1 }]);
  });

  it('the prune reports no top-1 agreement for it', async () => {
    const { report } = await prune(readModel(`${FIX}/rs14-yolo-raw.onnx`), open(), { budget: { compression: 2 } });
    expect(report.fidelity.agreement).toBeUndefined();
    expect(report.fidelity.outputs!.map((o) => [o.name, o.agreement, o.kl])).toEqual([
      ['p2', undefined, undefined],
      ['p4', undefined, undefined],
    ]);
    expect(report.fidelity.relError).toBeGreaterThan(0);
    expect(report.fidelity.relError).toBeLessThan(1);
  });
});
