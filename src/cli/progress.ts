// A one-line progress bar on stderr, drawn only when stderr is a terminal (logs and pipes stay clean).

let drawing = false; // a bar is on the current line of stderr

/** Ends a bar's line, so that a message printed next (an error, an interruption) starts on its own line. */
export function endProgressLine(): void {
  if (drawing) process.stderr.write('\n');
  drawing = false;
}

export class Progress {
  private last = 0;
  private readonly start = performance.now();
  private readonly on: boolean;

  constructor(
    private readonly label: string,
    private readonly total: number,
    enabled = process.stderr.isTTY === true,
  ) {
    this.on = enabled && total > 0;
  }

  update(done: number): void {
    if (!this.on) return;
    const t = performance.now();
    if (t - this.last < 80 && done < this.total) return;
    this.last = t;
    const w = 28,
      f = Math.min(1, done / this.total),
      bar = '█'.repeat(Math.round(f * w)).padEnd(w, '░');
    const secs = ((t - this.start) / 1000).toFixed(1);
    drawing = true;
    process.stderr.write(
      `\r${this.label.padEnd(10)} ${bar} ${String(Math.round(f * 100)).padStart(3)}%  ${done}/${this.total}  ${secs}s `,
    );
  }

  done(): void {
    if (!this.on) return;
    this.update(this.total);
    endProgressLine();
  }
}
