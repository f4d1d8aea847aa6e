import { Arena } from './memory.js';
import { positional, type Kernels } from './types.js';

// The kernels of assembly/index.ts in plain TypeScript: straightforward loops, f64 accumulation throughout.
// Same arguments (byte offsets into the arena), same results up to rounding; tests hold the two together and the
// benchmark reports the speed ratio.

/** A plain-TypeScript kernel set with its own memory. */
export function plainKernels(): Kernels {
  const arena = new Arena();
  const F = () => new Float64Array(arena.memory.buffer);
  const S = () => new Float32Array(arena.memory.buffer);
  const I = () => new Int32Array(arena.memory.buffer);
  const dot = (f: Float64Array, x: number, y: number, n: number) => {
    let s = 0;
    for (let i = 0; i < n; i++) s += f[x + i] * f[y + i];
    return s;
  };
  const updateRow = (f: Float64Array, r: number, m: number, up: number, q: number) => {
    let s = 0;
    for (let j = 0; j < m; j++) {
      const v = f[r + j] - up * f[q + j];
      f[r + j] = v;
      s += v * v;
    }
    return s;
  };
  const forward = (f: Float64Array, R: number, g: number, rhs: number, stride: number, x: number) => {
    for (let i = 0; i < g; i++) {
      const rii = f[R + i * g + i];
      let v = 0;
      if (rii !== 0) {
        v = f[rhs + i * stride];
        for (let k = 0; k < i; k++) v -= f[R + k * g + i] * f[x + k];
        v /= rii;
      }
      f[x + i] = v;
    }
  };

  return {
    name: 'plain',
    build: 'plain',
    arena,
    threads: 1,
    par(name, args) {
      (this[name] as (...a: number[]) => void)(...positional(name, args));
    },
    gramRows: () => 128,
    gramPanels: (d) => Math.ceil(d / 8),
    gramPackFloats: (d) => 128 * d,
    gramPack(X, ld, r0, rb, d, P, p0, p1) {
      // rows as they are, columns 8·p0 .. 8·p1
      const x = S(),
        c0 = 8 * p0,
        c1 = Math.min(d, 8 * p1);
      for (let r = 0; r < rb; r++)
        x.copyWithin((P >>> 2) + r * d + c0, (X >>> 2) + (r0 + r) * ld + c0, (X >>> 2) + (r0 + r) * ld + c1);
    },
    gramPackT(X, ld, c0, cb, n, P, p0, p1) {
      // Xᵀ's rows c0 .. c0+cb, columns (X's rows) 8·p0 .. 8·p1
      const x = S(),
        i1 = Math.min(n, 8 * p1);
      for (let k = 0; k < cb; k++)
        for (let i = 8 * p0; i < i1; i++) x[(P >>> 2) + k * n + i] = x[(X >>> 2) + i * ld + c0 + k]!;
    },
    gramTiles(PA, da, PB, db, rb, C, ldc, upper, i0, i1) {
      const x = S(),
        f = F(),
        A4 = PA >>> 2,
        B4 = PB >>> 2,
        C8 = C >>> 3;
      for (let r = 0; r < rb; r++) {
        for (let i = i0; i < i1; i++) {
          const xi = x[A4 + r * da + i];
          if (xi === 0) continue;
          const ci = C8 + i * ldc,
            br = B4 + r * db;
          for (let j = upper ? i : 0; j < db; j++) f[ci + j] += xi * x[br + j];
        }
      }
    },
    columnSums(X, rows, d, sums, j0, j1) {
      const x = S(),
        f = F(),
        X4 = X >>> 2,
        s8 = sums >>> 3;
      for (let r = 0; r < rows; r++) for (let j = j0; j < j1; j++) f[s8 + j] += x[X4 + r * d + j];
    },
    transpose(X, rows, cols, out) {
      const x = S(),
        X4 = X >>> 2,
        o4 = out >>> 2;
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) x[o4 + c * rows + r] = x[X4 + r * cols + c]!;
    },
    gatherRows(X, d, idx, n, shift, out) {
      const x = S(),
        i4 = idx >>> 2,
        ix = I();
      for (let i = 0; i < n; i++)
        x.copyWithin(
          (out >>> 2) + i * d,
          (X >>> 2) + (ix[i4 + i]! + shift) * d,
          (X >>> 2) + (ix[i4 + i]! + shift + 1) * d,
        );
    },
    columnMoments(X, rows, d, sums, squares, j0, j1) {
      const x = S(),
        f = F(),
        X4 = X >>> 2,
        s8 = sums >>> 3,
        q8 = squares >>> 3;
      for (let r = 0; r < rows; r++)
        for (let j = j0; j < j1; j++) {
          const v = x[X4 + r * d + j]!;
          f[s8 + j] += v;
          f[q8 + j] += v * v;
        }
    },
    symmetrize(G, d) {
      const f = F(),
        G8 = G >>> 3;
      for (let i = 1; i < d; i++) for (let j = 0; j < i; j++) f[G8 + i * d + j] = f[G8 + j * d + i];
    },
    zero(P, bytes) {
      new Uint8Array(arena.memory.buffer, P, bytes).fill(0);
    },
    gemmChunk: () => 256,
    gemmPackDoubles: (N) => 256 * N,
    gemmPack(B, N, k0, kc, P) {
      // rows as they are
      const f = F();
      f.copyWithin(P >>> 3, (B >>> 3) + k0 * N, (B >>> 3) + (k0 + kc) * N);
    },
    gemmRows(A, K, k0, kc, P, C, N, _tmp, i0, i1) {
      const f = F(),
        A8 = A >>> 3,
        P8 = P >>> 3,
        C8 = C >>> 3;
      for (let i = i0; i < i1; i++) {
        for (let k = 0; k < kc; k++) {
          const a = f[A8 + i * K + k0 + k];
          if (a === 0) continue;
          const b = P8 + k * N,
            c = C8 + i * N;
          for (let j = 0; j < N; j++) f[c + j] += a * f[b + j];
        }
      }
    },
    gather(G, d, j, orig, n, gcol) {
      const f = F(),
        o = I(),
        row = (G >>> 3) + j * d;
      for (let p = 0; p < n; p++) f[(gcol >>> 3) + p] = f[row + o[(orig >>> 2) + p]];
    },
    extend(L, ldl, t0, t, p0, p1, jrow, gcol, inv, u) {
      const f = F(),
        L8 = L >>> 3,
        lj = L8 + jrow * ldl;
      for (let p = p0; p < p1; p++) {
        const lp = L8 + p * ldl;
        const v = (f[(gcol >>> 3) + p] - dot(f, lp + t0, lj + t0, t - t0)) * inv;
        f[(u >>> 3) + p] = v;
        f[lp + t] = v;
      }
    },
    updateRows(Q, m, u, q, p0, p1) {
      const f = F();
      for (let p = p0; p < p1; p++) {
        const up = f[(u >>> 3) + p];
        if (up !== 0) updateRow(f, (Q >>> 3) + p * m, m, up, q >>> 3);
      }
    },
    updateScan(Q, m, u, q, p0, p1, e, diag0, tol, gains) {
      const f = F();
      for (let p = p0; p < p1; p++) {
        const up = f[(u >>> 3) + p];
        const norm = updateRow(f, (Q >>> 3) + p * m, m, up, q >>> 3);
        const ep = f[(e >>> 3) + p] - up * up;
        f[(e >>> 3) + p] = ep;
        f[(gains >>> 3) + p] = ep > tol * f[(diag0 >>> 3) + p] && ep > 0 ? norm / ep : 0;
      }
    },
    downdateBlocks(E, u, b0, b1, g) {
      const f = F();
      for (let b = b0; b < b1; b++) {
        const eb = (E >>> 3) + b * g * g,
          ub = (u >>> 3) + b * g;
        for (let i = 0; i < g; i++) for (let j = 0; j < g; j++) f[eb + i * g + j] -= f[ub + i] * f[ub + j];
      }
    },
    groupGains(Q, m, E, diag0, b0, b1, g, tol, gains, Sc) {
      const f = F(),
        gg = g * g;
      const M = Sc >>> 3,
        R = M + gg,
        Y = R + gg,
        x = Y + gg;
      for (let b = b0; b < b1; b++) {
        const q0 = (Q >>> 3) + b * g * m,
          eb = (E >>> 3) + b * gg,
          d0 = (diag0 >>> 3) + b * g;
        for (let i = 0; i < g; i++) {
          for (let j = i; j < g; j++) f[M + i * g + j] = f[M + j * g + i] = dot(f, q0 + i * m, q0 + j * m, m);
        }
        for (let i = 0; i < g; i++) {
          let r = f[eb + i * g + i];
          for (let k = 0; k < i; k++) r -= f[R + k * g + i] ** 2;
          const ok = r > tol * f[d0 + i] && r > 0;
          const rii = ok ? Math.sqrt(r) : 0;
          f[R + i * g + i] = rii;
          for (let j = i + 1; j < g; j++) {
            let v = 0;
            if (ok) {
              v = f[eb + i * g + j];
              for (let k = 0; k < i; k++) v -= f[R + k * g + i] * f[R + k * g + j];
              v /= rii;
            }
            f[R + i * g + j] = v;
          }
        }
        for (let c = 0; c < g; c++) {
          forward(f, R, g, M + c, g, x);
          for (let i = 0; i < g; i++) f[Y + i * g + c] = f[x + i];
        }
        let gain = 0;
        for (let i = 0; i < g; i++) {
          if (f[R + i * g + i] === 0) continue;
          forward(f, R, g, Y + i * g, 1, x);
          gain += f[x + i];
        }
        f[(gains >>> 3) + b] = gain;
      }
    },
    argmax(gains, chan, n) {
      const f = F(),
        c = I();
      let best = -1,
        bestGain = -Infinity,
        bestChan = 0x7fffffff;
      for (let p = 0; p < n; p++) {
        const v = f[(gains >>> 3) + p],
          ch = c[(chan >>> 2) + p];
        if (v > bestGain || (v === bestGain && ch < bestChan)) {
          best = p;
          bestGain = v;
          bestChan = ch;
        }
      }
      return best;
    },
    solveUpperT(L, ldl, t, X, m, j0, j1) {
      const f = F(),
        L8 = L >>> 3,
        X8 = X >>> 3;
      for (let b = t - 1; b >= 0; b--) {
        const inv = 1 / f[L8 + b * ldl + b],
          xb = X8 + b * m;
        for (let j = j0; j < j1; j++) f[xb + j] *= inv;
        for (let a = 0; a < b; a++) {
          const l = f[L8 + b * ldl + a];
          if (l === 0) continue;
          const xa = X8 + a * m;
          for (let j = j0; j < j1; j++) f[xa + j] -= l * f[xb + j];
        }
      }
    },
    im2col(X, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, out) {
      const x = S(),
        X4 = X >>> 2,
        o4 = out >>> 2,
        d = C * kh * kw;
      for (let oy = 0; oy < OH; oy++)
        for (let ox = 0; ox < OW; ox++)
          for (let c = 0; c < C; c++)
            for (let i = 0; i < kh; i++)
              for (let j = 0; j < kw; j++) {
                const iy = oy * sh - pt + i * dh,
                  ix = ox * sw - pl + j * dw;
                x[o4 + (oy * OW + ox) * d + (c * kh + i) * kw + j] =
                  iy >= 0 && iy < H && ix >= 0 && ix < W ? x[X4 + (c * H + iy) * W + ix] : 0;
              }
    },
  };
}
