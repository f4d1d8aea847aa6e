// The inputs a model is run on (calibration data, a verification or test set), validated once against the model's
// inputs where they enter (CLI or library); capture, allocation, verification and evaluation draw batches from it.
// A model may have several inputs (token ids, an attention mask, …) of float or integer types: one array per input,
// all with the same number of samples along their first axis.
import { badInput } from './errors.js';
import { DataType, attrInt, initializerMap, type Model } from './onnx/index.js';
import type { NpyFile } from './npy.js';

/** One of the model's data inputs: name, dims (null where free) and element type. */
export interface ModelInput {
  name: string;
  dims: (number | null)[];
  elemType: number;
  /**
   * An integer input that indexes a constant table (Gather, an embedding lookup): the smallest such table's node and
   * its rows, the ids being in [−rows, rows) (onnxruntime's bounds; torch's are [0, rows)).
   */
  indexes?: { node: string; rows: number };
}

/** An input's values for a batch, in the type the model takes. */
export interface Feed {
  data: Float32Array | BigInt64Array | Int32Array;
  dims: number[];
}

/** A batch of samples [start, start + rows): one feed per model input. */
export interface Batch {
  start: number;
  rows: number;
  readonly feeds: Map<string, Feed>;
}

const FLOATS = new Set<number>([DataType.FLOAT, DataType.FLOAT16]);
const INTS = new Set<number>([DataType.INT64, DataType.INT32]);

/** The model's data inputs (inputs that are initializers do not count), in the graph's order. */
export function modelInputs(model: Model): ModelInput[] {
  const g = model.graph!,
    inits = initializerMap(g);
  return g.input
    .filter((i) => !inits.has(i.name))
    .map((i) => {
      const t = i.type?.value;
      if (t?.case !== 'tensorType') throw badInput(`input ${i.name} is not a tensor`);
      const elemType = t.value.elemType;
      if (!FLOATS.has(elemType) && !INTS.has(elemType)) {
        const type = DataType[elemType] ?? elemType;
        throw badInput(`input ${i.name} has data type ${type}; subprune feeds float32/float16 and int64/int32 inputs`);
      }
      const dims = (t.value.shape?.dim ?? []).map((d) =>
        d.value.case === 'dimValue' && d.value.value > 0n ? Number(d.value.value) : null,
      );
      const indexes = INTS.has(elemType) ? smallestTable(model, i.name, inits) : undefined;
      return { name: i.name, dims, elemType, ...(indexes ? { indexes } : {}) };
    });
}

/** The Gather that reads `input` as indices into the constant table with the fewest rows, if any does. */
function smallestTable(model: Model, input: string, inits: ReturnType<typeof initializerMap>) {
  let best: { node: string; rows: number } | undefined;
  for (const n of model.graph!.node) {
    const table = n.opType === 'Gather' && n.domain === '' && n.input[1] === input && inits.get(n.input[0]!);
    if (!table) continue;
    const dims = table.dims.map(Number),
      axis = attrInt(n, 'axis', 0);
    const rows = dims[axis < 0 ? axis + dims.length : axis];
    if (rows !== undefined && (!best || rows < best.rows)) best = { node: n.name || n.output[0]!, rows };
  }
  return best;
}

const dtypeName = { u1: 'uint8', i4: 'int32', i8: 'int64', f4: 'float32', f8: 'float64' } as const;

/** Why `data` cannot feed `input`, or undefined. */
function mismatch(data: NpyFile, input: ModelInput): string | undefined {
  const shape = data.shape,
    want = `[${input.dims.map((d) => d ?? '?')}]`,
    float = FLOATS.has(input.elemType);
  if (data.rows === 0) return `${data.path} holds no samples`;
  if (float && data.dtype !== 'f4' && data.dtype !== 'f8') {
    const fix = "numpy: x.astype('float32'), after the model's own preprocessing";
    return `${data.path} holds ${dtypeName[data.dtype]} values; the model input ${input.name} is float (${fix})`;
  }
  if (!float && data.dtype !== 'i8' && data.dtype !== 'i4' && data.dtype !== 'u1')
    return (
      `${data.path} holds ${dtypeName[data.dtype]} values; the model input ${input.name} takes integers (token ` +
      'ids)'
    );
  // a dynamic first axis is taken for the samples' (a token input [?] fed [n, t] is a rank mismatch)
  const unbatched =
    shape.length === input.dims.length + 1 &&
    input.dims[0] !== null &&
    input.dims.every((d, i) => d === null || d === shape[i + 1]);
  if (unbatched) {
    // a model exported for one sample (torchvision's detectors take a list of [3, H, W] images): its first axis is
    // not the samples', and feeding several along it would be wrong
    const fix = `export it with one, e.g. torch.onnx.export(..., dynamic_axes={'${input.name}': {0: 'batch'}})`;
    return (
      `${data.path} holds ${shape[0]} samples of [${shape.slice(1)}], but the model input ${input.name} (${want}) ` +
      `has no batch axis to feed them along: ${fix}`
    );
  }
  if (shape.length !== input.dims.length) {
    const rank = `the model input ${input.name} has rank ${input.dims.length} (${want}), first axis = samples`;
    return `${data.path} has shape [${shape}] (rank ${shape.length}); ${rank}`;
  }
  const bad = input.dims.findIndex((d, i) => i > 0 && d !== null && d !== shape[i]);
  if (bad >= 0) return `${data.path} has shape [${shape}] but the model input ${input.name} needs ${want}`;
  return undefined;
}

// The first NaN or ±Infinity in x, or −1. Plain loops: findIndex with a callback took 5 % of a capture's time in the
// activations' checks and a tenth of LeNet's in the calibration data's; four sums run twice as fast as one (a chain
// of dependent adds).
export function firstNonFinite(x: Float32Array): number {
  // v·0 is NaN for a NaN or infinite v, and 0 otherwise
  let s0 = 0,
    s1 = 0,
    s2 = 0,
    s3 = 0,
    i = 0;
  for (const n = x.length - 3; i < n; i += 4) {
    s0 += x[i]! * 0;
    s1 += x[i + 1]! * 0;
    s2 += x[i + 2]! * 0;
    s3 += x[i + 3]! * 0;
  }
  for (; i < x.length; i++) s0 += x[i]! * 0;
  if (s0 + s1 + s2 + s3 === 0) return -1;
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) return i;
  return -1;
}

/** The values of rows [r0, r1) of an .npy file in the input's type, checked to be finite. */
function feed(data: NpyFile, input: ModelInput, r0: number, r1: number): Feed {
  const dims = [r1 - r0, ...data.shape.slice(1)];
  if (FLOATS.has(input.elemType)) {
    const x = data.readF32(r0, r1);
    const bad = firstNonFinite(x);
    if (bad >= 0) {
      const sample = r0 + Math.floor(bad / data.rowSize),
        // a float64 file's value as written: one beyond float32's range (±3.4e38) is finite there
        v = data.dtype === 'f8' ? data.readF64(sample, sample + 1)[bad % data.rowSize]! : x[bad]!;
      const why = Number.isFinite(v)
        ? " is beyond float32's range (±3.4e38), which the model computes in"
        : '; calibration data must be finite';
      throw badInput(`${data.path}: ${v} in sample ${sample}${why}`);
    }
    return { data: x, dims };
  }
  const v = data.readF64(r0, r1);
  if (input.indexes) {
    const { node, rows } = input.indexes,
      bad = v.findIndex((x) => x < -rows || x >= rows);
    if (bad >= 0) {
      const where = `id ${v[bad]} in sample ${r0 + Math.floor(bad / data.rowSize)}`;
      throw badInput(
        `${data.path}: ${where} is out of range: the model input ${input.name} indexes ${node}'s table of ${rows} ` +
          `rows (ids 0 to ${rows - 1}, or -${rows} to -1 counted from the end); tokenize with the model's vocabulary`,
      );
    }
  }
  return {
    data: input.elemType === DataType.INT64 ? BigInt64Array.from(v, (x) => BigInt(x)) : Int32Array.from(v),
    dims,
  };
}

/** What a model can be run on: one .npy file (one input), arrays by input name, or a Calibration already checked. */
export type InputData = NpyFile | Map<string, NpyFile> | Calibration;

/** The inputs whose zeros mark padding tokens (1: a token, 0: padding), as tokenizers name them. */
export const TOKEN_MASK_NAMES: readonly string[] = ['attention_mask', 'input_mask'];

/** Which tokens of a batch are real: mask[s·T + t] = 1 for token t of sample s (of `rows`), 0 for padding. */
export interface TokenMask {
  data: Uint8Array;
  rows: number;
  T: number;
}

/** The token mask in use: its input, and how many of the calibration set's tokens are padding. */
export interface Padding {
  input: string;
  tokens: number;
  padded: number;
}

export class Calibration {
  private distinct?: number;
  private found?: Padding | null;

  private constructor(
    /** One array per model input, in the model's input order. */
    readonly arrays: NpyFile[],
    readonly inputs: ModelInput[],
    /** Whether padding tokens (TOKEN_MASK_NAMES) are left out of the consumers' rows (Calibration.padding). */
    readonly masked = true,
  ) {}

  /** The same data with every token a row, padding included. */
  allTokens(): Calibration {
    return this.masked ? new Calibration(this.arrays, this.inputs, false) : this;
  }

  /**
   * The token mask that leaves padding out of the consumers' rows: an input named as TOKEN_MASK_NAMES, [samples, T]
   * as the first input's samples are [T] or [T, features], holding only 0 and 1, with at least one 0; undefined
   * otherwise (or after allTokens). Read once.
   */
  get padding(): Padding | undefined {
    if (this.found === undefined) this.found = this.findPadding() ?? null;
    return this.found ?? undefined;
  }

  private findPadding(): Padding | undefined {
    const i = this.inputs.findIndex((x) => TOKEN_MASK_NAMES.includes(x.name.toLowerCase()));
    const a = this.arrays[i];
    if (!this.masked || !a || a.shape.length !== 2 || this.arrays[0]!.shape[1] !== a.shape[1]) return undefined;
    let padded = 0;
    // in parts: a large calibration set's mask need not be in memory at once
    for (let r0 = 0; r0 < a.rows; r0 += 4096)
      for (const x of a.readF64(r0, Math.min(a.rows, r0 + 4096))) {
        if (x !== 0 && x !== 1) return undefined;
        if (x === 0) padded++;
      }
    return padded ? { input: this.inputs[i]!.name, tokens: a.rows * a.rowSize, padded } : undefined;
  }

  /** The token mask of samples [start, start + rows), or undefined when padding counts (see padding). */
  tokenMask(start: number, rows: number): TokenMask | undefined {
    const p = this.padding;
    if (!p) return undefined;
    const a = this.arrays[this.inputs.findIndex((x) => x.name === p.input)]!;
    return { data: Uint8Array.from(a.readF64(start, start + rows)), rows, T: a.shape[1]! };
  }

  /**
   * `data` checked against the model's inputs: an .npy file for a model with one input, or one per input by name
   * (or `data` itself if it already is a Calibration); with `allTokens`, padding tokens count (see padding).
   */
  static of(model: Model, data: InputData, allTokens = false): Calibration {
    const inputs = modelInputs(model);
    const given = data instanceof Calibration ? new Map(data.inputs.map((x, i) => [x.name, data.arrays[i]!])) : data;
    const arrays = given instanceof Map ? byName(given, inputs) : single(given, inputs);
    arrays.forEach((a, i) => {
      const why = mismatch(a, inputs[i]!);
      if (why) throw badInput(why);
    });
    const rows = arrays[0]!.rows;
    const other = arrays.find((a) => a.rows !== rows);
    if (other)
      throw badInput(`${other.path} holds ${other.rows} samples, ${arrays[0]!.path} ${rows}: give one per sample`);
    const calib = data instanceof Calibration ? data : new Calibration(arrays, inputs);
    return allTokens ? calib.allTokens() : calib;
  }

  get path(): string {
    return this.arrays.map((a) => a.path).join(', ');
  }
  get rows(): number {
    return this.arrays[0]!.rows;
  }
  /**
   * The shapes of every input at batch 1, or at the model's own batch size where its batch axis is fixed (a static
   * export's Reshape constants may hold it): what the analysis sizes the model at (FLOPs are divided by the batch).
   */
  get shapes(): Map<string, number[]> {
    return new Map(this.inputs.map((x, i) => [x.name, [x.dims[0] ?? 1, ...this.arrays[i]!.shape.slice(1)]]));
  }

  /**
   * Tokens per sample, for a sequence model: the calibration length of axis 1 of the first input when the model leaves
   * it free and the input is [batch, tokens] or [batch, tokens, features]; undefined otherwise (images).
   */
  get tokens(): number | undefined {
    const x = this.inputs[0]!;
    return x.dims.length >= 2 && x.dims.length <= 3 && x.dims[1] === null ? this.arrays[0]!.shape[1] : undefined;
  }

  /** The batch size to run with: the model's own when its batch axis is fixed, else `preferred`. */
  batchSize(preferred: number): number {
    return this.inputs[0]!.dims[0] ?? preferred;
  }

  /** The samples in batches (of the model's fixed batch size, else `preferred`), checked to be finite. */
  *batches(preferred: number): Generator<Batch> {
    const size = this.batchSize(preferred);
    for (let r0 = 0; r0 < this.rows; r0 += size) {
      const r1 = Math.min(this.rows, r0 + size);
      let feeds: Map<string, Feed> | undefined;
      const read = () => new Map(this.inputs.map((x, i) => [x.name, feed(this.arrays[i]!, x, r0, r1)]));
      // read when first asked for: a capture that runs on from cached tensors reads none
      yield {
        start: r0,
        rows: r1 - r0,
        get feeds() {
          return (feeds ??= read());
        },
      };
    }
  }

  /** How many different samples there are (exact repeats count once), by two 32-bit hashes of each sample. */
  distinctSamples(): number {
    if (this.distinct !== undefined) return this.distinct;
    return (this.distinct = countDistinct(this.sampleHashes()));
  }

  /** Two 32-bit hashes of every sample (its bits: float32 values as they are, integers as int32), in sample order. */
  sampleHashes(): Uint32Array {
    const out = new Uint32Array(2 * this.rows);
    for (let r0 = 0; r0 < this.rows; r0 += 256) {
      const r1 = Math.min(this.rows, r0 + 256);
      const parts = this.arrays.map((a, i) => {
        const x = FLOATS.has(this.inputs[i]!.elemType) ? a.readF32(r0, r1) : Int32Array.from(a.readF64(r0, r1));
        return { bits: new Uint32Array(x.buffer, x.byteOffset, x.length), size: a.rowSize };
      });
      for (let r = 0; r < r1 - r0; r++) {
        let h1 = 0x811c9dc5,
          h2 = 0x9747b28c;
        for (const { bits, size } of parts)
          for (let i = r * size; i < (r + 1) * size; i++) {
            h1 = Math.imul(h1 ^ bits[i]!, 0x01000193);
            h2 = Math.imul(h2 ^ bits[i]!, 0x5bd1e995) ^ (h2 >>> 15);
          }
        out[2 * (r0 + r)] = h1 >>> 0;
        out[2 * (r0 + r) + 1] = h2 >>> 0;
      }
    }
    return out;
  }
}

/** The number of different samples among sample hashes (two per sample, as Calibration.sampleHashes gives them). */
export function countDistinct(hashes: Uint32Array): number {
  const seen = new Set<string>();
  for (let i = 0; i < hashes.length; i += 2) seen.add(`${hashes[i]}:${hashes[i + 1]}`);
  return seen.size;
}

function single(data: NpyFile, inputs: ModelInput[]): NpyFile[] {
  if (inputs.length !== 1) {
    const names = inputs.map((x) => x.name).join(', ');
    throw badInput(
      `the model has ${inputs.length} inputs (${names}); give one array per input: an .npz file with arrays named ` +
        'as the inputs (numpy.savez), or --calib NAME=FILE.npy for each',
    );
  }
  return [data];
}

function byName(given: Map<string, NpyFile>, inputs: ModelInput[]): NpyFile[] {
  const extra = [...given.keys()].filter((k) => !inputs.some((x) => x.name === k));
  if (extra.length) {
    const names = inputs.map((x) => x.name).join(', ');
    throw badInput(`calibration data names ${extra.join(', ')}, which the model does not have (its inputs: ${names})`);
  }
  return inputs.map((x) => {
    const a = given.get(x.name);
    if (!a) {
      const shape = `[${x.dims.map((d) => d ?? '?')}]`;
      throw badInput(`calibration data has no array for input ${x.name} (shape ${shape}, first axis = samples)`);
    }
    return a;
  });
}
