// Shape arithmetic shared by shape inference, the layer table, the Gram capture's im2col and the channel statistics:
// one formula for the number of window positions, one for broadcasting.
import { badInput } from './errors.js';
import { attrInt, attrInts, attrString, type NodeProto } from './onnx/index.js';

/**
 * A Conv consumer's geometry: B's rows are its input patches. Planes are 2-D: a 1-D Conv (input [b, C, L], weight
 * [m, C, k]) is the 2-D one over [b, C, 1, L] with kernel [1, k] (convGeometry lifts it, planeDims its input); a 3-D
 * Conv (input [b, C, D, H, W]) has a `depth` and is the 2-D one over its input unfolded along depth (unfoldDepth:
 * [b·OD, C·kd, H, W]), whose patches are the 3-D ones with their columns in the weight's order.
 */
export interface ConvGeometry {
  kernel: [number, number];
  strides: [number, number];
  /** [top, left, bottom, right] */
  pads: [number, number, number, number];
  dilations: [number, number];
  depth?: DepthGeometry;
}

/** A 3-D Conv's depth axis: its kernel, stride, [front, back] pads and dilation. */
export interface DepthGeometry {
  kernel: number;
  stride: number;
  pads: [number, number];
  dilation: number;
}

/**
 * Window positions along one axis of `size` entries: kernel k, stride s, pads p0/p1, dilation dl. With ceil (pools'
 * ceil_mode) a last partial window counts if it starts inside the input or its left pad.
 */
export function windowCount(size: number, k: number, s: number, p0: number, p1: number, dl: number, ceil = false) {
  const span = size + p0 + p1 - ((k - 1) * dl + 1);
  if (!ceil) return Math.floor(span / s) + 1;
  const o = Math.ceil(span / s) + 1;
  return (o - 1) * s >= size + p0 ? o - 1 : o;
}

/** Output rows and columns of a 2-D Conv over an H×W input. */
export function patchGrid(geo: ConvGeometry, H: number, W: number): [number, number] {
  const { kernel, strides, pads, dilations } = geo;
  return [
    windowCount(H, kernel[0], strides[0], pads[0], pads[2], dilations[0]),
    windowCount(W, kernel[1], strides[1], pads[1], pads[3], dilations[1]),
  ];
}

/** Columns of B per input channel: the kernel's (kd·)kh·kw taps. */
export const patchSize = (geo: ConvGeometry) => geo.kernel[0] * geo.kernel[1] * (geo.depth?.kernel ?? 1);

/** The 2-D geometry of a Conv's planes (a 3-D Conv's over its input unfolded along depth). */
export const planar = ({ depth: _, ...geo }: ConvGeometry): ConvGeometry => geo;

/**
 * A 3-D Conv's input [b, C, D, H, W] (or its target, of the same shape) as 2-D samples: [b·OD, C·kd, H, W], sample
 * s·OD + od holding, for each channel c, the kd planes at depths od·stride − front + i·dilation (zeros in the
 * pads). Its patches under the planar geometry are the 3-D Conv's, columns in the weight's order (c, i, kh, kw).
 */
export function unfoldDepth(x: { data: Float32Array; dims: readonly number[] }, depth: DepthGeometry) {
  const [b, C, D, H, W] = x.dims as [number, number, number, number, number];
  const { kernel: kd, stride, pads, dilation } = depth,
    OD = windowCount(D, kd, stride, pads[0], pads[1], dilation),
    plane = H * W,
    out = new Float32Array(b * OD * C * kd * plane);
  for (let s = 0; s < b; s++)
    for (let od = 0; od < OD; od++)
      for (let c = 0; c < C; c++)
        for (let i = 0; i < kd; i++) {
          const z = od * stride - pads[0] + i * dilation;
          if (z < 0 || z >= D) continue; // a pad: zeros
          const from = ((s * C + c) * D + z) * plane;
          out.set(x.data.subarray(from, from + plane), (((s * OD + od) * C + c) * kd + i) * plane);
        }
  return { data: out, dims: [b * OD, C * kd, H, W] };
}

/**
 * A 3-D Conv's output [b, m, OD, OH, OW] as the unfolded input's 2-D samples see it: [b·OD, m, OH, OW] (the given
 * target of an asymmetric capture, whose rows must follow the patches').
 */
export function depthMajor(y: Float32Array, b: number, m: number, OD: number, plane: number): Float32Array {
  const out = new Float32Array(y.length);
  for (let s = 0; s < b; s++)
    for (let j = 0; j < m; j++)
      for (let od = 0; od < OD; od++) {
        const from = ((s * m + j) * OD + od) * plane;
        out.set(y.subarray(from, from + plane), ((s * OD + od) * m + j) * plane);
      }
  return out;
}

/**
 * A Conv's input [b, C, H, W] as its geometry sees it: a 1-D Conv's [b, C, L] is [b, C, 1, L]. Throws for other
 * ranks (the layer table refuses those consumers).
 */
export function planeDims(dims: readonly number[]): [number, number, number, number] {
  if (dims.length === 3) return [dims[0]!, dims[1]!, 1, dims[2]!];
  if (dims.length === 4) return [dims[0]!, dims[1]!, dims[2]!, dims[3]!];
  throw new RangeError(`a Conv input [${dims.join(', ')}] is neither [b, C, L] nor [b, C, H, W]`);
}

/**
 * The geometry of a Conv node over its input's spatial size (1, 2 or 3 axes) with kernel `kernel`: 1-D lifted to 2-D
 * with H = 1, 3-D with its depth apart (ConvGeometry); undefined for other ranks.
 */
export function convGeometry(
  node: NodeProto,
  spatial: readonly number[],
  kernel: readonly number[],
): ConvGeometry | undefined {
  const r = spatial.length;
  if (kernel.length !== r || r < 1 || r > 3) return undefined;
  const { strides: s, pads: p, dilations: dl } = windowGeometry(node, spatial, kernel);
  if (r === 1)
    return { kernel: [1, kernel[0]!], strides: [1, s[0]!], pads: [0, p[0]!, 0, p[1]!], dilations: [1, dl[0]!] };
  const a = r - 2; // the first of the plane's two axes
  return {
    kernel: [kernel[a]!, kernel[a + 1]!],
    strides: [s[a]!, s[a + 1]!],
    pads: [p[a]!, p[a + 1]!, p[r + a]!, p[r + a + 1]!],
    dilations: [dl[a]!, dl[a + 1]!],
    ...(r === 3 ? { depth: { kernel: kernel[0]!, stride: s[0]!, pads: [p[0]!, p[3]!], dilation: dl[0]! } } : {}),
  };
}

/** Begin/end pads of a Conv or pool, auto_pad resolved from the input's spatial size; ONNX order [b1, .., e1, ..]. */
export function resolvePads(
  node: NodeProto,
  spatial: readonly number[],
  kernel: readonly number[],
  strides: readonly number[],
  dilations: readonly number[],
): number[] {
  const k = spatial.length;
  const auto = attrString(node, 'auto_pad', 'NOTSET');
  if (auto === 'NOTSET') return attrInts(node, 'pads', new Array<number>(2 * k).fill(0));
  if (auto === 'VALID') return new Array<number>(2 * k).fill(0);
  if (auto !== 'SAME_UPPER' && auto !== 'SAME_LOWER')
    throw badInput(`${node.opType} node "${node.name}": unknown auto_pad "${auto}".`);
  const pads = new Array<number>(2 * k).fill(0);
  for (let i = 0; i < k; i++) {
    const out = Math.ceil(spatial[i]! / strides[i]!);
    const total = Math.max(0, (out - 1) * strides[i]! + (kernel[i]! - 1) * dilations[i]! + 1 - spatial[i]!);
    const small = Math.floor(total / 2);
    pads[i] = auto === 'SAME_UPPER' ? small : total - small; // SAME_UPPER puts the extra pad at the end
    pads[i + k] = total - pads[i]!;
  }
  return pads;
}

/** Geometry of a Conv or pool node over `spatial`: strides, dilations, pads and the output spatial size. */
export function windowGeometry(node: NodeProto, spatial: readonly number[], kernel: readonly number[]) {
  const k = spatial.length;
  const strides = attrInts(node, 'strides', new Array<number>(k).fill(1));
  const dilations = attrInts(node, 'dilations', new Array<number>(k).fill(1));
  const pads = resolvePads(node, spatial, kernel, strides, dilations);
  const ceil = attrInt(node, 'ceil_mode', 0) === 1; // pools only; Conv has no such attribute
  const out = spatial.map((s, i) =>
    windowCount(s, kernel[i]!, strides[i]!, pads[i]!, pads[i + k]!, dilations[i]!, ceil),
  );
  return { strides, dilations, pads, out };
}

/** ONNX (numpy) broadcasting of shapes, right-aligned. */
export function broadcastShapes(shapes: number[][]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) if (s[i] !== 1) out[rank - s.length + i] = s[i]!;
  }
  return out;
}
