import type { Kernels } from './types.js';
import { patchGrid, type ConvGeometry } from '../geometry.js';

/**
 * G = BᵀB of a stride-1 Conv's im2col patches, without making the patches. G's block for kernel taps a and b is
 * Σ_p x̃[p+a] x̃[p+b]ᵀ over the output positions p (x̃: the zero-padded input, a C-vector per
 * position). With u = p + a and δ = b − a it is F_δ − D_ab: F_δ = Σ_u x[u] x[u+δ]ᵀ over every input
 * position u, one product of the input with itself shifted by δ, less D_ab, the same sum over the positions that
 * tap a's windows do not reach (a few rows and columns at the borders). The (kh·kw)² blocks then cost
 * (kh−1)(2kw−1)+kw products over the input instead of (kh·kw)²/2 over the patches: 13 against 40.5 for 3×3.
 *
 * The input sits in kernel memory as rows of C (NHWC), each image row followed by kw−1 zero rows and each image
 * by kh−1 image rows of zeros: a shift by δ is an offset of δy·Wp + δx rows (Wp = W + kw − 1) that never wraps
 * into another image row nor reaches the next image, so each F_δ is the product of two ranges of rows of one buffer,
 * over as many samples as SAMPLE_BYTES holds at once (ResNet-20's 32×32×16 input: 8). One sample at a time, each
 * call's fixed cost added up: the default prune of ResNet-20 at 4× took 23.5–23.9 s, and 21.6–21.7 s with 14 at a
 * time.
 */
const SAMPLE_BYTES = 1 << 20;

export class ShiftGram {
  private readonly taps: number;
  private readonly Wp: number;
  /** The shifts b − a of taps a ≤ b (row-major tap order) as row offsets: δy ≥ 0; δx ≥ 0 if δy = 0. */
  private readonly offsets: number[];
  private readonly shiftOf: (a: number, b: number) => number;
  /** Per tap, the buffer rows of the input positions its windows do not reach, in one sample. */
  private readonly outside: Int32Array[];
  /** Buffer rows per sample: an image and the zero rows after it. */
  private readonly period: number;
  /**
   * Samples per product: as many as SAMPLE_BYTES holds, a power of two up to `group`, so that the products
   * group the samples by their index alone, whatever the batches that bring them (GramAccumulator's sums are the
   * same, bit for bit, for any batch size, and shards cut at multiples of its FLUSH_SAMPLES sum as one).
   */
  private readonly many: number;
  /** Samples in the buffer, not yet in G. */
  private pending = 0;
  private readonly p: { F: number; X: number; XT: number; PX: number; PY: number; EX: number; EY: number; S: number };
  /** Per tap, `outside` in every sample of the buffer (i32 in kernel memory). */
  private readonly idx: number[];

  /** Whether a Conv's G is cheaper this way for an H×W input (stride and dilation 1, and few shifts per tap pair). */
  static suits(conv: ConvGeometry, H: number, W: number): boolean {
    if (!shiftable(conv)) return false;
    const [kh, kw] = conv.kernel,
      K = kh * kw,
      [OH, OW] = patchGrid(conv, H, W);
    if (OH < 1 || OW < 1) return false;
    const rows = outsideRows(conv, H, W).reduce((s, e, a) => s + e.length * (K - a), 0);
    return 1.8 * (shifts(conv) * H * (W + kw - 1) + rows) < (OH * OW * K * K) / 2;
  }

  /** Kernel memory for the products F_δ of C channels (the sample and row buffers aside). */
  static bytes(conv: ConvGeometry, C: number): number {
    return shiftable(conv) ? shifts(conv) * C * C * 8 : 0;
  }

  /**
   * `Gp`: d×d f64 of zeros in kernel memory (d = C·kh·kw), where the corrections D accumulate by tap pair
   * (block a, b at rows a·C, columns b·C). `group`: the samples' count the products' groups divide (a power of two).
   */
  constructor(
    private readonly k: Kernels,
    private readonly C: number,
    private readonly H: number,
    private readonly W: number,
    private readonly conv: ConvGeometry,
    private readonly Gp: number,
    group: number,
  ) {
    const [kh, kw] = conv.kernel,
      Wp = (this.Wp = W + kw - 1),
      a = k.arena;
    this.taps = kh * kw;
    const index = new Map<number, number>();
    this.offsets = [];
    for (let dy = 0; dy < kh; dy++)
      for (let dx = dy ? 1 - kw : 0; dx < kw; dx++) {
        index.set(dy * Wp + dx, this.offsets.length);
        this.offsets.push(dy * Wp + dx);
      }
    this.shiftOf = (ta, tb) => index.get((Math.floor(tb / kw) - Math.floor(ta / kw)) * Wp + (tb % kw) - (ta % kw))!;
    this.period = (H + kh - 1) * Wp;
    this.many = Math.min(group, 2 ** Math.floor(Math.log2(Math.max(1, SAMPLE_BYTES / (this.period * C * 4)))));
    this.outside = outsideRows(conv, H, W).map((rows) => Int32Array.from(rows, ([y, x]) => y * Wp + x));
    const most = this.many * Math.max(1, ...this.outside.map((e) => e.length)),
      pack = k.gramPackFloats(C) * 4;
    this.p = {
      F: a.alloc(this.offsets.length * C * C * 8),
      // the last sample's shifted rows reach kw − 1 rows past its period
      X: a.alloc((this.many * this.period + kw) * C * 4),
      XT: a.alloc(2 * H * W * C * 4), // a sample, then its transpose
      PX: a.alloc(pack),
      PY: a.alloc(pack),
      EX: a.alloc(most * C * 4),
      EY: a.alloc(most * C * 4),
      S: a.alloc(C * 8),
    };
    this.idx = this.outside.map((E) => {
      const at = a.alloc(this.many * E.length * 4),
        rows = new Int32Array(a.memory.buffer, at, this.many * E.length);
      for (let s = 0; s < this.many; s++)
        for (const [i, r] of E.entries()) rows[s * E.length + i] = s * this.period + r;
      return at;
    });
  }

  /** Whether a batch of [C, H, W] samples is of this geometry. */
  takes(C: number, H: number, W: number): boolean {
    return C === this.C && H === this.H && W === this.W;
  }

  /**
   * Adds `n` samples ([n, C, H, W]) to G, and their patches' column sums to `sums` (d, channel-major: c·kh·kw + tap),
   * once the buffer is full (finish() adds the rest).
   */
  add(samples: Float32Array, n: number, sums: Float64Array): void {
    const { k, C, H, W, p, period, Wp } = this,
      size = C * H * W;
    for (let s = 0; s < n; s++) {
      // the sample as rows of C (a kernel transpose), each image row into its place
      k.arena.f32(p.XT, size).set(samples.subarray(s * size, (s + 1) * size));
      k.transpose(p.XT, C, H * W, p.XT + size * 4);
      const rows = k.arena.f32(p.XT + size * 4, size),
        X = k.arena.f32(p.X + this.pending * period * C * 4, period * C);
      for (let y = 0; y < H; y++) X.set(rows.subarray(y * W * C, (y + 1) * W * C), y * Wp * C);
      if (++this.pending === this.many) this.finish(sums);
    }
  }

  /** Adds the samples in the buffer to G and `sums`. */
  finish(sums: Float64Array): void {
    const { k, C, p, taps, period } = this,
      n = this.pending;
    if (!n) return;
    this.pending = 0;
    this.shifted(n);
    // a tap's column sums are the channels' totals less its outside rows' (D keeps the outside products, which
    // result() subtracts)
    const S = k.arena.f64(p.S, C);
    S.fill(0);
    k.columnSums(p.X, n * period, C, p.S, 0, C);
    const total = S.slice();
    for (let a = 0; a < taps; a++) {
      const e = n * this.outside[a]!.length;
      if (!e) {
        for (let c = 0; c < C; c++) sums[c * taps + a] += total[c]!;
        continue;
      }
      k.gatherRows(p.X, C, this.idx[a]!, e, 0, p.EX);
      k.arena.f64(p.S, C).fill(0);
      k.columnSums(p.EX, e, C, p.S, 0, C);
      const out = k.arena.f64(p.S, C);
      for (let c = 0; c < C; c++) sums[c * taps + a] += total[c]! - out[c]!;
      for (let b = a; b < taps; b++) {
        k.gatherRows(p.X, C, this.idx[a]!, e, this.offsets[this.shiftOf(a, b)]!, p.EY);
        this.cross(p.EX, p.EY, e, this.Gp + (a * C * C * taps + b * C) * 8, C * taps);
      }
    }
  }

  // F_i += Xᵀ X shifted by offsets[i], over the rows of the n images (δ = 0: the upper triangle)
  private shifted(samples: number) {
    const { k, C, p } = this,
      RB = k.gramRows(),
      panels = k.gramPanels(C),
      X = p.X,
      n = (samples - 1) * this.period + this.H * this.Wp;
    for (let r0 = 0; r0 < n; r0 += RB) {
      const rb = Math.min(RB, n - r0);
      k.par('gramPack', { X, ld: C, r0, rb, d: C, P: p.PX, p0: 0, p1: panels }, { work: rb * C });
      this.offsets.forEach((off, i) => {
        const upper = off ? 0 : 1;
        if (off) {
          const Y = X + off * C * 4;
          k.par('gramPack', { X: Y, ld: C, r0, rb, d: C, P: p.PY, p0: 0, p1: panels }, { work: rb * C });
        }
        const F = p.F + i * C * C * 8,
          tiles = { PA: p.PX, da: C, PB: off ? p.PY : p.PX, db: C, rb, C: F, ldc: C, upper, i0: 0, i1: C };
        k.par('gramTiles', tiles, { work: (rb * C * C) / (1 + upper), cost: (r) => (upper ? C - r : C) });
      });
    }
  }

  // out (rows ldc apart) += EXᵀ EY over n gathered rows
  private cross(EX: number, EY: number, n: number, out: number, ldc: number) {
    const { k, C, p } = this,
      RB = k.gramRows(),
      panels = k.gramPanels(C);
    for (let r0 = 0; r0 < n; r0 += RB) {
      const rb = Math.min(RB, n - r0);
      k.par('gramPack', { X: EX, ld: C, r0, rb, d: C, P: p.PX, p0: 0, p1: panels }, { work: rb * C });
      k.par('gramPack', { X: EY, ld: C, r0, rb, d: C, P: p.PY, p0: 0, p1: panels }, { work: rb * C });
      const tiles = { PA: p.PX, da: C, PB: p.PY, db: C, rb, C: out, ldc, upper: 0, i0: 0, i1: C };
      k.par('gramTiles', tiles, { work: rb * C * C });
    }
  }

  /** G (d×d, channel-major: column c·kh·kw + tap, symmetric): F_{b−a} − D_ab for every tap pair. */
  result(): Float64Array {
    const { k, C, taps, p } = this,
      d = C * taps,
      G = new Float64Array(d * d),
      F = k.arena.f64(p.F, this.offsets.length * C * C),
      D = k.arena.f64(this.Gp, d * d);
    for (let a = 0; a < taps; a++)
      for (let b = a; b < taps; b++) {
        const i = this.shiftOf(a, b),
          f = i * C * C,
          sym = this.offsets[i] === 0;
        for (let c = 0; c < C; c++)
          for (let c2 = 0; c2 < C; c2++) {
            // F_0 holds its upper triangle only
            const fv = sym && c2 < c ? F[f + c2 * C + c]! : F[f + c * C + c2]!,
              v = fv - D[(a * C + c) * d + b * C + c2]!;
            G[(c * taps + a) * d + c2 * taps + b] = v;
            G[(c2 * taps + b) * d + c * taps + a] = v;
          }
      }
    return G;
  }
}

const shiftable = (conv: ConvGeometry) => {
  const [kh, kw] = conv.kernel;
  return (
    conv.strides.every((s) => s === 1) && conv.dilations.every((s) => s === 1) && 4 * shifts(conv) <= kh * kw * kh * kw
  );
};

/** How many products F_δ a kernel needs: the shifts b − a of taps a ≤ b. */
const shifts = (conv: ConvGeometry) => (conv.kernel[0] - 1) * (2 * conv.kernel[1] - 1) + conv.kernel[1];

/** Per tap (row-major), the input positions [y, x] that none of its windows reach. */
function outsideRows(conv: ConvGeometry, H: number, W: number): [number, number][][] {
  const [kh, kw] = conv.kernel,
    [pt, pl] = conv.pads,
    [OH, OW] = patchGrid(conv, H, W),
    out: [number, number][][] = [];
  for (let ay = 0; ay < kh; ay++)
    for (let ax = 0; ax < kw; ax++) {
      const [y0, x0] = [ay - pt, ax - pl],
        rows: [number, number][] = [];
      for (let y = 0; y < H; y++)
        for (let x = 0; x < W; x++) if (y < y0 || y >= y0 + OH || x < x0 || x >= x0 + OW) rows.push([y, x]);
      out.push(rows);
    }
  return out;
}
