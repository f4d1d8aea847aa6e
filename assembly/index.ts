// subprune's hot loops. Every array argument is a byte offset into the imported memory; the host (src/kernels)
// allocates and views it. Matrices are row-major. f32 for activations, f64 for everything the greedy touches.
// src/kernels/plain.ts holds the same functions in plain TypeScript: keep the two in step.

// ---------------------------------------------------------------------------------------------------------------
// Two builds from this one source (asconfig.json): plain SIMD, and with relaxed SIMD (--enable relaxed-simd), where
// the multiply-adds below become fused (relaxed_madd: one rounding instead of two, where the hardware has FMA).
// ASC_FEATURE_RELAXED_SIMD is a compile-time constant, so each build holds one branch only.

// c + a·b in f32 lanes
@inline function madd4(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(c, f32x4.mul(a, b));
}
// c + a·b in f64 lanes
@inline function madd2(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f64x2.relaxed_madd(a, b, c);
  return f64x2.add(c, f64x2.mul(a, b));
}
// c − a·b in f64 lanes
@inline function nmadd2(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f64x2.relaxed_nmadd(a, b, c);
  return f64x2.sub(c, f64x2.mul(a, b));
}

// ---------------------------------------------------------------------------------------------------------------
// Gram accumulation: G += Xᵀ X (upper triangle) and C += Xᵀ Y from a batch of f32 rows.
// Rows are taken RB at a time and packed into panels of W columns, P[panel][row][0..W), so that an MR×W register
// tile streams two small contiguous panels. The tile sums RB products in f32, then adds them into the f64 matrix:
// the f32 part of the error stays at RB·ε relative however many rows are streamed.
//
// Tile shape, measured (bench/README.md): V8 keeps one of the 16 vector registers as scratch and loads a row's
// operands before its arithmetic, so a tile fits in registers only while accumulators + loaded vectors + 1 ≤ 15:
// 8 accumulators with separate multiply and add. 2×16 (2 splats, 4 row vectors) beats 4×8 (4 splats, 2 vectors):
// the same loads per flop, but V8 needs an address computation for each splat with an offset. 6×8 and 4×12 spill.

const RB: i32 = 128;
const MR: i32 = 2; // tile rows (KERNELS.gramTiles.align in src/kernels/types.ts)
const W: i32 = 16; // tile and panel columns

/** Panels of W columns that d columns take. */
export function gramPanels(d: i32): i32 {
  return (d + W - 1) / W;
}

/** Floats of scratch that gramPack needs for one operand of d columns (RB rows of W-column panels). */
export function gramPackFloats(d: i32): i32 {
  return RB * gramPanels(d) * W;
}

function pack(X: usize, ld: i32, r0: i32, rb: i32, d: i32, P: usize, p0: i32, p1: i32): void {
  const step = (<usize>rb) * (W << 2);
  p1 = min(p1, gramPanels(d));
  const full = min(d / W, p1);
  for (let r = 0; r < rb; r++) {
    const src = X + ((<usize>(r0 + r)) * ld << 2);
    let dst = P + (<usize>r) * (W << 2) + (<usize>p0) * step;
    for (let p = p0; p < full; p++) {
      const s = src + (<usize>p) * (W << 2);
      v128.store(dst, v128.load(s));
      v128.store(dst, v128.load(s, 16), 16);
      v128.store(dst, v128.load(s, 32), 32);
      v128.store(dst, v128.load(s, 48), 48);
      dst += step;
    }
    if (full < p1) { // the last panel, part of it past column d
      for (let c = 0; c < W; c++) {
        const j = full * W + c;
        store<f32>(dst + (<usize>c << 2), j < d ? load<f32>(src + (<usize>j << 2)) : 0);
      }
    }
  }
}

// Adds four f32 lanes into four f64 entries.
@inline function addLanes(dst: usize, v: v128): void {
  v128.store(dst, f64x2.add(v128.load(dst), f64x2.promote_low_f32x4(v)));
  v128.store(dst, f64x2.add(v128.load(dst, 16), f64x2.promote_low_f32x4(v128.shuffle<f32>(v, v, 2, 3, 0, 1))), 16);
}

// Adds the first n (< 4 is the matrix edge; ≤ 0: none) f32 lanes into f64 entries.
@inline function addPart(dst: usize, v: v128, n: i32): void {
  if (n > 0) store<f64>(dst, load<f64>(dst) + <f64>f32x4.extract_lane(v, 0));
  if (n > 1) store<f64>(dst, load<f64>(dst, 8) + <f64>f32x4.extract_lane(v, 1), 8);
  if (n > 2) store<f64>(dst, load<f64>(dst, 16) + <f64>f32x4.extract_lane(v, 2), 16);
  if (n > 3) store<f64>(dst, load<f64>(dst, 24) + <f64>f32x4.extract_lane(v, 3), 24);
}

// One 2×16 tile: out[ii][jj] += Σ_r A[r][ii] B[r][jj]; a and b point into packed panels (W floats a row).
// ni/nj < 2/16 only at the matrix edge.
function tile(a: usize, b: usize, rb: i32, out: usize, ldc: i32, ni: i32, nj: i32): void {
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0), c02 = f32x4.splat(0), c03 = f32x4.splat(0);
  let c10 = f32x4.splat(0), c11 = f32x4.splat(0), c12 = f32x4.splat(0), c13 = f32x4.splat(0);
  const end = b + (<usize>rb) * (W << 2);
  while (b < end) {
    const b0 = v128.load(b), b1 = v128.load(b, 16), b2 = v128.load(b, 32), b3 = v128.load(b, 48);
    let s = v128.load32_splat(a);
    c00 = madd4(s, b0, c00); c01 = madd4(s, b1, c01); c02 = madd4(s, b2, c02); c03 = madd4(s, b3, c03);
    s = v128.load32_splat(a, 4);
    c10 = madd4(s, b0, c10); c11 = madd4(s, b1, c11); c12 = madd4(s, b2, c12); c13 = madd4(s, b3, c13);
    a += W << 2; b += W << 2;
  }
  const row = (<usize>ldc) << 3;
  if (ni == MR && nj == W) {
    addLanes(out, c00); addLanes(out + 32, c01); addLanes(out + 64, c02); addLanes(out + 96, c03); out += row;
    addLanes(out, c10); addLanes(out + 32, c11); addLanes(out + 64, c12); addLanes(out + 96, c13);
    return;
  }
  addPart(out, c00, nj); addPart(out + 32, c01, nj - 4);
  addPart(out + 64, c02, nj - 8); addPart(out + 96, c03, nj - 12);
  if (ni < 2) return;
  out += row;
  addPart(out, c10, nj); addPart(out + 32, c11, nj - 4);
  addPart(out + 64, c12, nj - 8); addPart(out + 96, c13, nj - 12);
}

/**
 * sums[j] += Σ_r X[r][j] in f64 for columns j0 ≤ j < j1 (j0 a multiple of 4) of rows X (f32, d columns): the column
 * sums the bias re-fit needs. In JavaScript they took a fifth of a small model's capture.
 */
export function columnSums(X: usize, rows: i32, d: i32, sums: usize, j0: i32, j1: i32): void {
  const full = j0 + ((j1 - j0) & ~3);
  for (let r = 0; r < rows; r++) {
    const row = X + ((<usize>r * d) << 2);
    for (let j = j0; j < full; j += 4) addLanes(sums + ((<usize>j) << 3), v128.load(row + ((<usize>j) << 2)));
    for (let j = full; j < j1; j++) {
      const o = sums + ((<usize>j) << 3);
      store<f64>(o, load<f64>(o) + <f64>load<f32>(row + ((<usize>j) << 2)));
    }
  }
}

/**
 * sums[j] += Σ_r X[r][j] and squares[j] += Σ_r X[r][j]² in f64, for columns j0 ≤ j < j1 (j0 a multiple of 4) of
 * rows X (f32, d columns): an asymmetric capture's given target T, whose column sums the intercept needs and whose
 * squared norm is the objective's normaliser. In JavaScript they took a tenth of a transformer's capture.
 */
export function columnMoments(X: usize, rows: i32, d: i32, sums: usize, squares: usize, j0: i32, j1: i32): void {
  const full = j0 + ((j1 - j0) & ~3);
  for (let r = 0; r < rows; r++) {
    const row = X + ((<usize>r * d) << 2);
    for (let j = j0; j < full; j += 4) {
      const v = v128.load(row + ((<usize>j) << 2)),
        lo = f64x2.promote_low_f32x4(v),
        hi = f64x2.promote_low_f32x4(v128.shuffle<f32>(v, v, 2, 3, 0, 1)),
        s = sums + ((<usize>j) << 3),
        q = squares + ((<usize>j) << 3);
      v128.store(s, f64x2.add(v128.load(s), lo));
      v128.store(s, f64x2.add(v128.load(s, 16), hi), 16);
      v128.store(q, f64x2.add(v128.load(q), f64x2.mul(lo, lo)));
      v128.store(q, f64x2.add(v128.load(q, 16), f64x2.mul(hi, hi)), 16);
    }
    for (let j = full; j < j1; j++) {
      const x = <f64>load<f32>(row + ((<usize>j) << 2)),
        s = sums + ((<usize>j) << 3),
        q = squares + ((<usize>j) << 3);
      store<f64>(s, load<f64>(s) + x);
      store<f64>(q, load<f64>(q) + x * x);
    }
  }
}

/** Packs rows r0 .. r0+rb of X (d columns, row stride ld) into panels p0 ≤ p < p1 of P (all: 0 .. gramPanels(d)). */
export function gramPack(X: usize, ld: i32, r0: i32, rb: i32, d: i32, P: usize, p0: i32, p1: i32): void {
  pack(X, ld, r0, rb, d, P, p0, p1);
}

/**
 * Packs columns c0 .. c0+cb of X (n rows, row stride ld) as rows of panels p0 ≤ p < p1 of P: the pack of Xᵀ, so
 * that gramTiles computes the product X·Y (T = A W, the asymmetric capture's target projection) as it computes Xᵀ Y.
 */
export function gramPackT(X: usize, ld: i32, c0: i32, cb: i32, n: i32, P: usize, p0: i32, p1: i32): void {
  const step = (<usize>cb) * (W << 2);
  p1 = min(p1, gramPanels(n));
  for (let p = p0; p < p1; p++) {
    for (let c = 0; c < W; c++) {
      const i = p * W + c;
      let dst = P + (<usize>p) * step + ((<usize>c) << 2);
      if (i < n) {
        let src = X + (((<usize>i) * ld + c0) << 2);
        for (let k = 0; k < cb; k++) {
          store<f32>(dst, load<f32>(src));
          src += 4;
          dst += W << 2;
        }
      } else {
        for (let k = 0; k < cb; k++) {
          store<f32>(dst, 0);
          dst += W << 2;
        }
      }
    }
  }
}

/**
 * C[i][j] += Σ_r PA[r][i]·PB[r][j] over rb packed rows, for result rows i0 ≤ i < i1 (i0, i1 multiples of MR or
 * i1 = da). upper ≠ 0: only tiles that reach the upper triangle (PA = PB, the Gram G = XᵀX). Threads take disjoint
 * row ranges: each entry is summed by one thread in row order, whatever the thread count.
 */
export function gramTiles(PA: usize, da: i32, PB: usize, db: i32, rb: i32, C: usize, ldc: i32, upper: i32,
  i0: i32, i1: i32): void {
  const panel = (<usize>rb) * (W << 2);
  for (let i = i0; i < i1; i += MR) {
    const a = PA + (<usize>(i / W)) * panel + ((<usize>(i % W)) << 2);
    const ni = min(MR, da - i);
    for (let j0 = upper ? (i / W) * W : 0; j0 < db; j0 += W) {
      const b = PB + (<usize>(j0 / W)) * panel;
      tile(a, b, rb, C + ((<usize>i * ldc + j0) << 3), ldc, ni, min(W, db - j0));
    }
  }
}

/** Copies the upper triangle of G (d×d) onto the lower one. */
// Zeroes bytes [P, P + bytes): the arena's fill for new allocations. From JavaScript, filling shared memory went
// byte by byte (4 MiB in 1.8 ms against 0.05 ms unshared); memory.fill runs at memory speed either way.
export function zero(P: usize, bytes: usize): void {
  memory.fill(P, 0, bytes);
}

export function symmetrize(G: usize, d: i32): void {
  for (let i = 1; i < d; i++) {
    for (let j = 0; j < i; j++) {
      store<f64>(G + ((<usize>i * d + j) << 3), load<f64>(G + ((<usize>j * d + i) << 3)));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// f64 matrix product C = A B (A: M×K, B: K×N), for Q = C W and the objective's normaliser.
// B is packed KC rows at a time into 4-column panels; a 4×4 tile (8 f64x2 registers) runs over each.

const KC: i32 = 256;

/** Rows of B packed at a time. */
export function gemmChunk(): i32 {
  return KC;
}

/** Doubles of scratch that gemmPack needs for N columns. */
export function gemmPackDoubles(N: i32): i32 {
  return KC * (((N + 3) >> 2) << 2);
}

/** Packs rows k0 .. k0+kc of B (K×N, f64) into 4-column panels at P (gemmPackDoubles(N) doubles). */
export function gemmPack(B: usize, N: i32, k0: i32, kc: i32, P: usize): void {
  const np = (N + 3) >> 2, panel = (<usize>kc) << 5;
  for (let k = 0; k < kc; k++) {
    const src = B + ((<usize>(k0 + k) * N) << 3);
    for (let p = 0; p < np; p++) {
      const dst = P + (<usize>p) * panel + ((<usize>k) << 5);
      for (let c = 0; c < 4; c++) {
        const j = (p << 2) + c;
        store<f64>(dst + (<usize>c << 3), j < N ? load<f64>(src + (<usize>j << 3)) : 0);
      }
    }
  }
}

/** C[i][:] += A[i][k0 .. k0+kc] · (packed B rows), for rows i0 ≤ i < i1 of C (M×N; A is M×K). tmp: 16 doubles. */
export function gemmRows(A: usize, K: i32, k0: i32, kc: i32, P: usize, C: usize, N: i32, tmp: usize,
  i0: i32, i1: i32): void {
  const np = (N + 3) >> 2, panel = (<usize>kc) << 5;
  for (let b0 = i0; b0 < i1; b0 += 64) {
    const b1 = min(i1, b0 + 64);
    for (let p = 0; p < np; p++) {
      const b = P + (<usize>p) * panel;
      const j0 = p << 2, nj = min(4, N - j0);
      for (let i = b0; i < b1; i += 4) {
        gemmTile(A + ((<usize>i * K + k0) << 3), K, b, kc, C + ((<usize>i * N + j0) << 3), N, min(4, b1 - i), nj, tmp);
      }
    }
  }
}

function gemmTile(a: usize, lda: i32, b: usize, kc: i32, out: usize, ldc: i32, ni: i32, nj: i32, tmp: usize): void {
  const ra = (<usize>lda) << 3;
  const a0 = a, a1 = a + (ni > 1 ? ra : 0), a2 = a + (ni > 2 ? 2 * ra : 0), a3 = a + (ni > 3 ? 3 * ra : 0);
  let c00 = f64x2.splat(0), c01 = f64x2.splat(0), c10 = f64x2.splat(0), c11 = f64x2.splat(0);
  let c20 = f64x2.splat(0), c21 = f64x2.splat(0), c30 = f64x2.splat(0), c31 = f64x2.splat(0);
  for (let k = 0; k < kc; k++) {
    const o = (<usize>k) << 3;
    const b0 = v128.load(b), b1 = v128.load(b, 16);
    let s = v128.load64_splat(a0 + o);
    c00 = madd2(s, b0, c00); c01 = madd2(s, b1, c01);
    s = v128.load64_splat(a1 + o);
    c10 = madd2(s, b0, c10); c11 = madd2(s, b1, c11);
    s = v128.load64_splat(a2 + o);
    c20 = madd2(s, b0, c20); c21 = madd2(s, b1, c21);
    s = v128.load64_splat(a3 + o);
    c30 = madd2(s, b0, c30); c31 = madd2(s, b1, c31);
    b += 32;
  }
  v128.store(tmp, c00); v128.store(tmp, c01, 16); v128.store(tmp, c10, 32); v128.store(tmp, c11, 48);
  v128.store(tmp, c20, 64); v128.store(tmp, c21, 80); v128.store(tmp, c30, 96); v128.store(tmp, c31, 112);
  const row = (<usize>ldc) << 3;
  for (let i = 0; i < ni; i++) {
    for (let j = 0; j < nj; j++) {
      const o = out + (<usize>i) * row + (<usize>j << 3);
      store<f64>(o, load<f64>(o) + load<f64>(tmp + (<usize>(i * 4 + j) << 3)));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The greedy: a pivoted Cholesky of G that carries Q = C W along. Rows are "positions": the host keeps the
// remaining candidates in rows [0, n) so that every loop below is a contiguous sweep.

@inline function dot(x: usize, y: usize, n: i32): f64 {
  let s0 = f64x2.splat(0), s1 = f64x2.splat(0);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = (<usize>i) << 3;
    s0 = madd2(v128.load(x + o), v128.load(y + o), s0);
    s1 = madd2(v128.load(x + o, 16), v128.load(y + o, 16), s1);
  }
  s0 = f64x2.add(s0, s1);
  let s = f64x2.extract_lane(s0, 0) + f64x2.extract_lane(s0, 1);
  for (; i < n; i++) s += load<f64>(x + (<usize>i << 3)) * load<f64>(y + (<usize>i << 3));
  return s;
}

/** gcol[p] = G[j][orig[p]] for p < n: column j of G in position order. */
export function gather(G: usize, d: i32, j: i32, orig: usize, n: i32, gcol: usize): void {
  const row = G + ((<usize>j * d) << 3);
  for (let p = 0; p < n; p++) {
    store<f64>(gcol + (<usize>p << 3), load<f64>(row + ((<usize>load<i32>(orig + (<usize>p << 2))) << 3)));
  }
}

/**
 * New Cholesky column for pivot row jrow: u[p] = (gcol[p] − L[p,t0:t]·L[jrow,t0:t]) · inv, for p0 ≤ p < p1; also
 * L[p,t] = u[p]. L is n×ldl row-major (a row per position). t0 > 0: gcol already holds G's column less the products
 * over columns 0..t0 (a channel's g columns take those in one pass over L: the host's gemm).
 */
export function extend(L: usize, ldl: i32, t0: i32, t: i32, p0: i32, p1: i32, jrow: i32, gcol: usize, inv: f64,
  u: usize): void {
  const rowBytes = (<usize>ldl) << 3, skip = (<usize>t0) << 3;
  const lj = L + (<usize>jrow) * rowBytes + skip;
  for (let p = p0; p < p1; p++) {
    const lp = L + (<usize>p) * rowBytes;
    const v = (load<f64>(gcol + (<usize>p << 3)) - dot(lp + skip, lj, t - t0)) * inv;
    store<f64>(u + (<usize>p << 3), v);
    store<f64>(lp + ((<usize>t) << 3), v);
  }
}

// Q[p] −= u[p]·q over m columns; returns ‖Q[p]‖² after the update.
@inline function updateRow(row: usize, m: i32, up: f64, q: usize): f64 {
  let n0 = f64x2.splat(0), n1 = f64x2.splat(0);
  let j = 0;
  if (up != 0) {
    const us = f64x2.splat(up);
    for (; j + 4 <= m; j += 4) {
      const o = (<usize>j) << 3;
      const v0 = nmadd2(us, v128.load(q + o), v128.load(row + o));
      const v1 = nmadd2(us, v128.load(q + o, 16), v128.load(row + o, 16));
      v128.store(row + o, v0); v128.store(row + o, v1, 16);
      n0 = madd2(v0, v0, n0); n1 = madd2(v1, v1, n1);
    }
    n0 = f64x2.add(n0, n1);
    let s = f64x2.extract_lane(n0, 0) + f64x2.extract_lane(n0, 1);
    for (; j < m; j++) {
      const o = row + (<usize>j << 3);
      const v = load<f64>(o) - up * load<f64>(q + (<usize>j << 3));
      store<f64>(o, v);
      s += v * v;
    }
    return s;
  }
  return dot(row, row, m);  // orthogonal to the pivot: the row does not change
}

/** Q[p] −= u[p]·q for p0 ≤ p < p1 (Q has m columns). */
export function updateRows(Q: usize, m: i32, u: usize, q: usize, p0: i32, p1: i32): void {
  const rowBytes = (<usize>m) << 3;
  for (let p = p0; p < p1; p++) {
    const up = load<f64>(u + (<usize>p << 3));
    if (up != 0) updateRow(Q + (<usize>p) * rowBytes, m, up, q);
  }
}

/**
 * Single columns (g = 1), fused: Q[p] −= u[p]·q, e[p] −= u[p]², gain[p] = ‖Q[p]‖²/e[p], for p0 ≤ p < p1.
 * A residual e[p] ≤ tol·diag0[p] marks a column in the span of the chosen ones: its gain is 0, never NaN.
 */
export function updateScan(Q: usize, m: i32, u: usize, q: usize, p0: i32, p1: i32, e: usize, diag0: usize, tol: f64,
  gains: usize): void {
  const rowBytes = (<usize>m) << 3;
  for (let p = p0; p < p1; p++) {
    const o = (<usize>p) << 3;
    const up = load<f64>(u + o);
    const norm = updateRow(Q + (<usize>p) * rowBytes, m, up, q);
    const ep = load<f64>(e + o) - up * up;
    store<f64>(e + o, ep);
    store<f64>(gains + o, ep > tol * load<f64>(diag0 + o) && ep > 0 ? norm / ep : 0);
  }
}

/** E[b] −= u_b u_bᵀ for each g×g residual block b0 ≤ b < b1 (u_b = u[b·g .. b·g+g)). */
export function downdateBlocks(E: usize, u: usize, b0: i32, b1: i32, g: i32): void {
  const gg = g * g;
  for (let b = b0; b < b1; b++) {
    const eb = E + ((<usize>(b * gg)) << 3);
    const ub = u + ((<usize>(b * g)) << 3);
    for (let i = 0; i < g; i++) {
      const ui = load<f64>(ub + (<usize>i << 3));
      if (ui == 0) continue;
      for (let j = 0; j < g; j++) {
        const o = eb + ((<usize>(i * g + j)) << 3);
        store<f64>(o, load<f64>(o) - ui * load<f64>(ub + (<usize>j << 3)));
      }
    }
  }
}

/**
 * Channel gains: gain[b] = tr(Q_Iᵀ E_II⁺ Q_I) for the g rows I of block b0 ≤ b < b1, with E_II the block's
 * residual Gram. E_II is factored column by column (E = RᵀR), skipping columns whose residual is ≤ tol·diag0:
 * those lie in the span already chosen and add nothing. S: scratch of 3·g·g + g doubles.
 */
export function groupGains(Q: usize, m: i32, E: usize, diag0: usize, b0: i32, b1: i32, g: i32, tol: f64,
  gains: usize, S: usize): void {
  const gg = <usize>(g * g);
  const M = S, R = S + (gg << 3), Y = S + (gg << 4), x = S + (gg * 24);
  const rowBytes = (<usize>m) << 3;
  for (let b = b0; b < b1; b++) {
    const q0 = Q + (<usize>(b * g)) * rowBytes;
    const eb = E + ((<usize>b * gg) << 3);
    const d0 = diag0 + ((<usize>(b * g)) << 3);
    // M = Q_I Q_Iᵀ
    for (let i = 0; i < g; i++) {
      for (let j = i; j < g; j++) {
        const v = dot(q0 + (<usize>i) * rowBytes, q0 + (<usize>j) * rowBytes, m);
        store<f64>(M + ((<usize>(i * g + j)) << 3), v);
        store<f64>(M + ((<usize>(j * g + i)) << 3), v);
      }
    }
    // R: upper Cholesky factor of E_II over the accepted columns (R[i][i] = 0 marks a skipped one)
    for (let i = 0; i < g; i++) {
      let r = load<f64>(eb + ((<usize>(i * g + i)) << 3));
      for (let k = 0; k < i; k++) { const v = load<f64>(R + ((<usize>(k * g + i)) << 3)); r -= v * v; }
      const ok = r > tol * load<f64>(d0 + (<usize>i << 3)) && r > 0;
      const rii = ok ? Math.sqrt(r) : 0;
      store<f64>(R + ((<usize>(i * g + i)) << 3), rii);
      for (let j = i + 1; j < g; j++) {
        let v: f64 = 0;
        if (ok) {
          v = load<f64>(eb + ((<usize>(i * g + j)) << 3));
          for (let k = 0; k < i; k++) {
            v -= load<f64>(R + ((<usize>(k * g + i)) << 3)) * load<f64>(R + ((<usize>(k * g + j)) << 3));
          }
          v /= rii;
        }
        store<f64>(R + ((<usize>(i * g + j)) << 3), v);
      }
    }
    // Y = R⁻ᵀ M column by column, then gain = Σ_i (R⁻ᵀ Y[i,:]ᵀ)[i] = tr(R⁻ᵀ M R⁻¹)
    for (let c = 0; c < g; c++) {
      forward(R, g, M + ((<usize>c) << 3), g, x);
      for (let i = 0; i < g; i++) store<f64>(Y + ((<usize>(i * g + c)) << 3), load<f64>(x + (<usize>i << 3)));
    }
    let gain: f64 = 0;
    for (let i = 0; i < g; i++) {
      if (load<f64>(R + ((<usize>(i * g + i)) << 3)) == 0) continue;
      forward(R, g, Y + ((<usize>(i * g)) << 3), 1, x);
      gain += load<f64>(x + (<usize>i << 3));
    }
    store<f64>(gains + ((<usize>b) << 3), gain);
  }
}

// Solves Rᵀ x = rhs (rhs read with a stride), skipping columns with R[i][i] = 0 (x[i] = 0 there).
function forward(R: usize, g: i32, rhs: usize, stride: i32, x: usize): void {
  for (let i = 0; i < g; i++) {
    const rii = load<f64>(R + ((<usize>(i * g + i)) << 3));
    let v: f64 = 0;
    if (rii != 0) {
      v = load<f64>(rhs + ((<usize>(i * stride)) << 3));
      for (let k = 0; k < i; k++) v -= load<f64>(R + ((<usize>(k * g + i)) << 3)) * load<f64>(x + (<usize>k << 3));
      v /= rii;
    }
    store<f64>(x + (<usize>i << 3), v);
  }
}

/** The position p < n of the largest gain; ties go to the lowest channel id chan[p]. */
export function argmax(gains: usize, chan: usize, n: i32): i32 {
  let best = -1, bestGain = -Infinity, bestChan = 0x7fffffff;
  for (let p = 0; p < n; p++) {
    const v = load<f64>(gains + (<usize>p << 3));
    const c = load<i32>(chan + (<usize>p << 2));
    if (v > bestGain || (v == bestGain && c < bestChan)) { best = p; bestGain = v; bestChan = c; }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------------------------
// Re-fit: solve Lᵀ X = Z in place, L lower triangular (t×t, row stride ldl), X t×m. Z holds the greedy's q rows
// (Z = L⁻¹ (C W)_S), so this back substitution is all that is left of G_SS⁻¹ (C W)_S. Columns go CW at a time
// so that the block of X being solved stays in cache.

const CW: i32 = 64;

/** For the columns j0 ≤ j < j1 of X (threads split the columns). */
export function solveUpperT(L: usize, ldl: i32, t: i32, X: usize, m: i32, j0: i32, j1: i32): void {
  const rowL = (<usize>ldl) << 3, rowX = (<usize>m) << 3;
  for (let c0 = j0; c0 < j1; c0 += CW) {
    const w = min(CW, j1 - c0);
    for (let b = t - 1; b >= 0; b--) {
      const lb = L + (<usize>b) * rowL;
      const xb = X + (<usize>b) * rowX + ((<usize>c0) << 3);
      const inv = 1.0 / load<f64>(lb + ((<usize>b) << 3));
      scale(xb, w, inv);
      for (let a = 0; a < b; a++) {
        const l = load<f64>(lb + ((<usize>a) << 3));
        if (l != 0) axpy(X + (<usize>a) * rowX + ((<usize>c0) << 3), xb, w, -l);
      }
    }
  }
}

@inline function scale(x: usize, n: i32, s: f64): void {
  const sv = f64x2.splat(s);
  let i = 0;
  for (; i + 2 <= n; i += 2) { const o = (<usize>i) << 3; v128.store(x + o, f64x2.mul(v128.load(x + o), sv)); }
  for (; i < n; i++) { const o = x + (<usize>i << 3); store<f64>(o, load<f64>(o) * s); }
}

// y += a·x
@inline function axpy(y: usize, x: usize, n: i32, a: f64): void {
  const av = f64x2.splat(a);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = (<usize>i) << 3;
    v128.store(y + o, madd2(av, v128.load(x + o), v128.load(y + o)));
    v128.store(y + o, madd2(av, v128.load(x + o, 16), v128.load(y + o, 16)), 16);
  }
  for (; i < n; i++) { const o = (<usize>i) << 3; store<f64>(y + o, load<f64>(y + o) + a * load<f64>(x + o)); }
}

/**
 * out[i] = X[idx[i] + shift] for i < n: rows of d f32 (idx: i32 row numbers). A stride-1 Conv's input rows that a
 * kernel tap's windows do not reach (ShiftGram's border corrections). Gathered in JavaScript, they and their column
 * sums made ResNet-20's default prune at 4× take 21.6–21.7 s against 19.6–20.0 s.
 */
export function gatherRows(X: usize, d: i32, idx: usize, n: i32, shift: i32, out: usize): void {
  const bytes = (<usize>d) << 2;
  for (let i = 0; i < n; i++) {
    const r = <usize>(load<i32>(idx + ((<usize>i) << 2)) + shift);
    memory.copy(out + <usize>i * bytes, X + r * bytes, bytes);
  }
}

/**
 * out[c][r] = X[r][c] for X of rows × cols (f32): a conv's output sample [m, OH·OW] as its rows [OH·OW, m], the
 * asymmetric capture's given target. Blocks of 4×4 go through registers.
 */
export function transpose(X: usize, rows: i32, cols: i32, out: usize): void {
  const r4 = rows & ~3,
    c4 = cols & ~3,
    ld = (<usize>cols) << 2,
    lo = (<usize>rows) << 2;
  for (let r = 0; r < r4; r += 4) {
    const x = X + (<usize>r) * ld;
    for (let c = 0; c < c4; c += 4) {
      const src = x + ((<usize>c) << 2),
        a = v128.load(src),
        b = v128.load(src + ld),
        e = v128.load(src + 2 * ld),
        f = v128.load(src + 3 * ld);
      const ab0 = v128.shuffle<f32>(a, b, 0, 4, 1, 5),
        ab1 = v128.shuffle<f32>(a, b, 2, 6, 3, 7),
        ef0 = v128.shuffle<f32>(e, f, 0, 4, 1, 5),
        ef1 = v128.shuffle<f32>(e, f, 2, 6, 3, 7);
      const dst = out + (<usize>c) * lo + ((<usize>r) << 2);
      v128.store(dst, v128.shuffle<f64>(ab0, ef0, 0, 2));
      v128.store(dst + lo, v128.shuffle<f64>(ab0, ef0, 1, 3));
      v128.store(dst + 2 * lo, v128.shuffle<f64>(ab1, ef1, 0, 2));
      v128.store(dst + 3 * lo, v128.shuffle<f64>(ab1, ef1, 1, 3));
    }
    for (let c = c4; c < cols; c++)
      for (let i = 0; i < 4; i++)
        store<f32>(out + (<usize>c) * lo + ((<usize>(r + i)) << 2), load<f32>(x + (<usize>i) * ld + ((<usize>c) << 2)));
  }
  for (let r = r4; r < rows; r++)
    for (let c = 0; c < cols; c++)
      store<f32>(out + (<usize>c) * lo + ((<usize>r) << 2), load<f32>(X + (<usize>r) * ld + ((<usize>c) << 2)));
}

// ---------------------------------------------------------------------------------------------------------------
// im2col for a Conv consumer: one sample X (C×H×W, f32) to its patches, out[(oy·OW + ox)][c·kh·kw + i·kw + j]
// = X[c][oy·sh − pt + i·dh][ox·sw − pl + j·dw], 0 outside (the padding). Column order matches the Conv weight
// [m][C][kh][kw], so channel c owns the g = kh·kw columns c·g .. c·g+g−1. X and out need 16 bytes of slack past
// their ends: runs of the kernel's row are copied four entries at a time.

export function im2col(X: usize, C: i32, H: i32, W: i32, kh: i32, kw: i32, sh: i32, sw: i32, pt: i32, pl: i32,
  dh: i32, dw: i32, OH: i32, OW: i32, out: usize): void {
  // Kernels 2 or more wide go row by row, the stores in order and four entries at a time; column by column was 1.9×
  // slower on 3×3 (6 channels of 13×13, 512 samples: 5.2 against 2.7 ms; 32 of 16×16, padded: 62 against 34) and
  // 2.8× on 5×5. 1×1 goes column by column, each input row read in order: 3× faster there than row by row.
  if (kw >= 2) im2colRows(X, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, out);
  else im2colColumns(X, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, out);
}

function im2colRows(X: usize, C: i32, H: i32, W: i32, kh: i32, kw: i32, sh: i32, sw: i32, pt: i32, pl: i32,
  dh: i32, dw: i32, OH: i32, OW: i32, out: usize): void {
  let o = out;
  for (let oy = 0; oy < OH; oy++) {
    for (let ox = 0; ox < OW; ox++) {
      const x0 = ox * sw - pl;
      const inside = x0 >= 0 && x0 + (kw - 1) * dw < W; // every j of the patch within the row
      for (let c = 0; c < C; c++) {
        for (let i = 0; i < kh; i++) {
          const iy = oy * sh - pt + i * dh;
          if (iy < 0 || iy >= H) {
            for (let j = 0; j < kw; j++) { store<f32>(o, 0); o += 4; }
            continue;
          }
          const row = X + ((<usize>((c * H + iy) * W)) << 2);
          if (inside && dw == 1) {
            // kw consecutive entries, four at a time: the last four may run up to 3 entries past them, which the next
            // entries overwrite (and past the sample's last row, into the buffers' 16 bytes of slack)
            const src = row + ((<usize>x0) << 2);
            for (let j = 0; j < kw; j += 4) v128.store(o + ((<usize>j) << 2), v128.load(src + ((<usize>j) << 2)));
            o += (<usize>kw) << 2;
          } else {
            for (let j = 0; j < kw; j++) {
              const ix = x0 + j * dw;
              store<f32>(o, ix >= 0 && ix < W ? load<f32>(row + ((<usize>ix) << 2)) : 0);
              o += 4;
            }
          }
        }
      }
    }
  }
}

function im2colColumns(X: usize, C: i32, H: i32, W: i32, kh: i32, kw: i32, sh: i32, sw: i32, pt: i32, pl: i32,
  dh: i32, dw: i32, OH: i32, OW: i32, out: usize): void {
  const d = C * kh * kw;
  for (let c = 0; c < C; c++) {
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const col = (c * kh + i) * kw + j;
        for (let oy = 0; oy < OH; oy++) {
          const iy = oy * sh - pt + i * dh;
          let o = out + ((<usize>(oy * OW) * d + col) << 2);
          const step = (<usize>d) << 2;
          if (iy < 0 || iy >= H) {
            for (let ox = 0; ox < OW; ox++) { store<f32>(o, 0); o += step; }
            continue;
          }
          const row = X + ((<usize>((c * H + iy) * W)) << 2);
          for (let ox = 0; ox < OW; ox++) {
            const ix = ox * sw - pl + j * dw;
            store<f32>(o, ix >= 0 && ix < W ? load<f32>(row + ((<usize>ix) << 2)) : 0);
            o += step;
          }
        }
      }
    }
  }
}

/** Rows of X that gramPack takes at a time. */
export function gramRows(): i32 {
  return RB;
}
