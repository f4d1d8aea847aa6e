import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import type { Unit } from '../graph/types.js';
import { analyze, consumerWeightMatrix, modelStats } from '../graph/analyze.js';
import { pruneUnits } from '../rewrite/index.js';
import { captureGrams, checkData } from '../capture/index.js';
import { selectChannels } from '../select/greedy.js';
import { resolveBudget, type Budget } from '../budget/index.js';
import { evaluate, type Fidelity } from '../eval/index.js';
import type { Gram } from '../kernels/gram.js';

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
  /** Progress: stage name, work done, work total. */
  onProgress?: (stage: string, done: number, total: number) => void;
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
  calibration: { path: string; samples: number };
  units: UnitReport[];
  refused: { node: string; reason: string }[];
  params: { before: number; after: number };
  flops: { before: number; after: number };
  seconds: { analyze: number; capture: number; select: number; rewrite: number; verify: number; total: number };
  /** The pruned model against the original on the calibration inputs. */
  fidelity: Fidelity;
}

const now = () => performance.now() / 1000;

/** Prunes `model` with calibration data; returns the pruned model (verified in onnxruntime) and the report. */
export async function prune(model: Model, calib: NpyFile, opts: PruneOptions): Promise<{ model: Model; report: PruneReport }> {
  const mode = opts.mode ?? 'layerwise', refit = opts.refit ?? true;
  const progress = opts.onProgress ?? (() => {});
  const t0 = now();
  checkData(model, calib, opts.batch);
  const inputShape = [1, ...calib.shape.slice(1)];
  const { units, refused } = analyze(model, inputShape);
  const before = modelStats(model, inputShape);
  const sizeOf = (keeps: Map<string, number>) => {
    const plans = units.map((unit) => ({ unit, keep: Array.from({ length: keeps.get(unit.id)! }, (_, i) => i) }));
    const s = modelStats(pruneUnits(model, plans), inputShape);
    return 'compression' in opts.budget && opts.budget.target === 'flops' ? s.flops : s.params;
  };
  const keeps = resolveBudget(units, opts.budget, sizeOf);
  const t1 = now();

  const reports: UnitReport[] = [];
  let tCapture = 0, tSelect = 0, tRewrite = 0;
  const choose = (unit: Unit, gram: Gram, current: Model) => {
    const t = now(), k = keeps.get(unit.id)!;
    const W = consumerWeightMatrix(current, unit);
    const sel = selectChannels({ d: unit.d, m: unit.m, g: unit.g, G: gram.G, C: gram.C, H: gram.H, W }, k, { kernels: opts.kernels });
    const fit = sel.refit(k);
    const objective = refit ? (k ? sel.objective[k - 1] : 0) : slicedObjective(unit, gram, W, fit.keep, sel.norm2);
    tSelect += now() - t;
    reports.push({ id: unit.id, weight: unit.weight, channels: unit.channels, kept: k, order: sel.order, objective, seconds: now() - t });
    return { unit, keep: fit.keep, ...(refit ? { W: fit.W } : {}) };
  };

  let pruned: Model;
  if (mode === 'layerwise') {
    let t = now();
    const grams = await captureGrams(model, units, calib, { batch: opts.batch, onBatch: (d, n) => progress('capture', d, n) });
    tCapture += now() - t;
    const plans = units.map((u, i) => { progress('select', i, units.length); return choose(u, grams.get(u.id)!, model); });
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
      const grams = await captureGrams(pruned, [unit], calib, { batch: opts.batch, target: mode === 'asymmetric' ? model : undefined });
      tCapture += now() - t;
      const plan = choose(unit, grams.get(id)!, pruned);
      reports[reports.length - 1].seconds = now() - t; // capture + selection of this unit
      t = now();
      pruned = pruneUnits(pruned, [plan]);
      tRewrite += now() - t;
    }
    progress('unit', units.length, units.length);
  }

  const t2 = now();
  const fidelity = await evaluate(pruned, calib, { reference: model, batch: opts.batch, onBatch: (d, n) => progress('verify', d, n) });
  const after = modelStats(pruned, inputShape);
  const t3 = now();
  return {
    model: pruned,
    report: {
      mode, refit, calibration: { path: calib.path, samples: calib.rows },
      units: reports, refused,
      params: { before: before.params, after: after.params },
      flops: { before: before.flops, after: after.flops },
      seconds: { analyze: t1 - t0, capture: tCapture, select: tSelect, rewrite: tRewrite, verify: t3 - t2, total: t3 - t0 },
      fidelity,
    },
  };
}

/** 1 − ‖B_S W_S − A W‖²/‖A W‖² for the sliced (not re-fitted) weights, in Gram space. */
function slicedObjective(unit: Unit, gram: Gram, W: Float64Array, keep: number[], norm2: number): number {
  const { d, m, g } = unit, G = gram.G, C = gram.C ?? gram.G;
  const cols = keep.flatMap((c) => Array.from({ length: g }, (_, a) => c * g + a));
  let cross = 0, quad = 0;
  const GW = new Float64Array(m), CW = new Float64Array(m);
  for (const i of cols) {
    GW.fill(0); CW.fill(0);
    for (const l of cols) { const v = G[i * d + l]; if (v) for (let j = 0; j < m; j++) GW[j] += v * W[l * m + j]; }
    for (let l = 0; l < d; l++) { const v = C[i * d + l]; if (v) for (let j = 0; j < m; j++) CW[j] += v * W[l * m + j]; }
    for (let j = 0; j < m; j++) { quad += W[i * m + j] * GW[j]; cross += W[i * m + j] * CW[j]; }
  }
  return norm2 > 0 ? 1 - (quad - 2 * cross + norm2) / norm2 : 1;
}
