import type { Kernels } from './types.js';
import { getKernels } from './instances.js';
import { gramAccumulate, productAccumulate } from './ops.js';
import { patchGrid, patchSize, planeDims, type ConvGeometry } from '../geometry.js';
import { ShiftGram } from './shift-gram.js';

/**
 * What the greedy needs from the calibration activations: G = BᵀB, and for the asymmetric objective C = BᵀA and
 * H = AᵀA.
 */
export interface Gram {
  d: number;
  rows: number;
  G: Float64Array;
  C?: Float64Array;
  H?: Float64Array;
  /** Bᵀ1 and, asymmetric, Aᵀ1: the column sums, what the intercept column adds to G and C (DESIGN.md). */
  sums?: Float64Array;
  targetSums?: Float64Array;
  /**
   * Asymmetric, projected on the consumer's weights W (d×m) instead of C and H: CW = BᵀA W, ‖A W‖² and Wᵀ
   * Aᵀ1, all the greedy and the re-fit need of C, H and Aᵀ1, at 2·d·m multiply-adds a row instead of 1.5·d²
   * (DESIGN.md).
   */
  CW?: Float64Array;
  targetNorm2?: number;
  targetSumsW?: Float64Array;
}

export type { ConvGeometry } from '../geometry.js';

const CHUNK_BYTES = 4 << 20;

/**
 * Rows are added to G every FLUSH_SAMPLES samples (and when a chunk is full), however many samples each call brings:
 * the sums are the same, bit for bit, for any batch size of the runs that make the rows, and the parts of a capture
 * split at multiples of FLUSH_SAMPLES samples sum as one (shards.ts). Each addition reads and writes all of G, d²
 * values, so a batch of two ResNet-50 images would otherwise cost a pass over a 4608² G for 98 rows.
 */
export const FLUSH_SAMPLES = 64;
/** Bytes im2col may read past a sample and write past its patches (four entries at a time, assembly/index.ts). */
const SLACK = 16;

/**
 * Kernel memory of an accumulator for d columns (the row chunks and one conv sample's input and given target aside, a
 * few MiB); projected on m outputs (asymmetric only): G, CW, W, the target's column sums and squares and the chunk's
 * A·W; a Conv consumer's G from shifted inputs (ShiftGram): their products too.
 */
export function gramBytes(d: number, asymmetric = false, m?: number, conv?: ConvGeometry): number {
  const shift = conv && (!asymmetric || m !== undefined) ? ShiftGram.bytes(conv, d / patchSize(conv)) : 0;
  if (asymmetric && m !== undefined) {
    const rows = Math.floor(CHUNK_BYTES / (4 * d)) + 1;
    return 8 * d * d + 12 * d * m + 16 * m + 2 * CHUNK_BYTES + 12 * rows * m + 4 * 128 * (rows + 16 + m) + shift;
  }
  return (asymmetric ? 3 : 1) * 8 * d * d + (asymmetric ? 2 : 1) * CHUNK_BYTES + shift;
}

/** Whether an asymmetric capture projects on the weights (2·d·m multiply-adds a row), not on C and H (1.5·d²). */
export const projects = (d: number, m: number) => 4 * m < 3 * d;

/**
 * Streams batches of f32 rows (B, and the target A for the asymmetric objective) into Gram matrices held in the
 * kernels' memory. Only one chunk of rows (and one sample, for conv patches) is in kernel memory at a time.
 */
export class GramAccumulator {
  readonly d: number;
  readonly asymmetric: boolean;
  private readonly k: Kernels;
  // G, C, H; the packs of B and A; the column sums of B and A (f64, d each)
  private readonly p: { G: number; C: number; H: number; PB: number; PA: number; S: number; TS: number };
  private readonly mark: number;
  private buf?: { cap: number; B: number; A: number; sample: number; XB: number; XA: number };
  // a stride-1 Conv's G from its shifted inputs, not from the patches (decided at the first batch)
  private shift?: ShiftGram | null;
  private rows = 0;
  // rows in the buffers not yet added, and the rows left until the next FLUSH_SAMPLES boundary
  private filled = 0;
  private unitLeft = 0;
  // projected on W: CW, W in f32, the chunk's T = A·W (f64, then f32) and the packs of Aᵀ and of W or T; given T
  // (no W): CW and T's f32 rows and pack only. Both: T's column sums and squares (f64, m each).
  private readonly proj?: {
    m: number;
    CW: number;
    W: number;
    TS: number;
    TQ: number;
    T?: number;
    T32?: number;
    PAT?: number;
    PM: number;
  };

  /**
   * `project`: asymmetric only, the consumer's weights W (d×m, row-major) to project the target on: the result has
   * CW, targetNorm2 and targetSumsW instead of C, H and targetSums. Without W, the projected target T = A·W itself is
   * what add and addConv take in place of A (rows × m; a conv's output [b, m, OH, OW]), as the original model's
   * consumer output gives it.
   */
  constructor(
    d: number,
    opts: {
      asymmetric?: boolean;
      kernels?: Kernels;
      project?: { W?: Float64Array; m: number };
      /** false: a Conv's G from its patches even where shifts would be cheaper (the benchmark's baseline) */
      shift?: boolean;
    } = {},
  ) {
    this.d = d;
    this.asymmetric = opts.asymmetric ?? false;
    if (opts.shift === false) this.shift = null;
    const k = (this.k = opts.kernels ?? getKernels());
    const a = k.arena,
      dd = d * d * 8,
      asym = this.asymmetric,
      pr = asym ? opts.project : undefined;
    if (opts.project && !asym) throw new Error('GramAccumulator: only an asymmetric capture projects on W');
    if (pr?.W && pr.W.length !== d * pr.m)
      throw new RangeError(`projection W has ${pr.W.length} values, not ${d}×${pr.m}`);
    this.mark = a.mark();
    const pack = k.gramPackFloats(d) * 4;
    this.p = {
      G: a.alloc(dd),
      C: asym && !pr ? a.alloc(dd) : 0,
      H: asym && !pr ? a.alloc(dd) : 0,
      PB: a.alloc(pack),
      PA: asym && !pr ? a.alloc(pack) : 0,
      S: a.alloc(d * 8),
      TS: asym && !pr ? a.alloc(d * 8) : 0,
    };
    if (pr) {
      const m = pr.m;
      this.proj = {
        m,
        CW: a.alloc(d * m * 8),
        W: pr.W ? a.alloc(d * m * 4) : 0,
        TS: a.alloc(m * 8),
        TQ: a.alloc(m * 8),
        PM: a.alloc(k.gramPackFloats(m) * 4),
      };
      if (pr.W) a.f32(this.proj.W, d * m).set(pr.W);
    }
  }

  // Row buffers, sized on first use: a chunk, or FLUSH_SAMPLES samples' rows when fewer (a larger buffer would only be
  // cleared and never filled); a conv sample's patches must fit in one chunk. `sample`: a conv input sample's values;
  // `target`: a given target's (the conv's output sample, transposed into rows).
  private buffers(minRows: number, unitRows: number, sample = 0, target = 0) {
    if (!this.buf) {
      const a = this.k.arena,
        d = this.d,
        pr = this.proj,
        rowsA = this.asymmetric && !this.givenT;
      const cap = Math.max(minRows, Math.min(Math.floor(CHUNK_BYTES / (4 * d)), unitRows), 1);
      // im2col reads and writes up to 16 bytes past a sample and its patches (SLACK)
      this.buf = {
        cap,
        B: a.alloc(cap * d * 4 + SLACK),
        A: rowsA ? a.alloc(cap * d * 4 + SLACK) : 0,
        sample,
        XB: sample ? a.alloc(sample * 4 + SLACK) : 0,
        XA: sample && rowsA ? a.alloc(sample * 4 + SLACK) : target ? a.alloc(target * 4) : 0,
      };
      if (pr)
        Object.assign(pr, {
          T32: a.alloc(cap * pr.m * 4),
          ...(this.givenT ? {} : { T: a.alloc(cap * pr.m * 8), PAT: a.alloc(this.k.gramPackFloats(cap) * 4) }),
        });
    }
    if (this.buf.cap < minRows || this.buf.sample < sample)
      throw new Error('GramAccumulator: use either rows or conv patches of one geometry');
    return this.buf;
  }

  /** The target is given projected (T = A·W, m per row), not as A. */
  private get givenT(): boolean {
    return !!this.proj && !this.proj.W;
  }

  // `len`: the values A must have (T: m per row of B)
  private check(len: number, A?: Float32Array) {
    if (this.asymmetric !== (A !== undefined))
      throw new Error(
        this.asymmetric ? 'asymmetric Gram needs the target rows A' : 'symmetric Gram takes no target rows',
      );
    if (A && A.length !== len) throw new RangeError(`target batch has ${A.length} values, not ${len}`);
  }

  // Adds the nr rows now in the row buffers.
  private flush(nr: number) {
    const { d, k, p } = this,
      b = this.buf!;
    if (this.shift) {
      this.project(nr); // G, the sums and the rows come from the samples
      return;
    }
    gramAccumulate(k, b.B, d, 0, 0, nr, p.G, p.PB, 0);
    if (this.proj) this.project(nr);
    else if (this.asymmetric) {
      gramAccumulate(k, b.B, d, b.A, d, nr, p.C, p.PB, p.PA);
      gramAccumulate(k, b.A, d, 0, 0, nr, p.H, p.PA, 0);
      k.par('columnSums', { X: b.A, rows: nr, d, sums: p.TS, j0: 0, j1: d }, { work: nr * d });
    }
    k.par('columnSums', { X: b.B, rows: nr, d, sums: p.S, j0: 0, j1: d }, { work: nr * d });
    this.rows += nr;
  }

  // CW += Bᵀ T with T = A·W for the nr rows in the buffers, and T's column sums and squares in f64.
  private project(nr: number) {
    const { d, k } = this,
      b = this.buf!,
      pr = this.proj!,
      m = pr.m;
    if (this.givenT)
      k.par(
        'columnMoments',
        { X: pr.T32!, rows: nr, d: m, sums: pr.TS, squares: pr.TQ, j0: 0, j1: m },
        { work: nr * m },
      );
    else {
      k.zero(pr.T!, nr * m * 8);
      productAccumulate(k, b.A, nr, d, pr.W, m, pr.T!, pr.PAT!, pr.PM);
      const T = k.arena.f64(pr.T!, nr * m),
        sums = k.arena.f64(pr.TS, m),
        squares = k.arena.f64(pr.TQ, m);
      k.arena.f32(pr.T32!, nr * m).set(T); // rounded to f32 once for Bᵀ T; the sums and squares from the f64 values
      for (let r = 0; r < nr * m; r += m)
        for (let j = 0; j < m; j++) {
          const v = T[r + j]!;
          sums[j] += v;
          squares[j] += v * v;
        }
    }
    gramAccumulate(k, b.B, d, pr.T32!, m, nr, pr.CW, this.p.PB, pr.PM);
  }

  /**
   * Adds rows: B (rows×d, row-major) and, asymmetric only, A of the same shape (or T = A·W, rows×m). `samples`: how
   * many samples the rows come from, as many rows each (default: the call is FLUSH_SAMPLES samples' worth: its rows
   * are added when it ends). `keep`: one flag per row, 0 for a row left out (a padding token's); the sums are then
   * those of the kept rows alone, added at the same samples' boundaries.
   */
  add(B: Float32Array, A?: Float32Array, samples?: number, keep?: Uint8Array): void {
    const { d, k } = this;
    if (B.length % d !== 0)
      throw new RangeError(`activation batch of ${B.length} values is not a whole number of rows of ${d}`);
    const rows = B.length / d,
      a = this.givenT ? this.proj!.m : d;
    if (samples !== undefined && (samples < 1 || rows % samples !== 0))
      throw new RangeError(`${rows} rows do not come from ${samples} samples alike`);
    this.check(rows * a, A);
    const unit = samples ? (rows / samples) * FLUSH_SAMPLES : rows;
    if (!samples) this.unitLeft = 0;
    if (keep && keep.length !== rows) throw new RangeError(`${keep.length} row flags for ${rows} rows`);
    const buf = this.buffers(1, unit),
      into = this.givenT ? this.proj!.T32! : buf.A;
    for (let r0 = 0; r0 < rows;) {
      if (!this.unitLeft) this.unitLeft = unit;
      // up to the buffer's end or the next FLUSH_SAMPLES boundary
      const r1 = Math.min(rows, r0 + buf.cap - this.filled, r0 + this.unitLeft);
      // the kept rows, a run [s, e) at a time
      for (let s = r0; s < r1;) {
        let e = s;
        while (e < r1 && (!keep || keep[e])) e++;
        const at = this.filled;
        k.arena.f32(buf.B + at * d * 4, (e - s) * d).set(B.subarray(s * d, e * d));
        if (A) k.arena.f32(into + at * a * 4, (e - s) * a).set(A.subarray(s * a, e * a));
        this.filled += e - s;
        for (s = e; s < r1 && !keep![s];) s++;
      }
      this.unitLeft -= r1 - r0;
      if (this.filled === buf.cap || !this.unitLeft) this.flushFilled();
      r0 = r1;
    }
  }

  // Adds the rows waiting in the buffers.
  private flushFilled() {
    if (this.filled) this.flush(this.filled);
    this.filled = 0;
  }

  /**
   * Adds the im2col patches of a batch of Conv inputs B (dims [b, C, H, W], or a 1-D Conv's [b, C, L]; A likewise), a
   * row per output position; a given T is the conv's output without bias, [b, m, OH, OW] (or [b, m, OL]).
   */
  addConv(B: Float32Array, dims: number[], conv: ConvGeometry, A?: Float32Array): void {
    const { d, k } = this;
    const [b, C, H, W] = planeDims(dims);
    const {
      kernel: [kh, kw],
      strides: [sh, sw],
      pads: [pt, pl],
      dilations: [dh, dw],
    } = conv;
    if (C * kh * kw !== d || B.length !== b * C * H * W) {
      throw new RangeError(`conv input [${dims}] with a ${kh}×${kw} kernel does not make patches of ${d} columns`);
    }
    const [OH, OW] = patchGrid(conv, H, W);
    const per = OH * OW,
      size = C * H * W,
      m = this.proj?.m ?? 0,
      given = this.givenT;
    this.check(given ? b * m * per : B.length, A);
    // G from shifts wherever G is BᵀB alone (not C and H from the patches of A too)
    if (this.shift === undefined)
      this.shift =
        (!this.asymmetric || this.proj) && ShiftGram.suits(conv, H, W)
          ? new ShiftGram(k, C, H, W, conv, this.p.G, FLUSH_SAMPLES)
          : null;
    if (this.shift && !this.shift.takes(C, H, W))
      throw new Error('GramAccumulator: use either rows or conv patches of one geometry');
    const sums = this.shift && k.arena.f64(this.p.S, d);
    if (this.shift) {
      this.shift.add(B, b, sums!);
      this.rows += b * per;
    }
    if (this.shift && !this.proj) return; // no patches needed
    const buf = this.buffers(per, FLUSH_SAMPLES * per, size, given ? m * per : 0);
    for (let s = 0; s < b; s++) {
      if (this.filled + per > buf.cap) this.flushFilled();
      const filled = this.filled,
        off = filled * d * 4;
      k.arena.f32(buf.XB, size).set(B.subarray(s * size, (s + 1) * size));
      k.im2col(buf.XB, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, buf.B + off);
      if (A && given) {
        // the sample's [m, OH·OW] as its rows' [OH·OW, m]
        k.arena.f32(buf.XA, m * per).set(A.subarray(s * m * per, (s + 1) * m * per));
        k.transpose(buf.XA, m, per, this.proj!.T32! + filled * m * 4);
      } else if (A) {
        k.arena.f32(buf.XA, size).set(A.subarray(s * size, (s + 1) * size));
        k.im2col(buf.XA, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, buf.A + off);
      }
      this.filled += per;
      this.unitLeft = (this.unitLeft || FLUSH_SAMPLES * per) - per;
      if (!this.unitLeft) this.flushFilled();
    }
  }

  /** Frees the kernel memory (with everything allocated after it). */
  release(): void {
    this.k.arena.release(this.mark);
  }

  /** The accumulated matrices, copied out of kernel memory. */
  result(): Gram {
    this.flushFilled();
    const { d, k, p } = this,
      dd = d * d;
    this.shift?.finish(k.arena.f64(p.S, d));
    if (!this.shift) k.symmetrize(p.G, d);
    const G = this.shift ? this.shift.result() : k.arena.f64(p.G, dd).slice();
    const out: Gram = { d, rows: this.rows, G, sums: k.arena.f64(p.S, d).slice() };
    if (this.proj) {
      const m = this.proj.m;
      out.CW = k.arena.f64(this.proj.CW, d * m).slice();
      out.targetNorm2 = k.arena.f64(this.proj.TQ, m).reduce((a, x) => a + x, 0);
      out.targetSumsW = k.arena.f64(this.proj.TS, m).slice();
    } else if (this.asymmetric) {
      k.symmetrize(p.H, d);
      out.C = k.arena.f64(p.C, dd).slice();
      out.H = k.arena.f64(p.H, dd).slice();
      out.targetSums = k.arena.f64(p.TS, d).slice();
    }
    return out;
  }
}
