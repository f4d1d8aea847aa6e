import { parseArgs } from 'node:util';
import { readModel, opsetVersion, type Model } from '../onnx/index.js';
import { badInput } from '../errors.js';
import { analyze, modelStats } from '../graph/analyze.js';
import { sizeModel } from '../budget/size.js';
import { modelInput } from '../calibration.js';
import { openNpy } from '../npy.js';
import type { Analysis } from '../graph/types.js';
import { table, big } from './util.js';

/** The size free dimensions other than the batch stand in at when no shape is given. */
export const STAND_IN = 32;

export const inspectHelp = `subprune inspect: list a model's channel groups and the candidates refused, with reasons

Usage: subprune inspect MODEL.onnx [--input-shape 1,3,32,32 | --calib X.npy] [--json]

  --input-shape S    the input shape (comma-separated; the batch is taken as 1), for a model whose input has free
                     dimensions other than the batch: FLOPs, and g after a Flatten, depend on them
  --calib FILE       take the input shape from a calibration file instead (its first axis is the samples)
  --json             print groups, refusals and the summary as JSON
  -h, --help         this help

Without either, free dimensions stand in at ${STAND_IN}, and the output says which figures depend on them (groups,
channels, producers, consumers and refusals do not; FLOPs and g after a Flatten do).

A channel group is a set of channels that are kept or removed together: the output channels of one or more producers
(Conv/Gemm/MatMul layers, joined by residual Adds and gates, laid end to end by Concat) that reach their consumers
(the layers that read them) through ops that act per channel. Its id, the first producer's node name, is what
prune --budget takes. For each consumer, g is the number of its input columns each channel owns and d = channels·g.`;

/** The shape to analyse at: given, from the calibration file, or with free dimensions at STAND_IN. */
function inputShape(model: Model, given?: string, calib?: string): { shape: number[]; standIn: boolean } {
  const inp = modelInput(model);
  if (given && calib) throw badInput('give one of --input-shape and --calib');
  if (given) {
    const shape = given.split(',').map(Number);
    if (shape.some((v) => !Number.isInteger(v) || v < 1) || shape.length !== inp.dims.length)
      throw badInput(`--input-shape ${given}: give ${inp.dims.length} positive whole numbers`);
    return { shape: [1, ...shape.slice(1)], standIn: false };
  }
  if (calib) {
    const f = openNpy(calib);
    f.close();
    if (f.shape.length !== inp.dims.length)
      throw badInput(`${calib} has shape [${f.shape}]; the model input ${inp.name} has rank ${inp.dims.length}`);
    return { shape: [1, ...f.shape.slice(1)], standIn: false };
  }
  const free = inp.dims.slice(1).some((d) => d === null);
  return { shape: [1, ...inp.dims.slice(1).map((d) => d ?? STAND_IN)], standIn: free };
}

/**
 * The share of the model's layer FLOPs and parameters in prunable groups, and the largest compression reachable
 * (every group at one channel).
 */
function summary(model: Model, a: Analysis, shape: number[]) {
  const stats = modelStats(model, shape);
  const params = sizeModel(model, a.groups, shape, 'params'),
    flops = sizeModel(model, a.groups, shape, 'flops');
  const full = new Map(a.groups.map((g) => [g.id, g.channels])),
    one = new Map(a.groups.map((g) => [g.id, 1])),
    none = new Map(a.groups.map((g) => [g.id, 0]));
  return {
    flopsShare: stats.flops ? (flops(full) - flops(none)) / stats.flops : 0,
    paramsShare: stats.params ? (params(full) - params(none)) / stats.params : 0,
    maxCompression: { params: params(full) / params(one), flops: flops(full) / flops(one) },
  };
}

const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

/** The ops a group's channels pass through, in order (repeats of a run once), shortened past 40 characters. */
function via(ops: string[]): string {
  const s = ops.filter((o, i) => o !== ops[i - 1]).join('→') || '—';
  return s.length > 40 ? `${s.slice(0, 39)}…` : s;
}

export function runInspect(argv: string[]): void {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'input-shape': { type: 'string' },
      calib: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) {
    console.log(inspectHelp);
    return;
  }
  if (positionals.length !== 1) throw badInput('inspect takes one model: subprune inspect MODEL.onnx');
  const model = readModel(positionals[0]);
  const inp = modelInput(model);
  const { shape, standIn } = inputShape(model, o['input-shape'], o.calib);
  const a = analyze(model, shape);
  const stats = modelStats(model, shape);
  const sum = summary(model, a, shape);
  const note = standIn
    ? `input ${inp.name} has free dimensions [${inp.dims.map((d) => d ?? '?')}]: FLOPs and g after a Flatten are ` +
      `at [${shape}] (give --input-shape or --calib for the real size)`
    : undefined;
  if (o.json) {
    const groups = a.groups.map((g) => ({
      id: g.id,
      channels: g.channels,
      producers: g.producers.map((p) => ({ node: p.name, op: p.opType, weight: p.input[1] })),
      consumers: g.consumers.map((c) => ({
        node: c.node.name,
        op: c.node.opType,
        weight: c.weight,
        g: c.g,
        d: c.d,
        m: c.m,
      })),
      chain: g.chain.map((n) => n.opType),
      params: g.params,
      flops: g.flops,
    }));
    const input = { name: inp.name, shape, ...(standIn ? { standIn: STAND_IN, dims: inp.dims } : {}) };
    const out = { model: positionals[0], opset: opsetVersion(model), input, params: stats.params, flops: stats.flops };
    console.log(
      JSON.stringify({ ...out, summary: sum, groups, refused: a.refused, ...(note ? { note } : {}) }, null, 1),
    );
    return;
  }
  console.log(
    `${positionals[0]}: opset ${opsetVersion(model)}, input ${inp.name} [${shape}], ${big(stats.params)} params, ` +
      `${big(stats.flops)} FLOPs per sample\n`,
  );
  if (note) console.log(`note: ${note}\n`);
  if (a.groups.length) {
    const names = (xs: string[]) => (xs.length > 1 ? `${xs[0]} +${xs.length - 1}` : xs[0]!);
    console.log(
      table(
        ['group', 'channels', 'producers', 'consumers (g, d)', 'via', 'params', 'FLOPs'],
        a.groups.map((g) => [
          g.id,
          g.channels,
          names(g.producers.map((p) => p.name)),
          names(g.consumers.map((c) => `${c.node.name} (${c.g}, ${c.d})`)),
          via(g.chain.map((n) => n.opType)),
          big(g.params),
          big(g.flops),
        ]),
      ),
    );
  } else console.log('no prunable groups');
  console.log(
    `\nin prunable groups: ${pct(sum.flopsShare)} of the layer FLOPs, ${pct(sum.paramsShare)} of the parameters; ` +
      `largest compression (one channel per group): ${sum.maxCompression.params.toFixed(1)}× params, ` +
      `${sum.maxCompression.flops.toFixed(1)}× FLOPs`,
  );
  if (a.refused.length) {
    console.log(`\nrefused:`);
    for (const r of a.refused)
      console.log(`  ${r.node}${r.producers ? ` (with ${r.producers.slice(1).join(', ')})` : ''}: ${r.reason}`);
  }
}
