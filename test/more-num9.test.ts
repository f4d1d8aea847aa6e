import { describe, it, expect } from 'vitest';
import { initializerMap, readModel, tensorToFloat32, type Model } from '../src/onnx/index.js';
import { encodeNpy, npyFromBytes, openNpy, type NpyFile } from '../src/npy.js';
import { prune, type Mode } from '../src/prune/index.js';
import { analyzeFixture, describeFixtures, fixtureOutputs } from './fixture-suite.js';
import { consumerObjectives, measuredObjective, relDiff } from './objective.js';
import { consumerWeightMatrix } from '../src/graph/analyze.js';
import { Runner } from '../src/capture/index.js';
import { Calibration } from '../src/calibration.js';

// Round 9: the numerics of trained models (test/fixtures/make-more-num9.py): weights trained for 40 SGD steps, then
// given dead ReLU channels, constant ones, duplicated and all-zero filters, BatchNorms with a near-zero variance or a
// huge gamma, activations around 1e4 and 1e-4, raw [0, 255] images, calibration sets smaller than a layer is wide and
// calibration rows all identical. Oracles: onnxruntime running the original (with the dropped channels' consumer
// inputs zeroed, test/fixture-suite.ts), and float64 least squares written here.

const FIX = 'test/fixtures';
const CALIB: Record<string, string> = {
  'num9-mnv3-dead': 'cnn-images',
  'num9-resnet-raw': 'num9-raw255',
  'num9-scales': 'cnn-images',
  'num9-ocr-bilstm': 'num9-lines',
  'num9-ocr-tf': 'num9-lines',
  'num9-tenc-ids': 'num9-ids',
  'num9-mlp': 'num9-few',
};
const model = (name: string) => readModel(`${FIX}/${name}.onnx`);
const calib = (name: string) => openNpy(`${FIX}/${CALIB[name] ?? name}.calib.npy`);

const CASES: { model: string; groups: number[][] }[] = [
  // every expand, SE and project conv and the classifier's hidden Linear
  {
    model: 'num9-mnv3-dead',
    groups: [
      [8, 2, 1],
      [16, 1, 1],
      [24, 2, 1],
      [6, 1, 1],
      [12, 2, 1],
      [32, 2, 1],
      [8, 1, 1],
      [48, 1, 1],
      [64, 1, 1],
    ],
  },
  // the residual stream (stem and both blocks' last convs), each block's inner conv, the strided block's output
  {
    model: 'num9-resnet-raw',
    groups: [
      [8, 3, 9, 1],
      [8, 1, 9],
      [8, 1, 9],
      [16, 1, 9],
      [16, 2, 1],
    ],
  },
  // the stem, each branch of the Concat (one ~1e4, one ~1e-4) read by one conv, that conv
  {
    model: 'num9-scales',
    groups: [
      [8, 1, 9],
      [6, 1, 9],
      [6, 1, 9],
      [16, 1, 1],
    ],
  },
  // the conv stack, its last conv read by the LSTM's input weights; the LSTM's hidden units are refused (recurrence)
  {
    model: 'num9-ocr-bilstm',
    groups: [
      [8, 1, 9],
      [16, 1, 9],
      [32, 1, 1],
    ],
  },
  // the conv stack but its last conv (the LayerNorm'd stream), the heads, the FFN's neurons
  {
    model: 'num9-ocr-tf',
    groups: [
      [8, 1, 9],
      [16, 1, 9],
      [2, 1, 16],
      [64, 1, 1],
    ],
  },
  // heads and FFN neurons of both layers, the classifier's 256 hidden neurons (8 rows of input for d = 256)
  {
    model: 'num9-tenc-ids',
    groups: [
      [4, 1, 8],
      [128, 1, 1],
      [4, 1, 8],
      [128, 1, 1],
      [256, 1, 1],
    ],
  },
  {
    model: 'num9-mlp',
    groups: [
      [256, 1, 1],
      [64, 1, 1],
    ],
  },
];

describeFixtures(
  CASES.map(({ model: name, groups }) => ({ model: `${FIX}/${name}.onnx`, data: () => calib(name), groups })),
);

/** Every number in a report (as `prune --report` writes it) is finite: JSON would write NaN and ±Infinity as null. */
function nonFinite(x: unknown, at = ''): string[] {
  if (typeof x === 'number') return Number.isFinite(x) ? [] : [at];
  if (x === null) return [at];
  if (typeof x !== 'object') return [];
  return Object.entries(x as object).flatMap(([k, v]) => nonFinite(v, `${at}.${k}`));
}

describe('trained numerics: the reports are finite and the pruned models run', () => {
  it.each(
    CASES.flatMap(({ model: name }) => [
      [name, 'asymmetric', { compression: 2 }],
      [name, 'layerwise', { keepRatio: 0.75 }],
    ]) as [string, Mode, { compression?: number; keepRatio?: number }][],
  )('%s, %s %j', async (name, mode, budget) => {
    const m = model(name),
      data = calib(name);
    const { model: pruned, report } = await prune(m, data, { budget, mode });
    expect(nonFinite(report)).toEqual([]);
    for (const u of report.groups) {
      // never worse than the channels' consumers reading nothing of them (0), never better than exact (1)
      expect(u.objective, u.id).toBeGreaterThanOrEqual(0);
      expect(u.objective, u.id).toBeLessThanOrEqual(1 + 1e-9);
    }
    expect(report.params.after).toBeLessThan(report.params.before);
    expect((await fixtureOutputs(pruned, data, 8)).every(Number.isFinite)).toBe(true);
    data.close();
  });
});

describe('dead, constant, all-zero and duplicated channels cost nothing', () => {
  // Each group keeps as many channels as it has independent ones: the dropped ones are the dependent ones (zero or
  // constant at the consumer's input, the intercept taking the constants; one of each pair of twins). Layerwise, the
  // pruned model is the original (onnxruntime) up to the re-fit's rounding, or, with 8 text lines, up to its ridge
  // toward the weights (fewer than 10 rows per column: the twin's weights are not all moved to the one kept).
  it.each([
    // expand: 0-2 dead, 7 all zero (both constant after the depthwise conv's bias), 5 and 6 twins; 3 and 4 (constant
    // 0.5) vary at the depthwise conv's zero padding
    ['num9-mnv3-dead', '/b1/expand/expand.0/Conv', 11, [0, 1, 2, 7], [5, 6], 1e-6],
    ['num9-ocr-bilstm', '/stack/c2/c2.0/Conv', 13, [0, 1], [2, 3], 1e-3],
    ['num9-ocr-bilstm', '/stack/c3/c3.0/Conv', 30, [6], [4, 5], 1e-3],
    ['num9-ocr-tf', '/stack/c2/c2.0/Conv', 13, [0, 1], [2, 3], 1e-3],
    ['num9-ocr-tf', '/block/fc1/MatMul', 61, [0, 1], [2, 3], 1e-3],
  ] as const)('%s, %s: %i kept', async (name, id, k, dependent, twins, tol) => {
    const m = model(name),
      data = calib(name);
    const want = await fixtureOutputs(m, data, 8);
    for (const mode of ['layerwise', 'asymmetric'] as Mode[]) {
      const { model: pruned, report } = await prune(m, data, { budget: { keep: { [id]: k } }, mode });
      const u = report.groups.find((x) => x.id === id)!,
        dropped = [...Array(u.channels).keys()].filter((c) => !u.order.includes(c));
      expect(
        dropped.filter((c) => !dependent.includes(c)),
        mode,
      ).toHaveLength(1);
      expect(dropped, mode).toEqual(expect.arrayContaining([...dependent]));
      expect(
        twins.filter((c) => dropped.includes(c)),
        mode,
      ).toHaveLength(1);
      expect(u.objective, mode).toBeGreaterThan(1 - tol / 10);
      // (asymmetric mode re-fits the groups kept whole too, to the original's activations: not the same model)
      if (mode === 'layerwise') expect(relDiff(await fixtureOutputs(pruned, data, 8), want)).toBeLessThan(tol);
    }
    data.close();
  });
});

describe('channels of very different scales: a group alone, its objective is the one onnxruntime measures', () => {
  // the Concat of a ~1e4 and a ~1e-4 branch read by one conv; the raw-image ResNet's blocks, one with a BN of gamma
  // 1e3 (activations ~1e5), one with gamma 1e-4 on 2 channels; MobileNet's block whose BN has a variance of 1e-12.
  // (Not the residual stream: its consumers feed each other, so pruned together each reads what the others' re-fits
  // changed, which the objective, per consumer on its input as captured, does not count.)
  it.each([
    ['num9-scales', '/big/Conv', 3],
    ['num9-scales', '/small/Conv', 3],
    ['num9-resnet-raw', '/l2/c1/Conv', 8],
    ['num9-resnet-raw', '/l1a/c1/Conv', 4],
    ['num9-resnet-raw', '/l1b/c1/Conv', 4],
    ['num9-mnv3-dead', '/b2/expand/expand.0/Conv', 12],
  ] as const)('%s, %s: %i kept', async (name, id, k) => {
    const m = model(name),
      data = calib(name);
    const group = analyzeFixture(m, () => calib(name)).groups.find((g) => g.id === id)!;
    // the group's own re-fit: a sweep after it would change the weights its objective describes
    const { model: pruned, report } = await prune(m, data, { budget: { keep: { [id]: k } }, sweep: false });
    const claimed = report.groups.find((u) => u.id === id)!.objective,
      measured = await measuredObjective(m, pruned, group, data);
    expect(measured).toBeGreaterThan(0);
    expect(Math.abs(claimed - measured)).toBeLessThan(1e-3);
    data.close();
  });
});

describe("the raw-image ResNet's residual stream: each consumer's objective is the one onnxruntime measures", () => {
  // the stream (stem and both blocks' last convs; channel 3 all zero in each) on [0, 255] images, read by four convs;
  // layerwise, each consumer alone with its re-fitted weights and bias on the original's inputs (test/objective.ts)
  it('4 of 8 channels kept', async () => {
    const name = 'num9-resnet-raw',
      id = '/stem/Conv',
      m = model(name),
      data = calib(name);
    const { model: pruned, report } = await prune(m, data, { budget: { keep: { [id]: 4 } }, mode: 'layerwise' });
    const u = report.groups.find((x) => x.id === id)!,
      keep = [...u.order].sort((a, b) => a - b);
    expect(keep).not.toContain(3);
    const group = analyzeFixture(m, () => calib(name)).groups.find((g) => g.id === id)!,
      after = analyzeFixture(pruned, () => calib(name)).groups.find((g) => g.id === id)!;
    const inits = (x: Model) => initializerMap(x.graph!);
    const shift = group.consumers.map((c) => {
      const [b0, b1] = [m, pruned].map((x) => tensorToFloat32(inits(x).get(c.node.input[2]!)!).data);
      return Float64Array.from(b1!, (v, o) => v - b0![o]!);
    });
    const W = after.consumers.map((c) => consumerWeightMatrix(pruned, c)),
      measured = await consumerObjectives(m, group, keep, W, data, shift);
    expect(measured.length).toBe(4);
    group.consumers.forEach((c, i) => {
      const claimed = u.consumers.find((x) => x.node === c.node.name)!.objective;
      expect(Math.abs(claimed - measured[i]!), c.node.name).toBeLessThan(1e-3);
      expect(measured[i], c.node.name).toBeGreaterThan(0);
    });
    data.close();
  });
});

describe('calibration rows all identical', () => {
  // 16 copies of one row: after the intercept the data carry nothing, so each re-fit is the ridge's alone: the kept
  // weights as they were, the bias taking what the dropped neurons gave at that row. Oracle: that bias in float64
  // from the MLP's weights.
  it('the re-fit keeps the sliced weights, the dropped neurons in the bias; warned: 1 distinct', async () => {
    const m = model('num9-mlp'),
      data = openNpy(`${FIX}/num9-identical.calib.npy`);
    const { model: pruned, report } = await prune(m, data, { budget: { keep: { '/fc1/Gemm': 100 } }, sweep: false });
    expect(report.warnings.join('\n')).toMatch(
      /^the 16 calibration samples \(1 distinct\) give .*\n.*fc2\/Gemm: 1 rows, d = 256/,
    );
    const f32 = (x: Model, name: string) => tensorToFloat32(initializerMap(x.graph!).get(name)!);
    const x = data.readF32(0, 1),
      W1 = f32(m, 'fc1.weight').data,
      b1 = f32(m, 'fc1.bias').data,
      W2 = f32(m, 'fc2.weight').data,
      b2 = f32(m, 'fc2.bias').data;
    const h = Array.from(b1, (b, j) =>
      Math.max(
        0,
        x.reduce((a, v, i) => a + v * W1[j * 48 + i]!, b),
      ),
    );
    const keep = [...report.groups.find((u) => u.id === '/fc1/Gemm')!.order].sort((a, b) => a - b),
      dropped = [...Array(256).keys()].filter((j) => !keep.includes(j));
    const sliced = new Float64Array(64 * keep.length),
      bias = Float64Array.from(b2, (b, o) => dropped.reduce((a, j) => a + h[j]! * W2[o * 256 + j]!, b));
    for (let o = 0; o < 64; o++) keep.forEach((j, t) => (sliced[o * keep.length + t] = W2[o * 256 + j]!));
    const W2p = f32(pruned, 'fc2.weight');
    expect(W2p.dims).toEqual([64, 100]);
    expect(relDiff(W2p.data, sliced)).toBeLessThan(1e-4);
    expect(relDiff(f32(pruned, 'fc2.bias').data, bias)).toBeLessThan(1e-4);
    expect(relDiff(await fixtureOutputs(pruned, data, 1), await fixtureOutputs(m, data, 1))).toBeLessThan(1e-5);
    data.close();
  });
});

describe('channels the calibration data cannot tell apart go by their energy: the dead ones last', () => {
  // 8 samples into the encoder's 256-wide classifier Linear (7 picks span them), 16 identical rows into the MLP:
  // once every gain is 0 the greedy takes the rest by their stand-alone energy (centred, then as they are), so the
  // neurons that are 0 on every calibration sample (fc1's zeroed ones among them) are the ones dropped. Before, the
  // rest went in channel order: fc1's zeroed neurons 0-7 (weights 0, bias < 0) were kept first. Oracle: fc2's input
  // in onnxruntime.
  it.each([
    ['num9-tenc-ids', 'num9-ids', 8],
    ['num9-mlp', 'num9-identical', 4],
  ] as const)('%s with %s', async (name, data, zeroed) => {
    const m = model(name),
      cal = calib(data);
    const group = analyzeFixture(m, () => calib(data)).groups.find((g) => g.id === '/fc1/Gemm')!,
      input = group.consumers[0]!.input;
    const run = await Runner.open(m, [input]);
    const B = (await run.run(Calibration.of(m, cal).batches(16).next().value!, [input])).get(input)!.data;
    await run.release();
    const dead = [...Array(256).keys()].filter((j) => B.every((v, i) => i % 256 !== j || v === 0));
    expect(dead).toEqual(expect.arrayContaining([...Array(zeroed).keys()]));
    expect(dead.length).toBeLessThan(200);
    const keep = { '/fc1/Gemm': 256 - dead.length };
    const { report } = await prune(m, cal, { budget: { keep }, mode: 'layerwise' });
    const order = report.groups.find((u) => u.id === '/fc1/Gemm')!.order;
    expect([...Array(256).keys()].filter((j) => !order.includes(j))).toEqual(dead);
    cal.close();
  });
});

describe('calibration data subprune must refuse, saying what is wrong and where', () => {
  const lines = openNpy(`${FIX}/num9-lines.calib.npy`).readF32(0, 8),
    ids = openNpy(`${FIX}/num9-ids.calib.npy`).readF64(0, 8);
  const npy = (data: Float32Array | Float64Array | BigInt64Array | Int32Array, shape: number[], name: string) =>
    npyFromBytes(encodeNpy(data, shape), name);
  const withValue = (at: number, v: number) => {
    const x = lines.slice();
    x[at] = v;
    return npy(x, [8, 1, 32, 64], 'bad.npy');
  };
  const withId = (at: number, v: number) =>
    npy(
      BigInt64Array.from(ids, (x, i) => BigInt(i === at ? v : x)),
      [8, 12],
      'ids.npy',
    );
  const run = (name: string, data: NpyFile) => prune(model(name), data, { budget: { compression: 2 } });

  it.each([
    ['a NaN', withValue(5 * 2048 + 3 * 64 + 7, NaN), /^bad.npy: NaN in sample 5; calibration data must be finite$/],
    [
      'an Infinity',
      withValue(6 * 2048, -Infinity),
      /^bad.npy: -Infinity in sample 6; calibration data must be finite$/,
    ],
    [
      'a float64 value beyond float32',
      npy(
        Float64Array.from(lines, (v, i) => (i === 4 * 2048 + 65 ? 1e39 : v)),
        [8, 1, 32, 64],
        'f8.npy',
      ),
      /^f8.npy: 1e\+39 in sample 4 is beyond float32's range \(±3.4e38\), which the model computes in$/,
    ],
    [
      'integer values',
      npy(new Int32Array(8 * 2048), [8, 1, 32, 64], 'u.npy'),
      /^u.npy holds int32 values; the model input input is float \(numpy: x.astype\('float32'\)/,
    ],
    [
      'a wrong shape',
      npy(lines.subarray(0, 8 * 1024), [8, 1, 16, 64], 's.npy'),
      /^s.npy has shape \[8,1,16,64\] but the model input input needs \[\?,1,32,64\]$/,
    ],
  ] as const)('images with %s', async (_, data, why) => {
    await expect(run('num9-ocr-tf', data)).rejects.toThrow(why);
  });

  // before: onnxruntime's own error from inside the capture, after its log line ("indices element out of data
  // bounds, idx=50 must be within the inclusive range [-50,49]"), naming neither the file nor the sample
  it.each([
    [3 * 12 + 4, 50, /^ids.npy: id 50 in sample 3 is out of range: the model input ids indexes \/emb\/Gather's table/],
    [12 + 1, -51, /^ids.npy: id -51 in sample 1 is out of range: .* table of 50 rows \(ids 0 to 49, or -50 to -1/],
    [7 * 12 + 11, 2 ** 40, /^ids.npy: id 1099511627776 in sample 7 is out of range/],
  ])('token id at %i = %d', async (at, v, why) => {
    await expect(run('num9-tenc-ids', withId(at, v))).rejects.toThrow(why);
  });

  it("a negative id within the table is onnxruntime's (counted from the end): taken", async () => {
    const { report } = await run('num9-tenc-ids', withId(5, -1));
    expect(report.groups.length).toBe(5);
  });

  it('token ids as floats: refused as the wrong type', async () => {
    await expect(run('num9-tenc-ids', npy(Float32Array.from(ids), [8, 12], 'f.npy'))).rejects.toThrow(
      /^f.npy holds float32 values; the model input ids takes integers \(token ids\)$/,
    );
  });
});
