// The settings grid: the greedy under mode × allocation × bias re-fit × refine, at each compression: test accuracy,
// and the seconds `subprune prune` would spend on that run (README, "The default setting"). Work is shared where the
// library would do the same work in each run: one capture of the original model, one ranking per bias re-fit and
// refine, one search or one set of sensitivity curves per setting and size. Each row's seconds add up the shared work
// its run would do (capture, ranking, allocation) and its own (refine swaps, re-fit, rewrite; for the sequential and
// asymmetric modes the whole of prune() given the allocation's keeps, less its verification). A uniform layerwise run
// ranks each group only as far as its keep, as prune does; the refine swaps' cache is emptied before each row, so a
// row pays its own swaps.
import { loadavg } from 'node:os';
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import { analyze, modelStats } from '../graph/analyze.js';
import type { Group } from '../graph/types.js';
import type { MeasuredRow } from './index.js';
import { pruneGroups } from '../rewrite/index.js';
import { evaluate } from '../eval/index.js';
import { verifyTargets, type Targets } from '../eval/alone.js';
import type { NetworkProbe } from '../eval/network.js';
import { compressionGoal, resolveBudget, type SizeOf } from '../budget/index.js';
import { sizeModel, type Target } from '../budget/size.js';
import type { Curve } from '../budget/allocate.js';
import { prune, sizeWithBiases, type Mode } from '../prune/index.js';
import { createdBiasParams } from '../rewrite/bias.js';
import { Calibration } from '../calibration.js';
import type { Captured } from '../capture/stats.js';
import type { RuntimeOptions } from '../capture/index.js';
import type { KernelOptions } from '../kernels/instances.js';
import { planOf, rankGroup, type Ranked } from '../prune/rank.js';
import {
  allocateRanked,
  captureOriginal,
  openSearchProbe,
  searchAllocation,
  sensitivityCurves,
  type Allocation,
} from '../prune/allocation.js';
import { badInput } from '../errors.js';

/** One setting of `subprune prune` for the greedy: --mode, --allocation, bias re-fit (--no-bias-refit), --refine. */
export interface Setting {
  mode: Mode;
  allocation: Allocation;
  bias: boolean;
  refine: number;
}

/** A factorial block of the design: every combination of these levels, at these compressions (default: all). */
export interface Block {
  modes: readonly Mode[];
  allocations: readonly Allocation[];
  bias: readonly boolean[];
  refine: readonly number[];
  compressions?: readonly number[];
}

/** Seconds: what `subprune prune --compression c` with this setting spends, less its verification (the file's head). */
export interface SettingRow extends Setting, MeasuredRow {}

export interface SettingsResult {
  model: string;
  target: Target;
  compressions: number[];
  design: Block[];
  calibration: { path: string; samples: number };
  test: { path: string; samples: number };
  original: { accuracy: number; params: number; flops: number };
  rows: SettingRow[];
  /** One per run of the grid (a grid resumed or extended has several), in order. */
  sessions: Session[];
}

/** One run of the grid: the rows it measured, its wall time, the machine's load and the work its rows shared. */
export interface Session {
  runs: number;
  seconds: number;
  /** The 1-minute load average (os.loadavg) when it started and ended: the rows' seconds are wall time. */
  load: { start: number; end: number };
  /** The shared work measured once (seconds): each row that uses it counts it. */
  shared: { analyze: number; capture: number; ranking: Record<string, number>; curves: Record<string, number> };
}

export interface SettingsOptions extends RuntimeOptions, KernelOptions {
  name: string;
  calib: NpyFile;
  test: { data: NpyFile; labels: ArrayLike<number> };
  compressions: number[];
  target?: Target;
  design: Block[];
  /** The sensitivity allocation's grid step (as prune's --grid). */
  grid?: number;
  /** Rows measured before (a resumed grid): kept, and not run again (the result's session is this run's only). */
  done?: SettingRow[];
  /** Called with every row so far after each row (to write partial results). */
  onRow?: (rows: SettingRow[], done: number, total: number) => void;
}

const now = () => performance.now() / 1000;
export const settingKey = (s: Setting) => `${s.mode}|${s.allocation}|${s.bias}|${s.refine}`;
const rowKey = (s: Setting, c: number) => `${settingKey(s)}|${c}`;

/** The design's runs, each once, in the design's order. */
export function designRuns(design: Block[], compressions: number[]): { setting: Setting; compression: number }[] {
  const out = new Map<string, { setting: Setting; compression: number }>();
  for (const b of design)
    for (const c of b.compressions ?? compressions)
      for (const mode of b.modes)
        for (const allocation of b.allocations)
          for (const bias of b.bias)
            for (const refine of b.refine) {
              const setting = { mode, allocation, bias, refine };
              if (compressions.includes(c)) out.set(rowKey(setting, c), { setting, compression: c });
            }
  return [...out.values()];
}

/** Work measured once and counted in each row that uses it. */
interface Timed<T> {
  value: T;
  seconds: number;
}

async function timed<T>(f: () => T | Promise<T>): Promise<Timed<T>> {
  const t = now();
  const value = await f();
  return { value, seconds: now() - t };
}

/** Empties the refine swaps' cache of a ranking, so that the next use pays for its swaps. */
const forgetSwaps = (ranked: Ranked[]) => ranked.forEach((r) => r.refine?.at.clear());

export async function runSettings(model: Model, o: SettingsOptions): Promise<SettingsResult> {
  const t0 = now(),
    load0 = loadavg()[0]!;
  const target = o.target ?? 'params';
  const run: RuntimeOptions & KernelOptions = {
    batch: o.batch,
    backend: o.backend,
    kernels: o.kernels,
    threads: o.threads,
  };
  const calib = Calibration.of(model, o.calib),
    test = Calibration.of(model, o.test.data);
  const tAnalyze = await timed(() => {
    const { groups } = analyze(model, calib.shapes);
    return { groups, before: modelStats(model, calib.shapes) };
  });
  const { groups, before } = tAnalyze.value;
  const full = target === 'flops' ? before.flops : before.params;
  // prune's size of the model in each mode: parameters with the biases the intercept creates, or FLOPs
  const sizeOf = (s: Setting): SizeOf =>
    target === 'flops'
      ? sizeModel(model, groups, calib.shapes, 'flops')
      : sizeWithBiases(model, groups, calib.shapes, s.mode, { biasRefit: s.bias });
  const original = {
    accuracy: (await evaluate(model, test, { labels: o.test.labels, ...run })).accuracy!,
    params: before.params,
    flops: before.flops,
  };

  let grams: Timed<Map<string, Captured[]>> | undefined;
  const capture = async () => (grams ??= await timed(() => captureOriginal(model, groups, calib, ['greedy'], run)));
  const rankings = new Map<string, Timed<Ranked[]>>();
  const rankedFull = async (s: Setting) => {
    const key = `${s.bias}|${s.refine}`,
      g = (await capture()).value;
    if (!rankings.has(key))
      rankings.set(
        key,
        await timed(() =>
          groups.map((u) => rankGroup(model, u, g.get(u.id)!, { ...run, biasRefit: s.bias, refine: s.refine })),
        ),
      );
    return rankings.get(key)!;
  };
  let probe: Timed<NetworkProbe> | undefined;
  const curves = new Map<boolean, Timed<Map<string, Curve>>>();
  const curvesFor = async (s: Setting) => {
    const r = (await rankedFull({ ...s, refine: 0 })).value;
    if (!curves.has(s.bias))
      curves.set(
        s.bias,
        await timed(async () =>
          sensitivityCurves(model, r, true, { data: calib }, { ...run, step: o.grid, targets: await targetsOf() }),
        ),
      );
    return curves.get(s.bias)!;
  };
  let targets: Targets | undefined;
  const targetsOf = async () => (targets ??= await verifyTargets(model, { data: calib }, run));
  const searches = new Map<string, Timed<Map<string, number>>>();
  // asymmetric mode sizes the model differently only if the intercept creates a bias for a group keeping every channel
  const createsBiases = createdBiasParams(model, groups, true)(new Map(groups.map((u) => [u.id, u.channels]))) > 0;

  /** The allocation's keeps for a setting and size, and the seconds prune spends to find them. */
  const allocate = async (s: Setting, c: number): Promise<Timed<Map<string, number>>> => {
    const size = sizeOf(s);
    if (s.allocation === 'uniform') return timed(() => resolveBudget(groups, { compression: c, target }, size, full));
    const goal = compressionGoal(groups, c, size, full);
    const g = await capture(),
      r = await rankedFull(s);
    const shared = g.seconds + r.seconds;
    if (s.allocation === 'global') {
      const k = await timed(() => allocateRanked('global', r.value, size, goal));
      return { value: k.value, seconds: shared + k.seconds };
    }
    if (s.allocation === 'sensitivity') {
      const cv = await curvesFor(s);
      const k = await timed(() => allocateRanked('sensitivity', r.value, size, goal, cv.value));
      return { value: k.value, seconds: shared + cv.seconds + k.seconds };
    }
    // search: per size; the same keeps serve the modes that size the model alike
    const key = `${s.bias}|${s.refine}|${c}|${s.mode === 'asymmetric' && s.bias && createsBiases}`;
    if (!searches.has(key)) {
      probe ??= await timed(() => openSearchProbe(model, { data: calib }, run));
      forgetSwaps(r.value);
      const found = await timed(() => searchAllocation(model, r.value, size, goal, probe!.value, { refit: true }));
      searches.set(key, { value: found.value.keeps, seconds: probe.seconds + found.seconds });
    }
    const k = searches.get(key)!;
    return { value: k.value, seconds: shared + k.seconds };
  };

  /** The pruned model of a layerwise run, and the seconds of its ranking (uniform: to each keep), swaps and rewrite. */
  const layerwise = async (s: Setting, keeps: Map<string, number>): Promise<Timed<Model>> => {
    const g = await capture();
    let extra = g.seconds;
    let ranked: Ranked[];
    if (s.allocation === 'uniform') {
      const r = await timed(() =>
        groups.map((u: Group) =>
          rankGroup(model, u, g.value.get(u.id)!, { ...run, biasRefit: s.bias, refine: s.refine }, keeps.get(u.id)!),
        ),
      );
      ranked = r.value;
      extra += r.seconds;
    } else ranked = (await rankedFull(s)).value; // counted in the allocation's seconds
    forgetSwaps(ranked);
    const pruned = await timed(() =>
      pruneGroups(
        model,
        ranked.map((r) => planOf(r, keeps.get(r.group.id)!, true, true)),
      ),
    );
    return { value: pruned.value, seconds: (s.allocation === 'uniform' ? extra : 0) + pruned.seconds };
  };

  /** Sequential and asymmetric: prune() with the allocation's keeps (uniform: prune's own), less its verification. */
  const groupwise = async (s: Setting, c: number, keeps: Map<string, number>): Promise<Timed<Model>> => {
    // any count, as the layerwise settings and the study's own allocations keep (the grid compares the settings, which
    // it measured without the sweep)
    const fit = {
      ...run,
      mode: s.mode,
      refit: true,
      biasRefit: s.bias,
      refine: s.refine,
      roundTo: 1,
      sweep: false as const,
    };
    const res = await prune(
      model,
      calib,
      s.allocation === 'uniform'
        ? { ...fit, allocation: 'uniform', budget: { compression: c, target } }
        : { ...fit, budget: { keep: Object.fromEntries(keeps) } },
    );
    return { value: res.model, seconds: res.report.seconds.total - res.report.seconds.verify };
  };

  const runs = designRuns(o.design, o.compressions);
  const done = new Set((o.done ?? []).map((r) => rowKey(r, r.compression)));
  const wanted = new Set(runs.map((x) => rowKey(x.setting, x.compression)));
  const rows = (o.done ?? []).filter((r) => wanted.has(rowKey(r, r.compression)));
  const resumed = rows.length;
  for (const { setting: s, compression: c } of runs) {
    if (done.has(rowKey(s, c))) continue;
    const keeps = await allocate(s, c);
    // a uniform sequential or asymmetric run allocates inside prune(), which counts it
    const counted = s.mode !== 'layerwise' && s.allocation === 'uniform' ? 0 : keeps.seconds;
    const pruned = s.mode === 'layerwise' ? await layerwise(s, keeps.value) : await groupwise(s, c, keeps.value);
    const stats = modelStats(pruned.value, calib.shapes);
    const accuracy = (await evaluate(pruned.value, test, { labels: o.test.labels, ...run })).accuracy!;
    rows.push({
      ...s,
      compression: c,
      accuracy,
      params: stats.params,
      flops: stats.flops,
      seconds: tAnalyze.seconds + counted + pruned.seconds,
      keeps: Object.fromEntries(keeps.value),
    });
    o.onRow?.(rows, rows.length, runs.length);
  }
  if (!rows.length) throw badInput('the settings design has no run at these compressions');
  return {
    model: o.name,
    target,
    compressions: o.compressions,
    design: o.design,
    calibration: { path: calib.path, samples: calib.rows },
    test: { path: test.path, samples: test.rows },
    original,
    rows,
    sessions: [
      {
        runs: rows.length - resumed,
        seconds: now() - t0,
        load: { start: load0, end: loadavg()[0]! },
        shared: {
          analyze: tAnalyze.seconds,
          capture: grams?.seconds ?? 0,
          ranking: Object.fromEntries([...rankings].map(([k, v]) => [k, v.seconds])),
          curves: Object.fromEntries([...curves].map(([k, v]) => [String(k), v.seconds])),
        },
      },
    ],
  };
}
