import { PAR_KERNELS, parLayout, type ParKernel } from './types.js';
import { ARENA_START } from './memory.js';

// Worker threads that run kernels on shared wasm memory. A control block in that memory (bytes CTRL .. CTRL_END,
// below the arena) carries each job; Atomics hand it over, so a job costs microseconds, not a message.
//
// A job is a kernel call split into parts (ranges of its rows), a few per thread. Any thread may run any part: each
// part is claimed once (compare-and-swap of its claim slot from the previous job's sequence to this one's; every
// slot holds the previous sequence when a job is posted, so a late claim for a finished job always fails), and the
// thread that claims it runs it and reports it done. The caller claims parts too, its own first, so it never waits
// for a worker that has not started, and for a worker that was preempted only until the part it holds is done: on a
// machine whose cores are busy elsewhere the call runs at about one thread's speed, not at the pace of the other
// processes' time slices. A part's result does not depend on which thread runs it (scratch is per thread and does
// not carry between parts), so results stay bit-identical for any thread count.
//
// Layout (int32 unless said): [0] job sequence, [1] a worker failed, [2] kernel index, [3] arg count, [4] range start
// arg index, [5] scratch arg index (−1: none), [6] scratch stride, [7] range end arg index, [8] parts, [9] workers
// started, [10 + 2p, 11 + 2p] part p. f64 args from ARGS. DONE slot p: the last job sequence whose part p is done;
// CLAIM slot p: the last whose part p was claimed.

export const CTRL = 128;
/** Parts a job may have (control-block slots). */
export const MAX_PARTS = 64;
const RANGES = 10,
  MAX_THREADS = 60,
  ARGS = CTRL + 4 * (RANGES + 2 * MAX_PARTS),
  MAX_ARGS = 16,
  DONE = ARGS + 8 * MAX_ARGS,
  CLAIM = DONE + 4 * MAX_PARTS;
/** End of the control block: the arena starts above it. */
export const CTRL_END = CLAIM + 4 * MAX_PARTS;

// An idle worker spins this long for the next job before it sleeps: jobs often follow each other within tens of
// microseconds, and waking a sleeping thread costs about that much in a VM. Longer spins cost a busy machine CPU time
// for nothing: a late worker delays no job (the caller takes its parts). The caller, waiting for a part a running
// worker claimed, spins at most WAIT_SPIN_MS, then sleeps until notified.
const IDLE_SPIN_MS = 0.25,
  WAIT_SPIN_MS = 0.05;
// Oversubscribed cores: when LATE_JOBS jobs in a row left the caller alone for over LATE_MS (a running worker claims a
// part within microseconds), or kept it waiting for a preempted worker, calls run on the caller alone for a while
// (SOLO_MS, doubling while the workers stay late, up to MAX_SOLO_MS), then the workers are tried again.
const LATE_JOBS = 3,
  LATE_MS = 0.1,
  SOLO_MS = 50,
  MAX_SOLO_MS = 1600;

// Runs inside each worker (eval'd as a CommonJS script: no imports, no closures).
function workerMain(): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { workerData } = require('node:worker_threads') as typeof import('node:worker_threads');
  const { module, memory, id, threads, names, ctrl, ranges, maxParts, args, done, claim, spinMs } = workerData;
  const x = new WebAssembly.Instance(module, {
    env: {
      memory,
      abort: () => {
        throw new Error('wasm kernel abort');
      },
    },
  }).exports as Record<string, (...a: number[]) => void>;
  const I = new Int32Array(memory.buffer, ctrl, ranges + 2 * maxParts),
    F = new Float64Array(memory.buffer, args, 16),
    D = new Int32Array(memory.buffer, done, maxParts),
    C = new Int32Array(memory.buffer, claim, maxParts);
  let seen = 0;
  Atomics.add(I, 9, 1);
  for (;;) {
    // Wait for the sequence to move on (the next job often follows at once, so spin first).
    for (let spin = 0, t0 = 0; Atomics.load(I, 0) === seen; spin++) {
      if ((spin & 1023) === 1023 && performance.now() - (t0 ||= performance.now()) > spinMs) Atomics.wait(I, 0, seen);
    }
    seen = Atomics.load(I, 0);
    // Own parts first, then any other still unclaimed. A claim fails once the job is over (its parts all taken), so
    // the job read below is the one claimed: the caller waits for a claimed part before it writes another job.
    const parts = I[8],
      first = Math.floor((id * parts) / threads);
    for (let k = 0; k < parts; k++) {
      const p = (first + k) % parts;
      if (Atomics.compareExchange(C, p, seen - 1, seen) !== seen - 1) continue;
      const lo = I[ranges + 2 * p],
        hi = I[ranges + 1 + 2 * p];
      try {
        if (lo < hi) {
          const a = Array.from(F.subarray(0, I[3]));
          a[I[4]] = lo;
          a[I[7]] = hi;
          if (I[5] >= 0) a[I[5]] += id * I[6];
          x[names[I[2]]](...a);
        }
      } catch (e) {
        // The caller cannot see this thread's error events while it waits: say it here and flag the job.
        (require('node:fs') as typeof import('node:fs')).writeSync(2, `kernel worker ${id}: ${(e as Error).stack}\n`);
        Atomics.store(I, 1, 1);
      }
      Atomics.store(D, p, seen);
      Atomics.notify(D, p);
    }
  }
}

declare const require: (m: string) => unknown;

/** Counts of what the pool did, for benchmarks: jobs handed over, parts run by the caller and by workers. */
export interface PoolStats {
  jobs: number;
  callerParts: number;
  workerParts: number;
  /** Calls that ran on the caller alone because the workers had come late. */
  soloCalls: number;
}

export class Pool {
  private readonly I: Int32Array;
  private readonly F: Float64Array;
  private readonly D: Int32Array;
  private readonly C: Int32Array;
  private late = 0;
  private soloUntil = 0;
  private soloMs = SOLO_MS;
  readonly stats: PoolStats = { jobs: 0, callerParts: 0, workerParts: 0, soloCalls: 0 };

  constructor(
    module: WebAssembly.Module,
    memory: WebAssembly.Memory,
    readonly threads: number,
  ) {
    if (threads > MAX_THREADS) throw new RangeError(`at most ${MAX_THREADS} threads`);
    if (CTRL_END > ARENA_START) throw new Error('the pool control block overlaps the arena');
    this.I = new Int32Array(memory.buffer, CTRL, RANGES + 2 * MAX_PARTS);
    this.F = new Float64Array(memory.buffer, ARGS, MAX_ARGS);
    this.D = new Int32Array(memory.buffer, DONE, MAX_PARTS);
    this.C = new Int32Array(memory.buffer, CLAIM, MAX_PARTS);
    const wt = process.getBuiltinModule?.('node:worker_threads') as typeof import('node:worker_threads') | undefined;
    if (!wt) throw new Error('threads need Node ≥ 20.16 (process.getBuiltinModule)');
    const layout = { ctrl: CTRL, ranges: RANGES, maxParts: MAX_PARTS, args: ARGS, done: DONE, claim: CLAIM };
    for (let id = 1; id < threads; id++) {
      const w = new wt.Worker(`(${workerMain.toString()})()`, {
        eval: true,
        workerData: { ...layout, module, memory, threads, names: PAR_KERNELS, id, spinMs: IDLE_SPIN_MS },
      });
      w.unref(); // idle workers must not keep the process alive
    }
  }

  /** Whether calls should stay on the caller for now (the workers came late to recent jobs). */
  solo(): boolean {
    if (this.soloUntil === 0) return false;
    if (performance.now() < this.soloUntil) {
      this.stats.soloCalls++;
      return true;
    }
    this.soloUntil = 0;
    return false;
  }

  /**
   * Runs kernel `name` with positional args over each of `ranges` (at most MAX_PARTS), the scratch argument (if any)
   * moved on by id·stride bytes on thread id (0: this one). Parts this thread claims run through `self`.
   */
  run(name: ParKernel, args: number[], ranges: [number, number][], stride: number, self: (a: number[]) => void): void {
    const { I, F, D, C } = this,
      parts = ranges.length;
    if (args.length > MAX_ARGS) throw new RangeError('too many kernel arguments');
    if (parts > MAX_PARTS) throw new RangeError(`at most ${MAX_PARTS} parts`);
    const { lo, hi, scratch } = parLayout(name);
    F.set(args);
    I[2] = PAR_KERNELS.indexOf(name);
    I[3] = args.length;
    I[4] = lo;
    I[5] = scratch;
    I[6] = stride;
    I[7] = hi;
    I[8] = parts;
    for (let p = 0; p < parts; p++) {
      I[RANGES + 2 * p] = ranges[p][0];
      I[RANGES + 1 + 2 * p] = ranges[p][1];
    }
    const seq = Atomics.add(I, 0, 1) + 1;
    Atomics.notify(I, 0);
    this.stats.jobs++;
    const t0 = performance.now();
    let mine = 0;
    for (let p = 0; p < parts; p++) {
      if (Atomics.compareExchange(C, p, seq - 1, seq) !== seq - 1) continue;
      mine++;
      if (ranges[p][0] < ranges[p][1]) {
        const a = args.slice();
        a[lo] = ranges[p][0];
        a[hi] = ranges[p][1];
        self(a);
      }
      Atomics.store(D, p, seq);
    }
    const t1 = performance.now();
    // Wait for the parts workers claimed: spin briefly (they are running), then sleep until notified.
    for (let p = 0; p < parts; p++) {
      for (let spin = 0, v; (v = Atomics.load(D, p)) !== seq; spin++) {
        if ((spin & 255) === 255 && performance.now() - t1 > WAIT_SPIN_MS) Atomics.wait(D, p, v, 5);
      }
    }
    // Every claim slot must hold this sequence before the next job: the slots this job did not use move on too.
    for (let p = parts; p < MAX_PARTS; p++) Atomics.store(C, p, seq);
    if (Atomics.exchange(I, 1, 0)) throw new Error(`kernel ${name} failed on a worker thread (its error is above)`);
    const waited = performance.now() - t1;
    this.stats.callerParts += mine;
    this.stats.workerParts += parts - mine;
    // Late (once the workers have all started): none took a part while this thread ran for LATE_MS, or one kept this
    // thread waiting longer than its own share took. A job over before a worker could have noticed tells nothing.
    if (Atomics.load(I, 9) < this.threads - 1) return;
    const alone = mine === parts && t1 - t0 > LATE_MS;
    if (alone || waited > Math.max(0.2, 2 * (t1 - t0))) {
      if (++this.late >= LATE_JOBS) {
        this.late = 0;
        this.soloUntil = performance.now() + this.soloMs;
        this.soloMs = Math.min(MAX_SOLO_MS, 2 * this.soloMs);
      }
    } else if (mine < parts) {
      this.late = 0;
      this.soloMs = SOLO_MS;
    }
  }
}
