import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { float32Tensor, makeNode, serializeModel } from '../src/onnx/index.js';
import { encodeNpy, openNpy } from '../src/npy.js';
import { randn, rng, smallModel } from './graph-helpers.js';
import { runCli } from './cli-helpers.js';
import { shortReasons } from '../src/cli/inspect.js';

// What users give the CLI besides a ready .npy: a folder of images with --preprocess (the oracle: the same image
// preprocessed by torchvision in numpy, test/fixtures/images/make.py), and a model with free spatial or sequence
// dimensions that `inspect` must describe without a shape.

const IMAGES = 'test/fixtures/images';
let dir: string;
const at = (name: string) => join(dir, name);
const json = (file: string) => JSON.parse(readFileSync(file, 'utf8'));

/** Conv 3→8 (3×3) → Relu → Conv 8→4 (3×3): one group of 8 channels; input [N, 3, H, W] as `dims` says. */
function convModel(dims: (number | string)[]): Uint8Array {
  const r = rng(11);
  const nodes = [
    makeNode('Conv', ['x', 'w1', 'b1'], ['t1'], [], 'conv1'),
    makeNode('Relu', ['t1'], ['t2'], [], 'relu'),
    makeNode('Conv', ['t2', 'w2', 'b2'], ['y'], [], 'conv2'),
  ];
  const inits = [
    float32Tensor('w1', [8, 3, 3, 3], randn(8 * 27, r, 0.3)),
    float32Tensor('b1', [8], randn(8, r, 0.1)),
    float32Tensor('w2', [4, 8, 3, 3], randn(4 * 72, r, 0.3)),
    float32Tensor('b2', [4], randn(4, r, 0.1)),
  ];
  return serializeModel(smallModel(nodes, inits, dims));
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'subprune-inputs-'));
  writeFileSync(at('conv15.onnx'), convModel(['N', 3, 15, 15]));
  writeFileSync(at('conv-hw.onnx'), convModel(['N', 3, 'H', 'W']));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('prune --calib FOLDER --preprocess SPEC', () => {
  // pipelines.json's first entry: rgb.png through torchvision's Resize(20), CenterCrop(15), ToTensor, Normalize
  const pipeline = json(`${IMAGES}/pipelines.json`)[0] as { image: string; flag: string; file: string };

  it('prunes as the numpy-prepared array of the same image does, and records the resolved spec', async () => {
    expect(pipeline.image).toBe('rgb.png');
    mkdirSync(at('images'));
    cpSync(`${IMAGES}/${pipeline.image}`, at('images/one.png'));
    const want = openNpy(`${IMAGES}/${pipeline.file}`);
    expect(want.shape).toEqual([3, 15, 15]);
    writeFileSync(at('numpy.npy'), encodeNpy(want.readF32(), [1, 3, 15, 15]));
    want.close();

    const common = ['prune', at('conv15.onnx'), '--keep-ratio', '0.5'];
    const images = ['--calib', at('images'), '--preprocess', pipeline.flag];
    const fromImages = await runCli(...common, ...images, '-o', at('img.onnx'), '--report', at('img.json'));
    expect(fromImages.code, fromImages.err).toBe(0);
    const fromNumpy = await runCli(
      ...common,
      '--calib',
      at('numpy.npy'),
      '-o',
      at('npy.onnx'),
      '--report',
      at('npy.json'),
    );
    expect(fromNumpy.code, fromNumpy.err).toBe(0);

    expect(readFileSync(at('img.onnx'))).toEqual(readFileSync(at('npy.onnx')));
    const img = json(at('img.json')),
      npy = json(at('npy.json'));
    expect(img.groups.map((g: { order: number[] }) => g.order)).toEqual(
      npy.groups.map((g: { order: number[] }) => g.order),
    );
    expect(img.fidelity).toEqual(npy.fidelity);
    expect(npy.preprocess).toBeUndefined();
    expect(img.preprocess).toEqual({
      resize: { shorter: 20 },
      filter: 'pil',
      crop: { width: 15, height: 15 },
      channels: 'rgb',
      layout: 'nchw',
      scale: { divide: 255 },
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
    });

    // the recorded spec repeats the run
    const again = await runCli(
      ...common, '--calib', at('images'), '--preprocess', JSON.stringify(img.preprocess), '-o', at('again.onnx'),
    ); // prettier-ignore
    expect(again.code, again.err).toBe(0);
    expect(readFileSync(at('again.onnx'))).toEqual(readFileSync(at('img.onnx')));
  });

  it('takes --verify FOLDER through the same --preprocess, as the numpy-prepared array', async () => {
    // --verify read a folder without it, and said "give --preprocess" when it was given
    const common = ['prune', at('conv15.onnx'), '--keep-ratio', '0.5', '--calib', at('numpy.npy')];
    const images = ['--verify', at('images'), '--preprocess', pipeline.flag];
    const folder = await runCli(...common, ...images, '-o', at('v1.onnx'), '--report', at('v1.json'));
    expect(folder.code, folder.err).toBe(0);
    const file = await runCli(...common, '--verify', at('numpy.npy'), '-o', at('v2.onnx'), '--report', at('v2.json'));
    expect(file.code, file.err).toBe(0);
    const [v1, v2] = [json(at('v1.json')), json(at('v2.json'))];
    expect(v1.verification).toEqual({ inputs: 'verify', rows: 1 });
    expect(v1.fidelity).toEqual(v2.fidelity);

    const shapes = await runCli('inspect', at('conv-hw.onnx'), '--calib', at('images'), '--preprocess', pipeline.flag);
    expect(shapes.code, shapes.err).toBe(0);
    expect(shapes.out).not.toMatch(/free dimensions/);
    const alone = await runCli('inspect', at('conv-hw.onnx'), '--preprocess', pipeline.flag);
    expect(alone.code).toBe(2);
    expect(alone.err).toMatch(/--preprocess is for --calib FOLDER/);
  });

  it('refuses a spec whose samples are not the model input shape, and JSON that is no spec', async () => {
    const wrong = await runCli(
      'prune', at('conv15.onnx'), '--calib', at('images'), '--preprocess', 'imagenet', '-o', at('x.onnx'),
    ); // prettier-ignore
    expect(wrong.code).toBe(2);
    expect(wrong.err).toMatch(/images has shape \[1,3,224,224\] but the model input x needs \[\?,3,15,15\]/);
    const bad = await runCli(
      'prune', at('conv15.onnx'), '--calib', at('images'), '--preprocess', '{"resize": 3}', '-o', at('x.onnx'),
    ); // prettier-ignore
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/preprocess: the spec has the fields resize, not channels/);
  });
});

describe('inspect on free spatial or sequence dimensions, without --input-shape', () => {
  const groupsOf = (r: { groups: { id: string; channels: number }[] }) => r.groups.map((g) => [g.id, g.channels]);

  it('a conv model with free H and W: the groups, channels and refusals are those at any real shape', async () => {
    const free = await runCli('inspect', at('conv-hw.onnx'), '--json');
    expect(free.code, free.err).toBe(0);
    const a = JSON.parse(free.out);
    expect(a.standIn).toBeGreaterThan(0);
    expect(a.note).toMatch(/free dimensions .*FLOPs .*give --input-shape or --calib/);
    expect(a.note).toMatch(/the groups, channels and refusals do not depend on it/);
    for (const shape of ['1,3,15,15', '1,3,64,48']) {
      const fixed = await runCli('inspect', at('conv-hw.onnx'), '--json', '--input-shape', shape);
      expect(fixed.code, fixed.err).toBe(0);
      const b = JSON.parse(fixed.out);
      expect(b.note).toBeUndefined();
      expect(groupsOf(b)).toEqual(groupsOf(a));
      expect(b.refused).toEqual(a.refused);
    }
    expect(groupsOf(a)).toEqual([['conv1', 8]]);
    const text = await runCli('inspect', at('conv-hw.onnx'));
    expect(text.out).toMatch(/^note: the inputs have free dimensions \(x \[\?,3,\?,\?\]\)/m);
  });

  it('a transformer with free batch and sequence length: heads, FFN neurons, the refused residual adds', async () => {
    const r = await runCli('inspect', 'test/fixtures/tf-bert-tiny-opset17.onnx', '--json');
    expect(r.code, r.err).toBe(0);
    const a = JSON.parse(r.out);
    expect(a.inputs.map((x: { declared: unknown[] }) => x.declared)).toEqual([
      [null, null],
      [null, null],
      [null, null],
    ]);
    expect(a.groups.map((g: { channels: number }) => g.channels)).toEqual([4, 128, 4, 128, 64]);
    expect(a.refused.length).toBeGreaterThan(0);
    expect(a.note).toMatch(/the groups, channels and refusals do not depend on it/);
    // the same groups at the calibration data's own length
    const c = await runCli(
      'inspect', 'test/fixtures/tf-bert-tiny-opset17.onnx', '--json', '--calib', 'test/fixtures/tf-bert-tiny.calib.npz',
    ); // prettier-ignore
    expect(c.code, c.err).toBe(0);
    expect(groupsOf(JSON.parse(c.out))).toEqual(groupsOf(a));
  });
});

describe("inspect's listing of refusals", () => {
  it('a reason quoting a whole one above refers to its row (the ViT: stream refused for the class token)', async () => {
    const json = await runCli('inspect', 'models/vit.onnx', '--json'),
      text = await runCli('inspect', 'models/vit.onnx');
    expect(json.code, json.err).toBe(0);
    const refused: { node: string; reason: string }[] = JSON.parse(json.out).refused;
    const root = refused.find((r) => r.node === '/patch/Conv')!;
    expect(root.reason).toMatch(/class token/);
    // the JSON keeps every reason whole; the listing prints the root once and points the Adds that cite it there
    const citing = refused.filter((r) => r.reason !== root.reason && r.reason.includes(root.reason));
    expect(citing.length).toBe(12);
    expect(shortReasons(refused)).toEqual(
      refused.map((r) => (r === root ? r.reason : r.reason.replace(root.reason, 'see /patch/Conv'))),
    );
    const listed = text.out.split('\n').filter((l) => l.startsWith('  /'));
    expect(listed.filter((l) => l.includes('class token'))).toEqual([`  /patch/Conv: ${root.reason}`]);
    expect(listed.filter((l) => l.includes('(its channels are refused: see /patch/Conv)')).length).toBe(12);
  });
});
