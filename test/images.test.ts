import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runInNewContext } from 'node:vm';
import { build } from 'esbuild';
import {
  centerCrop,
  checkPreprocess,
  decodeImage,
  formatPreprocess,
  loadImageFolder,
  loadImages,
  parsePreprocess,
  preprocess,
  resizeLinear,
  resizePil,
  type Image,
} from '../src/images/index.js';
import { openNpy } from '../src/npy.js';

// Calibration images against their oracles, all made by test/fixtures/images/make.py: Pillow's decoding, its
// convert('L') and resize(BILINEAR); torchvision's transforms (Resize, CenterCrop, ToTensor, Normalize) and
// PaddleOCR's normalisation code for whole flags; numpy's implementation of the linear filter's definition.

const FIX = 'test/fixtures/images';
const PNGS = ['rgb.png', 'rgba.png', 'gray.png', 'graya.png', 'palette.png', 'bw.png', 'gray16.png'];
const JPEGS = ['photo.jpg', 'photo444.jpg', 'photo422.jpg', 'progressive.jpg', 'gray.jpg', 'odd.jpg'];
const image = (name: string) => decodeImage(readFileSync(`${FIX}/${name}`), name);
const npy = (path: string) => openNpy(`${FIX}/${path}`);
const pixels = (img: Image) => Float64Array.from(img.data);
const bits = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

describe('decodeImage: PNG and JPEG as Pillow reads them', () => {
  it.each(PNGS)('%s: exactly Pillow’s pixels (palette, alpha dropped, 1/4/16-bit)', (name) => {
    const img = image(name),
      ref = npy(`decoded/${name}.npy`);
    expect([img.height, img.width, img.channels]).toEqual([ref.shape[0], ref.shape[1], ref.shape[2] ?? 1]);
    expect(pixels(img)).toEqual(ref.readF64());
  });

  // jpeg-js's IDCT is not libjpeg-turbo's: a few levels apart (measured: at most 3, on average 0.07 to 0.16); the
  // chroma upsampling and colour conversion are libjpeg's, so 4:2:0 and 4:2:2 are as close as 4:4:4
  it.each(JPEGS)('%s: within 3 levels of Pillow’s pixels, 0.2 on average', (name) => {
    const img = image(name),
      ref = npy(`decoded/${name}.npy`).readF64(),
      got = pixels(img);
    expect(got.length).toBe(ref.length);
    const diff = got.map((v, i) => Math.abs(v - ref[i]));
    expect(Math.max(...diff)).toBeLessThanOrEqual(3);
    expect(diff.reduce((a, b) => a + b, 0) / diff.length).toBeLessThan(0.2);
  });

  it('refuses what is not a PNG or JPEG, and broken ones, saying which file', () => {
    const png = readFileSync(`${FIX}/rgb.png`),
      jpg = readFileSync(`${FIX}/photo.jpg`);
    expect(() => decodeImage(new TextEncoder().encode('GIF89a...'), 'x.gif')).toThrow(
      /^x\.gif: not a PNG or JPEG image/,
    );
    expect(() => decodeImage(png.subarray(0, png.length - 40), 'cut.png')).toThrow(/^cut\.png: cannot decode this PNG/);
    expect(() => decodeImage(jpg.subarray(0, 600), 'cut.jpg')).toThrow(/^cut\.jpg: cannot decode this JPEG/);
  });
});

describe('resizing, against Pillow and numpy', () => {
  const SIZES = [
    [16, 10],
    [50, 41],
    [60, 9],
    [5, 3],
    [100, 2],
    [37, 23],
    [1, 1],
  ];
  const cases = ['rgb.png', 'gray.png', 'palette.png'].flatMap((n) => SIZES.map(([w, h]) => [n, w, h] as const));

  it.each(cases)('%s to %i×%i: filter=pil is Pillow’s resize(BILINEAR) bit for bit', (name, w, h) => {
    expect(pixels(resizePil(image(name), w, h))).toEqual(npy(`pil/${name}-${w}x${h}.npy`).readF64());
  });

  it.each(cases)('%s to %i×%i: filter=linear is the numpy definition bit for bit', (name, w, h) => {
    expect(pixels(resizeLinear(image(name), w, h))).toEqual(npy(`linear/${name}-${w}x${h}.npy`).readF64());
  });

  it('channels=gray is Pillow’s convert("L"), exactly', () => {
    // not gray16.png: Pillow's convert('RGB') clips 16-bit grey at 255, where decodeImage keeps the high byte
    for (const name of [...PNGS.filter((n) => n !== 'gray16.png'), ...JPEGS]) {
      const got = preprocess(image(name), parsePreprocess('channels=gray')),
        want = npy(`gray/${name}.npy`).readF64(),
        tolerance = name.endsWith('.png') ? 0 : 3; // JPEG: the decoders differ by up to 3 levels
      expect(Math.max(...got.data.map((v, i) => Math.abs(v - want[i])))).toBeLessThanOrEqual(tolerance);
    }
  });

  it('centerCrop pads with zeros where the crop is larger, and rounds an odd margin half to even', () => {
    const img: Image = { width: 3, height: 2, channels: 1, data: Uint8Array.from([1, 2, 3, 4, 5, 6]) };
    expect([...centerCrop(img, 5, 4).data]).toEqual([0, 0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 4, 5, 6, 0, 0, 0, 0, 0, 0]);
    // margin (3 - 2) / 2 = 0.5 rounds to 0 (torchvision: int(round(0.5)) = 0)
    expect([...centerCrop(img, 2, 1).data]).toEqual([1, 2]);
  });
});

interface Pipeline {
  image: string;
  flag: string;
  shape: number[];
  file?: string;
  sha256?: string;
}
const PIPELINES: Pipeline[] = JSON.parse(readFileSync(`${FIX}/pipelines.json`, 'utf8'));

describe('whole preprocessing flags, against torchvision and PaddleOCR', () => {
  it.each(PIPELINES.map((p) => [p.image, p.flag, p] as const))('%s with %s', (name, flag, p) => {
    const got = preprocess(image(name), parsePreprocess(flag));
    expect(got.shape).toEqual(p.shape);
    if (p.sha256) expect(createHash('sha256').update(bits(got.data)).digest('hex')).toBe(p.sha256);
    else expect(bits(got.data)).toEqual(bits(npy(p.file!).readF32()));
  });

  it('covers the presets: ImageNet (torchvision) at 224, PaddleOCR rec at 48×320 and det', () => {
    const flags = PIPELINES.map((p) => p.flag.split(',')[0]);
    expect(flags).toEqual(expect.arrayContaining(['imagenet', 'paddleocr-rec', 'paddleocr-det']));
    expect(PIPELINES.find((p) => p.flag === 'imagenet')!.shape).toEqual([3, 224, 224]);
    expect(PIPELINES.find((p) => p.flag === 'paddleocr-rec')!.shape).toEqual([3, 48, 320]);
  });
});

describe('the preprocessing spec: flag text and JSON', () => {
  it('resolves a preset to a plain JSON object, every field explicit', () => {
    expect(parsePreprocess('imagenet')).toEqual({
      resize: { shorter: 256 },
      filter: 'pil',
      crop: { width: 224, height: 224 },
      channels: 'rgb',
      layout: 'nchw',
      scale: { divide: 255 },
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
    });
    expect(parsePreprocess('paddleocr-rec')).toMatchObject({
      resize: { width: 320, height: 48, fit: 'height' },
      filter: 'linear',
      channels: 'bgr',
      scale: { divide: 255 },
      mean: [0.5, 0.5, 0.5],
      std: [0.5, 0.5, 0.5],
    });
    expect(parsePreprocess('paddleocr-det,resize=960x640,layout=nhwc')).toMatchObject({
      resize: { width: 960, height: 640, fit: 'stretch' },
      scale: { multiply: 1 / 255 },
      layout: 'nhwc',
    });
    // no flag at all: pixel values 0..255 as they are, RGB, NCHW
    expect(parsePreprocess('')).toEqual({
      resize: null,
      filter: 'pil',
      crop: null,
      channels: 'rgb',
      layout: 'nchw',
      scale: { multiply: 1 },
      mean: [0, 0, 0],
      std: [1, 1, 1],
    });
  });

  it('formats back to a flag that parses to the same spec, and JSON re-reads through checkPreprocess', () => {
    for (const flag of [
      'imagenet',
      'paddleocr-rec',
      'paddleocr-det,resize=64x32',
      'resize=7,crop=3x5,channels=gray,layout=nhwc,scale=0.5,mean=0.25,std=2',
      '',
    ]) {
      const spec = parsePreprocess(flag);
      expect(parsePreprocess(formatPreprocess(spec))).toEqual(spec);
      expect(checkPreprocess(JSON.parse(JSON.stringify(spec)))).toEqual(spec);
    }
    expect(formatPreprocess(parsePreprocess('imagenet'))).toBe(
      'resize=256,filter=pil,crop=224x224,channels=rgb,layout=nchw,scale=1/255,' +
        'mean=0.485:0.456:0.406,std=0.229:0.224:0.225',
    );
  });

  it('refuses a wrong flag or JSON with one line saying what is wrong', () => {
    const cases: [string, RegExp][] = [
      ['resize=0', /resize: "0" is not a positive whole number of pixels/],
      ['resize=12x', /resize: "12x" is not a positive whole number/],
      ['crop=abc', /crop: "abc" is not a positive whole number/],
      ['sizes=3', /unknown key "sizes"; keys: resize, fit, filter, crop, channels, layout, scale, mean, std/],
      ['imagenet2', /unknown preset "imagenet2"; presets: imagenet, paddleocr-rec, paddleocr-det/],
      ['resize=3,imagenet', /"imagenet" has no '=': a preset \(.*\) comes first/],
      ['mean=0.1:0.2', /mean: 2 values for 3 channels \(rgb\)/],
      ['channels=gray,std=1:2:3', /std: 3 values for 1 channels \(gray\)/],
      ['std=0', /std: a standard deviation of 0 divides by zero/],
      ['scale=1/0', /scale: 1\/0 divides by zero/],
      ['mean=x', /mean: "x" is not a list of numbers/],
      ['fit=height', /fit=height needs resize=WxH/],
      ['resize=10,fit=height', /fit=height needs resize=WxH/],
      ['resize=32x8,fit=height,crop=4', /fit=height pads to the width: a crop after it is not supported/],
      ['layout=chw', /layout: "chw" is not one of nchw, nhwc/],
      ['resize=3,resize=4', /resize is given twice/],
    ];
    for (const [flag, msg] of cases) {
      expect(() => parsePreprocess(flag), flag).toThrow(msg);
      expect(() => parsePreprocess(flag), flag).toThrow(/^preprocess: .*; see src\/images\/README\.md for the syntax$/);
    }
    const good = parsePreprocess('imagenet');
    expect(() => checkPreprocess([good])).toThrow(/the spec is not a JSON object/);
    expect(() => checkPreprocess({ ...good, extra: 1 })).toThrow(/the spec has the fields .*extra/);
    expect(() => checkPreprocess({ ...good, mean: 'x' })).toThrow(/is not one parsePreprocess gives/);
    expect(() => checkPreprocess({ ...good, resize: { shorter: 2.5 } })).toThrow(/is not one parsePreprocess gives/);
  });
});

describe('a folder of images to a calibration batch', () => {
  const folder = () => {
    const dir = mkdtempSync(join(tmpdir(), 'subprune-images-'));
    mkdirSync(join(dir, 'b'));
    cpSync(`${FIX}/rgb.png`, join(dir, 'b', 'one.PNG'));
    cpSync(`${FIX}/photo.jpg`, join(dir, 'a.jpeg'));
    cpSync(`${FIX}/gray.png`, join(dir, 'c.png'));
    writeFileSync(join(dir, 'labels.txt'), 'not an image');
    return dir;
  };

  it('reads subfolders in path order, skips other files, and stacks the samples [N, C, H, W]', () => {
    const dir = folder(),
      spec = parsePreprocess('imagenet,resize=20,crop=15');
    const batch = loadImageFolder(dir, spec);
    expect(batch.names).toEqual(['a.jpeg', 'b/one.PNG', 'c.png']);
    expect(batch.shape).toEqual([3, 3, 15, 15]);
    const one = preprocess(image('rgb.png'), spec).data;
    expect(batch.data.subarray(675, 1350)).toEqual(one);
    // the same from bytes (a browser's picked files)
    const files = batch.names.map((n) => ({ name: n, bytes: readFileSync(join(dir, n)) }));
    expect(loadImages(files, spec).data).toEqual(batch.data);
  });

  it('refuses samples of different shapes, an empty folder and a file, saying what to do', () => {
    const dir = folder();
    expect(() => loadImageFolder(dir, parsePreprocess('resize=20'))).toThrow(
      /one\.PNG preprocesses to 3×20×32, .*a\.jpeg to 3×20×26: calibration samples must share one shape; add crop/,
    );
    const empty = mkdtempSync(join(tmpdir(), 'subprune-images-'));
    expect(() => loadImageFolder(empty, parsePreprocess(''))).toThrow(/no \.png, \.jpg or \.jpeg files in this folder/);
    expect(() => loadImageFolder(`${FIX}/rgb.png`, parsePreprocess(''))).toThrow(/rgb\.png: not a folder/);
    expect(() => loadImageFolder(join(empty, 'missing'), parsePreprocess(''))).toThrow(/cannot open \(ENOENT\)/);
  });
});

describe('no native code: the browser bundle and node --no-addons', () => {
  const bundle = async (platform: 'browser' | 'node') => {
    const r = await build({
      entryPoints: ['src/images/index.ts'],
      bundle: true,
      write: false,
      format: platform === 'browser' ? 'iife' : 'esm',
      globalName: 'images',
      platform,
      // as scripts/build-web.mjs: node: modules are empty in the page (the folder reader is never called there)
      plugins:
        platform === 'browser'
          ? [
              {
                name: 'node-stubs',
                setup(b) {
                  b.onResolve({ filter: /^node:/ }, (a) => ({ path: a.path, namespace: 'stub' }));
                  b.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({ contents: 'module.exports = {}' }));
                },
              },
            ]
          : [],
      logLevel: 'silent',
    });
    return r.outputFiles[0].text;
  };
  const spec = 'paddleocr-rec,resize=24x12';
  const want = (name: string) => [...preprocess(image(name), parsePreprocess(spec)).data];

  it('decodes and preprocesses in a context with no Node API (no Buffer, process or require)', async () => {
    const code = await bundle('browser');
    // a page's globals that the decoders use: TextDecoder (fast-png's text chunks), TextEncoder
    const context: Record<string, unknown> = {
      TextDecoder,
      TextEncoder,
      png: new Uint8Array(readFileSync(`${FIX}/palette.png`)),
      jpg: new Uint8Array(readFileSync(`${FIX}/odd.jpg`)),
      spec,
      out: undefined,
    };
    runInNewContext(
      `${code}; const s = images.parsePreprocess(spec);
      out = [png, jpg].map((b, i) => Array.from(images.preprocess(images.decodeImage(b, 'x' + i), s).data));`,
      context,
    );
    expect(context.out).toEqual([want('palette.png'), want('odd.jpg')]);
  });

  it('loads a folder under node --no-addons', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'subprune-images-'));
    writeFileSync(join(dir, 'images.mjs'), await bundle('node'));
    cpSync(`${FIX}/palette.png`, join(dir, 'a.png'));
    cpSync(`${FIX}/odd.jpg`, join(dir, 'b.jpg'));
    const r = spawnSync(
      process.execPath,
      [
        '--no-addons',
        '--input-type=module',
        '-e',
        `const m = await import(${JSON.stringify(join(dir, 'images.mjs'))});
        const b = m.loadImageFolder(${JSON.stringify(dir)}, m.parsePreprocess(${JSON.stringify(spec)}));
        console.log(JSON.stringify([b.names, b.shape, Array.from(b.data)]));`,
      ],
      { encoding: 'utf8' },
    );
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([
      ['a.png', 'b.jpg'],
      [2, 3, 12, 24],
      [...want('palette.png'), ...want('odd.jpg')],
    ]);
  });
});
