import type { Kernels } from '../kernels/types.js';
import { getKernels } from '../kernels/instances.js';
import { gemm } from '../kernels/ops.js';
import { badInput, internal } from '../errors.js';
import { fmtBytes, KERNEL_BYTES, KERNEL_LIMIT } from '../kernels/memory.js';
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
  /**
   * BᵀA W (d×m), for the asymmetric objective in place of C: all the greedy uses of C (Q starts as C W). Needs
   * targetNorm2, and with an intercept its targetSumsW.
   */
  CW?: Float64Array;
  /** ‖AW‖², when known; otherwise computed from G (symmetric) or H. */
  targetNorm2?: number;
  /** d×m, row-major. */
  W: Float64Array;
  /**
   * Whether this consumer's gains count in the greedy's choice of a group's channels (default true): false for a
   * consumer whose Gram matrix has fewer rows than columns, where every set of rows/g channels fits exactly.
   */
  ranks?: boolean;
  /**
   * The intercept (DESIGN.md, "The intercept"): B gains a column of ones that every selection keeps, so the re-fit
   * also changes the consumer's bias. Needs B's column sums Bᵀ1, the target's column sums Aᵀ1 (asymmetric; A = B
   * otherwise) and the row count N.
   */
  intercept?: Intercept;
}

/** What the intercept column adds to the Gram matrices: its products with B's and A's columns, and its own N. */
export interface Intercept {
  /** Bᵀ1 (d). */
  sums: Float64Array;
  /** Aᵀ1 (d), for the asymmetric objective; absent: A = B. */
  targetSums?: Float64Array;
  /** Wᵀ Aᵀ1 (m), in place of targetSums where the problem has CW. */
  targetSumsW?: Float64Array;
  /** N, the rows of B. */
  rows: number;
}

/** How the selection models the consumer beyond the paper (DESIGN.md): the intercept, and swaps after the greedy. */
export interface FitOptions {
  /** Re-fit each consumer by least squares (default) or only slice its weights (then no intercept either). */
  refit?: boolean;
  /** Re-fit each consumer's bias with its weights, where it can take a per-channel bias (default true). */
  biasRefit?: boolean;
  /** Rounds of swaps after the greedy, per budget (refine.ts; default 0: the greedy's set). */
  refine?: number;
  /**
   * After every group is pruned, re-fit every consumer once more from the pruned network's inputs to the original
   * model's outputs (src/prune/sweep.ts), plain least squares (0) or with that many ReLU-aware fits after it; false:
   * no sweep. Default (defaultSweep): 1 in sequential and asymmetric modes with the re-fit, else none.
   */
  sweep?: number | false;
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
  /** Go on from a greedy stopped earlier on the same problems (its `state`), to k channels in all. */
  resume?: GreedyState;
  /** Copy the greedy's state out when it stops (GroupSelection.state), so that it can go on later. */
  keepState?: boolean;
}

/**
 * A greedy stopped after some steps, copied out of kernel memory (which it leaves at every return): each consumer's
 * factor and the order so far. Going on from it gives what one run to the larger k gives, bit for bit.
 */
export interface GreedyState {
  factors: FactorState[];
  /** The channel at each position: the remaining ones in [0, nrem), the chosen ones after. */
  chan: Int32Array;
  order: number[];
  objective: number[];
  consumers: number[][];
}

/**
 * One consumer's Factor: its arrays, the rows of L of the channels not chosen yet (the only ones a later step reads;
 * the chosen ones' are in the snapshot's Lp) with its t columns packed, and the snapshot the re-fit keeps.
 */
interface FactorState {
  Q: Float64Array;
  E: Float64Array;
  diag0: Float64Array;
  gains: Float64Array;
  orig: Int32Array;
  L: Float64Array;
  t: number;
  F: number;
  norm2: number;
  snap: Snapshot;
}

export interface Refit {
  /** Kept channels, ascending. */
  keep: number[];
  /** Re-fitted consumer weights: keep.length·g rows (each kept channel's g columns in order) × m. */
  W: Float64Array;
  /** With the intercept: what to add to the consumer's bias (m values). */
  bias?: Float64Array;
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

// A column whose residual is below tol × its norm² counts as dependent. The Gram matrices sum f32 products in f32
// over blocks of up to 128 rows before f64, so for non-negative activations (after a ReLU) an entry can be off by
// 128 × 2⁻²⁴ ≈ 8e-6 of itself, and the intercept's centring subtracts large near-equal numbers: residuals below
// that are noise, and taking such a column as independent made the re-fit divide by it. The untrained SqueezeNet
// fixture, one expand1x1 group 90 % kept, relative output error on the calibration data: 29 at 1e-9, 1e-7 and
// 1e-6; with the bias re-fit, 80 at 1e-5 (another group); 3e-4 at 1e-4, 1e-3 at 1e-3.
export const DEFAULT_TOL = 1e-4;

const now = () => performance.now() / 1000;

/** Bytes of kernel memory a selection needs (d columns, m outputs, group size g, k channels). */
export function selectionBytes(d: number, m: number, g: number, k: number): number {
  const t = Math.max(1, k * g),
    n = d / g;
  return (
    8 * (d * d + d * m + n * g * g + 6 * d + m + n + d * t + t * t + t * m + (d + t) * g) +
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
  return `its consumer input has d = ${u.d} columns: ${what}, more than ${KERNEL_LIMIT}`;
}

/**
 * Why a group cannot be ranked: the greedy holds every consumer's problem in kernel memory at once, and ranking all
 * the group's channels (what the global allocation, the default, does) needs the most (a DeepLabV3 ASPP's three
 * dilated 3×3 convs on 960 channels: 6.9 GiB). Checked before any capture, so the prune goes on without the group.
 */
export function groupTooBigToSelect(consumers: readonly { d: number; m: number; g: number }[]): string | undefined {
  const need = consumers.reduce((a, c) => a + selectionBytes(c.d, c.m, c.g, c.d / c.g), 0);
  if (need <= KERNEL_BYTES || !consumers.length) return undefined;
  const n = consumers[0]!.d / consumers[0]!.g,
    ds = consumers.map((c) => c.d).join(', ');
  return (
    `ranking its ${n} channels for its ${consumers.length} consumers (d = ${ds}) at once needs ${fmtBytes(need)} ` +
    `of kernel memory, more than ${KERNEL_LIMIT}`
  );
}

/** A consumer with too few rows of its input to re-fit: the rows its calibration samples give, its d columns, and the
 * samples a re-fit needs. */
export interface RowsShort {
  rows: number;
  d: number;
  need: number;
}

/**
 * Whether a consumer of d columns cannot be re-fitted, and by how much: the least squares needs as many rows of its
 * input as it has columns (`rows` from `samples` calibration samples, `distinct` of them different: repeats add no
 * rank); with fewer it fits these samples and fails on others.
 */
export function refitRowsShort(d: number, rows: number, samples: number, distinct = samples): RowsShort | undefined {
  const effective = Math.floor((rows * distinct) / samples);
  if (effective >= d) return undefined;
  return { rows: effective, d, need: Math.ceil((d * samples) / Math.max(rows, 1)) };
}

/**
 * Greedy selection of k channels (the paper's Algorithm 1 in Gram space: a pivoted Cholesky of G carrying Q = C W)
 * for one consumer.
 */
export function selectChannels(pr: LayerProblem, k: number, opts: SelectOptions = {}): Selection {
  const sel = selectGroup([pr], k, opts);
  return {
    order: sel.order,
    objective: sel.objective,
    norm2: sel.norm2[0]!,
    seconds: sel.seconds,
    refit: (p) => {
      const fit = sel.refit(p);
      return { keep: fit.keep, W: fit.W[0]!, ...(fit.bias[0] ? { bias: fit.bias[0] } : {}) };
    },
  };
}

/** The greedy over the channels of a group read by several consumers: one problem per consumer, same n channels. */
export interface GroupSelection {
  /** Channels in the order the greedy chose them. */
  order: number[];
  /**
   * objective[i]: the mean over consumers of 1 − relative error of the consumer's input after keeping order[0..i]
   * (the objective each consumer's gains are weighted by: w_c = 1/‖A_c W_c‖²).
   */
  objective: number[];
  /** consumers[c][i]: consumer c's own objective after keeping order[0..i]. */
  consumers: number[][];
  /**
   * Least-squares weights of every consumer for the first p channels of `order`, and each consumer's bias change
   * (undefined for a consumer without the intercept).
   */
  refit(p: number): { keep: number[]; W: Float64Array[]; bias: (Float64Array | undefined)[] };
  /** ‖A_c W_c‖² per consumer. */
  norm2: number[];
  /**
   * After the last step: each channel's gain given the chosen ones (Σ_c w_c gain_c, as the greedy weighs them; −∞
   * for the chosen ones). What the swaps after the greedy compare (refine.ts).
   */
  gains: Float64Array;
  seconds: { setup: number; greedy: number };
  /** With `keepState`: where the greedy stopped, to go on from (SelectOptions.resume). */
  state?: GreedyState;
}

/**
 * Greedy selection of k channels of a group: maximises Σ_c F_c(S)/‖A_c W_c‖², F_c the paper's objective for
 * consumer c. Each consumer keeps its own factor; a channel's gain is the weighted sum of its consumers' gains;
 * choosing it extends every consumer's factor by its g_c columns. With one consumer this is exactly the
 * single-layer greedy.
 */
export function selectGroup(problems: LayerProblem[], k: number, opts: SelectOptions = {}): GroupSelection {
  const n = problems[0]!.d / problems[0]!.g;
  for (const { d, g } of problems) {
    if (!Number.isInteger(d / g) || d / g < 1)
      throw new RangeError(`d = ${d} is not a multiple of the group size g = ${g}`);
    if (d / g !== n) throw new RangeError(`the consumers of one group must share its n = ${n} channels, not ${d / g}`);
  }
  if (!Number.isInteger(k) || k < 0 || k > n)
    throw new RangeError(`k = ${k}: must be a whole number from 0 to ${n} channels`);
  const from = opts.resume;
  if (from && (from.order.length > k || from.factors.length !== problems.length || from.chan.length !== n))
    throw new RangeError(`resume: a state of ${from.order.length} steps on other problems, or past k = ${k}`);
  const order = opts.order;
  const bad = (c: number) => !Number.isInteger(c) || c < 0 || c >= n;
  if (order && (order.length < k || new Set(order.slice(0, k)).size !== k || order.some(bad)))
    throw new RangeError(`order must list at least k = ${k} distinct channels from 0 to ${n - 1}`);
  const need = problems.reduce((a, p) => a + selectionBytes(p.d, p.m, p.g, k), 0);
  if (need > KERNEL_BYTES) {
    const what = problems.map((p) => `d = ${p.d}, m = ${p.m}`).join('; ');
    throw badInput(
      `this group (${what}; k = ${k} channels) needs ${fmtBytes(need)} of kernel memory, more than ${KERNEL_LIMIT}. ` +
        'Keep fewer channels in it, or leave it out of the budget (prune --budget).',
    );
  }
  for (const pr of problems) {
    const { d, m } = pr,
      dd = d * d;
    const square = (x?: Float64Array) => !x || x.length === dd;
    if (!square(pr.G) || !square(pr.C) || !square(pr.H) || pr.W.length !== d * m || (pr.CW && pr.CW.length !== d * m))
      throw new RangeError(`layer problem sizes do not match d = ${d}, m = ${m}`);
    if (pr.CW && (pr.targetNorm2 === undefined || (pr.intercept && !pr.intercept.targetSumsW)))
      throw internal('a problem with CW = BᵀA W needs targetNorm2 = ‖AW‖² (and with an intercept, Wᵀ Aᵀ1)');
  }
  const K = getKernels(opts.kernels, opts.threads),
    mark = K.arena.mark();
  try {
    return greedy(K, problems, n, k, opts);
  } finally {
    K.arena.release(mark); // results are copied out; the re-fit allocates its own
  }
}

/**
 * One consumer's state in kernel memory: G's pivoted Cholesky factor L, Q = C W downdated as columns join, the g×g
 * residual blocks E, and the gains of the remaining channels by position (positions are the same for every consumer:
 * the remaining channels sit in positions [0, nrem), chosen ones move to the end).
 */
class Factor {
  readonly m: number;
  readonly g: number;
  readonly tmax: number;
  readonly norm2: number;
  readonly p: Record<
    | 'G'
    | 'Q'
    | 'E'
    | 'diag0'
    | 'gains'
    | 'u'
    | 'q'
    | 'gcol'
    | 'L'
    | 'Lp'
    | 'Z'
    | 'orig'
    | 'S'
    | 'LJ'
    | 'Lj'
    | 'pack'
    | 'tmp',
    number
  >;
  /** Columns in the factor, the objective F (‖projection‖² of A W), and what the re-fit needs. */
  t = 0;
  F = 0;
  readonly pivots: number[] = [];
  readonly tAfter: number[] = [];
  /** With the intercept, what the re-fit needs for the bias: Bᵀ1, Wᵀ(Aᵀ1) and N. */
  readonly intercept?: { s: Float64Array; v: Float64Array; N: number };

  constructor(
    private readonly K: Kernels,
    pr: LayerProblem,
    n: number,
    k: number,
    private readonly tol: number,
    from?: FactorState,
  ) {
    const { d, m, g } = pr,
      A = K.arena,
      gg = g * g;
    this.m = m;
    this.g = g;
    this.tmax = Math.max(1, k * g);
    const tmax = this.tmax;
    // Kernel memory. C, H and their products are temporaries on top of the stack, released before the loop.
    const p = (this.p = {
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
      orig: A.alloc(d * 4),
      S: A.alloc((3 * gg + g) * 8 * K.threads),
      // a channel's g new columns: the products of every row of L with their pivot rows, in one gemm (add)
      LJ: A.alloc(d * g * 8),
      Lj: A.alloc(tmax * g * 8),
      pack: A.alloc(K.gemmPackDoubles(g) * 8),
      tmp: A.alloc(128 * K.threads),
    });
    if (from) {
      this.norm2 = from.norm2;
      this.intercept = from.snap.intercept;
      this.restore(pr, from);
      return;
    }
    const top = A.mark();
    const Wp = A.alloc(d * m * 8),
      P = A.alloc(K.gemmPackDoubles(m) * 8),
      tmp = A.alloc(128 * K.threads);
    A.f64(p.G, d * d).set(pr.G);
    A.f64(Wp, d * m).set(pr.W);
    if (pr.CW) {
      A.f64(p.Q, d * m).set(pr.CW);
      this.norm2 = pr.targetNorm2!;
    } else if (pr.C) {
      const Cp = A.alloc(d * d * 8);
      A.f64(Cp, d * d).set(pr.C);
      gemm(K, Cp, Wp, p.Q, d, d, m, P, tmp);
      if (pr.targetNorm2 !== undefined) this.norm2 = pr.targetNorm2;
      else if (pr.H) {
        A.f64(Cp, d * d).set(pr.H);
        const HW = A.alloc(d * m * 8);
        gemm(K, Cp, Wp, HW, d, d, m, P, tmp);
        this.norm2 = frobDot(A.f64(Wp, d * m), A.f64(HW, d * m));
      } else throw internal('the asymmetric objective needs H = AᵀA or targetNorm2 = ‖AW‖²');
    } else {
      gemm(K, p.G, Wp, p.Q, d, d, m, P, tmp);
      this.norm2 = pr.targetNorm2 ?? frobDot(A.f64(Wp, d * m), A.f64(p.Q, d * m));
    }
    A.release(top);
    const G = this.view('G', d * d),
      E = this.view('E', n * gg),
      diag0 = this.view('diag0', d),
      orig = A.i32(p.orig, d);
    for (let i = 0; i < d; i++) {
      orig[i] = i;
      diag0[i] = G[i * d + i]; // before the intercept: a constant column is dependent, as if 1 were pivoted first
    }
    if (pr.intercept) this.intercept = this.project(pr, G);
    for (let c = 0; c < n; c++)
      for (let a = 0; a < g; a++) for (let b = 0; b < g; b++) E[c * gg + a * g + b] = G[(c * g + a) * d + c * g + b];
    this.groupGains(n);
  }

  /** The state a stopped greedy copied out (save), in this factor's arrays (sized for its own k). */
  private restore(pr: LayerProblem, from: FactorState): void {
    const { d } = pr,
      { m, tmax } = this,
      t = from.t;
    const G = this.view('G', d * d),
      snap = from.snap;
    G.set(pr.G);
    if (snap.intercept) centre(G, d, snap.intercept.s, snap.intercept.N);
    for (const key of ['Q', 'E', 'diag0', 'gains'] as const) this.view(key, from[key].length).set(from[key]);
    this.K.arena.i32(this.p.orig, d).set(from.orig);
    const L = this.view('L', d * tmax),
      Lp = this.view('Lp', tmax * tmax);
    for (let r = 0; r * t < from.L.length; r++) L.set(from.L.subarray(r * t, r * t + t), r * tmax);
    for (let r = 0; r < t; r++) Lp.set(snap.Lp.subarray(r * snap.tmax, r * snap.tmax + t), r * tmax);
    this.view('Z', t * m).set(snap.Z);
    this.t = t;
    this.F = from.F;
    this.pivots.push(...snap.pivots);
    this.tAfter.push(...snap.tAfter);
  }

  /** This factor's state with `nrem` channels left, copied out of kernel memory (restore's input). */
  save(d: number, n: number, nrem: number, snap: Snapshot): FactorState {
    const { m, g, t, tmax } = this,
      rows = nrem * g,
      L = this.view('L', rows * tmax),
      packed = new Float64Array(rows * t);
    for (let r = 0; r < rows; r++) packed.set(L.subarray(r * tmax, r * tmax + t), r * t);
    return {
      Q: this.view('Q', d * m).slice(),
      E: this.view('E', n * g * g).slice(),
      diag0: this.view('diag0', d).slice(),
      gains: this.view('gains', n).slice(),
      orig: this.K.arena.i32(this.p.orig, d).slice(),
      L: packed,
      ...{ t, F: this.F, norm2: this.norm2, snap },
    };
  }

  /**
   * Takes the ones column as the first pivot: G ← G − s sᵀ/N (the Gram matrix of the centred B), Q ← Q − s
   * vᵀ/N with v = Wᵀ Aᵀ1 (the centred target's cross term), and F starts at ‖v‖²/N, the part of A W the
   * intercept alone fits.
   */
  private project(pr: LayerProblem, G: Float64Array): { s: Float64Array; v: Float64Array; N: number } {
    const { d, m, W } = pr,
      { sums: s, targetSums: t = s, rows: N } = pr.intercept!;
    if (s.length !== d || t.length !== d || !(N > 0))
      throw new RangeError(`intercept sums must have d = ${d} entries and rows N > 0`);
    const w = pr.intercept!.targetSumsW,
      v = w ? w.slice() : new Float64Array(m);
    if (w && w.length !== m) throw new RangeError(`intercept target sums Wᵀ Aᵀ1 must have m = ${m} entries`);
    if (!w) for (let i = 0; i < d; i++) for (let j = 0; j < m; j++) v[j] += t[i]! * W[i * m + j]!;
    centre(G, d, s, N);
    const Q = this.view('Q', d * m);
    for (let i = 0; i < d; i++) for (let j = 0; j < m; j++) Q[i * m + j] -= (s[i]! * v[j]!) / N;
    this.F = frobDot(v, v) / N;
    return { s, v, N };
  }

  /** A view of one of the arrays (no allocation happens after construction, so views stay valid). */
  view(name: keyof Factor['p'], length: number): Float64Array {
    return this.K.arena.f64(this.p[name], length);
  }

  groupGains(nblk: number): void {
    const { K, p, m, g, tol } = this;
    K.par(
      'groupGains',
      { Q: p.Q, m, E: p.E, diag0: p.diag0, b0: 0, b1: nblk, g, tol, gains: p.gains, S: p.S },
      { work: nblk * g * g * m },
    );
  }

  /** Moves the channel at position `best` to position `last` (and the one there to `best`). */
  swap(best: number, last: number, rowTmp: Float64Array): void {
    if (best === last) return;
    const { m, g, tmax, t } = this,
      gg = g * g,
      A = this.K.arena;
    const Q = this.view('Q', (last + 1) * g * m),
      L = this.view('L', (last + 1) * g * tmax),
      E = this.view('E', (last + 1) * gg),
      diag0 = this.view('diag0', (last + 1) * g),
      gains = this.view('gains', last + 1),
      orig = A.i32(this.p.orig, (last + 1) * g);
    const swapRows = (X: Float64Array, ld: number, i: number, j: number, len: number) => {
      const a = X.subarray(i * ld, i * ld + len),
        b = X.subarray(j * ld, j * ld + len),
        tmp = rowTmp.subarray(0, len);
      tmp.set(a);
      a.set(b);
      b.set(tmp);
    };
    for (let a = 0; a < g; a++) {
      const i = best * g + a,
        j = last * g + a;
      swapRows(Q, m, i, j, m);
      swapRows(L, tmax, i, j, t);
      [diag0[i], diag0[j]] = [diag0[j]!, diag0[i]!];
      [orig[i], orig[j]] = [orig[j]!, orig[i]!];
    }
    swapRows(E, gg, best, last, gg);
    [gains[best], gains[last]] = [gains[last]!, gains[best]!];
  }

  /** Adds the g columns of the channel now at position `last` to the factor (skipping dependent ones). */
  add(last: number, d: number): void {
    const { K, p, m, g, tmax, tol } = this,
      gg = g * g,
      base = last * g,
      A = K.arena;
    const E = this.view('E', (last + 1) * gg),
      diag0 = this.view('diag0', d),
      L = this.view('L', d * tmax),
      Lp = this.view('Lp', tmax * tmax),
      Z = this.view('Z', tmax * m),
      Q = this.view('Q', d * m),
      q = this.view('q', m),
      orig = A.i32(p.orig, d);
    // with g > 1, each new column's products with L's first t0 columns come from one pass over L for all g (a gemm):
    // a pass per column reads all of L from memory g times
    const t0 = g > 1 ? this.t : 0,
      LJ = this.view('LJ', (base + g) * g);
    if (t0) {
      const Lj = this.view('Lj', t0 * g);
      for (let a = 0; a < g; a++) for (let k = 0; k < t0; k++) Lj[k * g + a] = L[(base + a) * tmax + k]!;
      gemm(K, p.L, p.Lj, p.LJ, base + g, t0, g, p.pack, p.tmp, tmax);
    }
    for (let a = 0; a < g; a++) {
      const pos = base + a,
        ej = E[last * gg + a * g + a]!;
      if (!(ej > tol * diag0[pos]! && ej > 0)) continue; // in the span already chosen: adds nothing
      const s = Math.sqrt(ej),
        t = this.t;
      K.gather(p.G, d, orig[pos]!, p.orig, base + g, p.gcol);
      if (t0) {
        const gcol = this.view('gcol', base + g);
        for (let r = 0; r < base + g; r++) gcol[r] -= LJ[r * g + a]!;
      }
      const col = { L: p.L, ldl: tmax, t0, t, p0: 0, p1: base + g, jrow: pos, gcol: p.gcol, inv: 1 / s, u: p.u };
      K.par('extend', col, { work: (base + g) * t });
      L[pos * tmax + t] = s;
      Lp.set(L.subarray(pos * tmax, pos * tmax + t + 1), t * tmax);
      for (let j = 0; j < m; j++) q[j] = Q[pos * m + j]! / s;
      Z.set(q, t * m);
      this.F += frobDot(q, q);
      if (g === 1) {
        const scan = { Q: p.Q, m, u: p.u, q: p.q, p0: 0, p1: base, e: p.E, diag0: p.diag0, tol, gains: p.gains };
        K.par('updateScan', scan, { work: base * m });
      } else {
        K.par('updateRows', { Q: p.Q, m, u: p.u, q: p.q, p0: 0, p1: base + g }, { work: (base + g) * m });
        K.par('downdateBlocks', { E: p.E, u: p.u, b0: 0, b1: last + 1, g }, { work: (last + 1) * g * g });
      }
      this.pivots.push(orig[pos]!);
      this.t++;
    }
    this.tAfter.push(this.t);
  }

  /** What the re-fit needs, copied out of kernel memory: the pivots' rows of L and the q rows. */
  snapshot(): Snapshot {
    const { t, tmax, m, g, intercept } = this;
    return {
      Lp: this.view('Lp', t * tmax).slice(),
      Z: this.view('Z', t * m).slice(),
      pivots: this.pivots,
      tAfter: this.tAfter,
      tmax,
      m,
      g,
      ...(intercept ? { intercept } : {}),
    };
  }
}

/** What the re-fit needs of a Factor (its snapshot). */
interface Snapshot {
  Lp: Float64Array;
  Z: Float64Array;
  pivots: number[];
  tAfter: number[];
  tmax: number;
  m: number;
  g: number;
  intercept?: Factor['intercept'];
}

function greedy(K: Kernels, problems: LayerProblem[], n: number, k: number, opts: SelectOptions): GroupSelection {
  const tol = opts.tol ?? DEFAULT_TOL,
    A = K.arena;
  const t0 = now(),
    from = opts.resume;
  const factors = problems.map((pr, i) => new Factor(K, pr, n, k, tol, from?.factors[i]));
  const chanPtr = A.alloc(n * 4),
    sumPtr = factors.length > 1 ? A.alloc(n * 8) : factors[0]!.p.gains;
  const chan = A.i32(chanPtr, n),
    sum = A.f64(sumPtr, n);
  if (from) chan.set(from.chan);
  else for (let c = 0; c < n; c++) chan[c] = c;
  // each consumer's gains count as its share of its own ‖A_c W_c‖² (one consumer: its gains as they are)
  const weights = factors.map((f, i) =>
    problems[i]!.ranks === false ? 0 : factors.length > 1 && f.norm2 > 0 ? 1 / f.norm2 : 1,
  );
  const combine = (nrem: number) => {
    if (factors.length === 1) return;
    sum.fill(0, 0, nrem);
    factors.forEach((f, i) => {
      const gains = f.view('gains', nrem);
      for (let p = 0; p < nrem; p++) sum[p] += weights[i]! * gains[p]!;
    });
  };
  let nrem = n - (from?.order.length ?? 0);
  combine(nrem);
  // only wanted once every gain left is 0 (pr.G stays as given: the factors copy it)
  let energy: ReturnType<typeof standAloneEnergy> | undefined;
  const t1 = now();

  const order = [...(from?.order ?? [])],
    objective = [...(from?.objective ?? [])],
    consumers = factors.map((_, i) => [...(from?.consumers[i] ?? [])]);
  const rowTmp = new Float64Array(Math.max(...factors.map((f) => Math.max(f.m, f.tmax, f.g * f.g))));
  const rel = (f: Factor) => (f.norm2 > 0 ? Math.min(1, f.F / f.norm2) : 1);
  for (let step = order.length; step < k; step++) {
    // Move the best channel to the end of the candidate positions; its columns then join every factor.
    let best = opts.order ? chan.subarray(0, nrem).indexOf(opts.order[step]!) : K.argmax(sumPtr, chanPtr, nrem);
    if (!opts.order && !(sum[best]! > 0)) best = byEnergy(chan, nrem, (energy ??= standAloneEnergy(problems, n, tol)));
    const last = --nrem;
    for (const f of factors) f.swap(best, last, rowTmp);
    if (factors.length > 1 && best !== last) [sum[best], sum[last]] = [sum[last]!, sum[best]!];
    [chan[best], chan[last]] = [chan[last]!, chan[best]!];
    for (const [i, f] of factors.entries()) {
      f.add(last, problems[i]!.d);
      if (f.g > 1) f.groupGains(nrem);
    }
    combine(nrem);
    order.push(chan[last]!);
    factors.forEach((f, i) => consumers[i]!.push(rel(f)));
    objective.push(factors.reduce((a, f) => a + rel(f), 0) / factors.length);
    opts.onStep?.(step + 1, k);
  }
  const t2 = now();
  const gains = new Float64Array(n).fill(-Infinity),
    last = factors.length > 1 ? sum : factors[0]!.view('gains', nrem);
  for (let p = 0; p < nrem; p++) gains[chan[p]!] = last[p]!;
  const snaps = factors.map((f) => f.snapshot());
  const state = opts.keepState
    ? {
        factors: factors.map((f, i) => f.save(problems[i]!.d, n, nrem, snaps[i]!)),
        chan: chan.slice(),
        order,
        objective,
        consumers,
      }
    : undefined;
  return {
    order,
    objective,
    consumers,
    norm2: factors.map((f) => f.norm2),
    gains,
    seconds: { setup: t1 - t0, greedy: t2 - t1 },
    ...(state ? { state } : {}),
    refit: (prefix) => {
      if (!Number.isInteger(prefix) || prefix < 0 || prefix > order.length)
        throw new RangeError(`refit: prefix ${prefix} is not in 0..${order.length}`);
      const keep = order.slice(0, prefix).sort((x, y) => x - y);
      const W = snaps.map((s) => refit(s, keep, prefix, opts));
      return { keep, W, bias: snaps.map((s, i) => s.intercept && biasOf(s.intercept, keep, s.g, W[i]!)) };
    },
  };
}

/**
 * Each channel's output energy on its own, Σ over its columns j of ‖B_j‖²·‖W_j‖² (each consumer's share
 * of its total, as the gains), with B centred where the consumer has the intercept (a centred column within the
 * residual test's tolerance of its norm counts as 0) and as it is: what orders the channels the data cannot tell
 * apart (every gain 0: fewer rows than columns, identical rows), so that a channel always zero on the calibration
 * data comes last and a constant one just before.
 */
function standAloneEnergy(
  problems: LayerProblem[],
  n: number,
  tol: number,
): { centred: Float64Array; raw: Float64Array } {
  const centred = new Float64Array(n),
    raw = new Float64Array(n);
  for (const pr of problems) {
    const { G, W, d, m, g, intercept } = pr;
    const ec = new Float64Array(n),
      er = new Float64Array(n);
    for (let j = 0; j < d; j++) {
      const s = intercept ? intercept.sums[j]! : 0,
        u = G[j * (d + 1)]!,
        v = u - (intercept ? (s * s) / intercept.rows : 0);
      let w2 = 0;
      for (let o = 0; o < m; o++) w2 += W[j * m + o]! ** 2;
      ec[Math.floor(j / g)] += v > tol * u ? v * w2 : 0;
      er[Math.floor(j / g)] += u * w2;
    }
    for (const [e, out] of [
      [ec, centred],
      [er, raw],
    ] as const) {
      const total = e.reduce((x, y) => x + y, 0);
      for (let c = 0; c < n; c++) out[c] += total > 0 ? e[c]! / total : 0;
    }
  }
  return { centred, raw };
}

/** The candidate (position < nrem) whose channel has the most stand-alone energy, centred first; ties: lowest id. */
function byEnergy(chan: Int32Array, nrem: number, { centred, raw }: ReturnType<typeof standAloneEnergy>): number {
  let best = 0;
  for (let p = 1; p < nrem; p++) {
    const [x, y] = [chan[p]!, chan[best]!];
    const better = centred[x]! - centred[y]! || raw[x]! - raw[y]! || y - x;
    if (better > 0) best = p;
  }
  return best;
}

/** Least-squares weights of one consumer for the first `prefix` chosen channels (kept: `keep`, ascending). */
function refit(s: Snapshot, keep: number[], prefix: number, opts: KernelOptions): Float64Array {
  const { tmax, m, g } = s,
    tp = prefix ? s.tAfter[prefix - 1]! : 0;
  const R = getKernels(opts.kernels, opts.threads),
    mark = R.arena.mark();
  const Lr = R.arena.alloc(Math.max(1, tp * tmax) * 8),
    X = R.arena.alloc(Math.max(1, tp * m) * 8);
  R.arena.f64(Lr, tp * tmax).set(s.Lp.subarray(0, tp * tmax));
  R.arena.f64(X, tp * m).set(s.Z.subarray(0, tp * m));
  R.par('solveUpperT', { L: Lr, ldl: tmax, t: tp, X, m, j0: 0, j1: m }, { work: tp * tp * m });
  const sol = R.arena.f64(X, tp * m).slice();
  R.arena.release(mark);
  const rowOf = new Map<number, number>();
  for (let τ = 0; τ < tp; τ++) rowOf.set(s.pivots[τ]!, τ);
  const W = new Float64Array(keep.length * g * m);
  keep.forEach((c, i) => {
    for (let a = 0; a < g; a++) {
      const τ = rowOf.get(c * g + a);
      if (τ !== undefined) W.set(sol.subarray(τ * m, τ * m + m), (i * g + a) * m);
    }
  });
  return W;
}

/**
 * The intercept's least-squares value given the re-fitted W′ (rows of the kept channels' columns): the mean residual
 * δ = (Wᵀ Aᵀ1 − W′ᵀ B_Sᵀ1)/N, what the consumer's bias gains.
 */
function biasOf(ic: { s: Float64Array; v: Float64Array; N: number }, keep: number[], g: number, W: Float64Array) {
  const m = ic.v.length,
    delta = ic.v.slice();
  keep.forEach((c, i) => {
    for (let a = 0; a < g; a++) {
      const sa = ic.s[c * g + a]!,
        row = (i * g + a) * m;
      if (sa) for (let j = 0; j < m; j++) delta[j] -= sa * W[row + j]!;
    }
  });
  return delta.map((x) => x / ic.N);
}

/** G ← G − s sᵀ/N: the Gram matrix of the centred columns (the intercept pivoted first). */
function centre(G: Float64Array, d: number, s: Float64Array, N: number): void {
  for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) G[i * d + j] -= (s[i]! * s[j]!) / N;
}

function frobDot(x: Float64Array, y: Float64Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * y[i];
  return s;
}
