import { decode as decodePng, hasPngSignature, type DecodedPng } from 'fast-png';
import jpeg from 'jpeg-js';
import { badInput } from '../errors.js';

// PNG and JPEG to 8-bit pixels, in pure JavaScript (fast-png, jpeg-js): the same code runs under `node --no-addons`
// and in a browser bundle. The pixels are what PIL's Image.open(f).convert('RGB') (or 'L') gives where that is
// defined by the file alone: alpha dropped (not composited), palettes expanded, 1/2/4-bit grey scaled to 0..255,
// 16-bit samples reduced to their high byte. JPEG differs from PIL's libjpeg-turbo by a few levels (its IDCT and
// chroma upsampling): see src/images/README.md. EXIF orientation is ignored, as PIL and torchvision do.

/** An 8-bit image, rows top to bottom, pixels interleaved: grey (1 channel) or RGB (3 channels). */
export interface Image {
  width: number;
  height: number;
  channels: 1 | 3;
  data: Uint8Array;
}

const isJpeg = (b: Uint8Array) => b.length > 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;

/** Decodes a PNG or JPEG file's bytes; `name` names it in messages. */
export function decodeImage(bytes: Uint8Array, name: string): Image {
  if (hasPngSignature(bytes)) return fromPng(bytes, name);
  if (isJpeg(bytes)) return fromJpeg(bytes, name);
  throw badInput(`${name}: not a PNG or JPEG image (no PNG signature or JPEG SOI marker); give PNG or JPEG files`);
}

/** A JPEG's frame as its header says: each component's sampling factors, and the Adobe marker's colour transform. */
interface JpegLayout {
  sampling: [number, number][];
  adobeTransform?: number;
}

/** Reads the markers before the first scan (SOF0/1/2 and APP14 "Adobe"); undefined where they are not found. */
function jpegLayout(b: Uint8Array): JpegLayout | undefined {
  let sampling: [number, number][] | undefined, adobeTransform: number | undefined;
  for (let i = 2; i + 4 <= b.length;) {
    if (b[i] !== 0xff) return undefined;
    const marker = b[i + 1];
    if (marker === 0xff) {
      i++; // fill byte
      continue;
    }
    const len = (b[i + 2] << 8) | b[i + 3],
      at = i + 4;
    if (marker === 0xda) break; // start of scan: the frame header came before
    if ((marker === 0xc0 || marker === 0xc1 || marker === 0xc2) && at + 6 <= b.length) {
      const n = b[at + 5];
      sampling = [];
      for (let c = 0; c < n && at + 8 + 3 * c < b.length; c++) {
        const hv = b[at + 7 + 3 * c];
        sampling.push([hv >> 4, hv & 15]);
      }
    }
    if (marker === 0xee && len >= 12 && latin1(b.subarray(at, at + 5)) === 'Adobe') adobeTransform = b[at + 11];
    i += 2 + len;
  }
  return sampling && { sampling, adobeTransform };
}

const latin1 = (b: Uint8Array) => String.fromCharCode(...b);

/**
 * libjpeg's "fancy" upsampling of one chroma plane (jdsample.c, h2v1 and h2v2: a triangle filter, 3/4 of the nearer
 * sample and 1/4 of the further, edges replicated), to the full-size plane of `width` × `height`.
 */
function fancyUpsample(c: Uint8Array, cw: number, ch: number, h2v2: boolean, width: number, height: number) {
  const out = new Uint8Array(width * height),
    at = (x: number, y: number) => c[Math.min(Math.max(y, 0), ch - 1) * cw + Math.min(Math.max(x, 0), cw - 1)];
  for (let y = 0; y < height; y++) {
    const iy = h2v2 ? y >> 1 : y,
      ny = h2v2 ? iy + (y & 1 ? 1 : -1) : iy; // the next nearest row: above for even output rows, below for odd
    // column sums: 3 × the nearer row + the further one (h2v2); the sample itself (h2v1)
    const col = (x: number) => (h2v2 ? at(x, iy) * 3 + at(x, ny) : at(x, iy));
    const [bits, bias0, bias1] = h2v2 ? [4, 8, 7] : [2, 1, 2];
    for (let ix = 0; ix < cw; ix++) {
      const left = 2 * ix,
        here = col(ix);
      // first and last columns: the edge sample counts for both neighbours
      const prev = ix === 0 ? here : col(ix - 1),
        next = ix === cw - 1 ? here : col(ix + 1);
      if (left < width) out[y * width + left] = (here * 3 + prev + bias0) >> bits;
      if (left + 1 < width) out[y * width + left + 1] = (here * 3 + next + bias1) >> bits;
    }
  }
  return out;
}

/** libjpeg's YCbCr to RGB (jdcolor.c): 16-bit fixed-point tables, rounded, clamped. */
function yccToRgb(Y: Uint8Array, Cb: Uint8Array, Cr: Uint8Array): Uint8Array {
  const FIX = (x: number) => Math.trunc(x * 65536 + 0.5),
    HALF = 1 << 15,
    clamp = (v: number) => (v < 0 ? 0 : v > 255 ? 255 : v),
    out = new Uint8Array(Y.length * 3);
  for (let i = 0; i < Y.length; i++) {
    const cb = Cb[i] - 128,
      cr = Cr[i] - 128,
      y = Y[i];
    out[3 * i] = clamp(y + ((FIX(1.402) * cr + HALF) >> 16));
    out[3 * i + 1] = clamp(y + ((-FIX(0.34414) * cb + HALF - FIX(0.71414) * cr) >> 16));
    out[3 * i + 2] = clamp(y + ((FIX(1.772) * cb + HALF) >> 16));
  }
  return out;
}

function fromJpeg(bytes: Uint8Array, name: string): Image {
  // Y at 1×1, 2×1 or 2×2 and chroma at 1×1, no Adobe marker: YCbCr, upsampled and converted here as libjpeg does;
  // other layouts are jpeg-js's own (chroma repeated, not interpolated).
  const layout = jpegLayout(bytes),
    s = layout?.sampling;
  const own =
    layout?.adobeTransform === undefined &&
    s?.length === 3 &&
    s[1].join() === '1,1' &&
    s[2].join() === '1,1' &&
    ['1,1', '2,1', '2,2'].includes(s[0].join());
  let img: { width: number; height: number; data: Uint8Array };
  try {
    // tolerantDecoding off: a truncated or corrupt file is an error, not a grey band
    img = jpeg.decode(bytes, {
      useTArray: true,
      formatAsRGBA: false,
      tolerantDecoding: false,
      ...(own || layout?.adobeTransform === 0 ? { colorTransform: false } : {}), // Adobe 0: RGB stored as such
    });
  } catch (e) {
    throw badInput(`${name}: cannot decode this JPEG (${(e as Error).message}); re-save it as a baseline JPEG or PNG`);
  }
  const { width, height, data } = img;
  if (!own) return { width, height, channels: 3, data };
  // planes of the decoded Y, Cb, Cr; jpeg-js repeated each chroma sample over its h × v pixels: take one of each
  const [h, v] = s![0],
    cw = Math.ceil(width / h),
    ch = Math.ceil(height / v),
    Y = new Uint8Array(width * height),
    chroma = [new Uint8Array(cw * ch), new Uint8Array(cw * ch)];
  for (let i = 0; i < width * height; i++) Y[i] = data[3 * i];
  for (let y = 0; y < ch; y++)
    for (let x = 0; x < cw; x++)
      for (let k = 0; k < 2; k++) chroma[k][y * cw + x] = data[3 * (y * v * width + x * h) + 1 + k];
  const [Cb, Cr] = h === 1 && v === 1 ? chroma : chroma.map((c) => fancyUpsample(c, cw, ch, v === 2, width, height));
  return { width, height, channels: 3, data: yccToRgb(Y, Cb, Cr) };
}

function fromPng(bytes: Uint8Array, name: string): Image {
  let png: DecodedPng;
  try {
    png = decodePng(bytes);
  } catch (e) {
    throw badInput(`${name}: cannot decode this PNG (${(e as Error).message}); check the file`);
  }
  const { width, height, depth, palette } = png,
    n = width * height;
  // samples as 8-bit values, one per channel per pixel, rows unpadded
  const samples = unpack(png);
  if (palette) {
    const data = new Uint8Array(n * 3);
    for (let i = 0; i < n; i++) {
      const c = palette[samples[i]];
      if (!c) throw badInput(`${name}: palette index ${samples[i]} out of the palette's ${palette.length} colours`);
      data.set(c.slice(0, 3), i * 3);
    }
    return { width, height, channels: 3, data };
  }
  const scale = depth < 8 ? 255 / ((1 << depth) - 1) : 1; // 1, 2, 4-bit grey to 0..255 (exact: 255, 85, 17)
  const channels = png.channels >= 3 ? 3 : 1,
    data = new Uint8Array(n * channels);
  for (let i = 0; i < n; i++)
    for (let c = 0; c < channels; c++) data[i * channels + c] = samples[i * png.channels + c] * scale;
  return { width, height, channels, data };
}

/** The samples of a PNG (not yet palette-mapped) as one 8-bit value each: sub-byte rows unpacked, 16-bit to 8. */
function unpack(png: DecodedPng): Uint8Array {
  const { width, height, depth, channels, data } = png;
  if (depth === 8) return data as Uint8Array;
  if (depth === 16) {
    const out = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) out[i] = data[i] >>> 8; // the high byte, as PIL reads 16-bit RGB
    return out;
  }
  const perRow = width * channels,
    rowBytes = Math.ceil((perRow * depth) / 8),
    mask = (1 << depth) - 1,
    out = new Uint8Array(perRow * height);
  for (let y = 0; y < height; y++)
    for (let i = 0; i < perRow; i++) {
      const bit = i * depth; // samples are packed from the high bits of each byte
      out[y * perRow + i] = (data[y * rowBytes + (bit >>> 3)] >>> (8 - depth - (bit & 7))) & mask;
    }
  return out;
}
