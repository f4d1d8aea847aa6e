import type { Kernels } from '../kernels/types.js';
import { getKernels } from '../kernels/instances.js';
import { gemm } from '../kernels/ops.js';
import { badInput, internal } from '../errors.js';
import { fmtBytes, KERNEL_BYTES } from '../kernels/memory.js';
import { gramBytes } from '../kernels/gram.js';
import type { KernelOptions } from '../kernels/instances.js';

/**
 * One layer's selection problem in Gram space (DESIGN.md). d = n·g columns of the consumer input B, channel c owning
 * columns c·g .. c·g+g−1; W is the consumer's d×m weight matrix (consumer output = B W, bias aside).
 */
export interface LayerProblem {
  d: number;
  m: number;
  /** Columns per channel. */
  g: number;
  /** BᵀB, d×d. */
  G: Float64Array;
  /** BᵀA for the asymmetric objective (A: the original model's input); absent: A = B. */
  C?: Float64Array;
  /** AᵀA, used for ‖AW‖² when C is given and targetNorm2 is not. */
  H?: Float64Array;
  /** ‖AW‖², when known; otherwise computed from G (symmetric) or H. */
  targetNorm2?: number;
  /** d×m, row-major. */
  W: Float64Array;
}

export interface SelectOptions extends KernelOptions {
  /** A column whose residual falls to tol × its original norm² is taken as dependent (gain 0). */
  tol?: number;
  /**
   * Take the channels in this order instead of the greedy's choice (a baseline's ranking): the objective per step and
   * the re-fit then come from the same factorisation.
   */
  order?: number[];
  /** Called after each chosen channel (for progress bars). */
  onStep?: (done: number, k: number) => void;
}

export interface Refit {
  /** Kept channels, ascending. */
  keep: number[];
  /** Re-fitted consumer weights: keep.length·g rows (each kept channel's g columns in order) × m. */
  W: Float64Array;
}

export interface Selection {
  /** Channels in the order the greedy chose them. */
  order: number[];
  /** objective[i]: 1 − relative error of the consumer input after keeping order[0..i]. */
  objective: number[];
  /**
   * Least-squares weights for the first p channels of `order` (any p ≤ order.length), without re-running the greedy.
   */
  refit(p: number): Refit;
  /** ‖AW‖², the normaliser of the objective. */
  norm2: number;
  seconds: { setup: number; greedy: number };
}

export const DEFAULT_TOL = 1e-9;

const now = () => performance.now() / 1000;

/** Bytes of kernel memory a selection needs (d columns, m outputs, group size g, k channels). */
export function selectionBytes(d: number, m: number, g: number, k: number): number {
  const t = Math.max(1, k * g),
    n = d / g;
  return (
    8 * (d * d + d * m + n * g * g + 6 * d + m + n + d * t + t * t + t * m) +
    4 * (n + d) +
    8 * (d * m + d * d) +
    (1 << 20)
  );
}

/** Why a layer cannot be selected at all: its Gram matrix or a one-channel selection does not fit kernel memory. */
export function tooBigToSelect(u: { d: number; m: number; g: number }): string | undefined {
  const need = Math.max(gramBytes(u.d), selectionBytes(u.d, u.m, u.g, 1));
  if (need <= KERNEL_BYTES) return undefined;
  const what = `the ${u.d}×${u.d} Gram matrix and the selection need ${fmtBytes(need)} of kernel memory`;
  return `its consumer input has d = ${u.d} columns: ${what}, more than WebAssembly's 4 GiB`;
}

/**
 * The least-squares re-fit of a unit needs at least as many rows of its consumer input as columns (d): with fewer, any
 * of infinitely many weights fit the calibration data exactly, and the one the factorisation picks can be wildly off on
 * other data (LeNet re-fitted from 128 samples, every channel kept: relative output error 346 on the test set).
 * Repeated samples add no rows, so rows count in proportion to the distinct samples.
 */
export function checkRefitRows(unit: { id: string; d: number }, rows: number, samples: number, distinct = samples) {
  const effective = Math.floor((rows * distinct) / samples);
  if (effective >= unit.d) return;
  const need = Math.ceil((unit.d * samples) / Math.max(rows, 1));
  const given =
    distinct < samples ? `${samples} calibration samples (${distinct} distinct)` : `${samples} calibration samples`;
  const why =
    `fewer than its d = ${unit.d} columns, so the least-squares re-fit is underdetermined ` +
    '(it would fit these samples and fail on others)';
  const fix = `give at least ${need} distinct samples, or use --no-refit`;
  throw badInput(`unit ${unit.id}: the ${given} give ${effective} rows of its consumer input, ${why}; ${fix}`);
}

/** Greedy selection of k channels (the paper's Algorithm 1 in Gram space: a pivoted Cholesky of G carrying Q = C W). */
export function selectChannels(pr: LayerProblem, k: number, opts: SelectOptions = {}): Selection {
  const { d, m, g } = pr;
  const n = d / g,
    tol = opts.tol ?? DEFAULT_TOL;
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`d = ${d} is not a multiple of the group size g = ${g}`);
  if (!Number.isInteger(k) || k < 0 || k > n)
    throw new RangeError(`k = ${k}: must be a whole number from 0 to ${n} channels`);
  if (
    opts.order &&
    (opts.order.length < k ||
      new Set(opts.order.slice(0, k)).size !== k ||
      opts.order.some((c) => !Number.isInteger(c) || c < 0 || c >= n))
  ) {
    throw new RangeError(`order must list at least k = ${k} distinct channels from 0 to ${n - 1}`);
  }
  const need = selectionBytes(d, m, g, k);
  if (need > KERNEL_BYTES) {
    throw badInput(
      `this layer (d = ${d}, m = ${m}, k = ${k} channels) needs ${fmtBytes(need)} of kernel memory; ` +
        'WebAssembly allows 4 GiB. Keep fewer channels in it, or leave it out of the budget (prune --budget).',
    );
  }
  if (
    pr.G.length !== d * d ||
    pr.W.length !== d * m ||
    (pr.C && pr.C.length !== d * d) ||
    (pr.H && pr.H.length !== d * d)
  ) {
    throw new RangeError(`layer problem sizes do not match d = ${d}, m = ${m}`);
  }
  const K = getKernels(opts.kernels, opts.threads),
    mark = K.arena.mark();
  try {
    return greedy(K, pr, k, opts);
  } finally {
    K.arena.release(mark); // results are copied out; the re-fit allocates its own
  }
}

function greedy(K: Kernels, pr: LayerProblem, k: number, opts: SelectOptions): Selection {
  const { d, m, g } = pr,
    n = d / g,
    tol = opts.tol ?? DEFAULT_TOL;
  const A = K.arena;
  const t0 = now();
  const gg = g * g,
    tmax = Math.max(1, k * g);

  // Kernel memory. C, H and their products are temporaries on top of the stack, released before the loop.
  const p = {
    G: A.alloc(d * d * 8),
    Q: A.alloc(d * m * 8),
    E: A.alloc(n * gg * 8),
    diag0: A.alloc(d * 8),
    gains: A.alloc(n * 8),
    u: A.alloc(d * 8),
    q: A.alloc(m * 8),
    gcol: A.alloc(d * 8),
    L: A.alloc(d * tmax * 8),
    Lp: A.alloc(tmax * tmax * 8),
    Z: A.alloc(tmax * m * 8),
    chan: A.alloc(n * 4),
    orig: A.alloc(d * 4),
    S: A.alloc((3 * gg + g) * 8 * K.threads),
  };
  const top = A.mark();
  const Wp = A.alloc(d * m * 8),
    P = A.alloc(K.gemmPackDoubles(m) * 8),
    tmp = A.alloc(128 * K.threads);
  A.f64(p.G, d * d).set(pr.G);
  A.f64(Wp, d * m).set(pr.W);
  let norm2: number;
  if (pr.C) {
    const Cp = A.alloc(d * d * 8);
    A.f64(Cp, d * d).set(pr.C);
    gemm(K, Cp, Wp, p.Q, d, d, m, P, tmp);
    if (pr.targetNorm2 !== undefined) norm2 = pr.targetNorm2;
    else if (pr.H) {
      A.f64(Cp, d * d).set(pr.H);
      const HW = A.alloc(d * m * 8);
      gemm(K, Cp, Wp, HW, d, d, m, P, tmp);
      norm2 = frobDot(A.f64(Wp, d * m), A.f64(HW, d * m));
    } else throw internal('the asymmetric objective needs H = AᵀA or targetNorm2 = ‖AW‖²');
  } else {
    gemm(K, p.G, Wp, p.Q, d, d, m, P, tmp);
    norm2 = pr.targetNorm2 ?? frobDot(A.f64(Wp, d * m), A.f64(p.Q, d * m));
  }
  A.release(top);

  // Views: no allocation happens from here on, so they stay valid.
  const G = A.f64(p.G, d * d),
    Q = A.f64(p.Q, d * m),
    E = A.f64(p.E, n * gg),
    diag0 = A.f64(p.diag0, d);
  const L = A.f64(p.L, d * tmax),
    Lp = A.f64(p.Lp, tmax * tmax),
    Z = A.f64(p.Z, tmax * m);
  const q = A.f64(p.q, m),
    gains = A.f64(p.gains, n),
    chan = A.i32(p.chan, n),
    orig = A.i32(p.orig, d);
  for (let c = 0; c < n; c++) {
    chan[c] = c;
    for (let a = 0; a < g; a++) {
      const i = c * g + a;
      orig[i] = i;
      diag0[i] = G[i * d + i];
      for (let b = 0; b < g; b++) E[c * gg + a * g + b] = G[i * d + c * g + b];
    }
  }
  const groupGains = (nblk: number) =>
    K.par(
      'groupGains',
      { Q: p.Q, m, E: p.E, diag0: p.diag0, b0: 0, b1: nblk, g, tol, gains: p.gains, S: p.S },
      { work: nblk * g * g * m },
    );
  groupGains(n);
  const t1 = now();

  const order: number[] = [],
    objective: number[] = [],
    pivots: number[] = [],
    tAfter: number[] = [];
  let t = 0,
    F = 0,
    nrem = n;
  const rowTmp = new Float64Array(Math.max(m, tmax, gg));
  const swapRows = (X: Float64Array | Int32Array, ld: number, i: number, j: number, len: number) => {
    if (i === j) return;
    const a = X.subarray(i * ld, i * ld + len),
      b = X.subarray(j * ld, j * ld + len),
      tmp = rowTmp.subarray(0, len);
    tmp.set(a);
    a.set(b);
    b.set(tmp);
  };
  for (let step = 0; step < k; step++) {
    // Move the best channel's block to the end of the candidate rows; its g columns then join the factor.
    const best = opts.order ? chan.subarray(0, nrem).indexOf(opts.order[step]) : K.argmax(p.gains, p.chan, nrem);
    const last = --nrem;
    if (best !== last) {
      for (let a = 0; a < g; a++) {
        const i = best * g + a,
          j = last * g + a;
        swapRows(Q, m, i, j, m);
        swapRows(L, tmax, i, j, t);
        [diag0[i], diag0[j]] = [diag0[j], diag0[i]];
        [orig[i], orig[j]] = [orig[j], orig[i]];
      }
      swapRows(E, gg, best, last, gg);
      [chan[best], chan[last]] = [chan[last], chan[best]];
      [gains[best], gains[last]] = [gains[last], gains[best]];
    }
    const base = last * g;
    for (let a = 0; a < g; a++) {
      const pos = base + a,
        ej = E[last * gg + a * g + a];
      if (!(ej > tol * diag0[pos] && ej > 0)) continue; // in the span already chosen: adds nothing
      const s = Math.sqrt(ej);
      K.gather(p.G, d, orig[pos], p.orig, base + g, p.gcol);
      const col = { L: p.L, ldl: tmax, t, p0: 0, p1: base + g, jrow: pos, gcol: p.gcol, inv: 1 / s, u: p.u };
      K.par('extend', col, { work: (base + g) * t });
      L[pos * tmax + t] = s;
      Lp.set(L.subarray(pos * tmax, pos * tmax + t + 1), t * tmax);
      for (let j = 0; j < m; j++) q[j] = Q[pos * m + j] / s;
      Z.set(q, t * m);
      F += dotSelf(q);
      if (g === 1) {
        const scan = { Q: p.Q, m, u: p.u, q: p.q, p0: 0, p1: base, e: p.E, diag0: p.diag0, tol, gains: p.gains };
        K.par('updateScan', scan, { work: base * m });
      } else {
        K.par('updateRows', { Q: p.Q, m, u: p.u, q: p.q, p0: 0, p1: base + g }, { work: (base + g) * m });
        K.par('downdateBlocks', { E: p.E, u: p.u, b0: 0, b1: last + 1, g }, { work: (last + 1) * g * g });
      }
      pivots.push(orig[pos]);
      t++;
    }
    if (g > 1) groupGains(nrem);
    order.push(chan[last]);
    objective.push(norm2 > 0 ? Math.min(1, F / norm2) : 1);
    tAfter.push(t);
    opts.onStep?.(step + 1, k);
  }
  const t2 = now();

  // Keep what the re-fit needs (the pivots' rows of L and the q rows) and free the kernel memory with K.
  const LpOut = Lp.slice(0, t * tmax),
    ZOut = Z.slice(0, t * m);
  return {
    order,
    objective,
    norm2,
    seconds: { setup: t1 - t0, greedy: t2 - t1 },
    refit: (prefix: number) => refit(prefix),
  };

  function refit(prefix: number): Refit {
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > order.length)
      throw new RangeError(`refit: prefix ${prefix} is not in 0..${order.length}`);
    const tp = prefix ? tAfter[prefix - 1] : 0;
    const R = getKernels(opts.kernels, opts.threads),
      mark = R.arena.mark();
    const Lr = R.arena.alloc(Math.max(1, tp * tmax) * 8),
      X = R.arena.alloc(Math.max(1, tp * m) * 8);
    R.arena.f64(Lr, tp * tmax).set(LpOut.subarray(0, tp * tmax));
    R.arena.f64(X, tp * m).set(ZOut.subarray(0, tp * m));
    R.par('solveUpperT', { L: Lr, ldl: tmax, t: tp, X, m, j0: 0, j1: m }, { work: tp * tp * m });
    const sol = R.arena.f64(X, tp * m).slice();
    R.arena.release(mark);
    const keep = order.slice(0, prefix).sort((x, y) => x - y);
    const rowOf = new Map<number, number>();
    for (let τ = 0; τ < tp; τ++) rowOf.set(pivots[τ], τ);
    const W = new Float64Array(keep.length * g * m);
    keep.forEach((c, i) => {
      for (let a = 0; a < g; a++) {
        const τ = rowOf.get(c * g + a);
        if (τ !== undefined) W.set(sol.subarray(τ * m, τ * m + m), (i * g + a) * m);
      }
    });
    return { keep, W };
  }
}

function frobDot(x: Float64Array, y: Float64Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * y[i];
  return s;
}

function dotSelf(x: Float64Array): number {
  return frobDot(x, x);
}
