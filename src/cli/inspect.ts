import { parseArgs } from 'node:util';
import { readModel, opsetVersion } from '../onnx/index.js';
import { badInput } from '../errors.js';
import { analyze, modelStats } from '../graph/analyze.js';
import { modelInput } from '../calibration.js';
import { table, big } from './util.js';

export const inspectHelp = `subprune inspect: list a model's prunable units and the candidates refused, with reasons

Usage: subprune inspect MODEL.onnx [--input-shape 1,3,32,32] [--json]

  --input-shape S    input shape for FLOPs when the model's input has free dimensions other than the
                     batch (comma-separated; the batch is taken as 1)
  --json             print units and refusals as JSON
  -h, --help         this help

A unit is a producer (Conv/Gemm/MatMul) whose output channels reach exactly one consumer
(Conv/Gemm/MatMul) through per-channel ops only; its id is the producer's node name, usable in
prune --budget. g is the number of consumer-input columns each channel owns.`;

export function runInspect(argv: string[]): void {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'input-shape': { type: 'string' },
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
  let shape: number[];
  if (o['input-shape']) {
    shape = o['input-shape'].split(',').map(Number);
    if (shape.some((v) => !Number.isInteger(v) || v < 1) || shape.length !== inp.dims.length)
      throw badInput(`--input-shape ${o['input-shape']}: give ${inp.dims.length} positive whole numbers`);
  } else {
    if (inp.dims.slice(1).some((d) => d === null))
      throw badInput(`input ${inp.name} has free dimensions [${inp.dims.map((d) => d ?? '?')}]; give --input-shape`);
    shape = [1, ...(inp.dims.slice(1) as number[])];
  }
  const { units, refused } = analyze(model, shape);
  const stats = modelStats(model, shape);
  if (o.json) {
    console.log(
      JSON.stringify(
        {
          model: positionals[0],
          opset: opsetVersion(model),
          input: { name: inp.name, shape },
          params: stats.params,
          flops: stats.flops,
          units: units.map((u) => ({
            id: u.id,
            op: u.producer.opType,
            weight: u.weight,
            channels: u.channels,
            g: u.g,
            d: u.d,
            m: u.m,
            consumer: u.consumer.name,
            consumerOp: u.consumer.opType,
            chain: u.chain.map((n) => n.opType),
            params: u.params,
            flops: u.flops,
          })),
          refused,
        },
        null,
        1,
      ),
    );
    return;
  }
  console.log(
    `${positionals[0]}: opset ${opsetVersion(model)}, input ${inp.name} [${shape}], ${big(stats.params)} ` +
      `params, ${big(stats.flops)} FLOPs per sample\n`,
  );
  if (units.length) {
    console.log(
      table(
        ['unit', 'op', 'weight', 'channels', 'g', 'consumer', 'via', 'params', 'FLOPs'],
        units.map((u) => [
          u.id,
          u.producer.opType,
          u.weight,
          u.channels,
          u.g,
          `${u.consumer.name} (${u.consumer.opType})`,
          u.chain.map((n) => n.opType).join('→') || '—',
          big(u.params),
          big(u.flops),
        ]),
      ),
    );
  } else console.log('no prunable units');
  if (refused.length) {
    console.log(`\nrefused:`);
    for (const r of refused) console.log(`  ${r.node}: ${r.reason}`);
  }
}
