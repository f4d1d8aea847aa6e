import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fromBinary } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-node';
import * as ortWeb from 'onnxruntime-web';
import {
  EXTERNAL_ALIGN,
  EXTERNAL_MIN_BYTES,
  ModelProtoSchema,
  TensorProto_DataLocation,
  initializerMap,
  modelSource,
  readModel,
  serializeModel,
  tensorToFloat32,
  writeModel,
  writeModelChecked,
} from '../src/onnx/index.js';
import { openNpy } from '../src/npy.js';
import { prune } from '../src/prune/index.js';
import { writeVerified } from '../src/prune/verify.js';
import { openSession } from '../src/capture/runner.js';
import { SubpruneError } from '../src/errors.js';
import { expectFailure, runCli } from './cli-helpers.js';

// Models whose weights live in a data file next to the .onnx (ONNX's external-data layout): read (the bundled LeNet as
// the onnx package's own writer saves it), pruned, written by subprune, and loaded from disk by onnxruntime, whose
// outputs are the oracle: keeping every channel without a re-fit, they equal the original model's exactly.

const lenet = readModel('models/lenet.onnx');
const calib = openNpy('models/calib.npy');
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(join(tmpdir(), 'subprune-external-'));
});
afterAll(() => {
  calib.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const N = 32;
const x = () => new ort.Tensor('float32', calib.readF32(0, N), [N, ...calib.shape.slice(1)]);

/** The first output of a model (bytes, or a path onnxruntime reads with its data file) on the first N samples. */
async function outputOf(model: Uint8Array | string): Promise<Float32Array> {
  const s =
    typeof model === 'string'
      ? await ort.InferenceSession.create(model, { logSeverityLevel: 3 })
      : await ort.InferenceSession.create(model, { logSeverityLevel: 3 });
  try {
    return (await s.run({ [s.inputNames[0]!]: x() }))[s.outputNames[0]!]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

/** The stored .onnx as it is (its external references unresolved). */
const stored = (file: string) => fromBinary(ModelProtoSchema, fs.readFileSync(file));

const leftovers = (d: string) => fs.readdirSync(d).filter((f) => f.endsWith('.tmp'));

function sub(name: string): string {
  const d = join(dir, name);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

describe('reading external data', () => {
  it("reads a model saved by the onnx package's writer (one data file) as the model itself", async () => {
    const m = readModel('test/fixtures/lenet-external/lenet.onnx');
    const raw = stored('test/fixtures/lenet-external/lenet.onnx');
    const external = raw.graph!.initializer.filter((t) => t.dataLocation === TensorProto_DataLocation.EXTERNAL);
    expect(external.length).toBeGreaterThan(3); // the fixture really keeps its weights outside
    for (const t of lenet.graph!.initializer) {
      const got = initializerMap(m.graph!).get(t.name)!;
      expect(got.dataLocation).toBe(TensorProto_DataLocation.DEFAULT);
      expect(tensorToFloat32(got)).toEqual(tensorToFloat32(t));
    }
    expect(await outputOf(serializeModel(m))).toEqual(await outputOf(serializeModel(lenet)));
  });
});

describe('writing external data', () => {
  it('writes the layout: big initializers in <out>.data, aligned offsets, relative location, rest inline', async () => {
    const d = sub('layout'),
      out = join(d, 'lenet.onnx');
    const written = writeModel(lenet, out, { externalData: true });
    expect(written).toEqual({ onnx: out, data: { file: join(d, 'lenet.onnx.data'), location: 'lenet.onnx.data' } });
    expect(fs.readdirSync(d).sort()).toEqual(['lenet.onnx', 'lenet.onnx.data']);
    const data = fs.readFileSync(join(d, 'lenet.onnx.data'));
    const raw = stored(out);
    let external = 0;
    for (const t of raw.graph!.initializer) {
      const orig = initializerMap(lenet.graph!).get(t.name)!;
      if (orig.rawData.length < EXTERNAL_MIN_BYTES) {
        expect(t.dataLocation).toBe(TensorProto_DataLocation.DEFAULT);
        continue;
      }
      external++;
      expect(t.dataLocation).toBe(TensorProto_DataLocation.EXTERNAL);
      expect(t.rawData.length).toBe(0);
      const e = Object.fromEntries(t.externalData.map((kv) => [kv.key, kv.value]));
      expect(e.location).toBe('lenet.onnx.data');
      expect(Number(e.offset) % EXTERNAL_ALIGN).toBe(0);
      expect(Number(e.length)).toBe(orig.rawData.length);
      expect(data.subarray(Number(e.offset), Number(e.offset) + Number(e.length))).toEqual(Buffer.from(orig.rawData));
    }
    expect(external).toBeGreaterThan(3);
    expect(fs.statSync(out).size).toBeLessThan(10_000); // the weights are not in the .onnx
    // onnxruntime reads it from disk; subprune reads it back to the same model
    expect(await outputOf(out)).toEqual(await outputOf(serializeModel(lenet)));
    expect(serializeModel(readModel(out))).toEqual(serializeModel(lenet));
    // written again over itself: the old files are replaced, no temporary file is left
    writeModel(lenet, out, { externalData: true });
    expect(fs.readdirSync(d).sort()).toEqual(['lenet.onnx', 'lenet.onnx.data']);
  });

  it('writes external data by itself only when the model reaches the limit (lowered here), else one file', () => {
    const d = sub('auto');
    const size = serializeModel(lenet).length;
    expect(writeModel(lenet, join(d, 'small.onnx')).data).toBeUndefined();
    expect(writeModel(lenet, join(d, 'under.onnx'), { limit: size + 4096 }).data).toBeUndefined();
    expect(writeModel(lenet, join(d, 'over.onnx'), { limit: size }).data?.location).toBe('over.onnx.data');
    expect(writeModel(lenet, join(d, 'never.onnx'), { externalData: false, limit: 1000 }).data).toBeUndefined();
    expect(fs.readFileSync(join(d, 'small.onnx'))).toEqual(Buffer.from(serializeModel(lenet)));
    expect(fs.readdirSync(d).sort()).toEqual(['never.onnx', 'over.onnx', 'over.onnx.data', 'small.onnx', 'under.onnx']);
  });

  it('round trip: read, prune keeping all, write with external data: the same outputs in onnxruntime', async () => {
    const src = readModel('test/fixtures/lenet-external/lenet.onnx');
    const d = sub('roundtrip');
    const { model } = await prune(src, calib, { budget: { keepRatio: 1 }, refit: false });
    const written = await writeVerified(model, join(d, 'kept.onnx'), { externalData: true });
    expect(written.data?.location).toBe('kept.onnx.data');
    const want = await outputOf(serializeModel(lenet));
    expect(await outputOf(join(d, 'kept.onnx'))).toEqual(want);
    // with the re-fit, keeping every channel reproduces the weights up to rounding
    const refit = await prune(src, calib, { budget: { keepRatio: 1 } });
    await writeVerified(refit.model, join(d, 'refit.onnx'), { externalData: true });
    const got = await outputOf(join(d, 'refit.onnx'));
    const err = Math.sqrt(got.reduce((a, v, i) => a + (v - want[i]!) ** 2, 0) / want.reduce((a, v) => a + v * v, 0));
    expect(err).toBeLessThan(1e-4);
    expect(leftovers(d)).toEqual([]);
  });

  it('through the CLI: --external-data writes OUT.onnx and OUT.onnx.data that onnxruntime runs', async () => {
    const d = sub('cli'),
      out = join(d, 'out.onnx');
    const r = await runCli(
      'prune',
      'test/fixtures/lenet-external/lenet.onnx',
      '--calib',
      'models/calib.npy',
      '--keep-ratio',
      '1',
      '--no-refit',
      '--external-data',
      '-o',
      out,
    );
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/wrote .*out\.onnx \(weights in out\.onnx\.data next to it\)/);
    expect(fs.readdirSync(d).sort()).toEqual(['out.onnx', 'out.onnx.data']);
    expect(await outputOf(out)).toEqual(await outputOf(serializeModel(lenet)));
    // without the flag a small model is one file
    const one = join(d, 'one.onnx');
    expect((await runCli('prune', 'models/lenet.onnx', '--calib', 'models/calib.npy', '-o', one)).code).toBe(0);
    expect(fs.existsSync(`${one}.data`)).toBe(false);
    // an -o whose data file would replace an input is refused before any work
    fs.copyFileSync('models/lenet.onnx', join(d, 'in.onnx.data'));
    expectFailure(
      await runCli('prune', join(d, 'in.onnx.data'), '--calib', 'models/calib.npy', '-o', join(d, 'in.onnx')),
      2,
      /in\.onnx\.data is where -o .*in\.onnx would put its weights \(\.data\); choose another -o/,
    );
    // so is an -o (or its .data) over the input model's own data file, and the data file is left as it was
    fs.cpSync('test/fixtures/lenet-external', join(d, 'ext'), { recursive: true });
    const weights = join(d, 'ext', 'lenet.weights'),
      before = fs.readFileSync(weights);
    expectFailure(
      await runCli('prune', join(d, 'ext', 'lenet.onnx'), '--calib', 'models/calib.npy', '-o', weights),
      2,
      /lenet\.weights holds the input model's weights; -o .* would write over it, choose another -o/,
    );
    expect(fs.readFileSync(weights).equals(before)).toBe(true);
  });

  it('refuses unsafe locations on write, before writing anything', () => {
    const d = sub('unsafe'),
      outside = sub('unsafe-outside');
    const out = join(d, 'm.onnx');
    const refused = (location: string, message: RegExp) => {
      let err: unknown;
      try {
        writeModel(lenet, out, { externalData: true, location });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SubpruneError);
      expect((err as SubpruneError).code).toBe('bad-input');
      expect((err as Error).message).toMatch(message);
    };
    refused(join(outside, 'w.data'), /location ".*w\.data" is an absolute path; subprune writes external data only/);
    refused('../unsafe-outside/w.data', /contains "\.\.": subprune writes external data only to files inside/);
    refused('sub/../w.data', /contains "\.\."/); // even one that stays inside
    fs.symlinkSync(outside, join(d, 'link'));
    refused('link/w.data', /leads \(through a symlink\) to .*unsafe-outside, outside the output's folder/);
    refused('missing/w.data', /its folder does not exist/);
    refused('m.onnx', /is the model file itself/);
    expect(fs.readdirSync(d)).toEqual(['link']);
    expect(fs.readdirSync(outside)).toEqual([]);
    // a folder inside is fine, and onnxruntime finds the data there
    fs.mkdirSync(join(d, 'weights'));
    expect(writeModel(lenet, out, { externalData: true, location: 'weights/m.bin' }).data?.file).toBe(
      join(d, 'weights', 'm.bin'),
    );
    expect(serializeModel(readModel(out))).toEqual(serializeModel(lenet));
  });

  it('renames nothing when the check fails, and leaves an existing output as it was', async () => {
    const d = sub('atomic'),
      out = join(d, 'm.onnx');
    fs.writeFileSync(out, 'old model');
    fs.writeFileSync(`${out}.data`, 'old data');
    const failing = writeModelChecked(
      lenet,
      out,
      async (w) => {
        // the check sees the staged files, which refer to the data by its final name
        expect(w.onnx).not.toBe(out);
        expect(w.data?.location).toBe('m.onnx.data');
        expect(await outputOf(w.onnx)).toEqual(await outputOf(serializeModel(lenet)));
        throw new Error('check failed');
      },
      { externalData: true },
    );
    await expect(failing).rejects.toThrow('check failed');
    expect(fs.readFileSync(out, 'utf8')).toBe('old model');
    expect(fs.readFileSync(`${out}.data`, 'utf8')).toBe('old data');
    expect(leftovers(d)).toEqual([]);
    await writeModelChecked(lenet, out, async () => {}, { externalData: true });
    expect(await outputOf(out)).toEqual(await outputOf(serializeModel(lenet)));
    expect(leftovers(d)).toEqual([]);
  });
});

describe('models past the limit in onnxruntime sessions', () => {
  it('go through files with external data (limit lowered), in onnxruntime-node and -web alike', async () => {
    const size = serializeModel(lenet).length;
    expect('bytes' in modelSource(lenet, { limit: size + 4096 })).toBe(true);
    for (const [o, backend] of [
      [ort, 'node'],
      [ortWeb, 'web'],
    ] as const) {
      const source = modelSource(lenet, { limit: size });
      if (!('written' in source)) throw new Error('expected files');
      expect(source.written.data?.location).toBe('model.onnx.data');
      // each runtime against itself on the model's bytes (their kernels round differently)
      const run = async (m: Uint8Array | typeof source.written) => {
        const s = await openSession(o as never, backend, m, { logSeverityLevel: 3 });
        const feed = new o.Tensor('float32', calib.readF32(0, N), [N, ...calib.shape.slice(1)]);
        const y = (await s.run({ [s.inputNames[0]!]: feed }))[s.outputNames[0]!]!.data;
        await s.release();
        return y;
      };
      try {
        expect(await run(source.written)).toEqual(await run(serializeModel(lenet)));
      } finally {
        source.dispose();
      }
      expect(fs.existsSync(source.written.onnx)).toBe(false);
    }
  });
});
