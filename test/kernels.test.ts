import { describe, it, expect, vi, afterEach } from 'vitest';
import { readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { BUILDS } from './relaxed-simd.js';
import { KERNELS, KERNEL_NAMES, PAR_KERNELS, parLayout, positional } from '../src/kernels/types.js';
import { chooseBuild, kernelBuild, poolStats } from '../src/kernels/wasm.js';
import { cores, coresFree, coresLeft, getKernels } from '../src/kernels/instances.js';
import { gramAccumulate } from '../src/kernels/ops.js';
import { GramAccumulator } from '../src/kernels/gram.js';
import { selectChannels } from '../src/select/greedy.js';
import { align16 } from '../src/kernels/memory.js';
import { rng, randMat, matmul, gramOf, oracleGreedy, objective, type Mat } from './oracle.js';

describe('kernel memory', () => {
  // An 8192-wide layer's selection needs offsets past 2 GiB; 32-bit bitwise alignment turned them negative.
  it('are aligned to 16 bytes past 2 GiB, up to 4 GiB', () => {
    for (const n of [0, 1, 16, 2 ** 31 - 1, 2 ** 31 + 1, 2 ** 32 - 17])
      expect([align16(n) % 16, align16(n) - n >= 0 && align16(n) - n < 16]).toEqual([0, true]);
    expect(align16(2 ** 31 + 1)).toBe(2 ** 31 + 16);
  });

  // The wasm sets clear new allocations with their own `zero` kernel (memory.fill), the plain set with a typed array.
  it('are zero when handed out again after a release, in shared, unshared and plain memory', () => {
    for (const K of [getKernels('wasm', 2, 'simd'), getKernels('wasm', 1, 'simd'), getKernels('plain')]) {
      const a = K.arena,
        mark = a.mark();
      const p = a.alloc(1000);
      a.f64(p, 125).fill(7);
      a.release(mark);
      const q = a.alloc(1003);
      expect([K.name, K.threads, q, new Uint8Array(a.memory.buffer, q, 1003).some((b) => b !== 0)]).toEqual([
        K.name,
        K.threads,
        p,
        false,
      ]);
      a.release(mark);
    }
  });
});

describe('the kernel table', () => {
  it('lists every export of each compiled build with its arity, and the plain twin likewise', () => {
    for (const file of ['subprune', 'subprune-mt', 'subprune-relaxed', 'subprune-relaxed-mt']) {
      const mod = new WebAssembly.Module(readFileSync(new URL(`../build/${file}.wasm`, import.meta.url)));
      const exported = WebAssembly.Module.exports(mod)
        .filter((e) => e.kind === 'function')
        .map((e) => e.name);
      expect(exported.sort()).toEqual([...KERNEL_NAMES].sort());
    }
    for (const K of [getKernels('wasm', 1, 'simd'), getKernels('plain')])
      for (const n of KERNEL_NAMES) expect([n, K[n].length]).toEqual([n, KERNELS[n].params.length]);
  });

  it('puts named arguments in parameter order and refuses a missing or unknown name', () => {
    const args = { Q: 1, m: 2, u: 3, q: 4, p0: 5, p1: 6 };
    expect(positional('updateRows', args)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(() => positional('updateRows', { ...args, p2: 7 } as typeof args)).toThrow(/no parameter p2/);
    const { q: _, ...short } = args;
    expect(() => positional('updateRows', short as typeof args)).toThrow(/argument q is missing/);
    expect(parLayout('groupGains')).toEqual({ lo: 4, hi: 5, scratch: 9, align: 1 });
    expect(parLayout('gramTiles')).toMatchObject({ lo: 8, hi: 9, scratch: -1 });
    expect(PAR_KERNELS).not.toContain('argmax');
  });
});

describe('build selection', () => {
  afterEach(() => {
    vi.unstubAllEnvs();
    vi.restoreAllMocks();
  });

  it('takes relaxed SIMD where it validates, plain SIMD where not; SUBPRUNE_KERNELS overrides', () => {
    expect(chooseBuild(undefined, () => true)).toBe('relaxed-simd');
    expect(chooseBuild(undefined, () => false)).toBe('simd');
    expect(chooseBuild('simd', () => true)).toBe('simd');
    expect(chooseBuild('relaxed', () => true)).toBe('relaxed-simd');
    expect(() => chooseBuild('relaxed-simd', () => false)).toThrow(/does not run relaxed SIMD/);
    expect(() => chooseBuild('avx', () => true)).toThrow(/use simd or relaxed-simd/);
  });

  it('follows WebAssembly.validate of build/subprune-relaxed.wasm and the environment variable', () => {
    vi.stubEnv('SUBPRUNE_KERNELS', '');
    expect(kernelBuild()).toBe('relaxed-simd'); // relaxed-simd.ts made this runtime accept it
    const validate = vi.spyOn(WebAssembly, 'validate').mockReturnValue(false);
    expect(kernelBuild()).toBe('simd');
    expect(getKernels('wasm', 1).build).toBe('simd');
    expect(validate).toHaveBeenCalled();
    vi.restoreAllMocks();
    vi.stubEnv('SUBPRUNE_KERNELS', 'simd');
    expect(getKernels('wasm', 1).build).toBe('simd');
    expect(getKernels('wasm', 2).build).toBe('simd');
    vi.stubEnv('SUBPRUNE_KERNELS', 'relaxed-simd');
    expect(getKernels('wasm', 1).build).toBe('relaxed-simd');
    expect(getKernels('wasm', 2).build).toBe('relaxed-simd');
  });
});

// The Gram matrix of f32 rows through gramAccumulate, for sizes that end in partial tiles and panels.
function gram(
  build: (typeof BUILDS)[number] | 'plain',
  threads: number,
  X: Float32Array,
  Y: Float32Array,
  dims: number[],
) {
  const [rows, dx, dy] = dims;
  const K = build === 'plain' ? getKernels('plain') : getKernels('wasm', threads, build),
    a = K.arena,
    mark = a.mark();
  const PX = a.alloc(K.gramPackFloats(dx) * 4),
    PY = a.alloc(K.gramPackFloats(dy) * 4);
  const Xp = a.alloc(X.length * 4),
    Yp = a.alloc(Y.length * 4),
    G = a.alloc(dx * dx * 8),
    C = a.alloc(dx * dy * 8);
  a.f32(Xp, X.length).set(X);
  a.f32(Yp, Y.length).set(Y);
  gramAccumulate(K, Xp, dx, 0, 0, rows, G, PX, 0);
  K.symmetrize(G, dx);
  gramAccumulate(K, Xp, dx, Yp, dy, rows, C, PX, PY);
  const out = [a.f64(G, dx * dx).slice(), a.f64(C, dx * dy).slice()];
  a.release(mark);
  return out;
}

describe.each(BUILDS)('the %s build', (build) => {
  it('accumulates Gram and cross-Gram matrices within f32 bounds of the f64 oracle, bit-identical on 2 threads', () => {
    const r = rng(71);
    for (const dims of [
      [300, 13, 13],
      [129, 8, 21],
      [5, 1, 3],
      [260, 37, 9],
      [400, 66, 17],
      [130, 33, 32],
    ]) {
      const [rows, dx, dy] = dims;
      const X = Float32Array.from({ length: rows * dx }, () => r() - 0.5),
        Y = Float32Array.from({ length: rows * dy }, () => r() - 0.5);
      const one = gram(build, 1, X, Y, dims),
        two = gram(build, 2, X, Y, dims);
      expect(two).toEqual(one);
      const Xm: Mat = { rows, cols: dx, a: Float64Array.from(X) },
        Ym: Mat = { rows, cols: dy, a: Float64Array.from(Y) };
      [gramOf(Xm), gramOf(Xm, Ym)].forEach((ref, t) => {
        // f32 products summed in f32 over ≤ 128 rows, then in f64: a few ε(f32) of the sums of |products|
        const bound = 1e-6 * Math.max(...ref.map(Math.abs));
        ref.forEach((v, i) => expect(Math.abs(one[t][i] - v)).toBeLessThan(bound));
      });
    }
  });

  it('selects as the float64 oracle does, bit-identical on 2 threads (g = 1 and g = 4, asymmetric)', () => {
    vi.stubEnv('SUBPRUNE_KERNELS', build);
    for (const [seed, N, d, m, g, asym] of [
      [81, 150, 30, 9, 1, false],
      [82, 150, 32, 7, 4, true],
    ] as const) {
      const r = rng(seed);
      const B = matmul(randMat(N, d, r), randMat(d, d, r));
      const A: Mat = asym ? { ...B, a: B.a.map((v) => v + 0.3 * (r() - 0.5)) } : B;
      const W = randMat(d, m, r),
        T = matmul(A, W);
      const pr = { d, m, g, G: gramOf(B), W: W.a, ...(asym ? { C: gramOf(B, A), H: gramOf(A) } : {}) };
      const k = d / g - 2;
      const one = selectChannels(pr, k, { threads: 1 }),
        two = selectChannels(pr, k, { threads: 2 });
      expect(two.order).toEqual(one.order);
      expect(two.objective).toEqual(one.objective);
      expect(two.refit(k).W).toEqual(one.refit(k).W);
      const ref = oracleGreedy(B, T, g, k);
      expect(one.order).toEqual(ref.order);
      one.objective.forEach((v, i) => expect(Math.abs(v - ref.objective[i])).toBeLessThan(1e-9));
      expect(Math.abs(one.objective[k - 1] - objective(B, T, one.order, g))).toBeLessThan(1e-9);
    }
    vi.unstubAllEnvs();
  });
});

describe('the thread pool', () => {
  it('runs jobs of 2, 4 and 8 parts in turn, each part once (Gram updates bit-identical to 1 thread)', () => {
    // A part run twice would add a row block twice; one left out, or claimed for a finished job, would drop one or
    // hang the caller. Claim slots that a 2-part job leaves alone must still be ready for the next 8-part job. Jobs
    // go on until the worker has taken a few hundred parts (on a busy machine it starts late and often finds the
    // caller done first), then one thread runs the same jobs.
    const r = rng(95),
      RB = 128,
      d = 40,
      blocks = 16;
    const X = Float32Array.from({ length: blocks * RB * d }, () => r() - 0.5);
    const gram = (threads: number, until: (jobs: number) => boolean) => {
      const K = getKernels('wasm', threads, 'simd'),
        a = K.arena,
        mark = a.mark();
      const Xp = a.alloc(X.length * 4),
        P = a.alloc(K.gramPackFloats(d) * 4),
        G = a.alloc(d * d * 8);
      a.f32(Xp, X.length).set(X);
      let j = 0;
      for (; !until(j); j++) {
        K.gramPack(Xp, d, (j % blocks) * RB, RB, d, P, 0, K.gramPanels(d));
        // work estimates that make 2 (none given), 4 and 8 parts on 2 threads
        const work = [undefined, 4 << 20, 1 << 30][j % 3];
        K.par('gramTiles', { PA: P, da: d, PB: P, db: d, rb: RB, C: G, ldc: d, upper: 1, i0: 0, i1: d }, { work });
      }
      const out = a.f64(G, d * d).slice();
      a.release(mark);
      return { G: out, jobs: j };
    };
    const stats = () => poolStats(getKernels('wasm', 2, 'simd'))!;
    const start = performance.now(),
      before = stats().workerParts;
    const two = gram(2, (j) => j >= 3000 && (stats().workerParts - before >= 300 || performance.now() - start > 30e3));
    expect(stats().workerParts - before).toBeGreaterThan(0);
    expect(two.G).toEqual(gram(1, (j) => j >= two.jobs).G);
  });
});

describe('the two builds', () => {
  it('agree within rounding: Gram to 1e-6 of its scale; on one G, objectives to 1e-12, re-fits to 1e-9', () => {
    const r = rng(91),
      N = 700,
      d = 75,
      m = 20,
      k = 40;
    const B = Float32Array.from({ length: N * d }, () => r() - 0.5);
    const W = Float64Array.from({ length: d * m }, () => r() - 0.5);
    const [Gs, Gx] = BUILDS.map((build) => {
      const acc = new GramAccumulator(d, { kernels: getKernels('wasm', 1, build) });
      acc.add(B);
      const G = acc.result().G;
      acc.release();
      return G;
    });
    const scale = Math.max(...Gs.map(Math.abs));
    Gs.forEach((v, i) => expect(Math.abs(v - Gx[i])).toBeLessThan(1e-6 * scale));
    const [s, x] = BUILDS.map((build) => {
      vi.stubEnv('SUBPRUNE_KERNELS', build);
      const sel = selectChannels({ d, m, g: 1, G: Gs, W }, k, { threads: 1 });
      vi.unstubAllEnvs();
      return { sel, refit: sel.refit(k).W };
    });
    expect(x.sel.order).toEqual(s.sel.order);
    s.sel.objective.forEach((v, i) => expect(Math.abs(v - x.sel.objective[i])).toBeLessThan(1e-12));
    const ws = Math.max(...s.refit.map(Math.abs));
    s.refit.forEach((v, i) => expect(Math.abs(v - x.refit[i])).toBeLessThan(1e-9 * ws));
  });
});

describe('the default thread count', () => {
  // two readings of the cores' times (ms): per core, busy and in all
  const at = (...busy: [number, number][]) => busy.map(([b, t]) => ({ busy: b, total: t }));
  it('is the cores less what other processes kept busy, not what this process took, at least 1', () => {
    const before = at([1000, 5000], [2000, 5000]);
    // 100 ms on each of 2 cores: idle, one core busy, one busy by this process alone, both busy
    expect(coresLeft(2, before, at([1000, 5100], [2000, 5100]), 0)).toBe(2);
    expect(coresLeft(2, before, at([1100, 5100], [2000, 5100]), 0)).toBe(1);
    expect(coresLeft(2, before, at([1100, 5100], [2000, 5100]), 100)).toBe(2);
    expect(coresLeft(2, before, at([1100, 5100], [2100, 5100]), 0)).toBe(1);
    // a third of a core busy rounds to none; 4 listed cores half busy on average leave half of a 2-core share
    expect(coresLeft(2, before, at([1033, 5100], [2000, 5100]), 0)).toBe(2);
    const four = at([0, 0], [0, 0], [0, 0], [0, 0]);
    expect(coresLeft(2, four, at([100, 100], [100, 100], [0, 100], [0, 100]), 0)).toBe(1);
    expect(coresLeft(8, four, at([100, 100], [100, 100], [0, 100], [0, 100]), 0)).toBe(4);
  });

  it('sees a process that keeps a core busy (the cores watched for real)', async () => {
    const spin = spawn(process.execPath, ['-e', 'for (;;);'], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 200));
      // whatever else runs, the spinning process takes one of the cores
      expect(coresFree(300)).toBeLessThanOrEqual(Math.max(1, cores() - 1));
    } finally {
      spin.kill();
    }
  });
});
