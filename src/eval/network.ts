// The whole pruned network against the original on a fixed set of verification rows, many times: the rows are read
// and the original's outputs computed once, and each pruned model costs one session and one pass over the rows. What
// the search allocation scores its candidates with.
import type { Model } from '../onnx/index.js';
import { Calibration, type Batch, type Feed } from '../calibration.js';
import { Runner, type Activation, type RuntimeOptions } from '../capture/index.js';
import { outputAxesOf } from '../graph/analyze.js';
import { badInput } from '../errors.js';
import { argmaxRows, EVAL_BATCH, OutputComparison } from './index.js';
import type { VerifySet } from './alone.js';

/** A pruned network measured against the original on the probe's rows. */
export interface NetworkScore {
  /** How far its outputs moved from the original's (OutputComparison.divergence; 0: the same outputs). */
  divergence: number;
  /** Top-1 agreement with the original model, when an output holds class scores (Fidelity.agreement). */
  agreement?: number;
  /** Top-1 accuracy against the verification labels, when there are labels. */
  accuracy?: number;
}

export interface NetworkProbe {
  /** The verification rows measured on. */
  samples: number;
  score(pruned: Model): Promise<NetworkScore>;
}

/**
 * Is `a` better than `b`: with labels, higher accuracy (ties: lower divergence); without, lower divergence. Divergence
 * (KL for class scores) rather than top-1 agreement because it moves with every change of the outputs, where agreement
 * moves only when a class flips.
 */
export function betterScore(a: NetworkScore, b: NetworkScore): boolean {
  if (a.accuracy !== undefined && b.accuracy !== undefined && a.accuracy !== b.accuracy) return a.accuracy > b.accuracy;
  return a.divergence < b.divergence;
}

/** One row of a batch's feed. */
function rowOf(f: Feed, i: number, rows: number): Feed {
  const per = f.data.length / rows;
  return { data: f.data.slice(i * per, (i + 1) * per), dims: [1, ...f.dims.slice(1)] };
}

/** Single-row feeds stacked into one batch feed. */
function stack(parts: Feed[]): Feed {
  const data = new (parts[0]!.data.constructor as new (n: number) => Feed['data'])(
    parts.reduce((a, p) => a + p.data.length, 0),
  );
  parts.forEach((p, i) => data.set(p.data as never, i * p.data.length));
  return { data, dims: [parts.length, ...parts[0]!.dims.slice(1)] };
}

/** Rows `rows` of the data, in batches of at most `size` (batch row i is rows[start + i]), held in memory. */
function gatherRows(data: Calibration, rows: number[], size: number): Batch[] {
  const want = new Set(rows),
    picked = new Map<number, Map<string, Feed>>();
  for (const b of data.batches(size))
    for (let i = 0; i < b.rows; i++)
      if (want.has(b.start + i))
        picked.set(b.start + i, new Map([...b.feeds].map(([name, f]) => [name, rowOf(f, i, b.rows)])));
  const out: Batch[] = [];
  for (let s = 0; s < rows.length; s += size) {
    const chunk = rows.slice(s, s + size).map((r) => picked.get(r)!);
    const feeds = new Map(data.inputs.map((x) => [x.name, stack(chunk.map((m) => m.get(x.name)!))]));
    out.push({ start: s, rows: chunk.length, feeds });
  }
  return out;
}

/**
 * Opens a probe of the original `model` on rows `rows` of the verification set (its labels, if any, give the
 * accuracy). Each score runs the pruned model over those rows.
 */
export async function openNetworkProbe(
  model: Model,
  verify: VerifySet,
  rows: number[],
  opts: RuntimeOptions = {},
): Promise<NetworkProbe> {
  const data = Calibration.of(model, verify.data);
  if (verify.labels && verify.labels.length !== data.rows)
    throw badInput(`${verify.labels.length} verification labels for ${data.rows} samples`);
  const batches = gatherRows(data, rows, data.batchSize(opts.batch ?? EVAL_BATCH));
  const labels = verify.labels && Int32Array.from(rows, (r) => Number(verify.labels![r]));
  const axes = outputAxesOf(model),
    names = axes.map((a) => a.name);
  const outputs = async (m: Model) => {
    const run = await Runner.open(m, [], opts),
      ys: Map<string, Activation>[] = [];
    try {
      for (const b of batches) ys.push(await run.run(b, names));
    } finally {
      await run.release();
    }
    return ys;
  };
  const ref = await outputs(model);
  return {
    samples: rows.length,
    async score(pruned: Model): Promise<NetworkScore> {
      const ys = await outputs(pruned),
        compared = new OutputComparison(axes);
      let hit = 0;
      ys.forEach((y, i) => {
        compared.add(y, ref[i]!);
        if (labels)
          argmaxRows(y.get(names[0]!)!.data, batches[i]!.rows).forEach((c, r) => {
            if (c === labels[batches[i]!.start + r]) hit++;
          });
      });
      const { agreement } = compared.summary();
      return {
        divergence: compared.divergence(),
        ...(agreement !== undefined ? { agreement } : {}),
        ...(labels ? { accuracy: hit / rows.length } : {}),
      };
    },
  };
}
