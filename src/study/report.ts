// The study's outputs: a Markdown table, the paper's claims checked against the rows, and an SVG plot.
import type { StudyConfig, StudyResult, StudyRow } from './index.js';

/** A configuration without its seed: the random and sampling methods are averaged over seeds. */
export type Line = Omit<StudyConfig, 'seed'>;

export const lineKey = (c: Line) => `${c.method}|${c.mode}|${c.refit}|${c.allocation}`;
export const lineLabel = (c: Line) =>
  `${c.method}${c.method === 'greedy' ? ` ${c.mode}` : ''}, ${c.refit ? 're-fit' : 'no re-fit'}, ${c.allocation}`;

export interface Point {
  accuracy: number;
  spread: number;
  seeds: number;
  params: number;
  flops: number;
  seconds: number;
}

/** Rows grouped by configuration (seeds averaged): line → compression → point. */
export function lines(r: StudyResult): Map<string, { line: Line; at: Map<number, Point> }> {
  const out = new Map<string, { line: Line; at: Map<number, Point> }>();
  const groups = new Map<string, StudyRow[]>();
  for (const row of r.rows) {
    const k = `${lineKey(row)}|${row.compression}`;
    groups.set(k, [...(groups.get(k) ?? []), row]);
  }
  for (const rs of groups.values()) {
    const { method, mode, refit, allocation } = rs[0],
      line = { method, mode, refit, allocation };
    const mean = (f: (x: StudyRow) => number) => rs.reduce((a, x) => a + f(x), 0) / rs.length;
    const acc = mean((x) => x.accuracy);
    const entry = out.get(lineKey(line)) ?? { line, at: new Map() };
    entry.at.set(rs[0].compression, {
      accuracy: acc,
      spread: Math.sqrt(mean((x) => (x.accuracy - acc) ** 2)),
      seeds: rs.length,
      params: mean((x) => x.params),
      flops: mean((x) => x.flops),
      seconds: mean((x) => x.seconds),
    });
    out.set(lineKey(line), entry);
  }
  return out;
}

const f3 = (x: number) => x.toFixed(3);

/** The summary: test accuracy per configuration and compression, the best of each column in bold. */
export function accuracyTable(r: StudyResult): string {
  const ls = [...lines(r).values()];
  const best = new Map(r.compressions.map((c) => [c, Math.max(...ls.map((l) => l.at.get(c)?.accuracy ?? -1))]));
  const head = `| method | mode | re-fit | allocation | ${r.compressions.map((c) => `${c}×`).join(' | ')} |`;
  const rule = `|---|---|---|---|${r.compressions.map(() => '---:').join('|')}|`;
  const body = ls.map(
    ({ line, at }) =>
      `| ${line.method} | ${line.mode} | ${line.refit ? 'yes' : 'no'} | ${line.allocation} | ${r.compressions
        .map((c) => {
          const p = at.get(c);
          if (!p) return '';
          const v = f3(p.accuracy) + (p.seeds > 1 ? ` ±${f3(p.spread)}` : '');
          return p.accuracy === best.get(c) ? `**${v}**` : v;
        })
        .join(' | ')} |`,
  );
  return [head, rule, ...body].join('\n');
}

/** Every run: accuracy, parameters, FLOPs, seconds. */
export function detailTable(r: StudyResult): string {
  const head =
    '| method | mode | re-fit | allocation | seed | compression | test accuracy | params | FLOPs | seconds | ' +
    'kept channels |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---|';
  return [
    head,
    ...r.rows.map(
      (x) =>
        `| ${x.method} | ${x.mode} | ${x.refit ? 'yes' : 'no'} | ${x.allocation} | ${x.seed} | ` +
        `${x.compression} | ${f3(x.accuracy)} | ${x.params} | ${x.flops} | ${x.seconds.toFixed(2)} | ` +
        `${Object.values(x.keeps).join(' ')} |`,
    ),
  ].join('\n');
}

export interface Claim {
  claim: string;
  total: number;
  held: number;
  /** Lower, but by less than two standard errors of the difference (test-set sampling noise). */
  withinNoise: string[];
  /** Lower by two standard errors or more. */
  violated: string[];
}

export type Pair = [what: string, a: number | undefined, b: number | undefined];

/** The claim a ≥ b on pairs of test accuracies measured on n images (pairs missing a value are left out). */
export function claimOf(claim: string, pairs: Pair[], n: number): Claim {
  const ok = pairs.filter(([, a, b]) => a !== undefined && b !== undefined) as [string, number, number][];
  const lower = ok.filter(([, a, b]) => a < b),
    noisy = ([, a, b]: [string, number, number]) => b - a < 2 * Math.sqrt((a * (1 - a) + b * (1 - b)) / n);
  const say = ([w, a, b]: [string, number, number]) => `${w}: ${f3(a)} < ${f3(b)}`;
  return {
    claim,
    total: ok.length,
    held: ok.length - lower.length,
    withinNoise: lower.filter(noisy).map(say),
    violated: lower.filter((x) => !noisy(x)).map(say),
  };
}

/**
 * The paper's claims, checked on every comparison the rows allow: a ≥ b holds; a < b is within noise when the gap is
 * under two standard errors of the difference of two accuracies measured on n test images (√(a(1−a)/n +
 * b(1−b)/n)), and violated otherwise. Stochastic methods are compared by their mean over seeds.
 */
export function checkClaims(r: StudyResult): Claim[] {
  const L = lines(r),
    cs = r.compressions,
    n = r.test.samples;
  const acc = (l: Line, c: number) => L.get(lineKey(l))?.at.get(c)?.accuracy;
  const claims: Claim[] = [];
  const check = (claim: string, pairs: Pair[]) => claims.push(claimOf(claim, pairs, n));
  // The paper's claims are about 4× and 8× and beyond; a study of smaller compressions (a transformer's FLOPs)
  // checks them at its own larger ones.
  const atLeast = (min: number) => (cs.some((c) => c >= min) ? cs.filter((c) => c >= min) : [Math.max(...cs)]);
  const all = [...L.values()].map((x) => x.line),
    strong = atLeast(4),
    high = atLeast(8);
  check(
    're-fitting helps every selection method (re-fit ≥ no re-fit)',
    all
      .filter((l) => l.refit)
      .flatMap((l) => cs.map((c): Pair => [`${lineLabel(l)} at ${c}×`, acc(l, c), acc({ ...l, refit: false }, c)])),
  );
  check(
    `greedy with re-fit ≥ every baseline, at every compression ≥ ${strong[0]} (layerwise, same allocation)`,
    all
      .filter((l) => l.method !== 'greedy')
      .flatMap((l) =>
        strong.map((c): Pair => [
          `vs ${lineLabel(l)} at ${c}×`,
          acc({ method: 'greedy', mode: 'layerwise', refit: true, allocation: l.allocation }, c),
          acc(l, c),
        ]),
      ),
  );
  for (const refit of [true, false]) {
    check(
      `asymmetric ≥ layerwise at high compression (${high.join(', ')}×), ${refit ? 'with' : 'without'} re-fit`,
      all
        .filter((l) => l.method === 'greedy' && l.mode === 'asymmetric' && l.refit === refit)
        .flatMap((l) =>
          high.map((c): Pair => [`${lineLabel(l)} at ${c}×`, acc(l, c), acc({ ...l, mode: 'layerwise' }, c)]),
        ),
    );
  }
  check(
    'sensitivity allocation ≥ uniform',
    all
      .filter((l) => l.allocation === 'sensitivity')
      .flatMap((l) =>
        cs.map((c): Pair => [`${lineLabel(l)} at ${c}×`, acc(l, c), acc({ ...l, allocation: 'uniform' }, c)]),
      ),
  );
  return claims;
}

export function claimsMarkdown(r: StudyResult): string {
  return claimsList(checkClaims(r));
}

/** Claims as a Markdown list: how many comparisons held, and the ones that did not. */
export function claimsList(claims: Claim[]): string {
  const list = (title: string, xs: string[]) =>
    xs.length ? `\n  ${title}:\n${xs.map((e) => `  - ${e}`).join('\n')}` : '';
  return claims
    .map(
      (c) =>
        `- **${c.claim}**: held in ${c.held} of ${c.total} comparisons` +
        (c.withinNoise.length || c.violated.length
          ? `; lower within test noise (< 2 standard errors) in ${c.withinNoise.length}, lower beyond it in ` +
            `${c.violated.length}.`
          : '.') +
        list('beyond noise', c.violated) +
        list('within noise', c.withinNoise),
    )
    .join('\n');
}

export function studyMarkdown(r: StudyResult, plot = 'plot.svg'): string {
  const target = r.target === 'flops' ? 'FLOPs' : 'parameters',
    calibration = `${r.calibration.samples} unlabeled calibration images (${r.calibration.path})`,
    original = `accuracy ${f3(r.original.accuracy)}, ${r.original.params} parameters, ${r.original.flops} FLOPs`,
    measure =
      r.verify.measure === 'agreement' ? 'top-1 agreement with the original model: no labels' : 'top-1 accuracy',
    seeds = Math.max(...r.rows.map((x) => x.seed)) + 1,
    notRun = r.unreachable?.compressions.length
      ? `Not run: ${r.unreachable.compressions.map((c) => `${c}×`).join(', ')}, beyond this model's reach ` +
        `(every group at one channel gives ${r.unreachable.max.toFixed(1)}×; the other layers cannot be pruned, ` +
        'see `subprune inspect`).\n'
      : '',
    kept = r.groups.map((u) => `${u.id} (${u.channels})`).join(', ');
  return `# ${r.model}: accuracy against compression

Test accuracy on ${r.test.samples} test images (${r.test.path}) without fine-tuning, after pruning to 1/c of the
${target} with ${calibration}.
The original model: ${original}.
The sensitivity allocation measured each group pruned alone on ${r.verify.samples} images of ${r.verify.path}
(${measure}) at kept fractions
${r.grid}, ${2 * r.grid}, …, 1.
${notRun}Random and sampling: mean ± standard deviation over ${seeds} seeds. Best of each column in bold.

![accuracy against compression](${plot})

${accuracyTable(r)}

## The paper's claims on this model

${claimsMarkdown(r)}

## Every run

Seconds: what \`subprune prune\` with that configuration spends (capture, ranking, allocation and its measurements,
rewrite), not counting the test evaluation. Kept channels per group: ${kept}.

${detailTable(r)}
`;
}

const COLORS: Record<string, string> = {
  'greedy|layerwise': '#1f77b4',
  'greedy|sequential': '#17becf',
  'greedy|asymmetric': '#2ca02c',
  'random|layerwise': '#7f7f7f',
  'weight-norm|layerwise': '#d62728',
  'activation-norm|layerwise': '#ff7f0e',
  'sampling|layerwise': '#9467bd',
};

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/**
 * Accuracy against compression (log-2 x axis), one line per method (and greedy mode): solid with re-fit and the
 * sensitivity allocation, dashed with neither (the methods as usually run); the original accuracy dotted.
 */
export function studySvg(r: StudyResult): string {
  const W = 760,
    H = 440,
    left = 60,
    right = 250,
    top = 40,
    bottom = 50,
    pw = W - left - right,
    ph = H - top - bottom;
  const cs = r.compressions,
    lx = (c: number) =>
      left +
      (cs.length > 1 ? (Math.log2(c) - Math.log2(cs[0])) / (Math.log2(cs[cs.length - 1]) - Math.log2(cs[0])) : 0.5) *
        pw;
  const shown = [...lines(r).values()].filter(
    ({ line: l }) => (l.refit && l.allocation === 'sensitivity') || (!l.refit && l.allocation === 'uniform'),
  );
  const values = [r.original.accuracy, ...shown.flatMap((s) => [...s.at.values()].map((p) => p.accuracy))];
  const lo = Math.min(...values),
    hi = Math.max(...values);
  const step = [0.01, 0.02, 0.05, 0.1, 0.2].find((s) => (hi - lo) / s <= 8) ?? 0.2; // at most ~9 gridlines
  const ymin = Math.max(0, Math.floor(lo / step) * step),
    ymax = Math.min(1, Math.ceil(hi / step) * step);
  const ly = (a: number) => top + (1 - (a - ymin) / (ymax - ymin || 1)) * ph;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      'font-family="sans-serif" font-size="12">',
  );
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(
    `<text x="${left + pw / 2}" y="22" text-anchor="middle" font-size="14">${esc(r.model)}: test accuracy ` +
      'without fine-tuning</text>',
  );
  for (let i = 0; ymin + i * step <= ymax + 1e-9; i++) {
    const a = ymin + i * step,
      y = ly(a);
    out.push(
      `<line x1="${left}" x2="${left + pw}" y1="${y}" y2="${y}" stroke="#ddd"/><text x="${left - 6}" ` +
        `y="${y + 4}" text-anchor="end">${a.toFixed(2)}</text>`,
    );
  }
  for (const c of cs)
    out.push(
      `<line x1="${lx(c)}" x2="${lx(c)}" y1="${top}" y2="${top + ph}" stroke="#eee"/><text x="${lx(c)}" ` +
        `y="${top + ph + 18}" text-anchor="middle">${c}×</text>`,
    );
  out.push(`<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  out.push(
    `<text x="${left + pw / 2}" y="${H - 10}" text-anchor="middle">compression ` +
      `(${r.target === 'flops' ? 'FLOPs' : 'parameters'} ÷ c, log scale)</text>`,
  );
  out.push(`<text transform="translate(16 ${top + ph / 2}) rotate(-90)" text-anchor="middle">test accuracy</text>`);
  out.push(
    `<line x1="${left}" x2="${left + pw}" y1="${ly(r.original.accuracy)}" y2="${ly(r.original.accuracy)}" ` +
      'stroke="#000" stroke-dasharray="2 3"/>',
  );
  let ly0 = top + 4;
  const legend = (color: string, dash: string, text: string) => {
    out.push(
      `<line x1="${left + pw + 12}" x2="${left + pw + 38}" y1="${ly0}" y2="${ly0}" stroke="${color}" ` +
        `stroke-width="2" ${dash}/><text x="${left + pw + 44}" y="${ly0 + 4}">${esc(text)}</text>`,
    );
    ly0 += 17;
  };
  legend('#000', 'stroke-dasharray="2 3"', `original (${f3(r.original.accuracy)})`);
  for (const { line: l, at } of shown) {
    const color = COLORS[`${l.method}|${l.mode}`] ?? '#000',
      dash = l.refit ? '' : 'stroke-dasharray="6 4"';
    const pts = cs.filter((c) => at.has(c)).map((c) => `${lx(c).toFixed(1)},${ly(at.get(c)!.accuracy).toFixed(1)}`);
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" ${dash} points="${pts.join(' ')}"/>`);
    for (const p of pts) {
      const [x, y] = p.split(',');
      out.push(`<circle cx="${x}" cy="${y}" r="2.5" fill="${color}"/>`);
    }
    legend(
      color,
      dash,
      (l.method === 'greedy' ? `${l.method} ${l.mode}` : l.method) +
        (l.refit ? ', re-fit, sensitivity' : ', no re-fit, uniform'),
    );
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
