import { afterAll, describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readModel } from '../src/onnx/index.js';
import { OutputComparison } from '../src/eval/index.js';
import { runCli } from './cli-helpers.js';
import { analyze } from '../src/graph/analyze.js';
import { Calibration } from '../src/calibration.js';
import { encodeNpy, openNpy } from '../src/npy.js';
import { describeFixtures } from './fixture-suite.js';

// Round tr17: EfficientNetV2-S, a DINOv2-S/14-style ViT, a DeBERTa-v3-small-style encoder, an RWKV-4-style and a
// Mamba-130m-style language model at their real sizes, written in plain torch (test/fixtures/make-more-tr17.py keeps
// what they showed small). Oracle: onnxruntime running the original with the dropped channels' consumer inputs zeroed
// (test/fixture-suite.ts).

const FIX = 'test/fixtures';
const DIR = mkdtempSync(join(tmpdir(), 'subprune-tr17-')),
  OUT = join(DIR, 'pruned.onnx');
afterAll(() => rmSync(DIR, { recursive: true, force: true }));
const calib = () => openNpy(`${FIX}/tr17-decay.calib.npy`);

describeFixtures([
  {
    // in_proj's 12 neurons, A_log's rows and the gain sliced with them
    model: `${FIX}/tr17-decay.onnx`,
    data: calib,
    groups: [[12, 1, 1]],
  },
  {
    // d_inner (in_proj's x and z halves, the depthwise conv, dt_proj's outputs, A_log's rows, D, the scan state's
    // zeros) read by x_proj and out_proj; x_proj's dt rank read by dt_proj
    model: `${FIX}/tr17-scan.onnx`,
    data: calib,
    groups: [
      [16, 2, 1],
      [2, 1, 1],
    ],
  },
]);

const analyzed = (name: string) => {
  const m = readModel(`${FIX}/${name}`),
    data = calib();
  const out = analyze(m, Calibration.of(m, data).shapes);
  data.close?.();
  return out;
};

describe("Mamba's A = -exp(A_log): a parameter mapped element-wise at run time", () => {
  it('is sliced with the channels it meets, [channels, state] and per channel alike', () => {
    // before: no group; in_proj refused: Mul "/Mul" combines the channels with "/Neg_output_0" ... (it is computed
    // from constants and shapes alone ... subprune slices constants, not tensors computed from them)
    const { groups, refused } = analyzed('tr17-decay.onnx');
    expect(groups.map((g) => g.producers.map((p) => p.name))).toEqual([['/in_proj/MatMul']]);
    expect(refused.map((r) => r.node)).toEqual(['/out_proj/MatMul']);
  });
});

describe("Mamba's selective scan, a loop over time steps", () => {
  it("prunes d_inner; x_proj's state channels are refused, each for its own reason", () => {
    // before: in_proj and dt_proj refused (Mul "/Mul_4" combines channels laid out differently: dt[..., None] ·
    // B[:, :, None, :], an outer product of d_inner and the state), coverage 9.4 % of the FLOPs (the real
    // Mamba-130m: 2.8 %)
    const { groups, refused } = analyzed('tr17-scan.onnx');
    expect(groups[0]!.producers.map((p) => p.name)).toEqual(['/in_proj/MatMul', '/dt_proj/MatMul']);
    expect(groups[0]!.consumers.map((c) => c.node.name)).toEqual(['/x_proj/MatMul', '/out_proj/MatMul']);
    expect(refused.map((r) => [r.node, r.reason])).toEqual([
      [
        '/x_proj/MatMul',
        'Mul "/Mul_4" multiplies the channels by those of "/Unsqueeze_1_output_0" on another axis (an outer ' +
          'product, whose output holds the channels of one of its inputs)',
      ],
      ['/x_proj/MatMul', 'Einsum "/Einsum" sums over the channels (letter "n" of "bdn,bn->bd"), which couples them'],
      [
        '/out_proj/MatMul',
        'Add "/Add_7" combines the channels with "x", which no group owns (it is computed from the input "x" by no ' +
          'layer, e.g. an embedding lookup or a padding mask: subprune prunes only channels that a layer produces); ' +
          'both would have to be pruned together',
      ],
    ]);
  });
});

describe('class scores whose reference has one top-1 class at every position', () => {
  const act = (data: number[]) => ({ data: Float32Array.from(data), dims: [data.length / 3, 3] });
  const compare = (ref: number[], y: number[]) => {
    const cmp = new OutputComparison([{ name: 'logits', classAxis: 1 }]);
    cmp.add(new Map([['logits', act(y)]]), new Map([['logits', act(ref)]]));
    return cmp.outputs()[0]!;
  };

  it('say so: the agreement then only says whether that class stays on top', () => {
    // before: 100 % agreement and nothing else (the real-size EfficientNetV2-S and DINOv2-S of random weights: class
    // 192, resp. 842, for all 16 held-out inputs; DINO's pruned scores were 0.15 off, more than they vary)
    const ref = [0, 5, 1, 0.2, 4, 0, 0, 3, 2.5, 1, 6, 0];
    const same = compare(ref, [1, 2, 0, 0, 1, 0.5, 0, 1, 0.9, 0, 1, 0]);
    expect(same.agreement).toBe(1);
    expect(same.oneClass).toBe(1);
    // the reference's classes differ (0 and 1): the agreement measures something, and the field is absent
    const varied = compare([9, ...ref.slice(1)], ref);
    expect(varied).not.toHaveProperty('oneClass');
    // one position cannot differ from itself
    expect(compare(ref.slice(0, 3), ref.slice(0, 3))).not.toHaveProperty('oneClass');
  });

  it('the prune summary says to read the error instead', async () => {
    // tr17-decay's y [B, 5, 6] are scores per position (a Linear's channels): make every position pick one class by
    // a calibration whose rows are all alike
    const x = new Float32Array(16 * 5 * 8).fill(0.5);
    const path = join(DIR, 'alike.npy');
    writeFileSync(path, encodeNpy(x, [16, 5, 8]));
    const r = await runCli('prune', `${FIX}/tr17-decay.onnx`, '--calib', path, '--keep-ratio', '0.5', '-o', OUT);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/the original's top-1 is class \d at every position, so the agreement says little/);
  });
});
