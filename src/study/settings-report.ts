// The settings grid's outputs: per model a table of every setting (accuracy per compression, mean, seconds per run and
// cost against the plain layerwise prune), and across models the choice of the default: the best mean accuracy among
// the settings measured everywhere that cost at most MAX_COST times the plain prune on every model.
import { settingKey, type Setting, type SettingRow, type SettingsResult } from './settings.js';
import { claimOf, type Claim, type Pair } from './report.js';

/** The cost unit: the plain layerwise prune (uniform allocation, no swaps; the bias re-fit as prune's default). */
export const PLAIN: Setting = { mode: 'layerwise', allocation: 'uniform', bias: true, refine: 0 };
/** The paper's setting: layerwise, one keep fraction, weights-only re-fit, no swaps. */
export const PAPER: Setting = { mode: 'layerwise', allocation: 'uniform', bias: false, refine: 0 };
/** A default may cost at most this many times the plain prune, on every model. */
export const MAX_COST = 10;

export interface SettingLine {
  setting: Setting;
  at: Map<number, SettingRow>;
  /** Mean test accuracy over the model's compressions (undefined unless measured at every one). */
  mean?: number;
  /** Mean seconds per run, and that over the plain prune's mean seconds at the same compressions (`base`). */
  seconds: number;
  base: number;
  cost: number;
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const avg = (xs: number[]) => sum(xs) / xs.length;

/** One line per setting measured on the model, in the design's order. */
export function settingLines(r: SettingsResult): SettingLine[] {
  const by = new Map<string, { setting: Setting; at: Map<number, SettingRow> }>();
  for (const x of r.rows) {
    const k = settingKey(x);
    const e = by.get(k) ?? {
      setting: { mode: x.mode, allocation: x.allocation, bias: x.bias, refine: x.refine },
      at: new Map(),
    };
    e.at.set(x.compression, x);
    by.set(k, e);
  }
  const plain = by.get(settingKey(PLAIN))?.at;
  return [...by.values()].map(({ setting, at }) => {
    const cs = [...at.keys()];
    const seconds = avg(cs.map((c) => at.get(c)!.seconds));
    const base = plain && cs.every((c) => plain.has(c)) ? avg(cs.map((c) => plain.get(c)!.seconds)) : NaN;
    const complete = r.compressions.every((c) => at.has(c));
    return {
      setting,
      at,
      ...(complete ? { mean: avg(r.compressions.map((c) => at.get(c)!.accuracy)) } : {}),
      seconds,
      base,
      cost: seconds / base,
    };
  });
}

export const settingLabel = (s: Setting) =>
  `${s.mode}, ${s.allocation}, ${s.bias ? 'bias re-fit' : 'weights only'}, refine ${s.refine}`;
const cells = (s: Setting) => `${s.mode} | ${s.allocation} | ${s.bias ? 'yes' : 'no'} | ${s.refine}`;
const f3 = (x: number) => x.toFixed(3);
const fs = (x: number) => (x >= 10 ? x.toFixed(0) : x.toFixed(1));

/** Every setting on one model, best mean first (settings not run at every compression last), best per column bold. */
export function settingsTable(r: SettingsResult): string {
  const ls = settingLines(r).sort((a, b) => (b.mean ?? -1) - (a.mean ?? -1));
  const best = new Map(r.compressions.map((c) => [c, Math.max(...ls.map((l) => l.at.get(c)?.accuracy ?? -1))]));
  const bestMean = Math.max(...ls.map((l) => l.mean ?? -1));
  const bold = (v: number, b: number | undefined) => (v === b ? `**${f3(v)}**` : f3(v));
  const head =
    `| mode | allocation | bias re-fit | refine | ${r.compressions.map((c) => `${c}×`).join(' | ')} | mean | ` +
    `s per run | × plain |`;
  const rule = `|---|---|---|---:|${r.compressions.map(() => '---:').join('|')}|---:|---:|---:|`;
  const body = ls.map(
    (l) =>
      `| ${cells(l.setting)} | ${r.compressions
        .map((c) => {
          const x = l.at.get(c);
          return x ? bold(x.accuracy, best.get(c)) : '';
        })
        .join(' | ')} | ${l.mean === undefined ? '–' : bold(l.mean, bestMean)} | ${fs(l.seconds)} | ` +
      `${Number.isFinite(l.cost) ? fs(l.cost) : '–'} |`,
  );
  return [head, rule, ...body].join('\n');
}

export interface Candidate {
  setting: Setting;
  /** Per model: mean accuracy over its compressions and cost against its plain prune. */
  models: { model: string; mean: number; cost: number }[];
  mean: number;
  /** The largest cost over the models. */
  cost: number;
  /** The cost of one run on each model together: the sum of its seconds over the plain prune's. */
  total: number;
}

/** The settings measured at every compression of every model, best mean accuracy (averaged over models) first. */
export function candidates(results: SettingsResult[]): Candidate[] {
  const per = results.map((r) => new Map(settingLines(r).map((l) => [settingKey(l.setting), l])));
  const out: Candidate[] = [];
  for (const l of per[0]?.values() ?? []) {
    const k = settingKey(l.setting),
      ls = per.map((m) => m.get(k));
    if (ls.some((x) => x?.mean === undefined)) continue;
    const models = ls.map((x, i) => ({ model: results[i]!.model, mean: x!.mean!, cost: x!.cost }));
    out.push({
      setting: l.setting,
      models,
      mean: avg(models.map((m) => m.mean)),
      cost: Math.max(...models.map((m) => m.cost)),
      total: sum(ls.map((x) => x!.seconds)) / sum(ls.map((x) => x!.base)),
    });
  }
  return out.sort((a, b) => b.mean - a.mean);
}

/** The default by the rule: the best mean accuracy among the candidates costing at most MAX_COST × the plain prune. */
export function chooseDefault(results: SettingsResult[]): Candidate | undefined {
  return candidates(results).find((c) => c.cost <= MAX_COST);
}

/** The candidates across models: the best ones, and the plain, the paper's and `also` wherever they rank. */
export function choiceTable(results: SettingsResult[], also: Setting[] = [], top = 12): string {
  const cs = candidates(results),
    chosen = chooseDefault(results);
  const keep = new Set([PLAIN, PAPER, ...also].map(settingKey));
  const shown = cs.filter((c, i) => i < top || keep.has(settingKey(c.setting)));
  const head =
    `| | mode | allocation | bias re-fit | refine | ${results.map((r) => r.model).join(' | ')} | mean | ` +
    `most × plain | × plain, all models |`;
  const rule = `|---:|---|---|---|---:|${results.map(() => '---:').join('|')}|---:|---:|---:|`;
  const body = shown.map((c) => {
    const b = c === chosen ? (s: string) => `**${s}**` : (s: string) => s;
    const worst = c.models.reduce((a, m) => (m.cost > a.cost ? m : a));
    return (
      `| ${cs.indexOf(c) + 1} | ${cells(c.setting)} | ${c.models.map((m) => f3(m.mean)).join(' | ')} | ` +
      `${b(f3(c.mean))} | ${b(`${fs(c.cost)} (${worst.model})`)} | ${fs(c.total)} |`
    );
  });
  return [head, rule, ...body].join('\n');
}

/** Accuracy targets: model → compression → the least test accuracy asked for. */
export type Targets = Record<string, Record<number, number>>;

/**
 * Per model and compression: the default's accuracy and seconds, the best setting's (any cost), and the paper's,
 * with the target where there is one.
 */
export function defaultTable(results: SettingsResult[], chosen: Setting, targets: Targets = {}): string {
  const head =
    '| model | compression | default | s | best | s | best setting | paper | s | target |\n' +
    '|---|---:|---:|---:|---:|---:|---|---:|---:|---|';
  const rows = results.flatMap((r) =>
    r.compressions.map((c) => {
      const at = r.rows.filter((x) => x.compression === c);
      const find = (s: Setting) => at.find((x) => settingKey(x) === settingKey(s));
      const d = find(chosen),
        p = find(PAPER),
        best = at.reduce((a, x) =>
          x.accuracy > a.accuracy || (x.accuracy === a.accuracy && x.seconds < a.seconds) ? x : a,
        );
      const t = targets[r.model]?.[c];
      const met = t === undefined ? '' : `${f3(t)}: ${best.accuracy >= t ? 'met' : 'not met'}`;
      const acc = (x?: SettingRow) => (x ? `${f3(x.accuracy)} | ${fs(x.seconds)}` : '– | –');
      return `| ${r.model} | ${c}× | ${acc(d)} | ${acc(best)} | ${settingLabel(best)} | ${acc(p)} | ${met} |`;
    }),
  );
  return [head, ...rows].join('\n');
}

/**
 * The paper's claims the settings grid speaks to (asymmetric ≥ layerwise at high compression, the sensitivity
 * allocation ≥ uniform), and subprune's defaults against their alternatives (global ≥ uniform, bias re-fit ≥
 * weights only), on every pair of rows that differ in that factor alone; noise as in checkClaims.
 */
export function settingsClaims(r: SettingsResult): Claim[] {
  const cs = r.compressions,
    high = cs.some((c) => c >= 8) ? cs.filter((c) => c >= 8) : [Math.max(...cs)];
  const acc = (s: Setting, c: number) =>
    r.rows.find((x) => x.compression === c && settingKey(x) === settingKey(s))?.accuracy;
  const settings = settingLines(r).map((l) => l.setting);
  const pairs = (has: (s: Setting) => boolean, other: (s: Setting) => Setting, at: number[]) =>
    settings
      .filter(has)
      .flatMap((s) => at.map((c): Pair => [`${settingLabel(s)} at ${c}×`, acc(s, c), acc(other(s), c)]));
  const n = r.test.samples;
  return [
    claimOf(
      `asymmetric ≥ layerwise at high compression (${high.join(', ')}×)`,
      pairs(
        (s) => s.mode === 'asymmetric',
        (s) => ({ ...s, mode: 'layerwise' }),
        high,
      ),
      n,
    ),
    claimOf(
      'sensitivity allocation ≥ uniform',
      pairs(
        (s) => s.allocation === 'sensitivity',
        (s) => ({ ...s, allocation: 'uniform' }),
        cs,
      ),
      n,
    ),
    claimOf(
      'global allocation ≥ uniform',
      pairs(
        (s) => s.allocation === 'global',
        (s) => ({ ...s, allocation: 'uniform' }),
        cs,
      ),
      n,
    ),
    claimOf(
      'bias re-fit ≥ weights only',
      pairs(
        (s) => s.bias,
        (s) => ({ ...s, bias: false }),
        cs,
      ),
      n,
    ),
  ].filter((c) => c.total > 0);
}
