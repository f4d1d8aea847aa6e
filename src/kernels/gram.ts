import type { Kernels } from './types.js';
import { wasmKernels } from './wasm.js';

/** What the greedy needs from the calibration activations: G = BᵀB, and for the asymmetric objective C = BᵀA, H = AᵀA. */
export interface Gram {
  d: number;
  rows: number;
  G: Float64Array;
  C?: Float64Array;
  H?: Float64Array;
}

const CHUNK_BYTES = 16 << 20;

/**
 * Streams batches of f32 rows (B, and the target A for the asymmetric objective) into Gram matrices held in the
 * kernels' memory. Only one chunk of rows is in kernel memory at a time.
 */
export class GramAccumulator {
  readonly d: number;
  readonly asymmetric: boolean;
  private readonly k: Kernels;
  private readonly cap: number;
  private readonly p: { G: number; C: number; H: number; B: number; A: number; PB: number; PA: number };
  private rows = 0;

  constructor(d: number, opts: { asymmetric?: boolean; kernels?: Kernels } = {}) {
    this.d = d;
    this.asymmetric = opts.asymmetric ?? false;
    const k = (this.k = opts.kernels ?? wasmKernels());
    const a = k.arena, dd = d * d * 8, asym = this.asymmetric;
    this.cap = Math.max(1, Math.floor(CHUNK_BYTES / (4 * d)));
    const pack = (k.gramPackFloats(d) + 32) * 4;
    this.p = {
      G: a.alloc(dd), C: asym ? a.alloc(dd) : 0, H: asym ? a.alloc(dd) : 0,
      B: a.alloc(this.cap * d * 4), A: asym ? a.alloc(this.cap * d * 4) : 0,
      PB: a.alloc(pack), PA: asym ? a.alloc(pack) : 0,
    };
  }

  /** Adds rows: B (rows×d, row-major) and, asymmetric only, A of the same shape. */
  add(B: Float32Array, A?: Float32Array): void {
    const { d, k, p } = this;
    if (B.length % d !== 0) throw new RangeError(`activation batch of ${B.length} values is not a whole number of rows of ${d}`);
    if (this.asymmetric !== (A !== undefined)) throw new Error(this.asymmetric ? 'asymmetric Gram needs the target rows A' : 'symmetric Gram takes no target rows');
    if (A && A.length !== B.length) throw new RangeError(`target batch has ${A.length} values, activations ${B.length}`);
    const rows = B.length / d;
    for (let r0 = 0; r0 < rows; r0 += this.cap) {
      const r1 = Math.min(rows, r0 + this.cap), nr = r1 - r0;
      k.arena.f32(p.B, nr * d).set(B.subarray(r0 * d, r1 * d));
      k.gram(p.B, nr, d, p.G, p.PB);
      if (A) {
        k.arena.f32(p.A, nr * d).set(A.subarray(r0 * d, r1 * d));
        k.gramCross(p.B, d, p.A, d, nr, p.C, p.PB, p.PA);
        k.gram(p.A, nr, d, p.H, p.PA);
      }
    }
    this.rows += rows;
  }

  /** The accumulated matrices, copied out of kernel memory. */
  result(): Gram {
    const { d, k, p } = this, dd = d * d;
    k.symmetrize(p.G, d);
    const out: Gram = { d, rows: this.rows, G: k.arena.f64(p.G, dd).slice() };
    if (this.asymmetric) {
      k.symmetrize(p.H, d);
      out.C = k.arena.f64(p.C, dd).slice();
      out.H = k.arena.f64(p.H, dd).slice();
    }
    return out;
  }
}
