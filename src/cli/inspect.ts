import { parseArgs } from 'node:util';
import { readModel, opsetVersion, type Model } from '../onnx/index.js';
import { badInput } from '../errors.js';
import { analyze, modelStats } from '../graph/analyze.js';
import { sizeModel } from '../budget/size.js';
import { Calibration, modelInputs } from '../calibration.js';
import { openInputs } from './inputs.js';
import type { Analysis } from '../graph/types.js';
import { table, big } from './util.js';
import type { InputShapes } from '../graph/shapes.js';

/** The size free dimensions other than the batch stand in at when no shape is given. */
export const STAND_IN = 32;

export const inspectHelp = `subprune inspect: list a model's channel groups and the candidates refused, with reasons

Usage: subprune inspect MODEL.onnx [--input-shape 1,3,32,32 | --calib DATA [--preprocess SPEC]] [--json]

  --input-shape S    the input shape (comma-separated; the batch is taken as 1), for a model whose input has free
                     dimensions other than the batch: FLOPs, and g after a Flatten, depend on them; with several
                     inputs, NAME=S once per input (e.g. input_ids=1,128)
  --calib DATA       take the input shapes from calibration data instead (as for prune: .npy, .npz, NAME=FILE,
                     or a folder of images with --preprocess)
  --preprocess SPEC  how images become the model's input, for --calib FOLDER (as for prune)
  --json             print groups, refusals and the summary as JSON
  -h, --help         this help

Without either, free dimensions stand in at ${STAND_IN}, and the output says which figures depend on them (groups,
channels, producers, consumers and refusals do not; FLOPs and g after a Flatten do).

A channel group is a set of channels that are kept or removed together: the output channels of one or more producers
(Conv/Gemm/MatMul layers, joined by residual Adds and gates, laid end to end by Concat) that reach their consumers
(the layers that read them) through ops that act per channel. Its id, the first producer's node name (name#i when
a Slice cuts one producer's channels into several groups), is what prune --budget takes. For each consumer, g is the
number of its input columns each channel owns and d = channels·g.`;

/** The shapes to analyse at: given, from the calibration data, or with free dimensions at STAND_IN. */
function inputShapes(
  model: Model,
  given: string[] = [],
  calib: string[] = [],
  preprocess?: string,
): { shapes: Map<string, number[]>; standIn: boolean } {
  const inputs = modelInputs(model);
  if (given.length && calib.length) throw badInput('give one of --input-shape and --calib');
  if (preprocess && !calib.length) throw badInput('--preprocess is for --calib FOLDER (a folder of images)');
  // the batch at 1, or at the model's own where fixed (as Calibration.shapes)
  const shapes = new Map(inputs.map((x) => [x.name, [x.dims[0] ?? 1, ...x.dims.slice(1).map((d) => d ?? STAND_IN)]]));
  if (calib.length) {
    const data = openInputs(calib, '--calib', preprocess);
    try {
      const c = Calibration.of(model, data.data);
      return { shapes: c.shapes, standIn: false };
    } finally {
      data.close();
    }
  }
  for (const g of given) {
    const at = g.indexOf('='),
      name = at >= 0 ? g.slice(0, at) : inputs[0]!.name,
      x = inputs.find((i) => i.name === name);
    if (!x)
      throw badInput(`--input-shape ${g}: the model has no input ${name} (${inputs.map((i) => i.name).join(', ')})`);
    if (at < 0 && inputs.length > 1)
      throw badInput(`--input-shape ${g}: the model has several inputs; name it: NAME=${g}`);
    const shape = g
      .slice(at + 1)
      .split(',')
      .map(Number);
    if (shape.some((v) => !Number.isInteger(v) || v < 1) || shape.length !== x.dims.length)
      throw badInput(`--input-shape ${g}: give ${x.dims.length} positive whole numbers for ${name}`);
    shapes.set(name, [x.dims[0] ?? 1, ...shape.slice(1)]);
  }
  const free = inputs.some(
    (x) =>
      !given.some((g) => g.startsWith(`${x.name}=`) || (!g.includes('=') && x === inputs[0])) &&
      x.dims.slice(1).some((d) => d === null),
  );
  return { shapes, standIn: free };
}

/**
 * The share of the model's layer FLOPs and parameters in prunable groups, and the largest compression reachable
 * (every group at one channel).
 */
function summary(model: Model, a: Analysis, shape: InputShapes) {
  const stats = modelStats(model, shape);
  const params = sizeModel(model, a.groups, shape, 'params'),
    flops = sizeModel(model, a.groups, shape, 'flops');
  const full = new Map(a.groups.map((g) => [g.id, g.channels])),
    one = new Map(a.groups.map((g) => [g.id, 1])),
    none = new Map(a.groups.map((g) => [g.id, 0]));
  return {
    flopsShare: stats.flops ? (flops(full) - flops(none)) / stats.flops : 0,
    paramsShare: stats.params ? (params(full) - params(none)) / stats.params : 0,
    // no groups and no known FLOPs (shapes unknown): 1×, not 0/0
    maxCompression: { params: params(full) / params(one) || 1, flops: flops(full) / flops(one) || 1 },
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
      'input-shape': { type: 'string', multiple: true },
      calib: { type: 'string', multiple: true },
      preprocess: { type: 'string' },
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
  const inputs = modelInputs(model);
  const { shapes, standIn } = inputShapes(model, o['input-shape'], o.calib, o.preprocess);
  const a = analyze(model, shapes);
  const stats = modelStats(model, shapes);
  const sum = summary(model, a, shapes);
  const described = inputs.map((x) => `${x.name} [${shapes.get(x.name)}]`).join(', ');
  const declared = inputs.map((x) => `${x.name} [${x.dims.map((d) => d ?? '?')}]`).join(', ');
  const note = standIn
    ? `the inputs have free dimensions (${declared}): FLOPs and g after a Flatten are at ${described}, free ` +
      `dimensions at ${STAND_IN} (give --input-shape or --calib for the real size); the groups, channels and ` +
      'refusals ' +
      'do not depend on it'
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
    const input = inputs.map((x) => ({ name: x.name, shape: shapes.get(x.name), declared: x.dims }));
    const out = {
      model: positionals[0],
      opset: opsetVersion(model),
      inputs: input,
      ...(standIn ? { standIn: STAND_IN } : {}),
      params: stats.params,
      flops: stats.flops,
      ...(stats.unknown.length ? { flopsUncounted: stats.unknown } : {}),
    };
    console.log(
      JSON.stringify({ ...out, summary: sum, groups, refused: a.refused, ...(note ? { note } : {}) }, null, 1),
    );
    return;
  }
  console.log(
    `${positionals[0]}: opset ${opsetVersion(model)}, inputs ${described}, ${big(stats.params)} params, ` +
      `${big(stats.flops)} FLOPs per sample${uncounted(stats.unknown)}\n`,
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
    const reasons = shortReasons(a.refused);
    a.refused.forEach((r, i) =>
      console.log(`  ${r.node}${r.producers ? ` (with ${r.producers.slice(1).join(', ')})` : ''}: ${reasons[i]}`),
    );
  }
}

/**
 * Refusal reasons as the listing prints them: a reason that quotes the whole reason of a row above it (a residual
 * stream's Adds citing why the stream was refused) refers to that row instead of repeating it.
 */
export function shortReasons(refused: readonly { node: string; reason: string }[]): string[] {
  return refused.map(({ reason }, i) => {
    const quoted = refused
      .slice(0, i)
      .find((r) => r.reason.length >= 40 && r.reason !== reason && reason.includes(r.reason));
    return quoted ? reason.replace(quoted.reason, `see ${quoted.node}`) : reason;
  });
}

/**
 * The layers the FLOPs leave out, their shapes unknown: without this the count reads as the model's (torchvision's
 * MViTv2-S, its tokens split by a Loop after every pooling, showed 3.51G FLOPs of about 130G).
 */
function uncounted(layers: string[]): string {
  if (!layers.length) return '';
  const n = layers.length,
    what = `${n} layer${n > 1 ? 's' : ''} whose shapes are unknown`;
  return ` (not counted: ${what}, e.g. ${layers[0]}; the refusals say why)`;
}
