import type { Image } from './decode.js';

// Resizing and cropping 8-bit images, each defined exactly (src/images/README.md) and tested against its reference:
// - resizePil: Pillow's Image.resize(..., BILINEAR), bit for bit: a triangle filter widened by the scale when
//   shrinking (antialiasing), coefficients in 22-bit fixed point, a horizontal then a vertical pass, each rounded to
//   8 bits. torchvision's Resize on PIL images is this.
// - resizeLinear: bilinear interpolation without antialiasing, half-pixel centres, edges clamped, in float64, rounded
//   half to even to 8 bits (torchvision's antialias=False; OpenCV's INTER_LINEAR up to its fixed-point rounding).
// - centerCrop: torchvision's CenterCrop, zero-padded where the crop is larger than the image.

const PRECISION_BITS = 32 - 8 - 2;

/** Pillow's precompute_coeffs for BILINEAR: per output pixel, the first input pixel and the fixed-point weights. */
function pilCoefficients(inSize: number, outSize: number): { first: Int32Array; count: Int32Array; k: Int32Array[] } {
  const scale = inSize / outSize,
    filterscale = Math.max(scale, 1),
    support = filterscale, // BILINEAR's support is 1
    first = new Int32Array(outSize),
    count = new Int32Array(outSize),
    k: Int32Array[] = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    // C's (int) truncates toward zero
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0),
      xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = new Float64Array(xmax),
      ss = 1 / filterscale;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      w[x] = t < 1 ? 1 - t : 0;
      ww += w[x];
    }
    const kx = new Int32Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const v = (ww !== 0 ? w[x] / ww : w[x]) * (1 << PRECISION_BITS);
      kx[x] = Math.trunc(v < 0 ? v - 0.5 : v + 0.5);
    }
    first[xx] = xmin;
    count[xx] = xmax;
    k.push(kx);
  }
  return { first, count, k };
}

/** Pillow's clip8: the fixed-point sum to 0..255. */
const clip8 = (v: number) =>
  v <= 0 ? 0 : v >= 1 << (PRECISION_BITS + 8) ? 255 : Math.floor(v / (1 << PRECISION_BITS));

/** Pillow's Image.resize((width, height), Image.BILINEAR) of an L or RGB image, bit for bit. */
export function resizePil(img: Image, width: number, height: number): Image {
  const { channels: C } = img,
    h = pilCoefficients(img.width, width),
    v = pilCoefficients(img.height, height);
  // the horizontal pass over the rows the vertical pass reads
  const y0 = v.first[0],
    y1 = v.first[height - 1] + v.count[height - 1],
    mid = new Uint8Array((y1 - y0) * width * C);
  for (let y = y0; y < y1; y++)
    for (let x = 0; x < width; x++)
      for (let c = 0; c < C; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        const k = h.k[x],
          row = (y * img.width + h.first[x]) * C + c;
        for (let i = 0; i < k.length; i++) ss += img.data[row + i * C] * k[i];
        mid[((y - y0) * width + x) * C + c] = clip8(ss);
      }
  const out = new Uint8Array(width * height * C);
  for (let y = 0; y < height; y++) {
    const k = v.k[y],
      top = v.first[y] - y0;
    for (let x = 0; x < width; x++)
      for (let c = 0; c < C; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let i = 0; i < k.length; i++) ss += mid[((top + i) * width + x) * C + c] * k[i];
        out[(y * width + x) * C + c] = clip8(ss);
      }
  }
  return { width, height, channels: C, data: out };
}

/** Round half to even (numpy's rint, torch.round, OpenCV's cvRound). */
export function rint(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Per output pixel along one axis: the two input pixels and the weight of the second. */
function linearTaps(inSize: number, outSize: number): { i0: Int32Array; i1: Int32Array; t: Float64Array } {
  const scale = inSize / outSize,
    i0 = new Int32Array(outSize),
    i1 = new Int32Array(outSize),
    t = new Float64Array(outSize);
  for (let x = 0; x < outSize; x++) {
    const src = Math.min(Math.max((x + 0.5) * scale - 0.5, 0), inSize - 1),
      lo = Math.floor(src);
    i0[x] = lo;
    i1[x] = Math.min(lo + 1, inSize - 1);
    t[x] = src - lo;
  }
  return { i0, i1, t };
}

/** Bilinear resize without antialiasing: half-pixel centres, clamped at the edges, rounded half to even. */
export function resizeLinear(img: Image, width: number, height: number): Image {
  const C = img.channels,
    W = img.width,
    h = linearTaps(img.width, width),
    v = linearTaps(img.height, height),
    out = new Uint8Array(width * height * C),
    p = img.data;
  for (let y = 0; y < height; y++) {
    const r0 = v.i0[y] * W,
      r1 = v.i1[y] * W,
      ty = v.t[y];
    for (let x = 0; x < width; x++) {
      const a = h.i0[x],
        b = h.i1[x],
        tx = h.t[x];
      for (let c = 0; c < C; c++) {
        const top = (1 - tx) * p[(r0 + a) * C + c] + tx * p[(r0 + b) * C + c],
          bottom = (1 - tx) * p[(r1 + a) * C + c] + tx * p[(r1 + b) * C + c];
        out[(y * width + x) * C + c] = rint((1 - ty) * top + ty * bottom);
      }
    }
  }
  return { width, height, channels: C, data: out };
}

/** torchvision's center_crop: the offset rounded half to even; a crop larger than the image is padded with 0. */
export function centerCrop(img: Image, width: number, height: number): Image {
  // per axis: the input index of output index 0 (negative: the padding before the image)
  const start = (size: number, crop: number) =>
    crop > size ? -Math.floor((crop - size) / 2) : rint((size - crop) / 2);
  const x0 = start(img.width, width),
    y0 = start(img.height, height),
    C = img.channels,
    out = new Uint8Array(width * height * C);
  for (let y = 0; y < height; y++) {
    const sy = y + y0;
    if (sy < 0 || sy >= img.height) continue;
    for (let x = 0; x < width; x++) {
      const sx = x + x0;
      if (sx < 0 || sx >= img.width) continue;
      for (let c = 0; c < C; c++) out[(y * width + x) * C + c] = img.data[(sy * img.width + sx) * C + c];
    }
  }
  return { width, height, channels: C, data: out };
}
