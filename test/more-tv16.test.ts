import { describe, it, expect } from 'vitest';
import { readModel } from '../src/onnx/index.js';
import { analyze } from '../src/graph/analyze.js';
import { openNpy } from '../src/npy.js';
import { prune } from '../src/index.js';

// Round tv16: torchvision's video classifiers, a GPT-2 decoder with its KV cache, a mixture-of-experts encoder and a
// 3-D UNet at their real sizes, written in plain torch (test/fixtures/make-more-tv16.py keeps what they showed small).

const FIX = 'test/fixtures';

describe('a model with no prunable group (a video net: every consumer a Conv3d)', () => {
  const model = () => readModel(`${FIX}/tv16-c3d.onnx`);

  it('every candidate is refused, each saying why', () => {
    const { groups, refused } = analyze(model());
    expect(groups).toEqual([]);
    expect(refused.map((r) => r.reason)).toEqual([
      'consumer Conv "/conv1/conv1.0/Conv" is a 3-D convolution; only 1-D and 2-D ones are supported',
      'consumer Conv "/conv2/conv2.0/Conv" is a 3-D convolution; only 1-D and 2-D ones are supported',
      'output layer: no consumer',
    ]);
  });

  it('prune returns the model unchanged without running it to measure a fidelity', async () => {
    // r3d_18 at full size spent 87 s verifying its 16 held-out clips on a model nothing had changed
    const original = model();
    const { model: out, report } = await prune(original, openNpy(`${FIX}/tv16-c3d.calib.npy`), {
      budget: { compression: 2 },
      verify: { data: openNpy(`${FIX}/tv16-c3d.calib.npy`) },
      threads: 1,
    });
    expect(report.groups).toEqual([]);
    expect(report.params.after).toBe(report.params.before);
    expect(out.graph!.node.length).toBe(original.graph!.node.length);
    expect(report.seconds.verify).toBe(0);
    expect(report.fidelity).toEqual({ samples: 0, outputDims: [] });
  });
});
