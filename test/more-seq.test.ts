import { describe, it, expect } from 'vitest';
import * as ort from 'onnxruntime-node';
import { readModel, serializeModel, type Model } from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { openNpz } from '../src/npz.js';
import { Calibration, type InputData } from '../src/calibration.js';
import { analyze } from '../src/graph/analyze.js';
import { inferShapes } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { randomKeep, rng, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';

// Sequence models (test/fixtures/make-more-seq.py): small random-weight versions of HuggingFace architectures written
// in torch and exported with torch's defaults. Oracle: onnxruntime running the original with the dropped channels'
// consumer inputs zeroed, which is what removing a head or neuron means, on every input of the model (token ids,
// masks, audio, images); graph optimizations off, as in more-fixtures.test.ts (ReshapeFusion hides wrong shape
// entries).

const FIX = 'test/fixtures';

/** The calibration data of a fixture: an .npz (several inputs) or an .npy. */
const dataOf = (name: string): InputData =>
  name.endsWith('.npz') ? openNpz(`${FIX}/${name}`) : openNpy(`${FIX}/${name}`);

const CASES: { model: string; calib: string }[] = [
  { model: 'seq-bloom', calib: 'seq-bloom.calib.npz' },
  { model: 'seq-falcon', calib: 'seq-falcon.calib.npy' },
  { model: 'seq-deberta', calib: 'seq-deberta.calib.npz' },
  { model: 'seq-bart', calib: 'seq-bart.calib.npz' },
  { model: 'seq-mobilebert', calib: 'seq-mobilebert.calib.npz' },
  { model: 'seq-wav2vec2', calib: 'seq-wav2vec2.calib.npy' },
  { model: 'seq-perceiver', calib: 'seq-perceiver.calib.npy' },
  { model: 'seq-deit', calib: 'seq-deit.calib.npy' },
  { model: 'seq-ocr', calib: 'seq-ocr.calib.npz' },
];

/** The first output of `model` on the first n samples of every input, by ONNX's semantics (no graph optimizations). */
async function outputs(model: Model, data: InputData, n = 16): Promise<Float32Array> {
  const batch = Calibration.of(model, data).batches(n).next().value!;
  const feeds = Object.fromEntries(
    [...batch.feeds].map(([name, f]) => [
      name,
      new ort.Tensor(f.data instanceof Float32Array ? 'float32' : 'int64', f.data, f.dims),
    ]),
  );
  const session = await ort.InferenceSession.create(serializeModel(model), { graphOptimizationLevel: 'disabled' });
  try {
    const y = await session.run(feeds);
    return (y[session.outputNames[0]!]!.data as Float32Array).slice();
  } finally {
    await session.release();
  }
}

describe.each(CASES)('$model', ({ model: name, calib }) => {
  const path = `${FIX}/${name}.onnx`;

  it('every tensor has a shape; the groups', () => {
    const m = readModel(path),
      shapes = Calibration.of(m, dataOf(calib)).shapes;
    const known = inferShapes(m, shapes);
    expect(m.graph!.node.flatMap((n) => n.output).filter((o) => o && !known.has(o))).toEqual([]);
    const { groups, refused } = analyze(m, shapes);
    console.log(
      name,
      JSON.stringify(
        groups.map((g) => [g.id, g.channels, g.producers.length, ...new Set(g.consumers.map((c) => c.g))]),
      ),
    );
    console.log(name, refused.map((r) => `${r.node}: ${r.reason}`).join('\n'));
  });

  it('half of every group removed at random: the pruned model is the original with their inputs zeroed', async () => {
    const m = readModel(path),
      data = dataOf(calib);
    const { groups } = analyze(m, Calibration.of(m, data).shapes);
    const r = rng(5);
    const plans = groups.map((group) => ({
      group,
      keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
    }));
    const got = await outputs(pruneGroups(m, plans), data),
      want = await outputs(zeroDroppedInputs(m, plans), data);
    expect(got.length).toBe(want.length);
    expect(relDiff(got, want)).toBeLessThan(1e-4);
  });

  it('prunes end to end with the default mode', async () => {
    const m = readModel(path),
      data = dataOf(calib);
    const { model: pruned, report } = await prune(m, data, { budget: { keepRatio: 0.5 }, refit: false });
    expect(report.params.after).toBeLessThan(report.params.before);
    expect((await outputs(pruned, data, 4)).every(Number.isFinite)).toBe(true);
  });
});
