// Where the allocation wins accuracy: the greedy (layerwise, re-fit) under allocation variants, from one measurement.
// The sensitivity curves are measured once on the 1 % grid; the coarser grids are subsets of it (round(0.05·i·n) is
// round(0.01·5i·n)), so each variant is exactly what measuring on its own grid would give.
import type { Model } from '../onnx/index.js';
import type { NpyFile } from '../npy.js';
import { analyze } from '../graph/analyze.js';
import { pruneGroups } from '../rewrite/index.js';
import { evaluate } from '../eval/index.js';
import { resolveBudget } from '../budget/index.js';
import { sizeModel } from '../budget/size.js';
import { allocateByLevel, allocateGlobal, commonLevel, gridKeeps, type Curve } from '../budget/allocate.js';
import { captureOriginal, sensitivityCurves } from '../prune/allocation.js';
import { planOf, rankGroup } from '../prune/rank.js';
import { Calibration } from '../calibration.js';
import type { RuntimeOptions } from '../capture/index.js';
import type { KernelOptions } from '../kernels/instances.js';

export interface Variant {
  name: string;
  points: number;
  accuracy: number[];
}

export async function allocationVariants(
  model: Model,
  o: RuntimeOptions &
    KernelOptions & {
      calib: NpyFile;
      test: { data: NpyFile; labels: ArrayLike<number> };
      compressions: number[];
    },
): Promise<Variant[]> {
  const calib = Calibration.of(model, o.calib),
    shape = calib.shapes,
    { groups } = analyze(model, shape);
  const sizeOf = sizeModel(model, groups, shape, 'params'),
    full = sizeOf(new Map(groups.map((u) => [u.id, u.channels])));
  const grams = await captureOriginal(model, groups, calib, ['greedy'], o);
  const ranked = groups.map((u) => rankGroup(model, u, grams.get(u.id)!, o));
  const fine = await sensitivityCurves(model, ranked, true, { data: calib }, { ...o, full: true });
  const on = (step: number) =>
    new Map<string, Curve>(
      groups.map((u) => {
        const c = fine.get(u.id)!,
          keep = new Set(gridKeeps(u, step)),
          at = c.ks.flatMap((k, i) => (keep.has(k) ? [i] : []));
        return [u.id, { ks: at.map((i) => c.ks[i]), values: at.map((i) => c.values[i]) }];
      }),
    );
  const accuracy = async (keeps: (goal: number, c: number) => Map<string, number>) => {
    const out: number[] = [];
    for (const c of o.compressions) {
      const pruned = pruneGroups(
        model,
        ranked.map((r) => planOf(r, keeps(full / c, c).get(r.group.id)!, true)),
      );
      out.push(
        (await evaluate(pruned, o.test.data, { labels: o.test.labels, batch: o.batch, backend: o.backend })).accuracy!,
      );
    }
    return out;
  };
  const points = (step: number) => groups.reduce((a, u) => a + gridKeeps(u, step).length, 0);
  const variants: Variant[] = [
    {
      name: 'uniform',
      points: 0,
      accuracy: await accuracy((_, c) => resolveBudget(groups, { compression: c }, sizeOf)),
    },
  ];
  for (const step of [0.01, 0.02, 0.05, 0.1]) {
    const curves = on(step);
    variants.push({
      name: `sensitivity, grid ${step}`,
      points: points(step),
      accuracy: await accuracy((goal) => allocateByLevel(groups, curves, sizeOf, goal)),
    });
    if (step === 0.01)
      variants.push({
        name: 'sensitivity, grid 0.01, no leftover spending',
        points: points(step),
        accuracy: await accuracy((goal) => commonLevel(groups, curves, sizeOf, goal).keeps),
      });
  }
  const objectives = new Map(ranked.map((r) => [r.group.id, r.sel.objective]));
  variants.push({
    name: 'global',
    points: 0,
    accuracy: await accuracy((goal) => allocateGlobal(groups, objectives, sizeOf, goal)),
  });
  return variants;
}

export function variantsMarkdown(model: string, compressions: number[], vs: Variant[]): string {
  return `| ${model}: greedy, layerwise, re-fit | grid points | ${compressions.map((c) => `${c}×`).join(' | ')} |
|---|---:|${compressions.map(() => '---:').join('|')}|
${vs.map((v) => `| ${v.name} | ${v.points} | ${v.accuracy.map((a) => a.toFixed(3)).join(' | ')} |`).join('\n')}
`;
}
