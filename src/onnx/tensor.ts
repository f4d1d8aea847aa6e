// TensorProto <-> typed arrays. Weights are handled as float32 in subprune (the kernels work in f32);
// FLOAT16 and DOUBLE initializers are converted on read and converted back on write so a rewritten
// model keeps its original element types.
import { clearField, create } from '@bufbuild/protobuf';
import { badInput, SubpruneError } from '../errors.js';
import { isExternal, readExternalData } from './external.js';
import { TensorProto_DataType as DataType, TensorProtoSchema, type TensorProto } from './gen/onnx_pb.js';

export function dataTypeName(dt: number): string {
  return DataType[dt] ?? `#${dt}`;
}

function label(t: TensorProto): string {
  return t.name ? `tensor "${t.name}"` : 'an unnamed tensor';
}

/** The tensor's dims as numbers (ONNX stores int64). */
export function tensorDims(t: TensorProto): number[] {
  return t.dims.map((d) => {
    if (d < 0n || d > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw badInput(`${label(t)} has an invalid dimension ${d}; the model is corrupted, re-export it.`);
    }
    return Number(d);
  });
}

export function numel(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/**
 * Values of shape `dims` with only the entries not in `removed` kept along `axis` (what pruning does to a tensor).
 * `inPlace`: written over `x.data` and returned as a view of its start (no new memory: fresh pages cost more than the
 * copy on some machines).
 */
export function dropEntries<T extends Float32Array | Uint16Array>(
  x: { data: T; dims: readonly number[] },
  axis: number,
  removed: ReadonlySet<number>,
  inPlace = false,
): { data: T; dims: number[] } {
  const { dims, data } = x;
  const outer = numel(dims.slice(0, axis)),
    inner = numel(dims.slice(axis + 1)),
    len = dims[axis]!;
  // the kept entries as runs of consecutive ones: [first entry, entries] pairs
  const runs: number[] = [];
  let kept = 0;
  for (let e = 0; e < len; e++)
    if (!removed.has(e)) {
      if (runs.length && runs[runs.length - 2]! + runs[runs.length - 1]! === e) runs[runs.length - 1]!++;
      else runs.push(e, 1);
      kept++;
    }
  const n = outer * kept * inner,
    out = inPlace ? (data.subarray(0, n) as T) : new (data.constructor as new (n: number) => T)(n);
  // in place, every entry moves to a place no later than its own, so copying in order reads nothing overwritten
  let o = 0;
  for (let i = 0; i < outer; i++)
    for (let r = 0; r < runs.length; r += 2) {
      const from = (i * len + runs[r]!) * inner,
        size = runs[r + 1]! * inner;
      // short runs element by element: a subarray per run costs more than their copy
      if (size < 64) for (let j = 0; j < size; j++) out[o + j] = data[from + j]!;
      else if (inPlace) data.copyWithin(o, from, from + size);
      else out.set(data.subarray(from, from + size), o);
      o += size;
    }
  return { data: out, dims: dims.map((d, i) => (i === axis ? kept : d)) };
}

const ELEMENT_BYTES: Partial<Record<number, number>> = {
  [DataType.FLOAT]: 4,
  [DataType.UINT8]: 1,
  [DataType.INT8]: 1,
  [DataType.UINT16]: 2,
  [DataType.INT16]: 2,
  [DataType.INT32]: 4,
  [DataType.INT64]: 8,
  [DataType.BOOL]: 1,
  [DataType.FLOAT16]: 2,
  [DataType.DOUBLE]: 8,
  [DataType.UINT32]: 4,
  [DataType.UINT64]: 8,
  [DataType.COMPLEX64]: 8,
  [DataType.COMPLEX128]: 16,
  [DataType.BFLOAT16]: 2,
};

/** Bytes a tensor's data must have by its dims and data type (undefined for strings and packed or unknown types). */
export function expectedBytes(t: TensorProto): number | undefined {
  const size = ELEMENT_BYTES[t.dataType];
  return size === undefined ? undefined : numel(tensorDims(t)) * size;
}

/** The typed field holding a tensor's values when not in raw_data, and how many entries one element takes. */
function typedValues(t: TensorProto): [ArrayLike<unknown>, number] {
  switch (t.dataType) {
    case DataType.FLOAT:
      return [t.floatData, 1];
    case DataType.COMPLEX64:
      return [t.floatData, 2];
    case DataType.DOUBLE:
      return [t.doubleData, 1];
    case DataType.COMPLEX128:
      return [t.doubleData, 2];
    case DataType.INT64:
      return [t.int64Data, 1];
    case DataType.UINT32:
    case DataType.UINT64:
      return [t.uint64Data, 1];
    default:
      return [t.int32Data, 1]; // INT32, INT16, INT8, UINT16, UINT8, BOOL, FLOAT16, BFLOAT16
  }
}

/**
 * Checks, without decoding anything, that a tensor's stored data has the size its dims and data type promise: a
 * corrupted model is refused when it is read, not when (or after) a wrong-sized buffer is allocated. External data is
 * checked where it is inlined; tensors with no data at all are left to the code that needs their values.
 */
export function checkStoredSize(t: TensorProto): void {
  const size = ELEMENT_BYTES[t.dataType];
  if (isExternal(t) || t.segment !== undefined || size === undefined) return;
  const n = numel(tensorDims(t));
  if (t.rawData.length > 0) return checkCount(t, t.rawData.length, n * size, 'bytes of data');
  const [values, per] = typedValues(t);
  if (values.length > 0) checkCount(t, values.length, n * per, 'stored values');
}

/**
 * The tensor's bytes when they are stored as bytes (raw_data or an external file), else undefined
 * (the values are in a typed field such as float_data). External data needs the model folder.
 */
function storedBytes(t: TensorProto, baseDir: string | undefined): Uint8Array | undefined {
  if (t.segment !== undefined) {
    throw badInput(
      `${label(t)} is stored in segments, which subprune does not support; re-export the model without ` +
        'segmented tensors.',
    );
  }
  if (isExternal(t)) {
    if (baseDir === undefined) {
      throw badInput(
        `${label(t)} keeps its data in an external file; load the model with readModel(path) (or pass the ` +
          `model's folder) so the file can be found.`,
      );
    }
    return readExternalData(t, baseDir);
  }
  return t.rawData.length > 0 ? t.rawData : undefined;
}

function checkCount(t: TensorProto, got: number, want: number, what: string): void {
  if (got !== want) {
    throw badInput(
      `${label(t)} has ${got} ${what} but its dims [${t.dims.join(', ')}] need ${want}; the model is corrupted ` +
        'or truncated, re-export it.',
    );
  }
}

// Float16 <-> float32, exact decode and round-to-nearest-even encode (Node 20 has no Float16Array).
export function float16BitsToFloat32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero or subnormal
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

const f32 = new Float32Array(1);
const f32Bits = new Uint32Array(f32.buffer);

export function float32ToFloat16Bits(v: number): number {
  f32[0] = v;
  const x = f32Bits[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf / NaN
  const e = exp - 112; // re-biased exponent (127 -> 15)
  if (e >= 0x1f) return sign | 0x7c00; // too large: Inf
  // Normal: keep 10 of 23 mantissa bits. Subnormal: shift the full 24-bit significand further.
  const sig = e > 0 ? mant : mant | 0x800000;
  const shift = e > 0 ? 13 : 14 - e;
  if (shift > 24) return sign; // below half the smallest subnormal: zero
  let h = (e > 0 ? e << 10 : 0) | (sig >>> shift);
  const rem = sig & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && h & 1)) h++; // a carry correctly moves into the exponent
  return sign | h;
}

/** Whether this machine stores numbers little-endian, as ONNX's raw_data does. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Read a FLOAT, FLOAT16 or DOUBLE tensor as float32, from raw_data (little-endian), the typed
 * fields (float_data, int32_data holding float16 bits, double_data) or external data.
 */
export function tensorToFloat32(t: TensorProto, baseDir?: string): { dims: number[]; data: Float32Array } {
  const dims = tensorDims(t);
  const dt = t.dataType;
  if (dt !== DataType.FLOAT && dt !== DataType.FLOAT16 && dt !== DataType.DOUBLE) {
    throw badInput(
      `${label(t)} has data type ${dataTypeName(dt)}; subprune reads weights only as FLOAT, FLOAT16 or DOUBLE. ` +
        `Convert the model's weights to float32.`,
    );
  }
  const raw = storedBytes(t, baseDir);
  const n = numel(dims),
    size = ELEMENT_BYTES[dt]!,
    typed = typedValues(t)[0];
  // sizes first: corrupted dims must not turn into a huge allocation
  if (raw !== undefined) checkCount(t, raw.length, n * size, 'bytes of data');
  else checkCount(t, typed.length, n, 'stored values');
  if (raw !== undefined && dt === DataType.FLOAT && LITTLE_ENDIAN)
    // the stored bytes copied as they are (aligned; a Buffer's own slice would be a view): reading them element by
    // element through a DataView took 2.2 s of a DenseNet-121 prune
    return { dims, data: new Float32Array(Uint8Array.prototype.slice.call(raw, 0, 4 * n).buffer) };
  const data = new Float32Array(n);
  if (raw !== undefined) {
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    for (let i = 0; i < n; i++) {
      data[i] =
        dt === DataType.FLOAT
          ? view.getFloat32(4 * i, true)
          : dt === DataType.FLOAT16
            ? float16BitsToFloat32(view.getUint16(2 * i, true))
            : view.getFloat64(8 * i, true);
    }
  } else if (dt === DataType.FLOAT16) {
    // ONNX stores float16 bit patterns in int32_data, one per entry.
    for (let i = 0; i < n; i++) data[i] = float16BitsToFloat32(t.int32Data[i]! & 0xffff);
  } else {
    data.set(typed as number[]);
  }
  return { dims, data };
}

/** Read an INT64 tensor (shape constants, axes, ...) from raw_data, int64_data or external data. */
export function tensorToInt64(t: TensorProto, baseDir?: string): { dims: number[]; data: BigInt64Array } {
  const dims = tensorDims(t);
  if (t.dataType !== DataType.INT64) {
    throw badInput(
      `${label(t)} has data type ${dataTypeName(t.dataType)} where INT64 was expected; the model does not ` +
        'follow the ONNX spec for this input.',
    );
  }
  const raw = storedBytes(t, baseDir);
  const n = numel(dims);
  if (raw !== undefined) checkCount(t, raw.length, n * 8, 'bytes of data');
  else checkCount(t, t.int64Data.length, n, 'int64_data values');
  const data = new BigInt64Array(n);
  if (raw !== undefined) {
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    for (let i = 0; i < n; i++) data[i] = view.getBigInt64(8 * i, true);
  } else {
    data.set(t.int64Data);
  }
  return { dims, data };
}

/**
 * Store new contents in an existing tensor, in raw_data, and drop every other storage field,
 * so nothing stale (typed fields, external references) survives. Keeps name and doc_string.
 */
export function setTensorData(t: TensorProto, dims: readonly number[], dataType: number, raw: Uint8Array): void {
  t.dims = dims.map((d) => BigInt(d));
  t.dataType = dataType;
  t.rawData = raw;
  t.floatData = [];
  t.int32Data = [];
  t.int64Data = [];
  t.doubleData = [];
  t.uint64Data = [];
  t.stringData = [];
  t.externalData = [];
  clearField(t, TensorProtoSchema.field.dataLocation);
  clearField(t, TensorProtoSchema.field.segment);
}

/**
 * Store new values in an existing tensor (setTensorData): float values keep its element type if that is FLOAT16 or
 * DOUBLE, else FLOAT; a BigInt64Array is stored as INT64.
 */
export function setTensorValues(t: TensorProto, dims: readonly number[], data: Float32Array | BigInt64Array): void {
  if (data instanceof BigInt64Array) {
    setTensorData(t, dims, DataType.INT64, new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice());
    return;
  }
  const dt = t.dataType === DataType.FLOAT16 || t.dataType === DataType.DOUBLE ? t.dataType : DataType.FLOAT;
  setTensorData(t, dims, dt, encodeFloat32(data, dt));
}

/** Encode float32 values as FLOAT, FLOAT16 or DOUBLE little-endian bytes. */
export function encodeFloat32(data: ArrayLike<number>, dataType: number): Uint8Array {
  const size =
    dataType === DataType.FLOAT ? 4 : dataType === DataType.FLOAT16 ? 2 : dataType === DataType.DOUBLE ? 8 : 0;
  if (size === 0) throw new SubpruneError('internal', `cannot encode float data as ${dataTypeName(dataType)}`);
  const raw = new Uint8Array(data.length * size);
  const view = new DataView(raw.buffer);
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (size === 4) view.setFloat32(4 * i, v, true);
    else if (size === 2) view.setUint16(2 * i, float32ToFloat16Bits(v), true);
    else view.setFloat64(8 * i, v, true);
  }
  return raw;
}

function checkLength(name: string, dims: readonly number[], length: number): void {
  if (numel(dims) !== length) {
    throw new SubpruneError('internal', `tensor "${name}": ${length} values do not fill dims [${dims.join(', ')}]`);
  }
}

/** A new tensor holding float32 values, stored as dataType (FLOAT, FLOAT16 or DOUBLE) in raw_data. */
export function float32Tensor(
  name: string,
  dims: readonly number[],
  data: Float32Array,
  dataType: number = DataType.FLOAT,
): TensorProto {
  checkLength(name, dims, data.length);
  const t = create(TensorProtoSchema, { name });
  setTensorData(t, dims, dataType, encodeFloat32(data, dataType));
  return t;
}

/** A new INT64 tensor in raw_data. */
export function int64Tensor(name: string, dims: readonly number[], values: ArrayLike<number | bigint>): TensorProto {
  checkLength(name, dims, values.length);
  const raw = new Uint8Array(values.length * 8);
  const view = new DataView(raw.buffer);
  for (let i = 0; i < values.length; i++) view.setBigInt64(8 * i, BigInt(values[i]!), true);
  const t = create(TensorProtoSchema, { name });
  setTensorData(t, dims, DataType.INT64, raw);
  return t;
}
