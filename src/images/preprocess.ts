import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { badInput } from '../errors.js';
import { fmtBytes } from '../kernels/memory.js';
import { availableMemory } from '../kernels/memory.js';
import { decodeImage, type Image } from './decode.js';
import { centerCrop, resizeLinear, resizePil } from './resize.js';
import type { PreprocessSpec } from './spec.js';

// An image to the float32 sample a model takes, by a PreprocessSpec: channels, resize, crop, scale, mean/std, layout
// (src/images/README.md defines each step), and a folder or list of images to the calibration batch [N, ...].

/** Grey from RGB as PIL's convert('L'): ITU-R 601-2 luma in 16-bit fixed point, rounded. */
function toGray(img: Image): Image {
  const n = img.width * img.height,
    d = img.data,
    out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (d[3 * i] * 19595 + d[3 * i + 1] * 38470 + d[3 * i + 2] * 7471 + 0x8000) >>> 16;
  return { ...img, channels: 1, data: out };
}

/** Grey to RGB by repeating the value, as PIL's convert('RGB'). */
function toRgb(img: Image): Image {
  const out = new Uint8Array(img.width * img.height * 3);
  for (let i = 0; i < img.data.length; i++) out.fill(img.data[i], 3 * i, 3 * i + 3);
  return { ...img, channels: 3, data: out };
}

/** torchvision's Resize(int) output size: the shorter side to `size`, the longer truncated in proportion. */
function shorterSide(w: number, h: number, size: number): [number, number] {
  const [short, long] = w <= h ? [w, h] : [h, w],
    other = Math.trunc((size * long) / short);
  return w <= h ? [size, other] : [other, size];
}

/** PaddleOCR rec's resized width: ceil(height · w/h), at most `width`. */
function heightFitWidth(w: number, h: number, width: number, height: number): number {
  const ratio = w / h;
  return Math.ceil(height * ratio) > width ? width : Math.ceil(height * ratio);
}

export interface Sample {
  /** [C, H, W] (layout nchw) or [H, W, C] (nhwc). */
  shape: number[];
  data: Float32Array;
}

/** One image to one sample, by `spec`. */
export function preprocess(image: Image, spec: PreprocessSpec): Sample {
  let img = spec.channels === 'gray' ? (image.channels === 3 ? toGray(image) : image) : image;
  if (spec.channels !== 'gray' && img.channels === 1) img = toRgb(img);
  const resize = spec.filter === 'pil' ? resizePil : resizeLinear,
    r = spec.resize;
  let padTo = 0; // fit=height: the width to pad to
  if (r && 'shorter' in r) img = resize(img, ...shorterSide(img.width, img.height, r.shorter));
  else if (r && r.fit === 'height') {
    img = resize(img, heightFitWidth(img.width, img.height, r.width, r.height), r.height);
    padTo = r.width;
  } else if (r) img = resize(img, r.width, r.height);
  if (spec.crop) img = centerCrop(img, spec.crop.width, spec.crop.height);

  const C = spec.channels === 'gray' ? 1 : 3,
    H = img.height,
    W = Math.max(img.width, padTo),
    from = spec.channels === 'bgr' ? [2, 1, 0] : [0, 1, 2]; // output channel c reads input channel from[c]
  const f = Math.fround,
    scale = spec.scale,
    mean = spec.mean.map(f),
    std = spec.std.map(f),
    mul = 'multiply' in scale ? f(scale.multiply) : 0,
    div = 'divide' in scale ? scale.divide : 0;
  const data = new Float32Array(C * H * W),
    nchw = spec.layout === 'nchw';
  // each step rounded to float32, as torchvision's tensor ops and numpy's float32 arrays do (a float64 result of one
  // operation on float32 values, rounded once to float32, is the float32 operation's result)
  for (let y = 0; y < H; y++)
    for (let x = 0; x < img.width; x++)
      for (let c = 0; c < C; c++) {
        const p = img.data[(y * img.width + x) * img.channels + from[c]],
          scaled = div ? f(p / div) : f(p * mul);
        data[nchw ? (c * H + y) * W + x : (y * W + x) * C + c] = f(f(scaled - mean[c]) / std[c]);
      }
  return { shape: nchw ? [C, H, W] : [H, W, C], data };
}

export interface ImageBatch {
  /** [N, C, H, W] or [N, H, W, C]. */
  shape: number[];
  data: Float32Array;
  /** The images' names, in the batch's order. */
  names: string[];
}

/** Images given as bytes (e.g. picked in a browser) to one batch; every sample must come out the same shape. */
export function loadImages(files: { name: string; bytes: Uint8Array }[], spec: PreprocessSpec): ImageBatch {
  if (files.length === 0) throw badInput('no images to preprocess; give at least one PNG or JPEG file');
  let data: Float32Array | undefined, shape: number[] | undefined;
  files.forEach(({ name, bytes }, i) => {
    const s = preprocess(decodeImage(bytes, name), spec);
    if (!data || !shape) {
      const need = files.length * s.data.length * 4;
      if (need > availableMemory())
        throw badInput(
          `${files.length} images of ${s.shape.join('×')} float32 values need ${fmtBytes(need)}, ` +
            `${fmtBytes(availableMemory())} is available; give fewer images`,
        );
      data = new Float32Array(files.length * s.data.length);
      shape = s.shape;
    } else if (s.shape.join() !== shape.join())
      throw badInput(
        `${name} preprocesses to ${s.shape.join('×')}, ${files[0].name} to ${shape.join('×')}: calibration samples ` +
          'must share one shape; add crop=WxH or resize=WxH to the preprocessing',
      );
    data.set(s.data, i * s.data.length);
  });
  return { shape: [files.length, ...shape!], data: data!, names: files.map((f) => f.name) };
}

const IMAGE = /\.(png|jpe?g)$/i;

/** The PNG and JPEG files in `dir` and its subfolders, by path (relative, '/'-separated, sorted). */
export function imageFiles(dir: string): string[] {
  let st;
  try {
    st = statSync(dir);
  } catch (e) {
    throw badInput(`${dir}: cannot open (${(e as NodeJS.ErrnoException).code}); check the path`);
  }
  if (!st.isDirectory()) throw badInput(`${dir}: not a folder; give a folder of PNG or JPEG images`);
  const files = (readdirSync(dir, { recursive: true }) as string[])
    .filter((p) => IMAGE.test(p) && statSync(join(dir, p)).isFile())
    .map((p) => p.split(sep).join('/'))
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (files.length === 0) throw badInput(`${dir}: no .png, .jpg or .jpeg files in this folder or below`);
  return files;
}

/** The images of a folder (and its subfolders, in path order) to one batch. */
export function loadImageFolder(dir: string, spec: PreprocessSpec): ImageBatch {
  const files = imageFiles(dir).map((p) => ({ name: join(dir, p), bytes: readFileSync(join(dir, p)) }));
  const batch = loadImages(files, spec);
  return { ...batch, names: batch.names.map((n) => relative(dir, n).split(sep).join('/')) };
}
