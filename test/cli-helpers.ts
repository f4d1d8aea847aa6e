// Running the CLI in tests: in-process through main() (fast, no build needed; console output captured), or as the real
// process (bin/subprune.js, which runs dist/: rebuilt first when a source file is newer than the build).
import { expect, vi } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { initializerMap, readModel, tensorToFloat32 } from '../src/onnx/index.js';

export interface CliResult {
  code: number | null;
  out: string;
  err: string;
}

/** `subprune ...args` in this process: the exit code main() returns and what it printed. */
export async function runCli(...args: string[]): Promise<CliResult> {
  const out: string[] = [],
    err: string[] = [];
  const spies = [
    vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => {
      out.push(a.join(' '));
    }),
    vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => {
      err.push(a.join(' '));
    }),
    vi.spyOn(console, 'warn').mockImplementation((...a: unknown[]) => {
      err.push(a.join(' '));
    }),
  ];
  try {
    const code = await main(args);
    return { code, out: out.join('\n'), err: err.join('\n') };
  } finally {
    spies.forEach((s) => s.mockRestore());
  }
}

/** A failure as the user sees it: the exit code, exactly one line on stderr saying what is wrong, no stack trace. */
export function expectFailure(r: CliResult, code: 1 | 2, message: RegExp): void {
  const lines = r.err.split('\n').filter((l) => l.trim() !== '');
  expect(lines, r.err).toHaveLength(1);
  expect(lines[0]).toMatch(/^subprune( \w+)?: /);
  expect(lines[0]).toMatch(message);
  expect(r.err).not.toMatch(/\n\s+at |Error:/);
  expect(r.code, r.err).toBe(code);
}

function newest(dir: string, ext: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p, ext));
    else if (e.name.endsWith(ext)) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

/** Builds dist/ with tsc when it is missing or older than a source file (bin/subprune.js runs dist/). */
export function ensureBuilt(): void {
  const entry = 'dist/src/cli/main.js';
  if (existsSync(entry) && statSync(entry).mtimeMs >= newest('src', '.ts')) return;
  const r = spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`tsc failed:\n${r.stdout}${r.stderr}`);
}

/** `node bin/subprune.js ...args` as a child process. */
export function spawnCli(...args: string[]): CliResult {
  const r = spawnSync(process.execPath, ['bin/subprune.js', ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Every initializer of `a` matches `b`'s (same names, dims, values to `tol`). */
export function expectSameWeights(a: string, b: string, tol: number): void {
  const [x, y] = [a, b].map((f) => initializerMap(readModel(f).graph!));
  expect([...x.keys()].sort()).toEqual([...y.keys()].sort());
  for (const [name, t] of x) {
    const u = tensorToFloat32(t),
      v = tensorToFloat32(y.get(name)!);
    expect(u.dims, name).toEqual(v.dims);
    const worst = u.data.reduce((m, e, i) => Math.max(m, Math.abs(e - v.data[i]!)), 0);
    expect(worst, name).toBeLessThanOrEqual(tol);
  }
}
