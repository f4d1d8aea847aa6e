import type { NodeProto } from '../onnx/index.js';
import type { ConvGeometry } from '../geometry.js';
import type { WeightLayout } from './layers.js';

/**
 * A channel group: n channels that are kept or removed together, wherever they are. Producers create or scale them
 * (a layer's output rows and bias, per-channel parameters, a depthwise conv's filters, an SE gate's excite conv,
 * every branch of a residual Add, every part of a Concat); consumers read them (each layer that multiplies them by a
 * weight). A plain chain (one producer → per-channel ops → one consumer) is a group with one producer and one
 * consumer.
 */
export interface Group {
  /**
   * The first producer's node name (unique; unnamed nodes get a generated name written back into the graph), with
   * `#i` when that producer's channels are cut into several groups (analyze.ts, uniqueIds).
   */
  id: string;
  /** Channels n. */
  channels: number;
  /** The layers whose outputs create the channels, in graph order. */
  producers: NodeProto[];
  /** The layers that read the channels, one entry per (layer, place in its input) pair. */
  consumers: Consumer[];
  /** Every constant entry that belongs to a channel: producer weights and biases, per-channel parameters. */
  slices: AxisSlice[];
  /** Shape-constant entries and attributes that count the channels. */
  edits: Edit[];
  /** The per-channel ops the channels pass through (for the record), in graph order. */
  chain: NodeProto[];
  /**
   * Activations that carry the channels (runs along their channel axis): their shapes change with the group.
   * `stacked`: the channels repeat in equal parts along another axis too (a fused q/k/v); only the first part's runs
   * are listed. `entries`: the axis' size at the analysed shapes; at run time it can be larger where the batch is
   * merged with the channels (B · heads), and then it does not hold the channels once.
   */
  tensors: (AxisSlice & { stacked?: boolean; entries?: number })[];
  /** Parameters and per-sample FLOPs (multiply-adds ×2) that removing every channel would save. */
  params: number;
  flops: number;
  /** Set by prune's roundTo: the group keeps a multiple of `step` channels, or all of them (budget's keepStep). */
  step?: number;
}

/**
 * Entries of a tensor along `axis` that belong to the group: channel c owns the `per` entries from
 * offset + c·per.
 */
export interface AxisSlice {
  tensor: string;
  axis: number;
  offset: number;
  per: number;
}

/**
 * A count that follows the group: entry `index` of the INT64 constant `tensor` (a Reshape shape), the INT attribute
 * `attribute` of `node` (a depthwise conv's group), or entry `index` of input `input` of `node`, which becomes a
 * Constant of its own (`values` before pruning; see ShapeEdit); it shrinks by `per` for every removed channel. A
 * `shared` constant is read by several nodes of the group (nn.MultiheadAttention's bsz · heads for the q, k and v
 * reshapes): recorded once per reader, it shrinks once.
 */
export type Edit =
  | { tensor: string; index: number; per: number; shared?: true }
  | { node: string; attribute: string; per: number }
  | { node: string; input: number; values: number[]; index: number; per: number };

/** One layer reading the group's channels: its input B restricted to them, and its weight rows for them. */
export interface Consumer {
  node: NodeProto;
  weight: string;
  layout: WeightLayout;
  /** Tensor name of the layer's data input: what capture records to build B. */
  input: string;
  /** 'conv': B's rows are im2col patches (geometry in `conv`); 'dense': B's rows are the input's rows. */
  kind: 'conv' | 'dense';
  /**
   * A dense layer's input shape at the analysis's input shapes (batch 1, or the model's own): where its batch and
   * token axes are, for leaving padding tokens out of its rows (capture's tokenRows).
   */
  inputDims?: number[];
  conv?: ConvGeometry;
  /** Where the group's channels start on the input's channel axis (entries) and the axis' total entries. */
  offset: number;
  entries: number;
  /** Columns of B per channel; d = n·g columns for the group; m outputs. */
  g: number;
  d: number;
  m: number;
  /** The group's first row in the layer's whole weight matrix (dTotal × m, see weightToMatrix). */
  row: number;
  dTotal: number;
}

export interface Refused {
  /** The candidate's first producer (or the layer that cannot be one). */
  node: string;
  /** Every producer of the refused channels, when more than one. */
  producers?: string[];
  reason: string;
}

/**
 * How a model output compares with another model's. With `classAxis`, the output holds class scores along that axis (a
 * layer's output channels, a Softmax's axis): compared per position by top-1 agreement and KL divergence. Without (a
 * map of one channel, a Sigmoid's independent probabilities, boxes next to scores, an upscaled image), by relative
 * error alone.
 */
export interface OutputAxis {
  name: string;
  classAxis?: number;
  /**
   * Why the output is not compared: 'integers' (labels, indices: they follow from the float outputs), or 'data-shaped'
   * (its shape depends on the values, after NonMaxSuppression, NonZero, ...: pruning may change it, so neither its
   * shape nor its values are compared; it is only checked to be finite).
   */
  uncompared?: 'integers' | 'data-shaped';
}

export interface Analysis {
  groups: Group[];
  refused: Refused[];
  /** The graph's outputs, in order, and how each compares (see OutputAxis). */
  outputs: OutputAxis[];
  /**
   * Bytes per sample of the groups' consumer inputs as float32: what a capture of every group fetches from each run
   * (captureBatch sizes the batches by it); undefined when a shape is unknown.
   */
  inputBytes?: number;
}
