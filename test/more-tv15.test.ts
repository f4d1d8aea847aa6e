import { describe, it, expect } from 'vitest';
import { readModel } from '../src/onnx/index.js';
import { inferShapes, modelStats } from '../src/graph/shapes.js';
import { openNpy } from '../src/npy.js';
import { analyzeFixture, describeFixtures } from './fixture-suite.js';
import { randInput, run } from './graph-helpers.js';

// Round 15: torchvision models at their real sizes (test/fixtures/make-more-tv15.py keeps what they showed small).
// Oracle: onnxruntime running the original with the dropped channels' consumer inputs zeroed (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const open = () => openNpy(`${FIX}/cnn-images.calib.npy`);

describeFixtures([
  {
    // the feature encoder's two 3×3 convs (its 1×1 conv is read by the correlation), the context encoder's two convs
    // (the second into the Concat with the looked-up correlation) and the update's first conv
    model: `${FIX}/tv15-raft.onnx`,
    data: open,
    groups: [
      [8, 1, 9],
      [8, 1, 1],
      [6, 1, 9],
      [4, 1, 9],
      [8, 1, 9],
    ],
  },
]);

describe("RAFT's correlation lookup: GridSample's output shape", () => {
  const LOOKUP = '/GridSample_output_0';

  it("is x's batch and channels at the grid's points, as onnxruntime computes it", async () => {
    const m = readModel(`${FIX}/tv15-raft.onnx`);
    const got = inferShapes(m, [2, 3, 32, 32]).get(LOOKUP);
    const want = (await run(m, randInput([2, 3, 32, 32], 15), [LOOKUP])).get(LOOKUP)!.dims;
    expect(want).toEqual([128, 1, 3, 3]); // a 3×3 window at each of 2 · 8 · 8 pixels
    expect(got).toEqual(want);
  });

  // before: nothing after the lookup had a shape, so the update's convs were left out of the FLOPs (raft_small at
  // 224×224: 1.14 G counted of 17.58 G) and the context encoder's last conv was refused ("GridSample, an op with no
  // shape rule in subprune")
  it('counts the layers after it and prunes the context that joins it', () => {
    const m = readModel(`${FIX}/tv15-raft.onnx`);
    expect(modelStats(m, [1, 3, 32, 32]).unknown).toEqual([]);
    const { groups, refused } = analyzeFixture(m, open);
    expect(groups.map((g) => g.id)).toContain('/cnet/cnet.1/Conv');
    expect(refused.map((r) => r.reason).join('\n')).not.toMatch(/GridSample/);
  });
});
