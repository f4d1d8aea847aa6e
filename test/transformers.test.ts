import { describe, it, expect } from 'vitest';
import {
  DataType,
  int64Tensor,
  intAttr,
  intsAttr,
  makeGraph,
  makeModel,
  makeNode,
  makeTensorValueInfo,
  readModel,
  type Model,
} from '../src/onnx/index.js';
import { encodeNpy, npyFromBytes, openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import { Calibration, type InputData } from '../src/calibration.js';
import { Runner } from '../src/capture/index.js';
import { analyze, modelStats } from '../src/graph/analyze.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { sizeModel } from '../src/budget/size.js';
import { prune } from '../src/prune/index.js';
import { captureGrams } from '../src/capture/index.js';
import { planOf, rankGroup } from '../src/prune/rank.js';
import { outInfo, randn, randTensor, randomKeep, rng, zeroDroppedInputs } from './graph-helpers.js';
import { consumerObjectives, relDiff } from './objective.js';

// Attention heads and FFN neurons on transformer exports (test/fixtures/make-transformers.py, Debian's python3-torch;
// and the bundled ViT): what the analysis finds, and that pruning any heads and neurons of every group gives exactly
// the model it promises — checked in onnxruntime (node and web) against the original with those channels' consumer
// weights zeroed, which is what removing a head or neuron means (a kept head's output does not depend on the others).

const FIX = 'test/fixtures';

interface Case {
  model: string;
  data: () => InputData;
  /** Each group as [channels, producers, g of its consumers], in graph order. */
  groups: [number, number, number][];
}

const seq = () => openNpy(`${FIX}/tf-seq.calib.npy`);
const lines = () => openNpy(`${FIX}/tf-lines.calib.npy`);
const bert = () => openNpz(`${FIX}/tf-bert-tiny.calib.npz`);
const bertGroups: Case['groups'] = [
  [4, 3, 16], // heads of layer 0: q, k, v → output projection, 16 features per head
  [128, 1, 1], // its FFN neurons
  [4, 3, 16],
  [128, 1, 1],
  [64, 1, 1], // the pooler
];
const CASES: Case[] = [
  { model: `${FIX}/tf-bert-tiny-opset17.onnx`, data: bert, groups: bertGroups },
  { model: `${FIX}/tf-bert-tiny-opset14.onnx`, data: bert, groups: bertGroups },
  { model: `${FIX}/tf-fused-qkv-split.onnx`, data: seq, groups: [[4, 1, 16]] },
  { model: `${FIX}/tf-fused-qkv-chunk.onnx`, data: seq, groups: [[4, 1, 16]] },
  // timm's packed q/k/v: [B, T, 3·C] reshaped to [B, T, 3, heads, d], the parts taken by Gather or Split + Squeeze
  { model: `${FIX}/tf-packed-qkv-index.onnx`, data: seq, groups: [[4, 1, 16]] },
  { model: `${FIX}/tf-packed-qkv-unbind.onnx`, data: seq, groups: [[4, 1, 16]] },
  // an OCR recognizer block: the attention's merge reshape reads C from the conv features, whose channels LayerNorm
  // keeps (so that count is fixed); and CRNN columns, reshape(B, W, C·H) with C·H computed at run time
  {
    model: `${FIX}/tf-conv-attention.onnx`,
    data: lines,
    groups: [
      [32, 1, 9],
      [4, 1, 16],
      [128, 1, 1],
    ],
  },
  ...['tf-conv-columns', 'tf-crnn-opset11', 'tf-crnn-opset17'].map((name) => ({
    model: `${FIX}/${name}.onnx`,
    data: lines,
    // a CRNN's consumer of the columns is a bidirectional LSTM (input weight [2, 4·24, 32·2]): g = 2 rows of H
    groups: [
      [16, 1, 9],
      [32, 1, 2],
    ] as Case['groups'],
  })),
  // a DBNet-style text detector: backbone stages, the FPN's laterals joined by upsampling Adds (one group of 4
  // producers), the Concat of the smoothed maps (4 groups), the head's Conv and ConvTranspose
  ...['tf-dbnet-opset11', 'tf-dbnet-opset17'].map((name) => ({
    model: `${FIX}/${name}.onnx`,
    data: () => openNpy(`${FIX}/tf-pages.calib.npy`),
    groups: [
      [8, 1, 9],
      [8, 1, 9, 1],
      [16, 1, 9],
      [16, 1, 9, 1],
      [24, 1, 9],
      [24, 1, 9, 1],
      [32, 1, 9],
      [32, 1, 1],
      [16, 4, 9],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 9],
      [4, 1, 1],
      [4, 1, 1],
    ] as Case['groups'],
  })),
  // 8 query heads share 2 k/v heads: a channel is one k/v head with its 4 query heads (4·8 features)
  { model: `${FIX}/tf-gqa.onnx`, data: seq, groups: [[2, 3, 32]] },
  { model: `${FIX}/tf-swiglu.onnx`, data: seq, groups: [[176, 2, 1]] },
  { model: `${FIX}/tf-geglu.onnx`, data: seq, groups: [[176, 2, 1]] },
  { model: `${FIX}/tf-gemm-ffn.onnx`, data: () => openNpy(`${FIX}/tf-gemm-ffn.calib.npy`), groups: [[256, 1, 1]] },
  {
    model: 'models/vit.onnx',
    data: () => openNpy('models/calib.npy'),
    groups: Array.from({ length: 6 }, () => [
      [4, 3, 16],
      [128, 1, 1],
    ]).flat() as Case['groups'],
  },
];

/** The first output of `model` on the first n samples, in onnxruntime-node or -web. */
async function outputs(model: Model, data: InputData, n = 8, backend: 'node' | 'web' = 'node') {
  const run = await Runner.open(model, [], { backend });
  try {
    const batch = Calibration.of(model, data).batches(n).next().value!;
    const name = model.graph!.output[0]!.name;
    return (await run.run(batch, [name])).get(name)!.data.slice();
  } finally {
    await run.release();
  }
}

const close = (data: InputData) =>
  data instanceof Map ? data.forEach((f) => f.close()) : 'close' in data ? data.close() : undefined;

describe.each(CASES)('$model', ({ model: path, data: open, groups: expected }) => {
  it('finds the heads and FFN neurons as groups', () => {
    const data = open();
    const m = readModel(path);
    const { groups } = analyze(m, Calibration.of(m, data).shapes);
    close(data);
    expect(groups.map((g) => [g.channels, g.producers.length, ...new Set(g.consumers.map((c) => c.g))])).toEqual(
      expected,
    );
  });

  it('random heads and neurons of every group: the pruned model is the original with their inputs zeroed', async () => {
    const data = open();
    const m = readModel(path);
    const shapes = Calibration.of(m, data).shapes;
    const { groups } = analyze(m, shapes);
    const r = rng(11);
    const plans = groups.map((group) => ({
      group,
      keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
    }));
    const pruned = pruneGroups(m, plans);
    const got = await outputs(pruned, data);
    expect(relDiff(got, await outputs(zeroDroppedInputs(m, plans), data))).toBeLessThan(1e-4);
    expect(relDiff(await outputs(pruned, data, 8, 'web'), got)).toBeLessThan(1e-4);
    // the size model is exact at the calibration shapes
    const keeps = new Map(plans.map((p) => [p.group.id, p.keep.length]));
    for (const target of ['params', 'flops'] as const)
      expect(sizeModel(m, groups, shapes, target)(keeps)).toBe(modelStats(pruned, shapes)[target]);
    close(data);
  });

  it('keeping everything reproduces the outputs', async () => {
    const data = open();
    const m = readModel(path);
    const { model: pruned, report } = await prune(m, data, { budget: { keepRatio: 1 }, refit: false });
    expect(report.params.after).toBe(report.params.before);
    expect(relDiff(await outputs(pruned, data), await outputs(m, data))).toBeLessThan(1e-4);
    close(data);
  });
});

describe('objectives of heads and gated neurons', () => {
  it.each([
    `${FIX}/tf-bert-tiny-opset17.onnx`,
    `${FIX}/tf-fused-qkv-split.onnx`,
    `${FIX}/tf-packed-qkv-index.onnx`,
    `${FIX}/tf-gqa.onnx`,
    `${FIX}/tf-swiglu.onnx`,
  ])("%s: each group's objective is what onnxruntime measures with the re-fitted weights", async (path) => {
    const data = path.includes('bert') ? bert() : seq();
    const m = readModel(path);
    // every token a row, as the measure below takes the consumer's whole output (token rows: 'token rows' below)
    const calib = Calibration.of(m, data, true);
    const { groups } = analyze(m, calib.shapes);
    const picked = groups.filter((g) => g.channels < 64 || g.producers.length > 1); // heads (g = head_dim), SwiGLU
    expect(picked.length).toBeGreaterThan(0);
    const grams = await captureGrams(m, picked, calib);
    for (const g of picked) {
      const k = Math.ceil(g.channels / 2),
        r = rankGroup(m, g, grams.get(g.id)!, {}, k),
        plan = planOf(r, k, true);
      const [measured] = await consumerObjectives(m, g, plan.keep, plan.W!, calib, plan.bias);
      expect(Math.abs(r.sel.consumers[0]![k - 1]! - measured!), g.id).toBeLessThan(1e-3);
    }
    close(data);
  });
});

describe('token rows', () => {
  /** The float64 Gram matrix of B's rows [N·T, d] where `keep` is 1 (every row without it), and the rows summed. */
  function maskedGram(B: { data: Float32Array; dims: number[] }, keep?: Float64Array) {
    const d = B.dims[B.dims.length - 1]!,
      rows = B.data.length / d,
      G = new Float64Array(d * d);
    let n = 0;
    for (let r = 0; r < rows; r++) {
      if (keep && !keep[r]) continue;
      n++;
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) G[i * d + j] += B.data[r * d + i]! * B.data[r * d + j]!;
    }
    return { G, n };
  }

  // every group of the fixture: heads (the output projection's input [N, T, 64]), FFN neurons ([N, T, 128]), and the
  // pooler, whose input is one row per sample ([N, 64]: no tokens to leave out)
  const rowsOf = (allTokens: boolean) =>
    allTokens ? 'with allTokens, every token is a row, padding included' : 'padding tokens (mask 0) are left out';
  for (const allTokens of [false, true])
    it(`${rowsOf(allTokens)}; a row per sample stays`, async () => {
      const data = bert();
      const m = readModel(`${FIX}/tf-bert-tiny-opset17.onnx`);
      const calib = Calibration.of(m, data, allTokens);
      const mask = data.get('attention_mask')!.readF64();
      const padded = mask.filter((v) => v === 0).length;
      expect(padded).toBeGreaterThan(0); // the fixture pads some sequences
      expect(calib.padding).toEqual(allTokens ? undefined : { input: 'attention_mask', tokens: mask.length, padded });
      const groups = analyze(m, calib.shapes).groups;
      // batches of 8 (4 per capture batch): the mask is read per batch
      const captured = await captureGrams(m, groups, calib, { batch: 8 });
      const run = await Runner.open(
        m,
        groups.map((u) => u.consumers[0]!.input),
      );
      const acts = await run.run(calib.batches(1024).next().value!, [
        ...new Set(groups.map((u) => u.consumers[0]!.input)),
      ]);
      await run.release();
      let tokenLayers = 0;
      for (const u of groups) {
        const c = u.consumers[0]!,
          B = acts.get(c.input)!,
          got = captured.get(u.id)![0]!;
        const tokens = B.dims.length === 3;
        tokenLayers += +tokens;
        // the oracle: onnxruntime's consumer input, BᵀB in float64 over the rows of real tokens (or every row)
        const want = maskedGram(B, tokens && !allTokens ? mask : undefined);
        expect(got.rows).toBe(want.n);
        expect(relDiff(got.G, want.G)).toBeLessThan(1e-5);
        if (tokens) expect(got.rows).toBe(allTokens ? mask.length : mask.length - padded);
        else expect(got.rows).toBe(calib.rows);
      }
      expect(tokenLayers).toBe(4);
      close(data);
    });

  it('a token-major input [T, b, features] leaves out the padding of its own rows', async () => {
    // ids → embedding [b, T, 8] + mask (padding rows differ) → [T, b, 8] → MatMul → Relu → MatMul → mean
    const r = rng(11);
    const nodes = [
      makeNode('Gather', ['emb', 'input_ids'], ['e'], [intAttr('axis', 0)], 'embed'),
      makeNode('Cast', ['attention_mask'], ['mf'], [intAttr('to', DataType.FLOAT)], 'cast'),
      makeNode('Unsqueeze', ['mf', 'last'], ['mu'], [], 'unsqueeze'),
      makeNode('Add', ['e', 'mu'], ['x'], [], 'add_mask'),
      makeNode('Transpose', ['x'], ['xt'], [intsAttr('perm', [1, 0, 2])], 'token_major'),
      makeNode('MatMul', ['xt', 'w1'], ['h'], [], 'fc1'),
      makeNode('Relu', ['h'], ['a'], [], 'relu'),
      makeNode('MatMul', ['a', 'w2'], ['y'], [], 'fc2'),
      makeNode('ReduceMean', ['y'], ['out'], [intsAttr('axes', [0]), intAttr('keepdims', 0)], 'mean'),
    ];
    const m = makeModel(
      makeGraph(
        'token-major',
        nodes,
        [
          makeTensorValueInfo('input_ids', DataType.INT64, ['b', 't']),
          makeTensorValueInfo('attention_mask', DataType.INT64, ['b', 't']),
        ],
        [outInfo('out')],
        [randTensor('emb', [20, 8], r), randTensor('w1', [8, 12], r), randTensor('w2', [12, 3], r)].concat([
          int64Tensor('last', [1], [2]),
        ]),
      ),
      13,
    );
    const [N, T] = [24, 6];
    const ids = new Float64Array(N * T),
      mask = new Float64Array(N * T);
    for (let s = 0; s < N; s++) {
      const len = 1 + (s % T);
      for (let t = 0; t < T; t++) [ids[s * T + t], mask[s * T + t]] = t < len ? [1 + ((s * 7 + t) % 19), 1] : [0, 0];
    }
    const npy = (name: string, x: Float64Array) => npyFromBytes(encodeNpy(BigInt64Array.from(x, BigInt), [N, T]), name);
    const data = new Map([
      ['input_ids', npy('ids.npy', ids)],
      ['attention_mask', npy('mask.npy', mask)],
    ]);
    const calib = Calibration.of(m, data);
    const [u] = analyze(m, calib.shapes).groups;
    expect(u!.consumers[0]!.node.name).toBe('fc2');
    // batches of 5: a batch is never as long as the sequences, and one is shorter than the rest
    const got = (await captureGrams(m, [u!], calib, { batch: 5 })).get(u!.id)![0]!;
    const run = await Runner.open(m, ['a']);
    const A = (await run.run(calib.batches(N).next().value!, ['a'])).get('a')!;
    await run.release();
    expect(A.dims).toEqual([T, N, 12]);
    // row t·N + s of the token-major input is token t of sample s
    const keep = Float64Array.from({ length: N * T }, (_, r) => mask[(r % N) * T + Math.floor(r / N)]!);
    const want = maskedGram(A, keep);
    expect(got.rows).toBe(mask.reduce((a, b) => a + b));
    expect(relDiff(got.G, want.G)).toBeLessThan(1e-5);
  });
});

/**
 * A hand-built attention block on x [1, 4, 8]: 2 heads of 4, one shape constant shared by the q, k and v reshapes (as
 * exporters that fold equal constants write it), optionally a k/v cache input `past` concatenated along the tokens.
 */
function attention(cache: boolean): Model {
  const r = rng(3),
    w = (name: string, dims: number[]) => randTensor(name, dims, r);
  const heads = (t: string) => [
    makeNode('Reshape', [t, 'split_shape'], [`${t}_h`], [], `${t}_reshape`),
    makeNode('Transpose', [`${t}_h`], [`${t}_t`], [intsAttr('perm', [0, 2, 1, 3])], `${t}_transpose`),
  ];
  const [k, v] = cache ? ['k_all', 'v_all'] : ['k_t', 'v_t'];
  const nodes = [
    ...['q', 'k', 'v'].flatMap((t) => [makeNode('MatMul', ['x', `w${t}`], [t], [], `${t}_proj`), ...heads(t)]),
    ...(cache
      ? [
          makeNode('Concat', ['past', 'k_t'], ['k_all'], [intAttr('axis', 2)], 'cache_k'),
          makeNode('Concat', ['past', 'v_t'], ['v_all'], [intAttr('axis', 2)], 'cache_v'),
        ]
      : []),
    makeNode('Transpose', [k], ['kT'], [intsAttr('perm', [0, 1, 3, 2])], 'kT'),
    makeNode('MatMul', ['q_t', 'kT'], ['s'], [], 'scores'),
    makeNode('Softmax', ['s'], ['p'], [intAttr('axis', -1)], 'softmax'),
    makeNode('MatMul', ['p', v], ['o'], [], 'weighted'),
    makeNode('Transpose', ['o'], ['o_t'], [intsAttr('perm', [0, 2, 1, 3])], 'o_transpose'),
    makeNode('Reshape', ['o_t', 'merge_shape'], ['o_m'], [], 'merge'),
    makeNode('MatMul', ['o_m', 'wo'], ['y'], [], 'out_proj'),
  ];
  const inits = [
    ...['wq', 'wk', 'wv', 'wo'].map((n) => w(n, [8, 8])),
    int64Tensor('split_shape', [4], [1, 4, 2, 4]),
    int64Tensor('merge_shape', [3], [1, 4, 8]),
  ];
  const inputs = [makeTensorValueInfo('x', DataType.FLOAT, [1, 4, 8])];
  if (cache) inputs.push(makeTensorValueInfo('past', DataType.FLOAT, [1, 2, 3, 4]));
  return makeModel(makeGraph('attention', nodes, inputs, [outInfo('y')], inits), 17);
}

describe('a head-count constant shared by the q, k and v reshapes', () => {
  it('is copied for each reshape: pruning one head is the original with its output columns zeroed', async () => {
    const m = attention(false);
    const { groups } = analyze(m);
    expect(groups.map((g) => [g.channels, g.producers.length, g.consumers[0]!.g])).toEqual([[2, 3, 4]]);
    const plans = [{ group: groups[0]!, keep: [1] }];
    const pruned = pruneGroups(m, plans);
    const data = npyFromBytes(encodeNpy(randn(6 * 4 * 8, rng(4)), [6, 4, 8]), 'x.npy');
    expect(relDiff(await outputs(pruned, data, 1), await outputs(zeroDroppedInputs(m, plans), data, 1))).toBeLessThan(
      1e-5,
    );
  });
});

describe('what stays refused', () => {
  it('attention with a k/v cache input: the cached heads are not the projections, so none of them is pruned', () => {
    const { groups, refused } = analyze(attention(true));
    expect(groups).toEqual([]);
    const reason = (node: string) => refused.find((x) => x.node === node)!.reason;
    expect(reason('k_proj')).toBe('Concat "cache_k" joins the channels with "past", which no group owns');
    expect(reason('q_proj')).toBe('MatMul "scores" pairs the channels with "kT", which no group owns');
  });

  // timm's packed q/k/v, [1, 4, 24] → [1, 4, 3, 2, 4] (3 parts of 2 heads of 4), then an op that does not take the
  // parts apart: the projection is refused, with the op that stopped it (a Transpose moves parts that are one channel
  // each anywhere, as SKNet's softmax over its branches before opset 13: the Reshape that merges them stops them)
  it.each([
    ['mix', 'Reshape "merge" reshapes packed parts of channels (take them apart first)'],
    [
      'sum',
      'ReduceSum "sum" reads packed parts of channels (a reshape to [.., parts, heads, d]) before a Gather or ' +
        'Split takes them apart',
    ],
  ])('packed q/k/v parts kept together by %s', (how, why) => {
    const r = rng(5);
    const nodes = [
      makeNode('MatMul', ['x', 'wqkv'], ['qkv'], [], 'qkv_proj'),
      makeNode('Reshape', ['qkv', 'packed_shape'], ['p'], [], 'pack'),
      how === 'mix'
        ? makeNode('Transpose', ['p'], ['t'], [intsAttr('perm', [0, 1, 3, 2, 4])], 'mix')
        : makeNode('ReduceSum', ['p', 'parts_axis'], ['t'], [intAttr('keepdims', 1)], 'sum'),
      makeNode('Reshape', ['t', 'merge_shape'], ['m'], [], 'merge'),
      makeNode('MatMul', ['m', 'wo'], ['y'], [], 'out_proj'),
    ];
    const inits = [
      randTensor('wqkv', [8, 24], r),
      randTensor('wo', [how === 'mix' ? 24 : 8, 8], r),
      int64Tensor('packed_shape', [5], [1, 4, 3, 2, 4]),
      int64Tensor('parts_axis', [1], [2]),
      int64Tensor('merge_shape', [3], [1, 4, how === 'mix' ? 24 : 8]),
    ];
    const inputs = [makeTensorValueInfo('x', DataType.FLOAT, [1, 4, 8])];
    const m = makeModel(makeGraph('packed', nodes, inputs, [outInfo('y')], inits), 17);
    const { groups, refused } = analyze(m);
    expect(groups.map((g) => g.id)).not.toContain('qkv_proj');
    expect(refused.find((x) => x.node === 'qkv_proj')?.reason).toBe(why);
  });
});
