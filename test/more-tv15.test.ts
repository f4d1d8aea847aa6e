import { describe, it, expect, vi } from 'vitest';
import { readModel } from '../src/onnx/index.js';
import { inferShapes, modelStats } from '../src/graph/shapes.js';
import { openNpy } from '../src/npy.js';
import { analyze } from '../src/graph/analyze.js';
import { Calibration } from '../src/calibration.js';
import { captureGrams } from '../src/capture/index.js';
import { Frontier } from '../src/capture/frontier.js';
import { neededNodes, Runner } from '../src/capture/runner.js';
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

describe('a detector exported with its post-processing: captures through a frontier', () => {
  // torchvision's SSD300 at 300×300 (8 images): 554 of its 949 s were captures, each running the whole detector from
  // its images, because an If of the post-processing (batched_nms's `boxes.numel() == 0`) anywhere in the graph made
  // every capture run the whole model; only a node the capture runs must not hold a subgraph (after: captures 102 s,
  // 243 s in all, the same rankings; FCOS 768 → 155 s)
  it("run the backbone's part, fed from the tensors cached, and give the Gram matrices of whole runs", async () => {
    const m = readModel(`${FIX}/det12-fasterrcnn.onnx`),
      data = openNpy(`${FIX}/det12-images64.calib.npy`);
    expect(m.graph!.node.some((n) => n.attribute.some((a) => a.g))).toBe(true); // the Ifs
    const { groups } = analyze(m, Calibration.of(m, data).shapes);
    expect(groups.length).toBeGreaterThan(4);
    const frontier = new Frontier(m, 2 ** 30, true),
      open = vi.spyOn(Runner, 'open');
    const parts: number[] = [];
    let diff = 0,
      cached = 0;
    for (const [i, group] of groups.entries()) {
      const opts = { batch: 1, threads: 1 };
      const plain = await captureGrams(m, [group], data, opts),
        opened = open.mock.calls.length;
      const fed = await captureGrams(m, [group], data, {
        ...opts,
        frontier: { model: frontier, later: groups.slice(i + 1) },
      });
      cached = Math.max(cached, frontier.names.length);
      for (const [, extra, , , given] of open.mock.calls.slice(opened))
        parts.push(neededNodes(m.graph!, extra ?? [], new Set(given?.keys()))?.length ?? m.graph!.node.length);
      plain.get(group.id)!.forEach((p, c) => {
        const a = p.G!,
          b = fed.get(group.id)![c]!.G!,
          scale = a.reduce((x, v) => Math.max(x, Math.abs(v)), 0);
        diff = Math.max(diff, a.reduce((x, v, j) => Math.max(x, Math.abs(v - b[j]!)), 0) / scale);
      });
    }
    open.mockRestore();
    data.close();
    expect(diff).toBeLessThan(1e-5);
    // each session a part of the graph (before: all of it, every time), and later captures fed from the cache
    expect(parts.length).toBe(groups.length);
    expect(Math.max(...parts)).toBeLessThan(m.graph!.node.length / 2);
    expect(cached).toBeGreaterThan(0);
  });
});
