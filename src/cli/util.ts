import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { badInput } from '../errors.js';
import type { Backend } from '../capture/runtime.js';

export function num(
  s: string | undefined,
  flag: string,
  check: (v: number) => boolean,
  what: string,
): number | undefined {
  if (s === undefined) return undefined;
  const v = Number(s);
  if (!Number.isFinite(v) || !check(v)) throw badInput(`${flag} ${s}: expected ${what}`);
  return v;
}

export function backendFlag(s: string | undefined): Backend | undefined {
  if (s !== undefined && s !== 'node' && s !== 'web')
    throw badInput(`--backend ${s}: use node (onnxruntime-node) or web (onnxruntime-web's WebAssembly backend)`);
  return s;
}

/** Same file, also through symbolic or hard links? */
export function sameFile(a: string, b: string): boolean {
  if (existsSync(a) && existsSync(b)) {
    const [x, y] = [statSync(a), statSync(b)];
    return x.dev === y.dev && x.ino === y.ino;
  }
  return resolve(a) === resolve(b);
}

/** A plain text table: columns right-aligned except the first. */
export function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const w = head.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return [line(head), w.map((x) => '─'.repeat(x)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

export const pct = (v: number | undefined) => (v === undefined ? '—' : `${(100 * v).toFixed(2)}%`);
export const big = (v: number) =>
  v >= 1e9
    ? `${(v / 1e9).toFixed(2)}G`
    : v >= 1e6
      ? `${(v / 1e6).toFixed(2)}M`
      : v >= 1e3
        ? `${(v / 1e3).toFixed(1)}k`
        : String(v);
