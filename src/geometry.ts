// Shape arithmetic shared by shape inference, the layer table, the Gram capture's im2col and the channel statistics:
// one formula for the number of window positions, one for broadcasting.
import { badInput } from './errors.js';
import { attrInt, attrInts, attrString, type NodeProto } from './onnx/index.js';

/** A 2-D Conv consumer's geometry: B's rows are its input patches. */
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
