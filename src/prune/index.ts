import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import type { Unit } from '../graph/types.js';
import { analyze, consumerWeightMatrix, modelStats } from '../graph/analyze.js';
import { pruneUnits } from '../rewrite/index.js';
import { captureGrams, checkData, loadRuntime, type Backend } from '../capture/index.js';
import { selectChannels, selectionBytes } from '../select/greedy.js';
import { resolveBudget, type Budget } from '../budget/index.js';
import { evaluate, type Fidelity } from '../eval/index.js';
import { gramBytes, type Gram } from '../kernels/gram.js';
import type { Captured } from '../capture/stats.js';
import { sizeModel } from '../budget/size.js';
import { rankChannels, statsFor, unitSeed, type Method } from '../select/baselines.js';
import { allocateBudget, type Allocation } from './allocation.js';
import type { VerifySet } from '../eval/alone.js';
import { badInput } from '../errors.js';
import { verifyPruned } from './verify.js';
import { capturePasses, checkRefitRows, distinctSamples } from '../limits.js';

export type Mode = 'layerwise' | 'sequential' | 'asymmetric';

export interface PruneOptions {
  mode?: Mode;
  /** Re-fit each consumer by least squares (default) or only slice its weights. */
  refit?: boolean;
  budget: Budget;
  /** Calibration batch size (a model with a fixed batch size uses its own). */
  batch?: number;
  /** Selection kernels: SIMD WebAssembly (default) or plain TypeScript. */
  kernels?: 'wasm' | 'plain';
  /** Threads for the wasm kernels (default: all cores); results do not depend on it. */
  threads?: number;
  /** Model runtime for capture and verification: onnxruntime-node or onnxruntime-web's WebAssembly backend
   * (default: node if it loads, else web). */
  backend?: Backend;
  /** How channels are ranked: the paper's greedy (default) or a baseline's ranking (same objective and re-fit). */
  method?: Method;
  /** Seed of the random and sampling methods. */
  seed?: number;
  /** Per-unit budgets for a compression: uniform (default), sensitivity (each unit's measured curve) or global. */
  allocation?: Allocation;
  /** The sensitivity allocation's verification set (default: the calibration inputs, measuring agreement). */
  verify?: VerifySet;
  /** The sensitivity allocation's grid step of kept fractions (default 0.01). */
  grid?: number;
  /** Progress: stage name, work done, work total. */
  onProgress?: (stage: string, done: number, total: number) => void;
  /** Sequential and asymmetric modes: called with the model after each unit is pruned (lets tests measure each step). */
  onUnitPruned?: (id: string, model: Model) => void;
  /** Called before any capture with the kernel memory the run will need. */
  onPlan?: (plan: MemoryPlan) => void;
}

/** Kernel memory (WebAssembly, ≤ 4 GiB) a run needs: its largest capture pass and its largest selection (k = all). */
export interface MemoryPlan {
  capture: number;
  passes: number;
  units: number;
  select: number;
}

function memoryPlan(units: Unit[], mode: Mode): MemoryPlan {
  const passes = mode === 'layerwise' ? capturePasses(units, false) : units.map((u) => [u]);
  const asym = mode === 'asymmetric';
  return {
    capture: Math.max(0, ...passes.map((p) => p.reduce((a, u) => a + gramBytes(u.d, asym), 0))),
    passes: passes.length,
    units: units.length,
    select: Math.max(0, ...units.map((u) => selectionBytes(u.d, u.m, u.g, u.channels))),
  };
}

export interface UnitReport {
  id: string;
  weight: string;
  channels: number;
  kept: number;
  /** Kept channel indices in greedy order. */
  order: number[];
  /** 1 − relative error of the consumer input on the calibration data (with the weights the model now has). */
  objective: number;
  seconds: number;
}

export interface PruneReport {
  mode: Mode;
  refit: boolean;
  method: Method;
  allocation: Allocation;
  /** The onnxruntime that captured and verified. */
  backend: Backend;
  calibration: { path: string; samples: number };
  units: UnitReport[];
  refused: { node: string; reason: string }[];
  params: { before: number; after: number };
  flops: { before: number; after: number };
  /** allocate: the sensitivity or global allocation (its capture of the original model and its measurements). */
  seconds: {
    analyze: number;
    allocate: number;
    capture: number;
    select: number;
    rewrite: number;
    verify: number;
    total: number;
  };
  /** The pruned model against the original on the calibration inputs. */
  fidelity: Fidelity;
  /** Bytes of kernel memory planned before the run. */
  memory: MemoryPlan;
}

const now = () => performance.now() / 1000;

/** Prunes `model` with calibration data; returns the pruned model (verified in onnxruntime) and the report. */
export async function prune(
  model: Model,
  calib: NpyFile,
  opts: PruneOptions,
): Promise<{ model: Model; report: PruneReport }> {
  const mode = opts.mode ?? 'layerwise',
    refit = opts.refit ?? true;
  const progress = opts.onProgress ?? (() => {});
  // resolved once, so every run below uses the same one; loading it is a per-process cost, not in the seconds
  const backend = (await loadRuntime(opts.backend)).backend;
  const t0 = now();
  checkData(model, calib, opts.batch);
  const inputShape = [1, ...calib.shape.slice(1)];
  const { units, refused } = analyze(model, inputShape);
  const before = modelStats(model, inputShape);
  const sizeOf = sizeModel(
    model,
    units,
    inputShape,
    'compression' in opts.budget && opts.budget.target === 'flops' ? 'flops' : 'params',
  );
  const method = opts.method ?? 'greedy',
    seed = opts.seed ?? 0,
    allocation = opts.allocation ?? 'uniform';
  const memory = memoryPlan(units, mode);
  opts.onPlan?.(memory);
  if (allocation !== 'uniform' && !('compression' in opts.budget))
    throw badInput(`--allocation ${allocation} needs a --compression budget`);
  const tA = now();
  const alloc =
    allocation !== 'uniform' && units.length > 0 && 'compression' in opts.budget
      ? await allocateBudget(
          model,
          units,
          calib,
          sizeOf,
          sizeOf(new Map(units.map((u) => [u.id, u.channels]))) / opts.budget.compression,
          { ...opts, allocation, backend, onProgress: progress },
        )
      : undefined;
  const keeps = alloc?.keeps ?? (units.length ? resolveBudget(units, opts.budget, sizeOf) : new Map<string, number>()); // no units: nothing to budget
  const t1 = now();

  const reports: UnitReport[] = [];
  let tCapture = 0,
    tSelect = 0,
    tRewrite = 0;
  let distinct: number | undefined; // of the calibration samples, counted once if a re-fit needs it
  const choose = (unit: Unit, gram: Captured, current: Model) => {
    const t = now(),
      k = keeps.get(unit.id)!;
    if (refit) checkRefitRows(unit, gram.rows, calib.rows, (distinct ??= distinctSamples(calib)));
    const W = consumerWeightMatrix(current, unit);
    const order = rankChannels(
      method,
      { n: unit.channels, g: unit.g, m: unit.m, W, stats: gram.stats },
      unitSeed(seed, unit.id),
    );
    const sel = selectChannels({ d: unit.d, m: unit.m, g: unit.g, G: gram.G, C: gram.C, H: gram.H, W }, k, {
      kernels: opts.kernels,
      threads: opts.threads,
      order,
    });
    const fit = sel.refit(k);
    const objective = refit ? (k ? sel.objective[k - 1] : 0) : slicedObjective(unit, gram, W, fit.keep, sel.norm2);
    tSelect += now() - t;
    reports.push({
      id: unit.id,
      weight: unit.weight,
      channels: unit.channels,
      kept: k,
      order: sel.order,
      objective,
      seconds: now() - t,
    });
    // Every channel kept with the model's own input as target: W is already a minimiser (error 0), and re-fitting could
    // only move it along the null space of a rank-deficient B (changing outputs off the calibration set).
    const same = k === unit.channels && mode !== 'asymmetric';
    return { unit, keep: fit.keep, ...(refit && !same ? { W: fit.W } : {}) };
  };

  let pruned: Model;
  if (mode === 'layerwise') {
    let t = now();
    const grams =
      alloc?.grams ??
      (await captureGrams(model, units, calib, {
        batch: opts.batch,
        backend,
        threads: opts.threads,
        stats: statsFor(method),
        onBatch: (d, n) => progress('capture', d, n),
      }));
    tCapture += now() - t;
    const plans = units.map((u, i) => {
      progress('select', i, units.length);
      return choose(u, grams.get(u.id)!, model);
    });
    progress('select', units.length, units.length);
    t = now();
    pruned = pruneUnits(model, plans);
    tRewrite += now() - t;
  } else {
    // Unit by unit: activations of the model whose earlier units are already pruned and re-fitted.
    pruned = model;
    for (const [i, id] of units.map((u) => u.id).entries()) {
      progress('unit', i, units.length);
      const unit = analyze(pruned, inputShape).units.find((u) => u.id === id);
      if (!unit) throw new Error(`unit ${id} is no longer prunable after pruning the units before it`);
      let t = now();
      const grams = await captureGrams(pruned, [unit], calib, {
        batch: opts.batch,
        backend,
        threads: opts.threads,
        stats: statsFor(method),
        target: mode === 'asymmetric' ? model : undefined,
      });
      tCapture += now() - t;
      const plan = choose(unit, grams.get(id)!, pruned);
      reports[reports.length - 1].seconds = now() - t; // capture + selection of this unit
      t = now();
      pruned = pruneUnits(pruned, [plan]);
      tRewrite += now() - t;
      opts.onUnitPruned?.(id, pruned);
    }
    progress('unit', units.length, units.length);
  }

  const t2 = now();
  await verifyPruned(model, pruned, calib, { batch: opts.batch, backend });
  const fidelity = await evaluate(pruned, calib, {
    reference: model,
    batch: opts.batch,
    backend,
    onBatch: (d, n) => progress('verify', d, n),
  });
  const after = modelStats(pruned, inputShape);
  const t3 = now();
  return {
    model: pruned,
    report: {
      mode,
      refit,
      method,
      allocation,
      backend,
      calibration: { path: calib.path, samples: calib.rows },
      units: reports,
      refused,
      params: { before: before.params, after: after.params },
      flops: { before: before.flops, after: after.flops },
      seconds: {
        analyze: tA - t0,
        allocate: t1 - tA,
        capture: tCapture,
        select: tSelect,
        rewrite: tRewrite,
        verify: t3 - t2,
        total: t3 - t0,
      },
      fidelity,
      memory,
    },
  };
}

/** 1 − ‖B_S W_S − A W‖²/‖A W‖² for the sliced (not re-fitted) weights, in Gram space. */
function slicedObjective(unit: Unit, gram: Gram, W: Float64Array, keep: number[], norm2: number): number {
  const { d, m, g } = unit,
    G = gram.G,
    C = gram.C ?? gram.G;
  const cols = keep.flatMap((c) => Array.from({ length: g }, (_, a) => c * g + a));
  let cross = 0,
    quad = 0;
  const GW = new Float64Array(m),
    CW = new Float64Array(m);
  for (const i of cols) {
    GW.fill(0);
    CW.fill(0);
    for (const l of cols) {
      const v = G[i * d + l];
      if (v) for (let j = 0; j < m; j++) GW[j] += v * W[l * m + j];
    }
    for (let l = 0; l < d; l++) {
      const v = C[i * d + l];
      if (v) for (let j = 0; j < m; j++) CW[j] += v * W[l * m + j];
    }
    for (let j = 0; j < m; j++) {
      quad += W[i * m + j] * GW[j];
      cross += W[i * m + j] * CW[j];
    }
  }
  return norm2 > 0 ? 1 - (quad - 2 * cross + norm2) / norm2 : 1;
}
