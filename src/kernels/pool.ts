import { PAR_KERNELS, parLayout, type ParKernel } from './types.js';

// Worker threads that run kernels on shared wasm memory. A control block in that memory (bytes CTRL .. CTRL+896,
// below the arena) carries each job; Atomics wait/notify hand it over, so a job costs microseconds, not a message.
// Layout (int32): [0] job sequence, [2] kernel index (−1: stop), [3] arg count, [4] range start arg index, [5] scratch
// arg index (−1: none), [6] scratch stride, [7] range end arg index, [8 + 2t, 9 + 2t] thread t's range. f64 args from byte CTRL+512. From byte
// CTRL+640, int32 slot t: the last job sequence thread t finished. A worker runs a job only once it has seen the
// sequence move on, and a job is done when every slot holds its sequence. The previous hand-over (one done-counter
// reset per job; a return from Atomics.wait taken as a new job) gave one worker's rows of a Gram update wrong about
// once per 30 runs of 800 jobs under heavy load; this one gave none in 300 such runs. Which interleaving did it was
// not pinned down; both changes close a way for a job to be run twice or counted done early.

export const CTRL = 128;
const ARGS = CTRL + 512,
  DONE = CTRL + 640,
  MAX_ARGS = 16,
  MAX_THREADS = 60;
// How long a waiting thread spins before it sleeps: waking a sleeping core costs far more in a VM than spinning.
const SPIN_MS = 2;

// Runs inside each worker (eval'd as a CommonJS script: no imports, no closures).
function workerMain(): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { workerData } = require('node:worker_threads') as typeof import('node:worker_threads');
  const { module, memory, id, names, ctrl, args, done, spinMs } = workerData;
  const x = new WebAssembly.Instance(module, {
    env: {
      memory,
      abort: () => {
        throw new Error('wasm kernel abort');
      },
    },
  }).exports as Record<string, (...a: number[]) => void>;
  const I = new Int32Array(memory.buffer, ctrl, 128),
    F = new Float64Array(memory.buffer, args, 16),
    D = new Int32Array(memory.buffer, done, 64);
  let seen = 0;
  for (;;) {
    // Each job exactly once: wait until the sequence moves on (the next job often follows at once, so spin first).
    for (let spin = 0, t0 = 0; Atomics.load(I, 0) === seen; spin++) {
      if ((spin & 1023) === 1023 && performance.now() - (t0 ||= performance.now()) > spinMs) Atomics.wait(I, 0, seen);
    }
    seen = Atomics.load(I, 0);
    const k = I[2];
    if (k < 0) return;
    const lo = I[8 + 2 * id],
      hi = I[9 + 2 * id];
    if (lo < hi) {
      const a = Array.from(F.subarray(0, I[3]));
      a[I[4]] = lo;
      a[I[7]] = hi;
      if (I[5] >= 0) a[I[5]] += id * I[6];
      x[names[k]](...a);
    }
    Atomics.store(D, id, seen);
    Atomics.notify(D, id);
  }
}

declare const require: (m: string) => unknown;

export class Pool {
  private readonly I: Int32Array;
  private readonly F: Float64Array;
  private readonly D: Int32Array;

  constructor(
    module: WebAssembly.Module,
    memory: WebAssembly.Memory,
    readonly threads: number,
  ) {
    if (threads > MAX_THREADS) throw new RangeError(`at most ${MAX_THREADS} threads`);
    this.I = new Int32Array(memory.buffer, CTRL, 128);
    this.F = new Float64Array(memory.buffer, ARGS, MAX_ARGS);
    this.D = new Int32Array(memory.buffer, DONE, 64);
    const wt = process.getBuiltinModule?.('node:worker_threads') as typeof import('node:worker_threads') | undefined;
    if (!wt) throw new Error('threads need Node ≥ 20.16 (process.getBuiltinModule)');
    for (let id = 1; id < threads; id++) {
      const w = new wt.Worker(`(${workerMain.toString()})()`, {
        eval: true,
        workerData: { module, memory, id, names: PAR_KERNELS, ctrl: CTRL, args: ARGS, done: DONE, spinMs: SPIN_MS },
      });
      w.unref(); // idle workers must not keep the process alive
    }
  }

  /**
   * Runs kernel `name` with positional args on thread t's range ranges[t], the scratch argument (if any) moved on by
   * t·stride bytes; thread 0 (this one) runs `self`.
   */
  run(name: ParKernel, args: number[], ranges: [number, number][], stride: number, self: (a: number[]) => void): void {
    const { I, F, D, threads } = this;
    if (args.length > MAX_ARGS) throw new RangeError('too many kernel arguments');
    const { lo, hi, scratch } = parLayout(name);
    F.set(args);
    I[2] = PAR_KERNELS.indexOf(name);
    I[3] = args.length;
    I[4] = lo;
    I[5] = scratch;
    I[6] = stride;
    I[7] = hi;
    for (let t = 1; t < threads; t++) {
      I[8 + 2 * t] = ranges[t][0];
      I[9 + 2 * t] = ranges[t][1];
    }
    const seq = Atomics.add(I, 0, 1) + 1;
    Atomics.notify(I, 0);
    const a = args.slice();
    a[lo] = ranges[0][0];
    a[hi] = ranges[0][1];
    if (ranges[0][0] < ranges[0][1]) self(a);
    // Wait for the others: spin briefly (jobs are often short), then sleep.
    for (let t = 1; t < threads; t++) {
      for (let spin = 0, t0 = 0, v; (v = Atomics.load(D, t)) !== seq; spin++) {
        if ((spin & 1023) === 1023 && performance.now() - (t0 ||= performance.now()) > SPIN_MS)
          Atomics.wait(D, t, v, 50);
      }
    }
  }
}
