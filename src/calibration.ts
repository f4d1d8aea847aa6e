// The inputs a model is run on (calibration data, a verification or test set), validated once against the model's
// input where they enter (CLI or library); capture, allocation, verification and evaluation draw batches from it.
import { badInput } from './errors.js';
import { DataType, initializerMap, type Model } from './onnx/index.js';
import type { NpyFile } from './npy.js';

/** The model's one data input: name, dims (null where free) and element type. */
export interface ModelInput {
  name: string;
  dims: (number | null)[];
  elemType: number;
}

/** A batch of samples [start, start + dims[0]) as float32, batch axis first. */
export interface Batch {
  data: Float32Array;
  dims: number[];
  start: number;
}

/** The model's one data input (inputs that are initializers do not count). */
export function modelInput(model: Model): ModelInput {
  const g = model.graph!,
    inits = initializerMap(g);
  const inputs = g.input.filter((i) => !inits.has(i.name));
  if (inputs.length !== 1) {
    const names = inputs.map((i) => i.name).join(', ');
    throw badInput(`the model has ${inputs.length} data inputs (${names}); subprune handles models with exactly one`);
  }
  const t = inputs[0].type?.value;
  if (t?.case !== 'tensorType') throw badInput(`input ${inputs[0].name} is not a tensor`);
  const elemType = t.value.elemType;
  if (elemType !== DataType.FLOAT && elemType !== DataType.FLOAT16) {
    const type = DataType[elemType] ?? elemType;
    throw badInput(`input ${inputs[0].name} has data type ${type}; subprune needs float32 or float16 inputs`);
  }
  const dims = (t.value.shape?.dim ?? []).map((d) =>
    d.value.case === 'dimValue' && d.value.value > 0n ? Number(d.value.value) : null,
  );
  return { name: inputs[0].name, dims, elemType };
}

const dtypeName = { u1: 'uint8', i4: 'int32', i8: 'int64', f4: 'float32', f8: 'float64' } as const;

/** Why `data` cannot feed `input`, or undefined. */
function mismatch(data: NpyFile, input: ModelInput): string | undefined {
  const shape = data.shape,
    want = `[${input.dims.map((d) => d ?? '?')}]`;
  if (data.rows === 0) return `${data.path} holds no samples`;
  if (data.dtype !== 'f4' && data.dtype !== 'f8') {
    const fix = "numpy: x.astype('float32'), after the model's own preprocessing";
    return `${data.path} holds ${dtypeName[data.dtype]} values; model inputs must be float32 (${fix})`;
  }
  if (shape.length !== input.dims.length) {
    const rank = `the model input ${input.name} has rank ${input.dims.length} (${want}), first axis = samples`;
    return `${data.path} has shape [${shape}] (rank ${shape.length}); ${rank}`;
  }
  const bad = input.dims.findIndex((d, i) => i > 0 && d !== null && d !== shape[i]);
  if (bad >= 0) return `${data.path} has shape [${shape}] but the model input ${input.name} needs ${want}`;
  return undefined;
}

/** Samples of an .npy file in batches of `size`, each checked to be finite. */
export function* batches(data: NpyFile, size: number): Generator<Batch> {
  for (let r0 = 0; r0 < data.rows; r0 += size) {
    const r1 = Math.min(data.rows, r0 + size),
      x = data.readF32(r0, r1);
    const bad = x.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) {
      const where = `${x[bad]} in sample ${r0 + Math.floor(bad / data.rowSize)}`;
      throw badInput(`${data.path}: ${where}; calibration data must be finite`);
    }
    yield { data: x, dims: [r1 - r0, ...data.shape.slice(1)], start: r0 };
  }
}

export class Calibration {
  private distinct?: number;

  private constructor(
    readonly data: NpyFile,
    readonly input: ModelInput,
  ) {}

  /** `data` checked against the model's input (or `data` itself if it already is a Calibration of that input). */
  static of(model: Model, data: NpyFile | Calibration): Calibration {
    const input = modelInput(model);
    const npy = data instanceof Calibration ? data.data : data;
    const why = mismatch(npy, input);
    if (why) throw badInput(why);
    return data instanceof Calibration ? data : new Calibration(npy, input);
  }

  get path(): string {
    return this.data.path;
  }
  get rows(): number {
    return this.data.rows;
  }
  get shape(): number[] {
    return this.data.shape;
  }

  /** The batch size to run with: the model's own when its batch axis is fixed, else `preferred`. */
  batchSize(preferred: number): number {
    return this.input.dims[0] ?? preferred;
  }

  /** The samples in batches (of the model's fixed batch size, else `preferred`), checked to be finite. */
  batches(preferred: number): Generator<Batch> {
    return batches(this.data, this.batchSize(preferred));
  }

  /** How many different samples there are (exact repeats count once), by two 32-bit hashes of each sample. */
  distinctSamples(): number {
    if (this.distinct !== undefined) return this.distinct;
    const seen = new Set<string>(),
      { rowSize } = this.data;
    for (let r0 = 0; r0 < this.rows; r0 += 256) {
      const x = this.data.readF32(r0, Math.min(this.rows, r0 + 256)),
        bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
      for (let o = 0; o < bits.length; o += rowSize) {
        let h1 = 0x811c9dc5,
          h2 = 0x9747b28c;
        for (let i = o; i < o + rowSize; i++) {
          h1 = Math.imul(h1 ^ bits[i]!, 0x01000193);
          h2 = Math.imul(h2 ^ bits[i]!, 0x5bd1e995) ^ (h2 >>> 15);
        }
        seen.add(`${h1 >>> 0}:${h2 >>> 0}`);
      }
    }
    return (this.distinct = seen.size);
  }
}
