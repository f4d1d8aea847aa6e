// prune(): a sequence of stages that return values. Plan (analysis, sizes, kernel memory); keeps (the budget, or an
// allocation that captures and ranks first); capture, rank and select per group (rank.ts, shared with the allocations
// and the study); rewrite; verify. Layerwise mode captures every group from the original model at once; sequential and
// asymmetric modes go group by group on the model pruned so far.
// pruneSizes(): several budgets from one run. Layerwise, the capture and each group's ranking serve every size (the
// greedy's order is nested: the first k of a longer order are the greedy's picks for k), and each size costs only its
// re-fit, rewrite and verification; sequential and asymmetric modes capture the model pruned so far, which differs per
// size, so they run once per size.
import { shareEqualInitializers, type Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import type { Group, Refused } from '../graph/types.js';
import { analyze, modelStats } from '../graph/analyze.js';
import { scoresOutput } from '../eval/alone.js';
import type { InputShapes } from '../graph/shapes.js';
import { pruneGroups, type PrunePlan } from '../rewrite/index.js';
import { Calibration, type InputData, type Padding } from '../calibration.js';
import {
  captureBatch,
  captureGrams,
  targetTensor,
  capturePasses,
  slicingOf,
  groupGramBytes,
  loadRuntime,
  type Backend,
  type RuntimeOptions,
} from '../capture/index.js';
import type { Captured } from '../capture/stats.js';
import { Frontier, frontierBytes } from '../capture/frontier.js';
import { checkStats, distinctSamples, type CaptureStats } from '../capture/shards.js';
import { refitRowsShort, selectionBytes, type FitOptions, type RowsShort } from '../select/greedy.js';
import { statsFor, type Method, type MethodOptions } from '../select/baselines.js';
import {
  autoStep,
  compressionGoal,
  conv2d,
  keepStep,
  resolveBudget,
  type Budget,
  type SizeOf,
} from '../budget/index.js';
import { sizeModel, type Target } from '../budget/size.js';
import { createdBiasParams } from '../rewrite/bias.js';
import type { Fidelity } from '../eval/index.js';
import { defaultThreads, type KernelOptions } from '../kernels/instances.js';
import { badInput, internal, SubpruneError } from '../errors.js';
import { Stopwatch } from '../stopwatch.js';
import {
  allocateBudget,
  captureOriginal,
  defaultAllocation,
  type Allocation,
  type AllocationOptions,
  type RoundTo,
  type SearchResult,
} from './allocation.js';
import type { NetworkScore } from '../eval/network.js';
import { mean, objectivesOf, planOf, rankGroup, refinedAt, type Ranked } from './rank.js';
import { checkFidelityRows, fidelitySample, fidelityWarnings, verifiedFidelity, type Verification } from './verify.js';
import { Reference } from '../eval/index.js';
import { refitSweep } from './sweep.js';

export type Mode = 'layerwise' | 'sequential' | 'asymmetric';
export const MODES: readonly Mode[] = ['layerwise', 'sequential', 'asymmetric'];

/**
 * The mode when none is asked for: asymmetric, the best on the bundled models at a few times the layerwise prune's
 * seconds (README, "The default setting"); layerwise with `stats`, which only layerwise mode can use.
 */
export const defaultMode = (stats?: CaptureStats): Mode => (stats ? 'layerwise' : 'asymmetric');

/**
 * The sweep when none is asked for: one least-squares and one ReLU-aware fit of every consumer (README, The default
 * setting), where groups are pruned one after another from the model pruned so far and re-fitted; none in layerwise
 * mode (the paper's: one capture of the original model) or without the re-fit.
 */
export const defaultSweep = (mode: Mode, refit: boolean): number | false => (mode !== 'layerwise' && refit ? 1 : false);

/**
 * The rounding when none is asked for: 'auto' (groups of 2-D convolutions of 32 channels or more keep multiples of 8,
 * so that onnxruntime blocks them; as accurate on the bundled models, README, Rounding), but for explicit counts (a
 * `keep` budget), which are kept as given.
 */
export const defaultRoundTo = (budgets: Budget[]): RoundTo => (budgets.some((b) => 'keep' in b) ? 1 : 'auto');

export interface PruneOptions extends RuntimeOptions, KernelOptions, MethodOptions, AllocationOptions, FitOptions {
  /** layerwise, sequential or asymmetric (default: defaultMode). */
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
  /** Calibration rows the report's fidelity is measured on, evenly spaced (default 512; Infinity: every row). */
  fidelityRows?: number;
  /**
   * Every token of a sequence model's calibration data a row of the consumers' inputs, padding included (default:
   * the tokens an attention_mask input marks 0 are left out, Calibration.padding).
   */
  allTokens?: boolean;
  /**
   * Layerwise only: the capture's statistics made beforehand (captureStats, merged shards: src/capture/shards.ts), so
   * no capture runs; the data then only verifies the pruned model and measures its fidelity.
   */
  stats?: CaptureStats;
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
  /** With a step above 1 (roundTo): the group kept a multiple of `step` channels, or all of them. */
  step?: number;
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
  /**
   * The consumers with fewer rows of calibration input than their d columns, re-fitted with the ridge toward their
   * weights (src/select/ridge.ts); `need` is the distinct samples a plain least squares takes. The report's warnings
   * list them.
   */
  underdetermined?: ShortConsumer[];
}

/** A consumer with fewer rows of input than columns (refitRowsShort). */
export type ShortConsumer = RowsShort & { node: string };

/** A group's report as its selection makes it (the sizes come when every group is pruned). */
type Selected = Omit<GroupReport, 'params' | 'flops'>;

const STAGES = ['analyze', 'allocate', 'capture', 'select', 'sweep', 'rewrite', 'verify'] as const;
type Stage = (typeof STAGES)[number];

export interface PruneReport {
  mode: Mode;
  refit: boolean;
  method: Method;
  allocation: Allocation;
  /** roundTo, when not 1: every group kept a multiple of its step of channels, or all of them. */
  roundTo?: RoundTo;
  /** The sweep of re-fits after the groups were pruned: its ReLU-aware fits after the least squares, or false: none. */
  sweep: number | false;
  /** The onnxruntime that captured and verified. */
  backend: Backend;
  /** The calibration file, its samples, and the batch size its runs took (default: captureBatch). */
  calibration: { path: string; samples: number; batch: number };
  /** With `stats`: the samples the Gram matrices were summed over (distinct ones) and the shards merged. */
  stats?: { samples: number; distinct: number; shards: number };
  groups: GroupReport[];
  refused: Refused[];
  params: { before: number; after: number };
  /** Per sample, at the calibration inputs' shapes (a sequence model's: at their length). */
  flops: { before: number; after: number };
  /** Tokens per sample of a sequence model (see Calibration.tokens): flops ÷ tokens is the FLOPs per token. */
  tokens?: number;
  /** The calibration tokens left out of the consumers' rows as padding, by the mask input (Calibration.padding). */
  padding?: Padding;
  /**
   * analyze: the analysis, and in sequential and asymmetric modes each group's of the model pruned so far;
   * allocate: the allocation's own work (sensitivity: its curves; search: its candidates); an allocation's capture of
   * the original model counts as capture.
   */
  seconds: Record<Stage | 'total', number>;
  /** The search allocation's outcome for this size: the global start's score and the search's, and its candidates. */
  search?: { start: NetworkScore; score: NetworkScore; evaluations: number };
  /** What the fidelity was measured on: the held-out `verify` inputs when given, else the calibration inputs. */
  verification: Verification;
  /** The pruned model against the original on (a sample of) the verification inputs (verifiedFidelity); UNCHANGED. */
  fidelity: Fidelity;
  /**
   * What to check before using the pruned model: groups not re-fitted for want of rows, fidelityWarnings, FLOPs that
   * leave out layers (uncountedWarnings); or none.
   */
  warnings: string[];
  /** Bytes of kernel memory planned before the run. */
  memory: MemoryPlan;
}

/** What prune() decides before touching the data: the groups, how to size the model, and the kernel memory. */
interface Plan {
  groups: Group[];
  refused: Refused[];
  inputShape: InputShapes;
  /** Analysis.inputBytes. */
  inputBytes?: number;
  /** The model's size; `unknown`: the layers whose shapes are unknown, which the FLOPs leave out. */
  before: { params: number; flops: number; unknown: string[] };
  /** The model's size as a function of the keeps, in each budget's target. */
  sizeOf: Record<Target, SizeOf>;
  memory: MemoryPlan;
}

const targetOf = (budget: Budget): Target =>
  'compression' in budget && budget.target === 'flops' ? 'flops' : 'params';

function planPrune(model: Model, calib: Calibration, mode: Mode, fit: FitOptions = {}, roundTo: RoundTo = 1): Plan {
  const inputShape = calib.shapes;
  const analysis = analyze(model, inputShape),
    { refused, inputBytes } = analysis;
  const blocked = conv2d(model.graph!),
    step = (u: Group) => (roundTo === 'auto' ? autoStep(u, blocked) : keepStep(u, roundTo));
  const groups = roundTo !== 1 ? analysis.groups.map((u) => ({ ...u, step: step(u) })) : analysis.groups;
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
  const sizeOf = {
    params: sizeWithBiases(model, groups, inputShape, mode, fit),
    flops: sizeModel(model, groups, inputShape, 'flops'),
  };
  return { groups, refused, inputShape, inputBytes, before, sizeOf, memory };
}

/** The parameter count, plus the parameters of the biases the intercept's re-fit creates (src/rewrite/bias.ts). */
export function sizeWithBiases(model: Model, groups: Group[], shape: InputShapes, mode: Mode, fit: FitOptions): SizeOf {
  const size = sizeModel(model, groups, shape, 'params');
  if (fit.refit === false || fit.biasRefit === false) return size;
  const biases = createdBiasParams(model, groups, mode === 'asymmetric');
  return (keeps: Map<string, number>) => size(keeps) + biases(keeps);
}

/** The channels each group keeps for each budget, and (for an allocation that ranks) the capture and rankings made. */
interface Keeps {
  keeps: Map<string, number>[];
  grams?: Map<string, Captured[]>;
  /** Asymmetric mode: the original's frontier, which the allocation's capture filled with every group's target. */
  targets?: Frontier;
  ranked?: Ranked[];
  search?: SearchResult[];
}

async function keepsFor(
  model: Model,
  plan: Plan,
  calib: Calibration,
  budgets: Budget[],
  opts: SizesOptions,
  clock: Stopwatch<Stage>,
  reference?: Reference,
): Promise<Keeps> {
  const { groups } = plan,
    allocation = opts.allocation ?? defaultAllocation(budgets);
  if (allocation !== 'uniform' && !budgets.every((b) => 'compression' in b))
    throw badInput(`--allocation ${allocation} needs a --compression budget`);
  if (!groups.length) return { keeps: budgets.map(() => new Map()) }; // nothing to budget
  if (allocation === 'uniform')
    return clock.time('allocate', () => ({
      keeps: budgets.map((b) => resolveBudget(groups, b, plan.sizeOf[targetOf(b)], plan.before[targetOf(b)])),
    }));
  // the goal is the original model's size over c (biases the re-fit creates count against it)
  const goals = budgets.map((b) => {
    const sizeOf = plan.sizeOf[targetOf(b)],
      c = (b as { compression: number }).compression;
    return { sizeOf, goal: compressionGoal(groups, c, sizeOf, plan.before[targetOf(b)]) };
  });
  // the allocation's capture of the original model (the layerwise prune's too) counts as capture
  const onBatch = (d: number, n: number) => opts.onProgress?.('capture', d, n);
  // asymmetric mode wants the original's activations again, group by group: this run computes them once for all
  // groups after the first (whose target is its own input)
  const targets = opts.mode === 'asymmetric' && !opts.stats ? new Frontier(model, frontierBytes(), true) : undefined,
    fill = targets && {
      f: targets,
      names: [...new Set(groups.slice(1).flatMap((u) => u.consumers.map(targetTensor)))],
    };
  const grams =
    opts.stats?.grams ??
    (await clock.time('capture', () =>
      captureOriginal(model, groups, calib, [opts.method ?? 'greedy'], { ...opts, onBatch, fill, reference }),
    ));
  const allocated = await clock.time('allocate', () =>
    allocateBudget(model, groups, calib, goals, { ...opts, allocation, grams }),
  );
  return { ...allocated, ...(targets ? { targets } : {}) };
}

/** The samples behind a capture, the calibration set's or the stats', and how many differ (repeats add no rank). */
interface SampleCount {
  samples: number;
  distinct: number;
}

const sampleCount = (calib: Calibration, stats?: CaptureStats): SampleCount =>
  stats
    ? { samples: stats.samples, distinct: distinctSamples(stats) }
    : { samples: calib.rows, distinct: calib.distinctSamples() };

/** Per consumer, how it is too short of rows for a plain least squares (its re-fit takes the ridge), or undefined. */
function refitShort(group: Group, grams: Captured[], n: SampleCount, refit: boolean): (ShortConsumer | undefined)[] {
  return group.consumers.map((c, i) => {
    const short = refit ? refitRowsShort(c.d, grams[i]!.rows, n.samples, n.distinct) : undefined;
    return short && { node: c.node.name, ...short };
  });
}

/**
 * The FLOPs (before and after, and a --target flops budget) leave out the layers whose shapes are unknown: a mixture
 * of experts whose rows torch.where picks (1.59× fewer FLOPs reported, its experts' not counted), MViT's blocks.
 */
function uncountedWarnings(unknown: string[]): string[] {
  if (!unknown.length) return [];
  const n = unknown.length;
  return [
    `the FLOPs leave out ${n} layer${n > 1 ? 's' : ''} whose shapes are unknown (e.g. ${unknown[0]}; subprune ` +
      'inspect says why): they count only the rest of the model',
  ];
}

/**
 * The report's one warning for every underdetermined consumer (GroupReport.underdetermined), if any. `heldOut`: the
 * fidelity was measured on other inputs than the fit's (else the warning says how to).
 */
function shortWarnings(groups: Selected[], n: SampleCount, heldOut: boolean): string[] {
  const all = groups.flatMap((g) => (g.underdetermined ?? []).map((c) => ({ group: g.id, ...c })));
  if (!all.length) return [];
  const one = all.length === 1,
    given = `the ${n.samples} calibration samples${n.distinct < n.samples ? ` (${n.distinct} distinct)` : ''}`;
  return [
    `${given} give ${one ? 'a consumer' : `${all.length} consumers`} fewer rows of input than ` +
      `${one ? 'its' : 'their'} d columns, so a plain least-squares re-fit would be underdetermined (it would fit ` +
      `these samples and fail on others): ${one ? 'it is' : 'they are'} re-fitted with a ridge toward ` +
      `${one ? 'its' : 'their'} own weights; give at least ${Math.max(...all.map((c) => c.need))} distinct ` +
      `samples for a full re-fit${heldOut ? '' : ', and measure the pruned model on other inputs (--verify)'}:\n` +
      all.map((c) => `  group ${c.group}, consumer ${c.node}: ${c.rows} rows, d = ${c.d}`).join('\n'),
  ];
}

/** The consumers of `short` that are underdetermined, for a group's report (none: no field). */
const shortOf = (short: (ShortConsumer | undefined)[]) =>
  short.some((c) => c) ? { underdetermined: short.filter((c) => c !== undefined) } : {};

/** A group's plan and report keeping the first k channels of its ranking. */
function planGroup(r: Ranked, grams: Captured[], k: number, opts: SizesOptions): { plan: PrunePlan; report: Selected } {
  const t = performance.now(),
    refit = opts.refit ?? true,
    group = r.group;
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

/** A group's plan and report from its capture: rank its first k channels, then keep them. */
function selectGroupPlan(
  model: Model,
  group: Group,
  grams: Captured[],
  k: number,
  calib: Calibration,
  opts: SizesOptions,
): { plan: PrunePlan; report: Selected } {
  const t = performance.now();
  const short = refitShort(group, grams, sampleCount(calib), opts.refit ?? true),
    few = short.map((w) => w !== undefined);
  const chosen = planGroup(rankGroup(model, group, grams, opts, k, few), grams, k, opts);
  const seconds = (performance.now() - t) / 1000;
  return { ...chosen, report: { ...chosen.report, seconds, ...shortOf(short) } };
}

interface Pruned {
  model: Model;
  groups: Selected[];
}

/** Layerwise: each group's capture and ranking, made once for every size (or the allocation's). */
interface Ranking {
  grams: Map<string, Captured[]>;
  ranked: Ranked[];
  /** Each group's ranking seconds (charged to the first size's group reports). */
  seconds: number[];
  /** Per group, its consumers that are not re-fitted (refitShort). */
  short: (ShortConsumer | undefined)[][];
}

/**
 * Every group from the original model's activations: one capture (or the allocation's), and one ranking per group as
 * long as its largest keep over the sizes.
 */
async function rankLayerwise(
  model: Model,
  plan: Plan,
  keeps: Keeps,
  calib: Calibration,
  opts: SizesOptions,
  clock: Stopwatch<Stage>,
  reference?: Reference,
): Promise<Ranking> {
  const progress = opts.onProgress ?? (() => {}),
    { groups } = plan;
  const count = sampleCount(calib, opts.stats);
  const grams =
    keeps.grams ??
    opts.stats?.grams ??
    (await clock.time('capture', () =>
      captureGrams(model, groups, calib, {
        ...opts,
        stats: statsFor(opts.method ?? 'greedy'),
        onBatch: (d, n) => progress('capture', d, n),
        reference,
      }),
    ));
  const seconds: number[] = [];
  const short = groups.map((u) => refitShort(u, grams.get(u.id)!, count, opts.refit ?? true));
  const ranked = groups.map((u, i) => {
    progress('select', i, groups.length);
    const t = performance.now(),
      few = short[i]!.map((w) => w !== undefined);
    const r = clock.time('select', () => {
      const k = Math.max(...keeps.keeps.map((m) => m.get(u.id)!));
      // the allocation's ranking serves unless a consumer is too short to steer it, or it stops short of k (the
      // global allocation ranks a group only as deep as it keeps, rankedForGlobal)
      const prior = keeps.ranked?.[i],
        shared = few.some((x) => x) || !prior || prior.sel.order.length < k ? undefined : prior;
      return shared ?? rankGroup(model, u, grams.get(u.id)!, opts, k, few);
    });
    seconds.push((performance.now() - t) / 1000);
    return r;
  });
  progress('select', groups.length, groups.length);
  return { grams, ranked, seconds, short };
}

/** One size from the shared ranking: each group's first k channels re-fitted, one rewrite. */
function pruneRanked(
  model: Model,
  ranking: Ranking,
  keeps: Map<string, number>,
  opts: SizesOptions,
  clock: Stopwatch<Stage>,
): Pruned {
  const chosen = ranking.ranked.map((r, i) =>
    clock.time('select', () => {
      const k = keeps.get(r.group.id)!,
        c = planGroup(r, ranking.grams.get(r.group.id)!, k, opts);
      // a group kept whole keeps its weights here (its input is the model's own), so its rows do not matter
      return k < r.group.channels ? { ...c, report: { ...c.report, ...shortOf(ranking.short[i]!) } } : c;
    }),
  );
  const plans = chosen.map((c) => c.plan);
  const pruned = clock.time('rewrite', () => pruneGroups(model, plans));
  return { model: pruned, groups: chosen.map((c) => c.report) };
}

/**
 * Group by group: activations of the model whose earlier groups are already pruned and re-fitted. `original`: the
 * allocation's capture of the original model (the first group's, which is on it) and, asymmetric, the original's
 * frontier that capture filled; the original's reference for verification, which a capture of it hands its outputs.
 * The capture and rankings are dropped from `original` after the first cut.
 */
async function pruneSequential(
  model: Model,
  plan: Plan,
  keeps: Map<string, number>,
  calib: Calibration,
  opts: SizesOptions,
  clock: Stopwatch<Stage>,
  original: Pick<Keeps, 'grams' | 'targets' | 'ranked'> & { reference?: Reference } = {},
): Promise<Pruned> {
  const progress = opts.onProgress ?? (() => {}),
    ids = plan.groups.map((u) => u.id),
    reports: Selected[] = [];
  let pruned = model;
  // each capture runs the model from where the previous one's cached tensors leave off (frontier.ts)
  const target = opts.mode === 'asymmetric' ? { model, groups: plan.groups } : undefined,
    frontier = {
      model: new Frontier(model, frontierBytes()),
      target: target && (original.targets ?? new Frontier(model, frontierBytes(), true)),
    };
  const after = (groups: Group[], i: number) => groups.filter((u) => ids.indexOf(u.id) > i);
  for (const [i, id] of ids.entries()) {
    progress('group', i, ids.length);
    const k = keeps.get(id)!;
    // until the first cut the model is the original, where a group kept whole keeps its weights (as in pruneRanked):
    // the allocation's capture and ranking serve, nothing is rewritten, and the next group is on the original too
    // (VGG-16 at compression 2 cut only its classifier: its 12 conv groups took 4 of its 8 minutes). Not ranked again
    // where a consumer has few rows, as a cut group is: the order moves no weight, and ranking AlexNet's features.10
    // on these Gram matrices forms Q = G·W for its 9216-input consumer, where its own capture projected the target
    const ranked = pruned === model && k === plan.groups[i]!.channels ? original.ranked?.[i] : undefined;
    if (ranked) {
      reports.push(clock.time('select', () => planGroup(ranked, original.grams!.get(id)!, k, opts)).report);
      opts.onGroupPruned?.(id, pruned);
      continue;
    }
    const groups = clock.time('analyze', () => analyze(pruned, plan.inputShape).groups),
      group = groups.find((u) => u.id === id);
    if (!group) throw internal(`group ${id} is no longer prunable after pruning the groups before it`);
    const t = performance.now();
    const stats = statsFor(opts.method ?? 'greedy');
    const later = {
      later: after(groups, i),
      targetLater: after(plan.groups, i).flatMap((u) => u.consumers.map(targetTensor)),
    };
    // on the model not pruned yet, the target A is B itself and the asymmetric objective the symmetric one: the first
    // group has no C or H; its capture is the allocation's where there is one, else its run also computes the later
    // groups' targets for the original's frontier
    const first = pruned === model,
      fill = first && target && !original.targets ? { f: frontier.target!, names: later.targetLater } : undefined;
    const allocated = first ? original.grams?.get(id) : undefined,
      known = allocated?.length === group.consumers.length ? allocated : undefined;
    const gram = known
      ? new Map([[id, known]])
      : await clock.time('capture', () =>
          captureGrams(pruned, [group], calib, {
            ...opts,
            stats,
            // the outputs only where the run goes nearly to them anyway (to the later groups' targets)
            ...(first ? { fill, reference: fill && original.reference } : { target }),
            frontier: { ...frontier, ...later },
          }),
        );
    const chosen = clock.time('select', () => selectGroupPlan(pruned, group, gram.get(id)!, k, calib, opts));
    reports.push({ ...chosen.report, seconds: (performance.now() - t) / 1000 }); // capture + selection of this group
    pruned = clock.time('rewrite', () => pruneGroups(pruned, [chosen.plan]));
    // past the first cut no group is on the original: its captures and rankings serve none (freed unless the caller
    // keeps them for another size)
    original.grams = original.ranked = undefined;
    clock.time('capture', () => frontier.model.advance(pruned, slicingOf(group, chosen.plan.keep)));
    opts.onGroupPruned?.(id, pruned);
  }
  progress('group', ids.length, ids.length);
  return { model: pruned, groups: reports };
}

/**
 * Each group's report with its step (roundTo, where above 1) and its params and FLOPs: what removing all its channels
 * saves, before and after.
 */
function withSizes(plan: Plan, reports: Selected[]): GroupReport[] {
  const kept = new Map(reports.map((r) => [r.id, r.kept]));
  const { params, flops } = plan.sizeOf;
  const saved = (size: SizeOf, keeps: Map<string, number>, id: string) => size(keeps) - size(new Map(keeps).set(id, 0));
  const full = new Map(plan.groups.map((g) => [g.id, g.channels])),
    steps = new Map(plan.groups.map((g) => [g.id, g.step ?? 1]));
  return reports.map((r) => ({
    ...r,
    ...(steps.get(r.id)! > 1 ? { step: steps.get(r.id) } : {}),
    params: { before: saved(params, full, r.id), after: saved(params, kept, r.id) },
    flops: { before: saved(flops, full, r.id), after: saved(flops, kept, r.id) },
  }));
}

/** One size of pruneSizes: its pruned model (verified in onnxruntime) and report, or why it failed. */
export type Sized = { budget: Budget; model: Model; report: PruneReport } | { budget: Budget; error: Error };

/** Options of pruneSizes: prune's, without the budget. */
export type SizesOptions = Omit<PruneOptions, 'budget'>;

/**
 * Prunes `model` to each budget with calibration data, yielding each size when it is verified (in the budgets' order).
 * Layerwise (the default), one capture and one ranking per group serve every size; the first size's seconds hold the
 * shared stages, the later ones only their re-fit, rewrite and verification. Other modes run once per size. A size
 * that fails by a bug (its verification, say) is yielded with its error and the others still run; bad input is thrown.
 */
export async function* pruneSizes(
  model: Model,
  data: InputData,
  budgets: Budget[],
  opts: SizesOptions,
): AsyncGenerator<Sized> {
  // resolved once, so every run below uses the same one; loading it is a per-process cost, not in the seconds
  const backend = (await loadRuntime(opts.backend)).backend;
  checkFidelityRows(opts.fidelityRows);
  if (opts.roundTo !== undefined && opts.roundTo !== 'auto' && !(Number.isInteger(opts.roundTo) && opts.roundTo >= 1))
    throw badInput(
      `--round-to ${opts.roundTo}: give auto or a whole number ≥ 1 (8 or 16 for onnxruntime's NCHWc convs)`,
    );
  const mode = opts.mode ?? defaultMode(opts.stats),
    refit = opts.refit ?? true;
  const o: SizesOptions = {
    ...opts,
    backend,
    // once, so that every stage uses one kernel pool (defaultThreads watches the cores)
    threads: opts.threads ?? defaultThreads(),
    mode,
    refit,
    allocation: opts.allocation ?? defaultAllocation(budgets),
    roundTo: opts.roundTo ?? defaultRoundTo(budgets),
    sweep: opts.sweep ?? defaultSweep(mode, refit),
  };
  if (o.stats && o.mode !== 'layerwise')
    throw badInput(
      `stats need --mode layerwise: ${o.mode} mode captures the model pruned so far, group by group, which ` +
        "statistics of the original model's activations cannot stand for",
    );
  if (opts.sweep !== undefined && opts.sweep !== false && (o.stats || !o.refit))
    throw badInput(
      `--sweep re-fits the consumers on the calibration data: it cannot run with ${o.stats ? '--stats' : '--no-refit'}`,
    );
  const shared = new Stopwatch(STAGES);
  const calib = shared.time('analyze', () => Calibration.of(model, data, o.allTokens));
  const plan = shared.time('analyze', () => planPrune(model, calib, o.mode!, o, o.roundTo));
  if (o.allocation === 'sensitivity' && !o.verify?.labels) scoresOutput(model); // refused before any capture
  if (o.stats) shared.time('analyze', () => checkStats(o.stats!, model, plan.groups, calib, o.method));
  // one batch size for every run: a frontier's tensors and the reference's outputs are kept by batch
  o.batch ??= captureBatch(plan.inputBytes);
  o.onPlan?.(plan.memory);
  // the original's outputs on the fidelity sample, for every size: handed over by the first capture of the original
  // when the sample is the whole calibration set, else computed by its own session, opened with the first size's check
  const sample = fidelitySample(model, calib, o.fidelityRows, o.verify),
    reference = Reference.of(model, { backend }),
    seed = sample.calib === calib ? reference : undefined;
  try {
    const keeps = await keepsFor(model, plan, calib, budgets, o, shared, seed);
    const ranking =
      o.mode === 'layerwise' ? await rankLayerwise(model, plan, keeps, calib, o, shared, seed) : undefined;
    for (const [i, budget] of budgets.entries()) {
      const clock = i ? new Stopwatch(STAGES) : shared;
      let sized: Sized;
      try {
        const original = { grams: keeps.grams, targets: keeps.targets, ranked: keeps.ranked, reference: seed };
        // the last size's sequential prune holds the allocation's captures and rankings alone, and lets them go once
        // past its first cut (ResNet-50's were 2 GB of a 4.6 GB peak)
        if (!ranking && i === budgets.length - 1) keeps.grams = keeps.targets = keeps.ranked = undefined;
        const pruned = ranking
          ? pruneRanked(model, ranking, keeps.keeps[i]!, o, clock)
          : await pruneSequential(model, plan, keeps.keeps[i]!, calib, o, clock, original);
        if (o.sweep !== false) pruned.model = await clock.time('sweep', () => sweepOf(model, pruned, calib, o));
        // the copies normalizeModel made of constants the model shared, shared again where they stayed equal
        pruned.model = { ...pruned.model, graph: shareEqualInitializers(pruned.model.graph!) };
        // the first size's group seconds include the shared ranking, as a single-size run's do
        const selected =
          ranking && !i
            ? pruned.groups.map((g, j) => ({ ...g, seconds: g.seconds + ranking.seconds[j]! }))
            : pruned.groups;
        // with no group the model is the original: nothing to check or measure (a 3-D ResNet's 16 clips took 87 s)
        const fidelity = plan.groups.length
          ? await clock.time('verify', async () => {
              const onBatch = (d: number, n: number) => o.onProgress?.('verify', d, n);
              return verifiedFidelity(reference, pruned.model, sample, { batch: o.batch, backend, onBatch });
            })
          : UNCHANGED;
        const after = modelStats(pruned.model, plan.inputShape);
        const report: PruneReport = {
          mode: o.mode!,
          refit: o.refit!,
          method: o.method ?? 'greedy',
          allocation: o.allocation!,
          ...(o.roundTo !== 1 ? { roundTo: o.roundTo } : {}),
          sweep: o.sweep ?? false,
          backend,
          calibration: { path: calib.path, samples: calib.rows, batch: calib.batchSize(o.batch!) },
          ...(o.stats
            ? { stats: { samples: o.stats.samples, distinct: distinctSamples(o.stats), shards: o.stats.shards.length } }
            : {}),
          groups: withSizes(plan, selected),
          refused: plan.refused,
          params: { before: plan.before.params, after: after.params },
          flops: { before: plan.before.flops, after: after.flops },
          ...(calib.tokens ? { tokens: calib.tokens } : {}),
          ...(calib.padding ? { padding: calib.padding } : {}),
          seconds: { ...clock.seconds, total: clock.total() },
          ...(keeps.search?.[i] ? { search: searchReport(keeps.search[i]) } : {}),
          verification: sample.verification,
          fidelity,
          warnings: [
            ...shortWarnings(selected, sampleCount(calib, o.stats), sample.verification.inputs === 'verify'),
            ...uncountedWarnings(plan.before.unknown),
            ...fidelityWarnings(fidelity, sample.verification.inputs),
          ],
          memory: plan.memory,
        };
        sized = { budget, model: pruned.model, report };
      } catch (e) {
        if (e instanceof SubpruneError && e.code === 'bad-input') throw e; // the same for every size
        sized = { budget, error: e as Error };
      }
      yield sized;
    }
  } finally {
    await reference.release();
  }
}

/** The pruned model with every consumer re-fitted once more (sweep.ts), each group keeping its channels. */
function sweepOf(model: Model, pruned: Pruned, calib: Calibration, o: SizesOptions): Promise<Model> {
  const keeps = new Map(pruned.groups.map((g) => [g.id, g.refined?.keep ?? [...g.order].sort((a, b) => a - b)]));
  const intercept = o.biasRefit !== false;
  const onStep = (done: number, total: number) => o.onProgress?.('sweep', done, total);
  return refitSweep(model, pruned.model, keeps, calib, { ...o, intercept, relu: o.sweep || 0, onStep });
}

/** The fidelity of a model that no group changed: it is the original, so nothing was run (samples 0). */
const UNCHANGED: Fidelity = { samples: 0, outputDims: [] };

const searchReport = ({ start, score, evaluations }: SearchResult) => ({ start, score, evaluations });

/** Prunes `model` with calibration data; returns the pruned model (verified in onnxruntime) and the report. */
export async function prune(
  model: Model,
  data: InputData,
  opts: PruneOptions,
): Promise<{ model: Model; report: PruneReport }> {
  const { budget, ...rest } = opts;
  for await (const sized of pruneSizes(model, data, [budget], rest)) {
    if ('error' in sized) throw sized.error;
    return sized;
  }
  throw internal('pruneSizes yielded nothing');
}
