// Per-channel statistics of a consumer's input (the group's part of it), streamed next to the Gram accumulation: what
// the activation-norm and sampling (PFP) baselines rank by. Plain TypeScript; the Gram kernels are not involved.
import { internal } from '../errors.js';
import type { Consumer } from '../graph/types.js';
import type { Gram } from '../kernels/gram.js';
import { patchGrid, planar, planeDims, unfoldDepth, type ConvGeometry } from '../geometry.js';

export interface ChannelStats {
  /** Mean |x| of each channel's entries of the consumer input over the calibration set. */
  absMean?: Float64Array;
  /**
   * PFP's empirical sensitivity (Liebenwein et al., ICLR 2020): for each channel, the largest share it has of any
   * consumer pre-activation (bias aside), over every calibration sample and output position, with the consumer's
   * positive and negative weights taken separately and a signed input split into its positive and negative parts.
   */
  sensitivity?: Float64Array;
}

export interface StatsWanted {
  absMean?: boolean;
  sensitivity?: boolean;
}

/** What captureGrams returns per consumer of a group: the Gram matrices, and the channel statistics when asked for. */
export type Captured = Gram & { stats?: ChannelStats };

export class ChannelStatsAccumulator {
  private readonly n: number;
  private readonly abs: Float64Array;
  private count = 0;
  private readonly sens?: Float64Array;
  private readonly Wp?: Float64Array;
  private readonly Wn?: Float64Array;

  /** n: the group's channels; W: the consumer's d×m weights (consumerWeightMatrix), for the sensitivity only. */
  constructor(
    private readonly consumer: Consumer,
    n: number,
    private readonly want: StatsWanted,
    W?: Float64Array,
  ) {
    this.n = n;
    this.abs = new Float64Array(this.n);
    if (want.sensitivity) {
      if (!W || W.length !== consumer.d * consumer.m)
        throw internal(`sensitivity of ${consumer.node.name} needs its ${consumer.d}×${consumer.m} weights`);
      this.sens = new Float64Array(this.n);
      this.Wp = W.map((w) => Math.max(w, 0));
      this.Wn = W.map((w) => Math.max(-w, 0));
    }
  }

  /** One batch of the consumer input: [b, C, H, W] (or [b, C, L]) for a Conv consumer, rows of d values otherwise. */
  add(x: Float32Array, dims: number[]): void {
    const { consumer: c, n } = this;
    if (c.kind === 'conv') {
      const [b, C] = dims as [number, number],
        hw = dims.slice(2).reduce((a, e) => a * e, 1),
        per = C / n; // input channels per group channel
      for (let s = 0; s < b; s++)
        for (let c = 0; c < C; c++) {
          let t = 0;
          const o = (s * C + c) * hw;
          for (let i = 0; i < hw; i++) t += Math.abs(x[o + i]);
          this.abs[Math.floor(c / per)] += t / hw / per;
        }
      this.count += b;
      if (this.sens) {
        // a 3-D Conv's patches are its planes', of the input unfolded along depth
        const depth = c.conv!.depth,
          u = depth ? unfoldDepth({ data: x, dims }, depth) : { data: x, dims },
          [bu, Cu, H, W] = planeDims(u.dims),
          size = Cu * H * W,
          row = new Float64Array(c.d);
        for (let s = 0; s < bu; s++)
          forEachPatch(u.data.subarray(s * size, (s + 1) * size), Cu, H, W, planar(c.conv!), row, () =>
            this.addRow(row),
          );
      }
    } else {
      const { d, g } = c,
        rows = x.length / d,
        row = new Float64Array(d);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < n; c++) {
          let t = 0;
          for (let a = 0; a < g; a++) t += Math.abs(x[r * d + c * g + a]);
          this.abs[c] += t / g;
        }
        if (this.sens) {
          for (let i = 0; i < d; i++) row[i] = x[r * d + i];
          this.addRow(row);
        }
      }
      this.count += rows;
    }
  }

  // PFP treats the positive and negative parts of a signed input as two points, so every share is non-negative.
  private addRow(row: Float64Array): void {
    let neg = false;
    for (let i = 0; i < row.length; i++)
      if (row[i] < 0) {
        neg = true;
        break;
      }
    if (!neg) {
      this.addPart(row);
      return;
    }
    this.addPart(row.map((v) => Math.max(v, 0)));
    this.addPart(row.map((v) => Math.max(-v, 0)));
  }

  /**
   * Shares of one non-negative input a: a_f·W±[f,i] / Σ_f' a_f'·W±[f',i], maxed over outputs i into f's
   * channel.
   */
  private addPart(a: Float64Array): void {
    const { d, m, g } = this.consumer,
      Wp = this.Wp!,
      Wn = this.Wn!,
      sens = this.sens!;
    const zp = new Float64Array(m),
      zn = new Float64Array(m);
    for (let f = 0; f < d; f++) {
      const v = a[f];
      if (v === 0) continue;
      for (let i = 0, o = f * m; i < m; i++) {
        zp[i] += v * Wp[o + i];
        zn[i] += v * Wn[o + i];
      }
    }
    const eps = 1.1920929e-7; // float32 epsilon, as in PFP: a vanishing pre-activation has no shares
    for (let i = 0; i < m; i++) {
      zp[i] = zp[i] > eps ? 1 / zp[i] : 0;
      zn[i] = zn[i] > eps ? 1 / zn[i] : 0;
    }
    for (let f = 0; f < d; f++) {
      const v = a[f];
      if (v === 0) continue;
      let best = 0;
      for (let i = 0, o = f * m; i < m; i++) best = Math.max(best, Wp[o + i] * zp[i], Wn[o + i] * zn[i]);
      const c = (f / g) | 0;
      if (v * best > sens[c]) sens[c] = v * best;
    }
  }

  result(): ChannelStats {
    return {
      ...(this.want.absMean ? { absMean: this.abs.map((t) => t / Math.max(1, this.count)) } : {}),
      ...(this.sens ? { sensitivity: this.sens.slice() } : {}),
    };
  }
}

/**
 * Calls `visit` once per output position of a Conv consumer, with that position's patch in `row` (channel-major, zero
 * padding).
 */
function forEachPatch(
  x: Float32Array,
  C: number,
  H: number,
  W: number,
  conv: ConvGeometry,
  row: Float64Array,
  visit: () => void,
): void {
  const {
    kernel: [kh, kw],
    strides: [sh, sw],
    pads: [pt, pl],
    dilations: [dh, dw],
  } = conv;
  const [OH, OW] = patchGrid(conv, H, W);
  for (let oh = 0; oh < OH; oh++)
    for (let ow = 0; ow < OW; ow++) {
      let f = 0;
      for (let c = 0; c < C; c++)
        for (let i = 0; i < kh; i++)
          for (let j = 0; j < kw; j++) {
            const y = oh * sh - pt + i * dh,
              z = ow * sw - pl + j * dw;
            row[f++] = y >= 0 && y < H && z >= 0 && z < W ? x[(c * H + y) * W + z] : 0;
          }
      visit();
    }
}
