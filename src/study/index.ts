// The paper's study: every method × re-fit × mode × allocation at several compressions, test accuracy without
// fine-tuning. Work is shared where the math allows: one capture of the original model serves every layerwise run,
// one nested ranking per group and method serves every compression, one set of curves per method and re-fit serves
// every compression's sensitivity allocation. Sequential and asymmetric runs depend on the budget, so each is a
// separate prune (with the budget the layerwise greedy's allocation chose).
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import { analyze, modelStats } from '../graph/analyze.js';
import { pruneGroups } from '../rewrite/index.js';
import { evaluate } from '../eval/index.js';
import { verifyTargets, type VerifySet } from '../eval/alone.js';
import { resolveBudget } from '../budget/index.js';
import { sizeModel, type Target } from '../budget/size.js';
import type { Curve } from '../budget/allocate.js';
import { MODES, prune, type Mode } from '../prune/index.js';
import { Calibration, type InputData } from '../calibration.js';
import type { RuntimeOptions } from '../capture/index.js';
import type { KernelOptions } from '../kernels/instances.js';
import { planOf, rankGroup, type Ranked } from '../prune/rank.js';
import {
  ALLOCATIONS,
  allocateRanked,
  captureOriginal,
  sensitivityCurves,
  type Allocation,
} from '../prune/allocation.js';
import { METHODS, type Method } from '../select/baselines.js';
import { badInput } from '../errors.js';

export interface StudyConfig {
  method: Method;
  mode: Mode;
  refit: boolean;
  allocation: Allocation;
  seed: number;
}

/** What every study row measures of one pruned model. */
export interface MeasuredRow {
  compression: number;
  /** Test accuracy of the pruned model, no fine-tuning. */
  accuracy: number;
  params: number;
  flops: number;
  /**
   * What `subprune prune` with this configuration spends (capture, ranking, allocation with its measurements,
   * rewrite; not the test evaluation). Work the study shares between rows is counted in each row that uses it.
   */
  seconds: number;
  keeps: Record<string, number>;
}

export interface StudyRow extends StudyConfig, MeasuredRow {}

export interface StudyResult {
  model: string;
  target: Target;
  compressions: number[];
  /**
   * Asked-for compressions beyond the model's reach (every group at one channel), left out with the largest reachable.
   */
  unreachable: { compressions: number[]; max: number };
  /** The sensitivity allocation's grid step. */
  grid: number;
  calibration: { path: string; samples: number };
  verify: { path: string; samples: number; measure: 'accuracy' | 'agreement' };
  test: { path: string; samples: number };
  original: { accuracy: number; params: number; flops: number };
  groups: { id: string; channels: number }[];
  rows: StudyRow[];
  seconds: number;
}

export interface StudyOptions extends RuntimeOptions, KernelOptions {
  /** Shown in the outputs. */
  name: string;
  calib: InputData;
  test: { data: InputData; labels: ArrayLike<number> };
  /** Default: the calibration inputs, measuring top-1 agreement with the original (label-free). */
  verify?: VerifySet;
  compressions: number[];
  target?: Target;
  methods?: readonly Method[];
  /** Seeds of the random and sampling methods (default 3). Their sensitivity allocation is measured with seed 0. */
  seeds?: number;
  /** Step of the sensitivity allocation's grid of fractions (default 0.01). */
  grid?: number;
  modes?: readonly Mode[];
  allocations?: readonly Allocation[];
  refits?: readonly boolean[];
  onProgress?: (done: number, total: number) => void;
}

const now = () => performance.now() / 1000;
const stochastic = (m: Method) => m === 'random' || m === 'sampling';

export async function runStudy(model: Model, o: StudyOptions): Promise<StudyResult> {
  const t0 = now();
  const methods = o.methods ?? METHODS;
  const modes = o.modes ?? MODES;
  const allocations = o.allocations ?? ALLOCATIONS;
  const refits = o.refits ?? [true, false];
  const seeds = o.seeds ?? 3,
    target = o.target ?? 'params';
  const calib = Calibration.of(model, o.calib),
    test = Calibration.of(model, o.test.data);
  const verify = o.verify ? { ...o.verify, data: Calibration.of(model, o.verify.data) } : { data: calib };
  const run: RuntimeOptions & KernelOptions = {
    batch: o.batch,
    backend: o.backend,
    kernels: o.kernels,
    threads: o.threads,
  };
  const inputShape = calib.shapes;
  const { groups } = analyze(model, inputShape);
  const sizeOf = sizeModel(model, groups, inputShape, target);
  const full = sizeOf(new Map(groups.map((u) => [u.id, u.channels])));
  const max = full / sizeOf(new Map(groups.map((u) => [u.id, 1])));
  const compressions = o.compressions.filter((c) => c <= max);
  if (!compressions.length)
    throw badInput(
      `every compression asked for is out of reach: pruning every group to one channel gives ${max.toFixed(2)}×; ` +
        'ask for less',
    );
  const stats = modelStats(model, inputShape);
  const original = {
    accuracy: (await evaluate(model, test, { labels: o.test.labels, ...run })).accuracy!,
    params: stats.params,
    flops: stats.flops,
  };

  // Which runs: global needs the greedy's objective gains; modes other than layerwise are the greedy's.
  const configs: StudyConfig[] = [];
  for (const method of methods)
    for (let seed = 0; seed < (stochastic(method) ? seeds : 1); seed++) {
      for (const refit of refits)
        for (const allocation of allocations)
          for (const mode of modes) {
            if ((allocation === 'global' || mode !== 'layerwise') && method !== 'greedy') continue;
            configs.push({ method, mode, refit, allocation, seed });
          }
    }
  const needsCurves = new Set(
    configs
      .filter((c) => c.allocation === 'sensitivity' && c.mode === 'layerwise')
      .map((c) => `${c.method}/${c.refit}`),
  );
  const total = configs.length * compressions.length + needsCurves.size;
  let done = 0;
  const tick = () => o.onProgress?.(++done, total);

  let t = now();
  const grams = await captureOriginal(model, groups, calib, methods, run);
  const tCapture = now() - t;
  const targets = await verifyTargets(model, verify, run);

  const rows: StudyRow[] = [];
  const ranked = new Map<string, { ranked: Ranked[]; seconds: number }>();
  const curves = new Map<string, { curves: Map<string, Curve>; seconds: number }>();
  const rankedFor = (method: Method, seed: number) => {
    const key = `${method}/${seed}`;
    if (!ranked.has(key)) {
      const t1 = now();
      ranked.set(key, {
        ranked: groups.map((u) => rankGroup(model, u, grams.get(u.id)!, { ...run, method, seed })),
        seconds: now() - t1,
      });
    }
    return ranked.get(key)!;
  };
  // per method and re-fit, from seed 0's ranking: every seed of a stochastic method gets the same budgets
  const curvesFor = async (method: Method, refit: boolean) => {
    const key = `${method}/${refit}`;
    if (!curves.has(key)) {
      const t1 = now();
      curves.set(key, {
        curves: await sensitivityCurves(model, rankedFor(method, 0).ranked, refit, verify, {
          ...run,
          targets,
          step: o.grid,
        }),
        seconds: now() - t1,
      });
      tick();
    }
    return curves.get(key)!;
  };

  for (const cfg of configs) {
    const { method, seed, refit, allocation, mode } = cfg;
    const r = rankedFor(method, seed);
    const cv = allocation === 'sensitivity' ? await curvesFor(method, refit) : undefined;
    for (const c of compressions) {
      t = now();
      const keeps =
        allocation === 'uniform'
          ? resolveBudget(groups, { compression: c }, sizeOf)
          : allocateRanked(allocation, r.ranked, sizeOf, full / c, cv?.curves);
      // what prune would spend before selecting: the capture, and for a per-group allocation its ranking and curves
      let seconds = (allocation === 'uniform' ? 0 : tCapture + r.seconds + (cv?.seconds ?? 0)) + now() - t;
      let pruned: Model;
      if (mode === 'layerwise') {
        t = now();
        pruned = pruneGroups(
          model,
          r.ranked.map((x) => planOf(x, keeps.get(x.group.id)!, refit)),
        );
        seconds += now() - t + (allocation === 'uniform' ? tCapture + r.seconds : 0);
      } else {
        const res = await prune(model, calib, {
          ...run,
          mode,
          refit,
          method,
          seed,
          sweep: false, // the paper's settings, as the study compares them
          budget: { keep: Object.fromEntries(keeps) },
        });
        pruned = res.model;
        seconds += res.report.seconds.total - res.report.seconds.verify;
      }
      const s = modelStats(pruned, inputShape);
      const accuracy = (await evaluate(pruned, test, { labels: o.test.labels, ...run })).accuracy!;
      rows.push({
        ...cfg,
        compression: c,
        accuracy,
        params: s.params,
        flops: s.flops,
        seconds,
        keeps: Object.fromEntries(keeps),
      });
      tick();
    }
  }
  return {
    model: o.name,
    target,
    compressions,
    unreachable: { compressions: o.compressions.filter((c) => c > max), max },
    grid: o.grid ?? 0.01,
    calibration: { path: calib.path, samples: calib.rows },
    verify: { path: verify.data.path, samples: verify.data.rows, measure: verify.labels ? 'accuracy' : 'agreement' },
    test: { path: test.path, samples: test.rows },
    original,
    groups: groups.map((u) => ({ id: u.id, channels: u.channels })),
    rows,
    seconds: now() - t0,
  };
}
