import { describe, it, expect } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readModel, tensorToFloat32, initializerMap } from '../src/onnx/index.js';
import { openNpy, writeNpy } from '../src/npy.js';
import { analyze, consumerWeightMatrix } from '../src/graph/analyze.js';
import { captureGrams, Runner } from '../src/capture/index.js';
import { Calibration } from '../src/calibration.js';
import { prune } from '../src/prune/index.js';
import { rankChannels, sampleOrder, groupSeed, weightNorms } from '../src/select/baselines.js';
import type { Consumer, Group } from '../src/graph/types.js';
import type { NodeProto } from '../src/onnx/index.js';

// Each baseline's ranking against a brute-force computation written here from the ONNX tensors and onnxruntime
// outputs (never through consumerWeightMatrix or the capture's statistics), and the sampling distribution against
// its exact probabilities.

const shape = [1, 1, 28, 28];
const model = readModel('models/lenet.onnx');
const analysed = analyze(model, shape).groups;
/** LeNet's groups are chains: each with its one consumer's fields, as this test reads them. */
type Unit = Consumer & {
  id: string;
  channels: number;
  consumerWeight: string;
  consumer: NodeProto;
  consumerInput: string;
};
const units: Unit[] = analysed.map((g: Group) => {
  const c = g.consumers[0]!;
  return { ...c, id: g.id, channels: g.channels, consumerWeight: c.weight, consumer: c.node, consumerInput: c.input };
});
const inits = initializerMap(model.graph!);
const SAMPLES = 24;

/** The first SAMPLES calibration images as their own .npy (the brute force below is slow). */
function smallCalib() {
  const full = openNpy('models/calib.npy'),
    x = full.readF32(0, SAMPLES),
    path = join(mkdtempSync(join(tmpdir(), 'subprune-')), 'calib24.npy');
  writeNpy(path, x, [SAMPLES, ...full.shape.slice(1)]);
  full.close();
  return openNpy(path);
}

/** The consumer's weight as w(out, channel, position-in-channel), read from the ONNX tensor by its layout. */
function consumerWeight(u: Unit): (o: number, c: number, a: number) => number {
  const { data, dims } = tensorToFloat32(inits.get(u.consumerWeight)!);
  // [m, n, kh, kw]
  if (u.consumer.opType === 'Conv') return (o, c, a) => data[(o * dims[1] + c) * dims[2] * dims[3] + a];
  const transB = u.consumer.attribute.find((x) => x.name === 'transB')?.i ?? 0n;
  return transB ? (o, c, a) => data[o * dims[1] + c * u.g + a] : (o, c, a) => data[(c * u.g + a) * dims[1] + o];
}

const ranking = (score: number[]) =>
  score
    .map((s, c) => ({ s, c }))
    .sort((x, y) => y.s - x.s || x.c - y.c)
    .map((x) => x.c);

/** The consumer input tensor of every unit over the data, from onnxruntime. */
async function consumerInputs(data: ReturnType<typeof openNpy>) {
  const names = units.map((u) => u.consumerInput),
    run = await Runner.open(model, names);
  const out = new Map<string, { data: Float32Array; dims: number[] }[]>(names.map((n) => [n, []]));
  for (const b of Calibration.of(model, data).batches(8))
    for (const [n, a] of await run.run(b, names)) out.get(n)!.push({ data: a.data.slice(), dims: a.dims });
  await run.release();
  return out;
}

describe('lenet baselines against brute force', () => {
  it('weight-norm: channels by the L1 norm of their outgoing weights', () => {
    for (const u of units) {
      const w = consumerWeight(u),
        score: number[] = [];
      for (let c = 0; c < u.channels; c++) {
        let s = 0;
        for (let o = 0; o < u.m; o++) for (let a = 0; a < u.g; a++) s += Math.abs(w(o, c, a));
        score.push(s);
      }
      const W = consumerWeightMatrix(model, u);
      const got = weightNorms({ n: u.channels, g: u.g, m: u.m, W });
      score.forEach((s, c) => expect(got[c]).toBeCloseTo(s, 4));
      expect(rankChannels('weight-norm', [{ n: u.channels, g: u.g, m: u.m, W }])).toEqual(ranking(score));
    }
  });

  it("activation-norm and sampling: the capture's statistics and the rankings they give", async () => {
    const calib = smallCalib();
    const grams = await captureGrams(model, analysed, calib, { stats: { absMean: true, sensitivity: true } });
    const acts = await consumerInputs(calib);
    for (const u of units) {
      const st = grams.get(u.id)![0]!.stats!,
        xs = acts.get(u.consumerInput)!,
        w = consumerWeight(u);
      // mean |activation| of each channel over every sample and position
      const abs = new Array(u.channels).fill(0);
      let count = 0;
      for (const { data, dims } of xs) {
        const per = data.length / dims[0] / u.channels; // entries of one channel in one sample
        for (let s = 0; s < dims[0]; s++)
          for (let c = 0; c < u.channels; c++)
            for (let i = 0; i < per; i++) abs[c] += Math.abs(data[(s * u.channels + c) * per + i]) / per;
        count += dims[0];
      }
      abs.forEach((v, c) => expect(st.absMean![c]).toBeCloseTo(v / count, 5));
      expect(
        rankChannels('activation-norm', [
          {
            n: u.channels,
            g: u.g,
            m: u.m,
            W: consumerWeightMatrix(model, u),
            stats: st,
          },
        ]),
      ).toEqual(ranking(abs.map((v) => v / count)));

      // PFP sensitivity: max over samples, positions, outputs and weight signs of a channel entry's share of the
      // pre-activation (bias aside) made of same-sign weights; these activations are non-negative (ReLU, MaxPool)
      const sens = new Array(u.channels).fill(0);
      for (const { data, dims } of xs) {
        for (let s = 0; s < dims[0]; s++) {
          // positions and the input entry (channel c, offset a) each reads
          const patches: ((c: number, a: number) => number)[] = [];
          if (u.kind === 'conv') {
            const [, C, H, Wd] = dims,
              [kh, kw] = u.conv!.kernel,
              [pt, pl] = [u.conv!.pads[0], u.conv!.pads[1]];
            const OH = H + u.conv!.pads[0] + u.conv!.pads[2] - kh + 1,
              OW = Wd + u.conv!.pads[1] + u.conv!.pads[3] - kw + 1; // stride 1
            for (let oh = 0; oh < OH; oh++)
              for (let ow = 0; ow < OW; ow++)
                patches.push((c, a) => {
                  const y = oh - pt + Math.floor(a / kw),
                    z = ow - pl + (a % kw);
                  return y >= 0 && y < H && z >= 0 && z < Wd ? data[((s * C + c) * H + y) * Wd + z] : 0;
                });
          } else patches.push((c, a) => data[s * u.d + c * u.g + a]);
          for (const x of patches)
            for (let o = 0; o < u.m; o++)
              for (const sign of [1, -1]) {
                let z = 0;
                for (let c = 0; c < u.channels; c++)
                  for (let a = 0; a < u.g; a++) z += x(c, a) * Math.max(0, sign * w(o, c, a));
                if (z <= 1.1920929e-7) continue;
                for (let c = 0; c < u.channels; c++)
                  for (let a = 0; a < u.g; a++)
                    sens[c] = Math.max(sens[c], (x(c, a) * Math.max(0, sign * w(o, c, a))) / z);
              }
        }
      }
      sens.forEach((v, c) => expect(st.sensitivity![c]).toBeCloseTo(v, 4));
      expect(sens.every((v) => v <= 1 + 1e-9)).toBe(true);
    }
    calib.close();
  });

  it("the methods rank what prune keeps: the report's order is the ranking", async () => {
    const calib = smallCalib();
    const grams = await captureGrams(model, analysed, calib, { stats: { absMean: true, sensitivity: true } });
    for (const method of ['weight-norm', 'activation-norm', 'random', 'sampling'] as const) {
      // 24 samples: too few rows to re-fit; layerwise: the ranking is the original model's
      const { report } = await prune(model, calib, {
        budget: { compression: 4 },
        method,
        seed: 5,
        refit: false,
        mode: 'layerwise',
      });
      for (const [i, u] of units.entries()) {
        const want = rankChannels(
          method,
          [{ n: u.channels, g: u.g, m: u.m, W: consumerWeightMatrix(model, u), stats: grams.get(u.id)![0]!.stats }],
          groupSeed(5, u.id),
        )!;
        expect(report.groups[i].order).toEqual(want.slice(0, report.groups[i].kept));
      }
    }
    calib.close();
  });
});

describe('sampling orders', () => {
  it('successive sampling without replacement ∝ weight: the first two picks have their exact probabilities', () => {
    const w = [4, 1, 2, 0.5, 0],
      S = w.reduce((a, b) => a + b, 0),
      N = 40_000;
    const count = new Map<string, number>();
    for (let seed = 0; seed < N; seed++) {
      const o = sampleOrder(w, seed);
      expect([...o].sort()).toEqual([0, 1, 2, 3, 4]);
      expect(o[4]).toBe(4); // weight 0: never drawn while others remain
      count.set(`${o[0]},${o[1]}`, (count.get(`${o[0]},${o[1]}`) ?? 0) + 1);
    }
    for (let i = 0; i < 4; i++)
      for (let j = 0; j < 4; j++) {
        if (i === j) continue;
        const p = (w[i] / S) * (w[j] / (S - w[i])),
          got = (count.get(`${i},${j}`) ?? 0) / N;
        expect(Math.abs(got - p)).toBeLessThan(4 * Math.sqrt((p * (1 - p)) / N) + 1e-3);
      }
  });

  it('random: every channel equally likely first; a seed gives one order; groups get their own', () => {
    const n = 6,
      N = 30_000,
      first = new Array(n).fill(0);
    for (let seed = 0; seed < N; seed++)
      first[rankChannels('random', [{ n, g: 1, m: 1, W: new Float64Array(n) }], seed)![0]]++;
    for (const f of first) expect(Math.abs(f / N - 1 / n)).toBeLessThan(4 * Math.sqrt(((1 / n) * (1 - 1 / n)) / N));
    const p = [{ n: 50, g: 1, m: 1, W: new Float64Array(50) }];
    expect(rankChannels('random', p, 3)).toEqual(rankChannels('random', p, 3));
    expect(rankChannels('random', p, groupSeed(3, 'a'))).not.toEqual(rankChannels('random', p, groupSeed(3, 'b')));
  });
});
