import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { openNpy, npyFromBytes, type NpyFile } from '../src/npy.js';

// The exporter fixtures of test/fixtures/ (torchvision CNNs by make-torchvision.py, transformer blocks by
// make-transformers.py; test/fixtures/README.md says what each exercises) and the bundled mobilenet and vit. Each must
// load in onnxruntime-node, run on its whole calibration set (the batch axis is dynamic) and reproduce torch's outputs
// for the first samples, which the scripts saved as <name>.ref.npy: torch is the oracle, onnxruntime the runtime.

const DIR = 'test/fixtures';

interface Fixture {
  file: string;
  opset: number;
  reference: string;
  calib?: string;
  inputs?: { name: string; dtype: string; shape: (string | number)[] }[];
}
interface Manifest {
  calib?: string;
  models: Record<string, Fixture>;
}
const manifest = (name: string) => JSON.parse(readFileSync(`${DIR}/${name}`, 'utf8')) as Manifest;

/** The members of an uncompressed .npz (numpy.savez: a zip of <name>.npy files, stored). */
function readNpz(path: string): Record<string, NpyFile> {
  const buf = readFileSync(path);
  const out: Record<string, NpyFile> = {};
  for (let p = 0; buf.readUInt32LE(p) === 0x04034b50;) {
    const method = buf.readUInt16LE(p + 8);
    const size = buf.readUInt32LE(p + 18);
    const nameLen = buf.readUInt16LE(p + 26);
    const extraLen = buf.readUInt16LE(p + 28);
    const name = buf.toString('latin1', p + 30, p + 30 + nameLen);
    expect(method, `${path}: ${name} is compressed`).toBe(0);
    const start = p + 30 + nameLen + extraLen;
    out[name.replace(/\.npy$/, '')] = npyFromBytes(buf.subarray(start, start + size), `${path}:${name}`);
    p = start + size;
  }
  return out;
}

/** Rows r0..r1 of an .npy file as an onnxruntime tensor of the graph input's dtype. */
function tensor(f: NpyFile, dtype: string, r0: number, r1: number): ort.Tensor {
  const dims = [r1 - r0, ...f.shape.slice(1)];
  if (dtype === 'float32') return new ort.Tensor('float32', f.readF32(r0, r1), dims);
  expect(dtype).toBe('int64');
  return new ort.Tensor(
    'int64',
    BigInt64Array.from(f.readF64(r0, r1), (v) => BigInt(v)),
    dims,
  );
}

/** Runs `file` on rows r0..r1 of each input; returns the single output. */
async function run(file: string, feeds: Record<string, { f: NpyFile; dtype: string }>, r0: number, r1: number) {
  const s = await ort.InferenceSession.create(`${DIR}/${file}`);
  try {
    const inputs = Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, tensor(v.f, v.dtype, r0, r1)]));
    expect(s.inputNames.sort()).toEqual(Object.keys(inputs).sort());
    expect(s.outputNames).toHaveLength(1);
    const y = (await s.run(inputs))[s.outputNames[0]!]!;
    return { dims: y.dims, data: y.data as Float32Array };
  } finally {
    await s.release();
  }
}

/** max |a - b| / max |b|: the outputs of the untrained nets range from about 0.04 to 4 in size. */
function relMaxDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  expect(m).toBeGreaterThan(0);
  return d / m;
}

function checkFixture(json: string) {
  const { calib, models } = manifest(json);
  for (const [name, fx] of Object.entries(models)) {
    it(`${name} (opset ${fx.opset}) runs in onnxruntime and matches torch`, async () => {
      const feeds: Record<string, { f: NpyFile; dtype: string }> = {};
      const calibFile = `${DIR}/${fx.calib ?? calib}`;
      if (calibFile.endsWith('.npz')) {
        const npz = readNpz(calibFile);
        for (const i of fx.inputs!) feeds[i.name] = { f: npz[i.name]!, dtype: i.dtype };
      } else {
        feeds[fx.inputs?.[0]?.name ?? 'input'] = { f: openNpy(calibFile), dtype: 'float32' };
      }
      const rows = Object.values(feeds)[0]!.f.rows;
      const ref = openNpy(`${DIR}/${fx.reference}`);
      try {
        const all = await run(fx.file, feeds, 0, rows);
        expect(all.dims).toEqual([rows, ...ref.shape.slice(1)]);
        const first = await run(fx.file, feeds, 0, ref.rows);
        expect(relMaxDiff(first.data, ref.readF32())).toBeLessThan(1e-4);
        // The batch axis is dynamic: the first rows of the full-batch run are the same outputs.
        expect(relMaxDiff(all.data.subarray(0, first.data.length), first.data)).toBeLessThan(1e-4);
      } finally {
        ref.close();
        for (const v of Object.values(feeds)) v.f.close();
      }
    });
  }
}

describe('torchvision fixtures (test/fixtures/torchvision.json)', () => checkFixture('torchvision.json'));
describe('transformer fixtures (test/fixtures/transformers.json)', () => checkFixture('transformers.json'));

describe('transformer fixtures with a dynamic sequence axis', () => {
  it('tf-bert-tiny and tf-gqa run on 8-token sequences', async () => {
    const npz = readNpz(`${DIR}/tf-bert-tiny.calib.npz`);
    const cut = (f: NpyFile) => {
      const t = f.readF64(0, 4);
      const n = f.shape[1]!;
      return new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: 4 * 8 }, (_, i) => BigInt(t[Math.floor(i / 8) * n + (i % 8)]!)),
        [4, 8],
      );
    };
    for (const file of ['tf-bert-tiny-opset14.onnx', 'tf-bert-tiny-opset17.onnx']) {
      const s = await ort.InferenceSession.create(`${DIR}/${file}`);
      const y = await s.run(Object.fromEntries(Object.entries(npz).map(([k, f]) => [k, cut(f)])));
      expect(y[s.outputNames[0]!]!.dims).toEqual([4, 2]);
      await s.release();
    }
    const s = await ort.InferenceSession.create(`${DIR}/tf-gqa.onnx`);
    const x = new ort.Tensor('float32', new Float32Array(3 * 8 * 64).fill(0.5), [3, 8, 64]);
    expect((await s.run({ input: x }))[s.outputNames[0]!]!.dims).toEqual([3, 8, 64]);
    await s.release();
  });
});

describe('bundled mobilenet and vit', () => {
  const results = JSON.parse(readFileSync('models/train-results.json', 'utf8')) as Record<
    string,
    { test_acc_2k: number }
  >;
  for (const name of ['mobilenet', 'vit']) {
    it(`models/${name}.onnx reproduces torch's accuracy on the 2,000 bundled test images`, async () => {
      const x = openNpy('models/test.npy');
      const labels = openNpy('models/test-labels.npy').readF64();
      const s = await ort.InferenceSession.create(`models/${name}.onnx`);
      try {
        expect(s.inputNames).toEqual(['input']);
        expect(s.outputNames).toEqual(['logits']);
        const y = (await s.run({ input: new ort.Tensor('float32', x.readF32(), [x.rows, 1, 28, 28]) })).logits!;
        expect(y.dims).toEqual([x.rows, 10]);
        const z = y.data as Float32Array;
        let correct = 0;
        for (let i = 0; i < x.rows; i++) {
          const row = z.subarray(10 * i, 10 * i + 10);
          if (row.indexOf(Math.max(...row)) === labels[i]) correct++;
        }
        // torch's accuracy (train.py); one image may flip where two logits tie to float32 rounding
        expect(Math.abs(correct / x.rows - results[name]!.test_acc_2k)).toBeLessThanOrEqual(1 / x.rows);
      } finally {
        await s.release();
        x.close();
      }
    });
  }
});
