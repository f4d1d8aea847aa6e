import { describe, it, expect } from 'vitest';
import * as ort from 'onnxruntime-node';
import { clone, equals } from '@bufbuild/protobuf';
import {
  DataType,
  ModelProtoSchema,
  NodeProtoSchema,
  float16BitsToFloat32,
  float32ToFloat16Bits,
  readModel,
  serializeModel,
  tensorToFloat32,
  type Model,
} from '../src/onnx/index.js';
import { isNormalized, normalizeModel } from '../src/graph/normalize.js';
import { Calibration, type InputData } from '../src/calibration.js';
import { analyze } from '../src/graph/analyze.js';
import { constantTensors, inferShapes } from '../src/graph/shapes.js';
import { pruneGroups } from '../src/rewrite/index.js';
import { prune } from '../src/prune/index.js';
import { randomKeep, rng, storedElements, zeroDroppedInputs } from './graph-helpers.js';
import { relDiff } from './objective.js';

// The checks every real export among the fixtures gets (more-fixtures, more-cnn, more-seq): the oracle is onnxruntime
// running the original with the dropped channels' consumer inputs zeroed, which is what removing a channel, neuron or
// head means, with graph optimizations off (onnxruntime's ReshapeFusion hides wrong shape entries).

/**
 * Every output of `model`, one after the other, on the first n samples of `data` (each free axis 1 cut to `length`
 * when given: tokens, audio samples), by ONNX's semantics (no graph optimizations).
 */
export async function fixtureOutputs(model: Model, data: InputData, n = 8, length?: number): Promise<Float32Array> {
  const calib = Calibration.of(model, data),
    batch = calib.batches(n).next().value!;
  const feeds = Object.fromEntries(
    calib.inputs.map(({ name, dims: free, elemType }) => {
      const f = batch.feeds.get(name)!,
        cut = length !== undefined && free.length >= 2 && free[1] === null ? length : f.dims[1]!;
      const inner = f.dims.slice(2).reduce((a, b) => a * b, 1),
        rows = Array.from({ length: f.dims[0]! }, (_, r) =>
          f.data.slice(r * f.dims[1]! * inner, (r * f.dims[1]! + cut) * inner),
        );
      const type = f.data instanceof Float32Array ? 'float32' : f.data instanceof Int32Array ? 'int32' : 'int64';
      if (elemType === DataType.FLOAT16) {
        // float16 models (whole samples only): the values rounded to float16 bits, as subprune's captures feed them
        const bits = Uint16Array.from(f.data as Float32Array, float32ToFloat16Bits);
        return [name, new ort.Tensor('float16', bits, f.dims)];
      }
      if (f.dims.length === 1 || cut === f.dims[1]) return [name, new ort.Tensor(type, f.data, f.dims)];
      const all =
        type === 'float32'
          ? Float32Array.from(rows.flatMap((x) => [...(x as Float32Array)]))
          : type === 'int32'
            ? Int32Array.from(rows.flatMap((x) => [...(x as Int32Array)]))
            : BigInt64Array.from(rows.flatMap((x) => [...(x as BigInt64Array)]));
      return [name, new ort.Tensor(type, all, [f.dims[0]!, cut, ...f.dims.slice(2)])];
    }),
  );
  // logSeverityLevel 3: no warning per initializer that is also a graph input (keep_initializers_as_inputs exports)
  const session = await ort.InferenceSession.create(serializeModel(model), {
    graphOptimizationLevel: 'disabled',
    logSeverityLevel: 3,
  });
  try {
    const y = await session.run(feeds);
    const parts = session.outputNames.map((o) =>
      y[o]!.type === 'float16'
        ? Float32Array.from(y[o]!.data as Uint16Array, float16BitsToFloat32)
        : Float32Array.from(y[o]!.data as Float32Array | Float64Array),
    );
    const all = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
    parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
    return all;
  } finally {
    await session.release();
  }
}

/** The groups and refusals of a fixture, analyzed at the shapes of its calibration data. */
export function analyzeFixture(m: Model, open: () => InputData & { close?: () => void }) {
  const data = open();
  const { groups, refused } = analyze(m, Calibration.of(m, data).shapes);
  data.close?.();
  return { groups, refused };
}

/**
 * The nodes of `pruned` that are equal to the node of the same name in `source` but not the same object: none, when the
 * rewrite shares what it leaves alone (a frontier's advance then tells them by identity).
 */
export function copiedUnchanged(source: Model, pruned: Model): string[] {
  const was = new Map(source.graph!.node.map((n) => [n.name, n]));
  return pruned
    .graph!.node.filter(
      (n) => was.get(n.name) !== n && !!was.get(n.name) && equals(NodeProtoSchema, n, was.get(n.name)!),
    )
    .map((n) => n.name);
}

/** A layer's weight (its input 1) as [entry of axis 0][the rest]: a Conv's filters, a ConvTranspose's input rows. */
export function weightRows(m: Model, node: string): number[][] {
  const n = m.graph!.node.find((x) => x.name === node)!,
    { dims, data } = tensorToFloat32(constantTensors(m.graph!).get(n.input[1]!)!);
  const size = data.length / dims[0]!;
  return [...Array(dims[0]!).keys()].map((o) => [...data.subarray(o * size, (o + 1) * size)]);
}

/** A real export: its model file, its calibration data, and each group as [channels, producers, g of its consumers]. */
export interface FixtureCase {
  model: string;
  data: () => InputData & { close?: () => void };
  groups: number[][];
  /** A shorter axis 1 to run at too, for inputs whose axis 1 is free. */
  length?: number;
}

/**
 * Per case: every tensor has a shape and the groups are the ones expected; half of every group removed at random
 * gives the original with those channels' consumer inputs zeroed (at the calibration length and at `length`); the
 * default prune runs end to end.
 */
export function describeFixtures(cases: FixtureCase[]): void {
  describe.each(cases)('$model', ({ model: path, data: open, groups: expected, length: shorter }) => {
    it('every tensor has a shape, and the groups are the channels, neurons and heads expected', () => {
      const m = readModel(path),
        data = open();
      const shapes = Calibration.of(m, data).shapes;
      data.close?.();
      normalizeModel(m); // the graph the analysis sees (model-local functions inlined)
      const known = inferShapes(m, shapes);
      expect(m.graph!.node.flatMap((n) => n.output).filter((o) => o && !known.has(o))).toEqual([]);
      const got = analyze(m, shapes).groups.map((g) => [
        g.channels,
        g.producers.length,
        ...new Set(g.consumers.map((c) => c.g)),
      ]);
      expect(got).toEqual(expected);
    });

    it('half of every group removed at random: the pruned model is the original with their inputs zeroed', async () => {
      const m = readModel(path),
        data = open();
      const { groups } = analyze(m, Calibration.of(m, data).shapes);
      const r = rng(5);
      const plans = groups.map((group) => ({
        group,
        keep: randomKeep(group.channels, Math.ceil(group.channels / 2), r),
      }));
      const before = clone(ModelProtoSchema, m),
        pruned = pruneGroups(m, plans),
        zeroed = zeroDroppedInputs(m, plans);
      expect(equals(ModelProtoSchema, m, before)).toBe(true); // the rewrite leaves its input as it was
      if (isNormalized(m)) expect(copiedUnchanged(m, pruned)).toEqual([]);
      for (const length of [undefined, shorter]) {
        const got = await fixtureOutputs(pruned, data, 8, length),
          want = await fixtureOutputs(zeroed, data, 8, length);
        expect(got.length).toBe(want.length);
        expect(relDiff(got, want)).toBeLessThan(1e-4);
      }
      data.close?.();
    });

    it('prunes end to end with the default mode', async () => {
      const m = readModel(path),
        data = open();
      const { model: pruned, report } = await prune(m, data, { budget: { keepRatio: 0.5 }, refit: false });
      // smaller than the model analysed, every constant it shares (untrained layers deep-copied alike) its own copy
      expect(report.params.after).toBeLessThan(storedElements(m));
      expect((await fixtureOutputs(pruned, data, 4)).every(Number.isFinite)).toBe(true);
      data.close?.();
    });
  });
}
