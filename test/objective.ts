// The oracle for a group's reported objective: run the original and the pruned model in onnxruntime and compare each
// consumer's outputs. The group's part of a consumer's output is Y − Y₀, Y₀ the output with the consumer's
// weights for the group's channels zeroed (for a consumer that reads only the group's channels, Y₀ is its bias), so 1
// − Σ‖Y′ − Y‖² / Σ‖Y − Y₀‖² is the objective the selection claims for it (for a group pruned
// alone, so that its consumers' inputs are the ones the selection saw); the group's objective is the mean over its
// consumers.
import type { Model } from '../src/onnx/index.js';
import type { InputData } from '../src/calibration.js';
import type { Group } from '../src/graph/types.js';
import { Runner, type Activation } from '../src/capture/index.js';
import { Calibration } from '../src/calibration.js';
import { withConsumerMatrix, zeroDroppedInputs } from './graph-helpers.js';

/** Each consumer output of `model` over the calibration data, batch by batch. */
async function outputsOf(model: Model, names: string[], calib: InputData): Promise<Map<string, Activation>[]> {
  const run = await Runner.open(model, names);
  try {
    const out: Map<string, Activation>[] = [];
    for (const b of Calibration.of(model, calib).batches(128)) {
      const got = await run.run(b, names);
      out.push(new Map(names.map((n) => [n, { data: got.get(n)!.data.slice(), dims: got.get(n)!.dims }])));
    }
    return out;
  } finally {
    await run.release();
  }
}

/**
 * `kept`: for a consumer whose own output channels an earlier group already pruned (asymmetric mode: the target is the
 * original model, whose consumer has all its outputs), the output channels (axis 1) that remain.
 */
export async function measuredObjectives(
  orig: Model,
  pruned: Model,
  group: Group,
  calib: InputData,
  kept: (node: string) => number[] | undefined = () => undefined,
  shift: (Float64Array | undefined)[] = [],
): Promise<number[]> {
  const names = group.consumers.map((c) => biasedOutput(orig, c.node.output[0]!));
  // every channel of the group dropped from every consumer: what the consumers' outputs are without the group
  const zeroed = zeroDroppedInputs(orig, [{ group, keep: [] }]);
  const [y, z, y0] = await Promise.all([orig, pruned, zeroed].map((m) => outputsOf(m, names, calib)));
  return names.map((name, k) => {
    const keep = kept(group.consumers[k]!.node.name);
    let err = 0,
      norm = 0;
    y.forEach((batch, i) => {
      const b = shifted(z[i]!.get(name)!, group.consumers[k]!.kind === 'conv', shift[k]),
        [a, c] = [batch.get(name)!, y0[i]!.get(name)!].map((t) => (keep ? channels(t.data, t.dims, keep) : t.data));
      if (a.length !== b.length) throw new Error(`consumer output ${name}: ${b.length} values vs ${a.length}`);
      for (let j = 0; j < a.length; j++) {
        err += (b[j]! - a[j]!) ** 2;
        norm += (a[j]! - c[j]!) ** 2;
      }
    });
    return 1 - err / norm;
  });
}

/**
 * Where a layer's output has its bias: the output of the Add of a constant that alone follows it (how exporters write
 * a MatMul's bias, and where the intercept's re-fit puts it), else the output itself.
 */
function biasedOutput(model: Model, y: string): string {
  const g = model.graph!,
    next = g.node.filter((n) => n.input.includes(y));
  const consts = new Set([
    ...g.initializer.map((t) => t.name),
    ...g.node.filter((n) => n.opType === 'Constant').map((n) => n.output[0]),
  ]);
  const add = next.length === 1 && next[0]!.opType === 'Add' ? next[0]! : undefined;
  const other = add?.input.find((x) => x !== y);
  return add && other && consts.has(other) && !g.output.some((o) => o.name === y) ? add.output[0]! : y;
}

/** A consumer output plus `bias`, one value per output channel (axis 1 of a conv output, the last of a dense one). */
function shifted(t: Activation, conv: boolean, bias: Float64Array | undefined): Float32Array {
  if (!bias) return t.data;
  const m = bias.length,
    inner = conv ? t.dims.slice(2).reduce((a, b) => a * b, 1) : 1;
  if (t.dims[conv ? 1 : t.dims.length - 1] !== m) throw new Error(`bias of ${m} values for an output [${t.dims}]`);
  return t.data.map((v, j) => v + bias[Math.floor(j / inner) % m]!);
}

/**
 * Each consumer's objective as the selection defines it: the consumer alone computes B_S·W′ (the model otherwise as
 * it was), plus its bias change with the intercept, measured against the original in onnxruntime. For a chain this is
 * the pruned model's error; for a group with several consumers it separates each consumer's error from what its
 * neighbours' re-fits change upstream.
 */
export async function consumerObjectives(
  orig: Model,
  group: Group,
  keep: number[],
  W: Float64Array[],
  calib: InputData,
  bias: (Float64Array | undefined)[] = [],
): Promise<number[]> {
  const out: number[] = [];
  for (const [i, c] of group.consumers.entries()) {
    const one = { ...group, consumers: [c] },
      model = withConsumerMatrix(orig, c, keep, W[i]!);
    out.push((await measuredObjectives(orig, model, one, calib, () => undefined, [bias[i]]))[0]!);
  }
  return out;
}

/** The channels `keep` (axis 1) of an output of shape dims. */
function channels(t: Float32Array, dims: number[], keep: number[]): Float32Array {
  const [N, C] = [dims[0]!, dims[1]!],
    inner = t.length / (N * C),
    out = new Float32Array(N * keep.length * inner);
  for (let n = 0; n < N; n++)
    keep.forEach((c, k) =>
      out.set(t.subarray((n * C + c) * inner, (n * C + c + 1) * inner), (n * keep.length + k) * inner),
    );
  return out;
}

/** The group's objective as the report gives it: the mean of its consumers'. */
export async function measuredObjective(orig: Model, pruned: Model, group: Group, calib: InputData): Promise<number> {
  const each = await measuredObjectives(orig, pruned, group, calib);
  return each.reduce((a, b) => a + b, 0) / each.length;
}

/** ‖a − b‖ / ‖b‖. */
export const relDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let e = 0,
    n = 0;
  for (let i = 0; i < b.length; i++) {
    e += (a[i]! - b[i]!) ** 2;
    n += b[i]! ** 2;
  }
  return Math.sqrt(e / n);
};
