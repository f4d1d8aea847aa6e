// prune(): a sequence of stages that return values. Plan (analysis, sizes, kernel memory); keeps (the budget, or an
// allocation that captures and ranks first); capture, rank and select per group (rank.ts, shared with the allocations
// and the study); rewrite; verify. Layerwise mode captures every group from the original model at once; sequential and
// asymmetric modes go group by group on the model pruned so far.
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import type { Group, Refused } from '../graph/types.js';
import { analyze, modelStats } from '../graph/analyze.js';
import type { InputShapes } from '../graph/shapes.js';
import { pruneGroups, type PrunePlan } from '../rewrite/index.js';
import { Calibration, type InputData } from '../calibration.js';
import {
  captureGrams,
  capturePasses,
  groupGramBytes,
  loadRuntime,
  type Backend,
  type RuntimeOptions,
} from '../capture/index.js';
import type { Captured } from '../capture/stats.js';
import { checkRefitRows, selectionBytes, type FitOptions } from '../select/greedy.js';
import { statsFor, type Method, type MethodOptions } from '../select/baselines.js';
import { resolveBudget, type Budget, type SizeOf } from '../budget/index.js';
import { sizeModel, type Target } from '../budget/size.js';
import { createdBiasParams } from '../rewrite/bias.js';
import { evaluate, type Fidelity } from '../eval/index.js';
import type { KernelOptions } from '../kernels/instances.js';
import { badInput, internal } from '../errors.js';
import { Stopwatch } from '../stopwatch.js';
import { allocateBudget, type Allocation, type AllocationOptions } from './allocation.js';
import { mean, objectivesOf, planOf, rankGroup, refinedAt, type Ranked } from './rank.js';
import { verifyPruned } from './verify.js';

export type Mode = 'layerwise' | 'sequential' | 'asymmetric';
export const MODES: readonly Mode[] = ['layerwise', 'sequential', 'asymmetric'];

export interface PruneOptions extends RuntimeOptions, KernelOptions, MethodOptions, AllocationOptions, FitOptions {
  /** layerwise (default), sequential or asymmetric. */
  mode?: Mode;
  /** Re-fit each consumer by least squares (default) or only slice its weights. */
  refit?: boolean;
  budget: Budget;
  /** Progress: stage name, work done, work total. */
  onProgress?: (stage: string, done: number, total: number) => void;
  /**
   * Sequential and asymmetric modes: called with the model after each group is pruned (lets tests measure each step).
   */
  onGroupPruned?: (id: string, model: Model) => void;
  /** Called before any capture with the kernel memory the run will need. */
  onPlan?: (plan: MemoryPlan) => void;
}

/** Kernel memory (WebAssembly, ≤ 4 GiB) a run needs: its largest capture pass and its largest selection (k = all). */
export interface MemoryPlan {
  capture: number;
  passes: number;
  groups: number;
  select: number;
}

export interface GroupReport {
  id: string;
  /** The producers' node names. */
  producers: string[];
  channels: number;
  kept: number;
  /** Kept channel indices in greedy order. */
  order: number[];
  /**
   * 1 − relative error of the consumers' inputs on the calibration data (with the weights the model now has): the
   * mean over the consumers.
   */
  objective: number;
  /** Each consumer's own objective (by node name). */
  consumers: { node: string; objective: number }[];
  /** With --refine: the greedy's objective, the refined one (`objective`), the swaps made and the kept channels. */
  refined?: { before: number; after: number; swaps: number; keep: number[] };
  /** What removing every channel of the group saves, in the original model and in the pruned one (per sample). */
  params: { before: number; after: number };
  flops: { before: number; after: number };
  seconds: number;
}

/** A group's report as its selection makes it (the sizes come when every group is pruned). */
type Selected = Omit<GroupReport, 'params' | 'flops'>;

const STAGES = ['analyze', 'allocate', 'capture', 'select', 'rewrite', 'verify'] as const;
type Stage = (typeof STAGES)[number];

export interface PruneReport {
  mode: Mode;
  refit: boolean;
  method: Method;
  allocation: Allocation;
  /** The onnxruntime that captured and verified. */
  backend: Backend;
  calibration: { path: string; samples: number };
  groups: GroupReport[];
  refused: Refused[];
  params: { before: number; after: number };
  /** Per sample, at the calibration inputs' shapes (a sequence model's: at their length). */
  flops: { before: number; after: number };
  /** Tokens per sample of a sequence model (see Calibration.tokens): flops ÷ tokens is the FLOPs per token. */
  tokens?: number;
  /** allocate: the sensitivity or global allocation (its capture of the original model and its measurements). */
  seconds: Record<Stage | 'total', number>;
  /** The pruned model against the original on the calibration inputs. */
  fidelity: Fidelity;
  /** Bytes of kernel memory planned before the run. */
  memory: MemoryPlan;
}

/** What prune() decides before touching the data: the groups, how to size the model, and the kernel memory. */
interface Plan {
  groups: Group[];
  refused: Refused[];
  inputShape: InputShapes;
  before: { params: number; flops: number };
  sizeOf: SizeOf;
  memory: MemoryPlan;
}

function planPrune(model: Model, calib: Calibration, mode: Mode, budget: Budget, fit: FitOptions = {}): Plan {
  const inputShape = calib.shapes;
  const { groups, refused } = analyze(model, inputShape);
  const target = 'compression' in budget && budget.target === 'flops' ? 'flops' : 'params';
  const passes = mode === 'layerwise' ? capturePasses(groups, false) : groups.map((u) => [u]);
  const asym = mode === 'asymmetric';
  const selectBytes = (g: Group) => g.consumers.reduce((a, c) => a + selectionBytes(c.d, c.m, c.g, g.channels), 0);
  const memory = {
    capture: Math.max(0, ...passes.map((p) => p.reduce((a, u) => a + groupGramBytes(u, asym), 0))),
    passes: passes.length,
    groups: groups.length,
    select: Math.max(0, ...groups.map(selectBytes)),
  };
  const before = modelStats(model, inputShape);
  const sizeOf = sizeWithBiases(model, groups, inputShape, target, mode, fit);
  return { groups, refused, inputShape, before, sizeOf, memory };
}

/** The size model, plus the parameters of the biases the intercept's re-fit creates (src/rewrite/bias.ts). */
function sizeWithBiases(
  model: Model,
  groups: Group[],
  shape: InputShapes,
  target: Target,
  mode: Mode,
  fit: FitOptions,
) {
  const size = sizeModel(model, groups, shape, target);
  if (target !== 'params' || fit.refit === false || fit.biasRefit === false) return size;
  const biases = createdBiasParams(model, groups, mode === 'asymmetric');
  return (keeps: Map<string, number>) => size(keeps) + biases(keeps);
}

/** The channels each group keeps, and (for an allocation that ranks) the capture and rankings it made. */
interface Keeps {
  keeps: Map<string, number>;
  grams?: Map<string, Captured[]>;
  ranked?: Ranked[];
}

async function keepsFor(model: Model, plan: Plan, calib: Calibration, opts: PruneOptions): Promise<Keeps> {
  const { groups, sizeOf } = plan,
    allocation = opts.allocation ?? 'uniform';
  if (allocation !== 'uniform' && !('compression' in opts.budget))
    throw badInput(`--allocation ${allocation} needs a --compression budget`);
  if (!groups.length) return { keeps: new Map() }; // nothing to budget
  if (allocation === 'uniform' || !('compression' in opts.budget))
    return { keeps: resolveBudget(groups, opts.budget, sizeOf) };
  const goal = sizeOf(new Map(groups.map((u) => [u.id, u.channels]))) / opts.budget.compression;
  return allocateBudget(model, groups, calib, sizeOf, goal, { ...opts, allocation });
}

/** A group's plan and report from its capture: rank (or reuse an allocation's ranking), then keep the first k. */
function selectGroupPlan(
  model: Model,
  group: Group,
  grams: Captured[],
  k: number,
  calib: Calibration,
  opts: PruneOptions & { ranked?: Ranked },
): { plan: PrunePlan; report: Selected } {
  const t = performance.now(),
    refit = opts.refit ?? true;
  if (refit)
    group.consumers.forEach((c, i) =>
      checkRefitRows(
        { id: group.consumers.length > 1 ? `${group.id} (consumer ${c.node.name})` : group.id, d: c.d },
        grams[i]!.rows,
        calib.rows,
        calib.distinctSamples(),
      ),
    );
  const r = opts.ranked ?? rankGroup(model, group, grams, opts, k);
  const plan = planOf(r, k, refit, opts.mode !== 'asymmetric');
  const each = objectivesOf(r, grams, k, refit);
  const consumers = group.consumers.map((c, i) => ({ node: c.node.name, objective: each[i]! }));
  const objective = mean(each);
  const seconds = (performance.now() - t) / 1000;
  const { id, channels } = group;
  const producers = group.producers.map((p) => p.name);
  const order = r.sel.order.slice(0, k);
  const f = refit ? refinedAt(r, k) : undefined,
    refined = f && { refined: { before: f.before, after: f.after, swaps: f.swaps, keep: f.keep } };
  return { plan, report: { id, producers, channels, kept: k, order, objective, consumers, seconds, ...refined } };
}

interface Pruned {
  model: Model;
  groups: Selected[];
}

/** Every group from the original model's activations: one capture (or the allocation's), one rewrite. */
async function pruneLayerwise(
  model: Model,
  plan: Plan,
  keeps: Keeps,
  calib: Calibration,
  opts: PruneOptions,
  clock: Stopwatch<Stage>,
): Promise<Pruned> {
  const progress = opts.onProgress ?? (() => {}),
    { groups } = plan;
  const grams =
    keeps.grams ??
    (await clock.time('capture', () =>
      captureGrams(model, groups, calib, {
        ...opts,
        stats: statsFor(opts.method ?? 'greedy'),
        onBatch: (d, n) => progress('capture', d, n),
      }),
    ));
  const chosen = groups.map((u, i) => {
    progress('select', i, groups.length);
    const ranked = keeps.ranked?.[i];
    const k = keeps.keeps.get(u.id)!;
    return clock.time('select', () => selectGroupPlan(model, u, grams.get(u.id)!, k, calib, { ...opts, ranked }));
  });
  progress('select', groups.length, groups.length);
  const plans = chosen.map((c) => c.plan);
  const pruned = clock.time('rewrite', () => pruneGroups(model, plans));
  return { model: pruned, groups: chosen.map((c) => c.report) };
}

/** Group by group: activations of the model whose earlier groups are already pruned and re-fitted. */
async function pruneSequential(
  model: Model,
  plan: Plan,
  keeps: Keeps,
  calib: Calibration,
  opts: PruneOptions,
  clock: Stopwatch<Stage>,
): Promise<Pruned> {
  const progress = opts.onProgress ?? (() => {}),
    ids = plan.groups.map((u) => u.id),
    reports: Selected[] = [];
  let pruned = model;
  for (const [i, id] of ids.entries()) {
    progress('group', i, ids.length);
    const group = analyze(pruned, plan.inputShape).groups.find((u) => u.id === id);
    if (!group) throw internal(`group ${id} is no longer prunable after pruning the groups before it`);
    const t = performance.now();
    const target = opts.mode === 'asymmetric' ? { model, groups: plan.groups } : undefined;
    const stats = statsFor(opts.method ?? 'greedy');
    const gram = await clock.time('capture', () => captureGrams(pruned, [group], calib, { ...opts, stats, target }));
    const k = keeps.keeps.get(id)!;
    const chosen = clock.time('select', () => selectGroupPlan(pruned, group, gram.get(id)!, k, calib, opts));
    reports.push({ ...chosen.report, seconds: (performance.now() - t) / 1000 }); // capture + selection of this group
    pruned = clock.time('rewrite', () => pruneGroups(pruned, [chosen.plan]));
    opts.onGroupPruned?.(id, pruned);
  }
  progress('group', ids.length, ids.length);
  return { model: pruned, groups: reports };
}

/** Each group's report with its params and FLOPs: what removing all its channels saves, before and after. */
function withSizes(model: Model, plan: Plan, reports: Selected[]): GroupReport[] {
  const kept = new Map(reports.map((r) => [r.id, r.kept]));
  const [params, flops] = (['params', 'flops'] as const).map((t) => sizeModel(model, plan.groups, plan.inputShape, t));
  const saved = (size: SizeOf, keeps: Map<string, number>, id: string) => size(keeps) - size(new Map(keeps).set(id, 0));
  const full = new Map(plan.groups.map((g) => [g.id, g.channels]));
  return reports.map((r) => ({
    ...r,
    params: { before: saved(params!, full, r.id), after: saved(params!, kept, r.id) },
    flops: { before: saved(flops!, full, r.id), after: saved(flops!, kept, r.id) },
  }));
}

/** Prunes `model` with calibration data; returns the pruned model (verified in onnxruntime) and the report. */
export async function prune(
  model: Model,
  data: InputData,
  opts: PruneOptions,
): Promise<{ model: Model; report: PruneReport }> {
  // resolved once, so every run below uses the same one; loading it is a per-process cost, not in the seconds
  const backend = (await loadRuntime(opts.backend)).backend;
  const o: PruneOptions = { ...opts, backend, mode: opts.mode ?? 'layerwise', refit: opts.refit ?? true };
  const clock = new Stopwatch(STAGES);
  const calib = clock.time('analyze', () => Calibration.of(model, data));
  const plan = clock.time('analyze', () => planPrune(model, calib, o.mode!, o.budget, o));
  o.onPlan?.(plan.memory);
  const keeps = await clock.time('allocate', () => keepsFor(model, plan, calib, o));
  const prunes = o.mode === 'layerwise' ? pruneLayerwise : pruneSequential;
  const pruned = await prunes(model, plan, keeps, calib, o, clock);
  const fidelity = await clock.time('verify', async () => {
    await verifyPruned(model, pruned.model, calib, o);
    const progress = (d: number, n: number) => o.onProgress?.('verify', d, n);
    return evaluate(pruned.model, calib, { reference: model, batch: o.batch, backend, onBatch: progress });
  });
  const after = modelStats(pruned.model, plan.inputShape);
  return {
    model: pruned.model,
    report: {
      mode: o.mode!,
      refit: o.refit!,
      method: o.method ?? 'greedy',
      allocation: o.allocation ?? 'uniform',
      backend,
      calibration: { path: calib.path, samples: calib.rows },
      groups: withSizes(model, plan, pruned.groups),
      refused: plan.refused,
      params: { before: plan.before.params, after: after.params },
      flops: { before: plan.before.flops, after: after.flops },
      ...(calib.tokens ? { tokens: calib.tokens } : {}),
      seconds: { ...clock.seconds, total: clock.total() },
      fidelity,
      memory: plan.memory,
    },
  };
}
