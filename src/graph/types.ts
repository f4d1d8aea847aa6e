import type { NodeProto } from '../onnx/index.js';
import type { ConvGeometry } from '../geometry.js';
import type { ParamSlice, ShapeEdit } from './ops.js';
import type { WeightLayout } from './layers.js';

/**
 * A prunable unit: producer (Conv/Gemm/MatMul with a constant weight) → ops that act per channel → one consumer
 * (Conv/Gemm/MatMul with a constant weight). Pruning keeps a subset of the producer's output channels.
 */
export interface Unit {
  /** The producer node's name (unique; unnamed nodes get a generated name written back into the graph). */
  id: string;
  producer: NodeProto;
  /** Producer weight initializer and its bias initializer, if any. */
  weight: string;
  bias?: string;
  /** Producer output channels n. */
  channels: number;
  /**
   * Columns of the consumer input owned by one channel: kh·kw for a Conv consumer, h·w after a Flatten, 1 for
   * dense→dense.
   */
  g: number;
  /** The per-channel ops between producer and consumer, in graph order. */
  chain: NodeProto[];
  consumer: NodeProto;
  consumerWeight: string;
  /** Tensor name of the consumer's data input: what capture records to build B. */
  consumerInput: string;
  /** 'conv': B rows are the consumer's im2col patches; 'dense': B rows are the input rows (flattened to d). */
  consumerKind: 'conv' | 'dense';
  /** For a Conv consumer: its kernel [kh, kw], strides, pads [top, left, bottom, right], dilations. */
  conv?: ConvGeometry;
  /** d = channels·g, m = consumer output features (Conv: output channels). */
  d: number;
  m: number;
  /**
   * Parameters of producer, chain and consumer that depend on the channel count, and per-sample FLOPs (multiply-adds
   * ×2).
   */
  params: number;
  flops: number;
  /** How the consumer weight maps to the d×m matrix W (see consumerWeightMatrix). */
  consumerLayout: WeightLayout;
  /**
   * Every constant sliced along the producer's channels: producer weight (output axis), bias, per-channel chain
   * parameters.
   */
  slices: ParamSlice[];
  /** Reshape shape constants whose feature count follows the kept channels. */
  shapeEdits: ShapeEdit[];
}

export interface Refused {
  /** The candidate producer node's name. */
  node: string;
  reason: string;
}

export interface Analysis {
  units: Unit[];
  refused: Refused[];
}
