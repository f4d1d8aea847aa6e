// Seconds per named stage, summed over every timed call.
const now = () => performance.now() / 1000;

export class Stopwatch<Stage extends string> {
  private readonly start = now();
  readonly seconds: Record<Stage, number>;

  constructor(stages: readonly Stage[]) {
    this.seconds = Object.fromEntries(stages.map((s) => [s, 0])) as Record<Stage, number>;
  }

  /** Runs f and adds its time (until its promise settles, for an async f) to `stage`; returns f's result. */
  time<T>(stage: Stage, f: () => T): T {
    const t = now();
    const add = () => (this.seconds[stage] += now() - t);
    const r = f();
    if (r instanceof Promise) return r.finally(add) as T;
    add();
    return r;
  }

  /** Seconds since the stopwatch was made. */
  total(): number {
    return now() - this.start;
  }
}
