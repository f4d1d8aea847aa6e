// Shape arithmetic shared by shape inference, the layer table, the Gram capture's im2col and the channel statistics:
// one formula for the number of window positions, one for broadcasting.
import { badInput } from './errors.js';
import { attrInt, attrInts, attrString, type NodeProto } from './onnx/index.js';

/**
 * A Conv consumer's geometry: B's rows are its input patches. Always 2-D: a 1-D Conv (input [b, C, L], weight
 * [m, C, k]) is the 2-D one over [b, C, 1, L] with kernel [1, k] (convGeometry lifts it, planeDims its input).
 */
export interface ConvGeometry {
  kernel: [number, number];
  strides: [number, number];
  /** [top, left, bottom, right] */
  pads: [number, number, number, number];
  dilations: [number, number];
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

/** Columns of B per input channel: the kernel's kh·kw taps. */
export const patchSize = (geo: ConvGeometry) => geo.kernel[0] * geo.kernel[1];

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
 * The geometry of a Conv node over its input's spatial size (1 or 2 axes) with kernel `kernel`, 1-D lifted to 2-D
 * with H = 1; undefined for other ranks.
 */
export function convGeometry(
  node: NodeProto,
  spatial: readonly number[],
  kernel: readonly number[],
): ConvGeometry | undefined {
  if (spatial.length !== kernel.length || (spatial.length !== 1 && spatial.length !== 2)) return undefined;
  const { strides: s, pads: p, dilations: dl } = windowGeometry(node, spatial, kernel);
  if (spatial.length === 1)
    return { kernel: [1, kernel[0]!], strides: [1, s[0]!], pads: [0, p[0]!, 0, p[1]!], dilations: [1, dl[0]!] };
  return {
    kernel: [kernel[0]!, kernel[1]!],
    strides: [s[0]!, s[1]!],
    pads: [p[0]!, p[1]!, p[2]!, p[3]!],
    dilations: [dl[0]!, dl[1]!],
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
