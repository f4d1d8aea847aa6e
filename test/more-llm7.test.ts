import { describe, it, expect } from 'vitest';
import * as ort from 'onnxruntime-node';
import {
  float32Tensor,
  int64Tensor,
  intAttr,
  makeNode,
  readModel,
  serializeModel,
  stringAttr,
  tensorToFloat32,
  tensorToInt64,
} from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import type { InputData } from '../src/calibration.js';
import { analyze } from '../src/graph/analyze.js';
import { constantTensors } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { randInput, randn, rng, run1, smallModel, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';
import { analyzeFixture, describeFixtures } from './fixture-suite.js';

// Round 7 of real exports (test/fixtures/make-more-llm7.py, random weights): decoder-only language models as HF
// transformers (and MPT's and Phi-2's own code) write them, in variants no earlier fixture has: Pythia's chunked
// fused qkv and triu mask, Falcon's key/value head broadcast by the MatMul and Falcon-40B's grouped fused qkv,
// Mistral's sliding window, Gemma with grouped-query heads wider than the hidden size, Gemma-2's soft-capping,
// GPT-J's interleaved rotary, Phi-2's MixFormer code, MPT's ALiBi buffer, OPT's project_in/out. Oracle: onnxruntime
// running the original with the dropped channels' consumer inputs zeroed (test/fixture-suite.ts), at 8 tokens and 5.

const FIX = 'test/fixtures';
const NPZ = new Set(['llm7-falcon-mqa', 'llm7-opt', 'llm7-opt-postln']);
const dataOf = (model: string): InputData =>
  NPZ.has(model) ? openNpz(`${FIX}/${model}.calib.npz`) : openNpy(`${FIX}/${model}.calib.npy`);

// Each group as [channels, producers, g of its consumers], in graph order.
const CASES: { model: string; groups: number[][] }[] = [
  // per layer the heads of the fused query_key_value viewed as [B, T, heads, 3·d] and chunked on the last axis (its
  // one producer), partial rotary on 2 of each head's 8 dims; the MLP's neurons
  {
    model: 'llm7-pythia',
    groups: [
      [4, 1, 8],
      [128, 1, 1],
      [4, 1, 8],
      [128, 1, 1],
    ],
  },
  // per layer the query heads of the fused query_key_value (the one key/value head, [B, 1, T, d], broadcast by both
  // MatMuls over them, stays); the MLP's neurons
  {
    model: 'llm7-falcon-mqa',
    groups: [
      [4, 1, 8],
      [128, 1, 1],
      [4, 1, 8],
      [128, 1, 1],
    ],
  },
  // per layer the key/value groups of the fused query_key_value viewed as [B, T, kv, 2 + 2, d]: a channel is a group's
  // 2 query heads, its key and its value head (32 rows), read as 2 · 8 columns of dense; the MLP's neurons
  {
    model: 'llm7-falcon40b',
    groups: [
      [2, 1, 16],
      [128, 1, 1],
      [2, 1, 16],
      [128, 1, 1],
    ],
  },
  // a channel is one key/value head and its 2 query heads (16 columns of o_proj), biases sliced with them; SwiGLU
  {
    model: 'llm7-mistral',
    groups: [
      [2, 3, 16],
      [64, 2, 1],
      [2, 3, 16],
      [64, 2, 1],
    ],
  },
  // the same with heads of 16 (2 · 16 columns of o_proj a channel); GeGLU
  {
    model: 'llm7-gemma',
    groups: [
      [2, 3, 32],
      [64, 2, 1],
      [2, 3, 32],
      [64, 2, 1],
    ],
  },
  // per layer the heads of the fused Wqkv [B, T, 3, heads, d] (d 10): q and k taken apart by Gathers for the rotary,
  // re-packed with the values (a Slice of one part) by a Concat on the parts' axis, unbind, both Einsums; the MLP
  {
    model: 'llm7-phi2',
    groups: [
      [4, 1, 10],
      [160, 1, 1],
      [4, 1, 10],
      [160, 1, 1],
    ],
  },
  // the heads of both blocks one group: the ALiBi buffer [1, heads, 1, max_seq] is one table, sliced to the keys'
  // length and added to both blocks' scores (its head axis cut with them); head_dim = C // heads computed once for the
  // q, k and v reshapes (the divisor shrinks with the heads); the MLPs' neurons
  {
    model: 'llm7-mpt',
    groups: [
      [4, 2, 8],
      [128, 1, 1],
      [128, 1, 1],
    ],
  },
  // heads and neurons of both layers; project_out's 16 outputs, read by the lm_head tied to the embedding (its
  // columns cut: a MatMul with the embedding matrix transposed, a constant of its own)
  {
    model: 'llm7-opt',
    groups: [
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
      [16, 1, 1],
    ],
  },
  {
    model: 'llm7-opt-postln',
    groups: [
      [4, 3, 8],
      [64, 1, 1],
      [4, 3, 8],
      [64, 1, 1],
      [16, 1, 1],
    ],
  },
  // Gemma-2: the same heads under soft-capped scores (tanh(w / 50) · 50) and a sliding window in layer 0; four
  // RMSNorms a layer (post_attention_layernorm normalises o_proj's output: the stream stays)
  {
    model: 'llm7-gemma2',
    groups: [
      [2, 3, 32],
      [64, 2, 1],
      [2, 3, 32],
      [64, 2, 1],
    ],
  },
  // GPT-J: heads with the interleaved rotary (x[..., ::2], x[..., 1::2], stack, flatten) of their first 4 dims, cos
  // and sin by repeat_interleave (every shape after it was unknown: its Split and Expand of the repeats had no
  // values); the MLP's neurons
  {
    model: 'llm7-gptj',
    groups: [
      [4, 3, 8],
      [128, 1, 1],
      [4, 3, 8],
      [128, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model, groups }) => ({ model: `${FIX}/${model}.onnx`, data: () => dataOf(model), groups, length: 5 })),
);

const refusals = (model: string) => analyzeFixture(readModel(`${FIX}/${model}.onnx`), () => dataOf(model)).refused;

describe('refusals name what couples the channels', () => {
  it.each([
    // the key/value head [B, 1, T, d] broadcast over the query heads: it stays, they are pruned
    [
      'llm7-falcon-mqa',
      '/h.0/self_attention/query_key_value/MatMul',
      /"\/h.0\/self_attention\/MatMul" multiplies the one channel of .* with every channel of .*one key\/value head/,
    ],
  ])('%s: %s', (model, node, why) => {
    expect(refusals(model).find((r) => r.node === node)?.reason).toMatch(why);
  });
});

describe("MPT's LayerNorms without bias: LayerNormalization(x, scale, '')", () => {
  it('the pruned model drops the omitted bias, and onnxruntime loads and runs it at its default level', async () => {
    const m = readModel(`${FIX}/llm7-mpt.onnx`),
      lns = (x: typeof m) => x.graph!.node.filter((n) => n.opType === 'LayerNormalization');
    expect(lns(m).map((n) => n.input.length)).toEqual([3, 3, 3, 3, 3]);
    const { groups } = analyzeFixture(m, () => dataOf('llm7-mpt'));
    const pruned = pruneGroups(
      m,
      groups.map((group) => ({ group, keep: [0, 1] })),
    );
    expect(lns(pruned).map((n) => n.input.length)).toEqual([2, 2, 2, 2, 2]);
    // before: a segmentation fault (onnxruntime's extended graph optimizations read the empty bias), as the CLI's
    // check of the written file opens it at the default level
    const session = await ort.InferenceSession.create(serializeModel(pruned), { logSeverityLevel: 3 });
    const ids = new ort.Tensor(
      'int64',
      BigInt64Array.from({ length: 10 }, (_, i) => BigInt(i)),
      [2, 5],
    );
    expect((await session.run({ input_ids: ids })).logits!.dims).toEqual([2, 5, 96]);
    await session.release();
  });
});

describe("MPT's ALiBi buffer and head_dim computed once", () => {
  const m = () => readModel(`${FIX}/llm7-mpt.onnx`);
  const heads = (x = m()) => analyzeFixture(x, () => dataOf('llm7-mpt')).groups[0]!;

  it("the buffer [1, heads, 1, max_seq] loses the removed heads' rows; the divisor counts the heads kept", () => {
    const model = m(),
      keep = [0, 2, 3];
    const pruned = pruneGroups(model, [{ group: heads(model), keep }]);
    const [before, after] = [model, pruned].map((x) => constantTensors(x.graph!).get('attn_bias')!);
    expect(after.dims.map(Number)).toEqual([1, 3, 1, 16]);
    const rows = (t: typeof before) => {
      const v = tensorToFloat32(t).data;
      return [...Array(Number(t.dims[1])).keys()].map((h) => [...v.subarray(h * 16, (h + 1) * 16)]);
    };
    expect(rows(after)).toEqual(keep.map((h) => rows(before)[h]));
    const div = (x: typeof model) => x.graph!.node.find((n) => n.name === '/blocks.0/attn/Div_1')!;
    const divisor = (x: typeof model) => constantTensors(x.graph!).get(div(x).input[1]!)!;
    expect([model, pruned].map((x) => Number(tensorToInt64(divisor(x)).data[0]))).toEqual([4, 3]);
  });
});

/**
 * x [1, 4, 16] → two projections q1, q2, each viewed as [B, T, 2, d] with d = Shape(q)[2] // heads, merged back and
 * projected, the outputs added. `shared`: one heads constant for both divisions (an exporter that deduplicates
 * constants), so removing heads from one group would change the other's head_dim.
 */
function twoHeadDims(shared: boolean) {
  const r = rng(3),
    nodes = [],
    inits = [int64Tensor('two', [1], [2])];
  for (const k of [1, 2]) {
    const h = shared ? 'two' : `two${k}`;
    if (!shared) inits.push(int64Tensor(h, [1], [2]));
    inits.push(int64Tensor(`back${k}`, [3], [0, 0, -1]), int64Tensor(`lead${k}`, [3], [0, 0, 2]));
    inits.push(int64Tensor(`i2_${k}`, [], [2]), int64Tensor(`ax0_${k}`, [1], [0]));
    inits.push(float32Tensor(`w${k}`, [16, 16], randn(256, r)), float32Tensor(`o${k}`, [16, 8], randn(128, r)));
    nodes.push(
      makeNode('MatMul', ['x', `w${k}`], [`q${k}`], [], `proj${k}`),
      makeNode('Shape', [`q${k}`], [`s${k}`], [], `shape${k}`),
      makeNode('Gather', [`s${k}`, `i2_${k}`], [`c${k}`], [intAttr('axis', 0)], `c${k}`),
      makeNode('Unsqueeze', [`c${k}`, `ax0_${k}`], [`cu${k}`], [], `cu${k}`),
      makeNode('Div', [`cu${k}`, h], [`d${k}`], [], `div${k}`),
      makeNode('Concat', [`lead${k}`, `d${k}`], [`shape4_${k}`], [intAttr('axis', 0)], `cat${k}`),
      makeNode('Reshape', [`q${k}`, `shape4_${k}`], [`heads${k}`], [], `split${k}`),
      makeNode('Relu', [`heads${k}`], [`a${k}`], [], `relu${k}`),
      makeNode('Reshape', [`a${k}`, `back${k}`], [`m${k}`], [], `merge${k}`),
      makeNode('MatMul', [`m${k}`, `o${k}`], [`y${k}`], [], `out${k}`),
    );
  }
  nodes.push(makeNode('Add', ['y1', 'y2'], ['y'], [], 'sum'));
  return smallModel(nodes, inits, [1, 4, 16]);
}

describe('a head count shrunk once for a group (shared by its q, k and v reshapes) shapes no other channels', () => {
  it('one heads constant per division: both groups of 2 heads; pruned equals the zeroed original', async () => {
    const m = twoHeadDims(false),
      { groups } = analyze(m);
    expect(groups.map((g) => [g.id, g.channels])).toEqual([
      ['proj1', 2],
      ['proj2', 2],
    ]);
    const plans = groups.map((group) => ({ group, keep: [1] })),
      x = randInput([1, 4, 16], 4);
    const [got, want] = [await run1(pruneGroups(m, plans), x), await run1(zeroDroppedInputs(m, plans), x)];
    expect(relDiff(got.data, want.data)).toBeLessThan(1e-5);
  });

  it('one heads constant for both: both refused, naming the other reshape', () => {
    const { groups, refused } = analyze(twoHeadDims(true));
    expect(groups).toEqual([]);
    expect(refused.find((r) => r.node === 'proj1')?.reason).toMatch(
      /its count "two" also shapes Reshape "split2", whose channels are not this group's/,
    );
  });
});

describe('Einsum of activations (Phi-2\'s "bthd,bshd->bhts")', () => {
  it('channels under a letter the equation sums over are refused, naming the letter', () => {
    const r = rng(4),
      m = smallModel(
        [
          makeNode('MatMul', ['x', 'w'], ['q'], [], 'proj'),
          makeNode('Reshape', ['q', 'heads'], ['qh'], [], 'split'),
          makeNode('Einsum', ['qh', 'qh'], ['y'], [stringAttr('equation', 'bthd,bshd->bts')], 'scores'),
        ],
        [float32Tensor('w', [16, 16], randn(256, r)), int64Tensor('heads', [4], [1, 4, 2, 8])],
        [1, 4, 16],
        17,
      );
    expect(analyze(m).refused.find((x) => x.node === 'proj')?.reason).toBe(
      'Einsum "scores" sums over the channels (letter "h" of "bthd,bshd->bts"), which couples them',
    );
  });
});
