import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { writeFileAtomic } from './atomic.js';
import { SubpruneError } from './errors.js';
import { availableMemory, fmtBytes } from './kernels/memory.js';

// NumPy .npy files (format 1.0–3.0): the calibration data, labels and layer problems. C-ordered files are read by
// rows, so a file larger than memory can be streamed; Fortran-ordered ones (numpy writes them for a transposed array)
// are read whole and reordered, within the memory available. Values are converted where that is exact (either byte
// order; float16 to float32; small integers to int32); other dtypes are refused. Files or bytes in memory (a browser
// has no files).

/** The type values are read as: float32, float64, int64 (read as float64), int32 or uint8. */
export type NpyDtype = 'f4' | 'f8' | 'i8' | 'i4' | 'u1';
const SIZE: Record<NpyDtype, number> = { f4: 4, f8: 8, i8: 8, i4: 4, u1: 1 };

/** The stored dtypes (numpy's kind and item size) subprune reads, and the type each is read as (exactly). */
const READ_AS: Record<string, NpyDtype> = {
  f2: 'f4',
  f4: 'f4',
  f8: 'f8',
  i1: 'i4',
  i2: 'i4',
  i4: 'i4',
  i8: 'i8',
  u1: 'u1',
  u2: 'i4',
  u4: 'i8',
  u8: 'i8',
  b1: 'u1',
};
const KIND_NAMES: Record<string, string> = {
  c: 'complex',
  U: 'unicode string',
  S: 'byte string',
  a: 'byte string',
  O: 'Python object',
  M: 'datetime',
  m: 'timedelta',
  V: 'raw bytes (void)',
};

export interface NpyFile {
  path: string;
  shape: number[];
  /** The type values are read as (a float16 file reads as 'f4', an int16 or uint16 one as 'i4', bool as 'u1'). */
  dtype: NpyDtype;
  /** numpy's dtype as stored, e.g. '<f4', '>f8', '<f2', '|b1'. */
  descr: string;
  /** The file is Fortran-ordered; it was read whole and its rows are the C-order rows all the same. */
  fortranOrder: boolean;
  /** Rows = shape[0]; rowSize = product of the other dimensions. */
  rows: number;
  rowSize: number;
  /** Rows r0 ≤ r < r1 in C order as float32 (converted from the other dtypes). */
  readF32(r0?: number, r1?: number): Float32Array;
  /** Rows as float64. */
  readF64(r0?: number, r1?: number): Float64Array;
  close(): void;
}

export interface NpyOptions {
  /**
   * Bytes a Fortran-ordered file may take to be read whole and reordered (the file's data and two arrays of the
   * converted values); default: the memory the system says is available. A larger file is refused.
   */
  memory?: number;
}

function bad(path: string, what: string): never {
  throw new SubpruneError('bad-input', `${path}: ${what}`);
}

interface NpyHeader {
  shape: number[];
  /** Stored kind and size, e.g. 'f2', and whether multi-byte items are big-endian. */
  stored: string;
  bigEndian: boolean;
  descr: string;
  dtype: NpyDtype;
  fortranOrder: boolean;
  rows: number;
  rowSize: number;
  dataStart: number;
}

const latin1 = (b: Uint8Array) => String.fromCharCode(...b);

/** Size of the header (magic, version, length and the text), from the file's first 12 bytes. */
function headerSize(path: string, pre: Uint8Array): number {
  if (pre.length < 12 || pre[0] !== 0x93 || latin1(pre.subarray(1, 6)) !== 'NUMPY')
    bad(path, 'not a .npy file (no \\x93NUMPY magic); save arrays with numpy.save');
  const v = new DataView(pre.buffer, pre.byteOffset, pre.byteLength);
  return pre[6] === 1 ? 10 + v.getUint16(8, true) : 12 + v.getUint32(8, true);
}

const SUPPORTED = 'float16/32/64, int8/16/32/64, uint8/16/32/64 or bool, either byte order';

/** The header of a file of `size` bytes from its first headerSize(...) bytes. */
function parseHeader(path: string, head: Uint8Array, size: number): NpyHeader {
  const dataStart = headerSize(path, head);
  if (dataStart > size || dataStart > head.length) bad(path, 'truncated .npy header');
  const header = latin1(head.subarray(head[6] === 1 ? 10 : 12, dataStart));
  if (/'descr':\s*\[/.test(header))
    bad(path, `a structured array (named fields) is not supported; save one ${SUPPORTED} array`);
  const descrM = /'descr':\s*'([<>|=])([a-zA-Z])(\d*)/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shapeM = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descrM || !fortran || !shapeM) bad(path, 'unreadable .npy header');
  const [, order, kind, bytes] = descrM,
    stored = kind + bytes,
    descr = order + stored;
  const dtype = READ_AS[stored];
  if (!dtype) {
    const what = KIND_NAMES[kind] ? `${KIND_NAMES[kind]} dtype '${descr}'` : `dtype '${descr}'`;
    bad(path, `${what} is not supported; save the array as float32 (subprune reads ${SUPPORTED})`);
  }
  const shape = shapeM[1]
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s)
    .map(Number);
  if (shape.some((v) => !Number.isSafeInteger(v) || v < 0)) bad(path, `bad shape (${shapeM[1]})`);
  const rows = shape.length ? shape[0] : 1;
  const rowSize = shape.slice(1).reduce((a, b) => a * b, 1);
  const dataBytes = rows * rowSize * Number(bytes);
  if (dataStart + dataBytes > size)
    bad(path, `file holds ${size - dataStart} data bytes, the header promises ${dataBytes} (truncated?)`);
  return {
    shape,
    stored,
    bigEndian: order === '>',
    descr,
    dtype,
    fortranOrder: fortran[1] === 'True' && shape.length > 1,
    rows,
    rowSize,
    dataStart,
  };
}

type Values = Float32Array | Float64Array | Int32Array | Uint8Array;

/** Reverses the bytes of each `size`-byte item of `ab` in place (big-endian to the host's little-endian). */
function swapBytes(ab: ArrayBuffer, size: number): void {
  if (size === 2) {
    const u = new Uint16Array(ab);
    for (let i = 0; i < u.length; i++) u[i] = ((u[i] & 0xff) << 8) | (u[i] >>> 8);
    return;
  }
  const u = new Uint32Array(ab),
    bswap = (v: number) => ((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24);
  if (size === 4) for (let i = 0; i < u.length; i++) u[i] = bswap(u[i]);
  else
    for (let i = 0; i < u.length; i += 2) {
      const lo = u[i];
      u[i] = bswap(u[i + 1]);
      u[i + 1] = bswap(lo);
    }
}

/** IEEE half-precision bits to float32: exact (every float16 value is a float32 value), NaN payloads kept. */
function halfToFloat(h: Uint16Array): Float32Array {
  const out = new Float32Array(h.length),
    bits = new Uint32Array(out.buffer);
  for (let i = 0; i < h.length; i++) {
    const sign = (h[i] & 0x8000) << 16,
      e = (h[i] >>> 10) & 0x1f,
      m = h[i] & 0x3ff;
    if (e === 0)
      out[i] = (sign ? -m : m) * 2 ** -24; // zero or subnormal: a normal float32
    else if (e === 31)
      bits[i] = sign | 0x7f800000 | (m << 13); // infinity or NaN
    else bits[i] = sign | ((e + 112) << 23) | (m << 13); // rebias the exponent 15 → 127
  }
  return out;
}

/** The values of `ab` (whole items of the stored dtype, a buffer of its own) as the type they are read as. */
function decode(ab: ArrayBuffer, h: NpyHeader): Values {
  const size = Number(h.stored.slice(1));
  if (h.bigEndian && size > 1) swapBytes(ab, size);
  const toNumber = (v: bigint) => Number(v);
  switch (h.stored) {
    case 'f2':
      return halfToFloat(new Uint16Array(ab));
    case 'f4':
      return new Float32Array(ab);
    case 'f8':
      return new Float64Array(ab);
    case 'i1':
      return Int32Array.from(new Int8Array(ab));
    case 'i2':
      return Int32Array.from(new Int16Array(ab));
    case 'u2':
      return Int32Array.from(new Uint16Array(ab));
    case 'i4':
      return new Int32Array(ab);
    case 'u4':
      return Float64Array.from(new Uint32Array(ab));
    case 'i8':
      return Float64Array.from(new BigInt64Array(ab), toNumber);
    case 'u8':
      return Float64Array.from(new BigUint64Array(ab), toNumber);
    default: // u1, b1
      return new Uint8Array(ab);
  }
}

/** The C-order array of a Fortran-ordered one (the first index runs fastest in `f`). */
function fortranToC<T extends Values>(f: T, shape: number[]): T {
  const k = shape.length,
    c = new (f.constructor as new (n: number) => T)(f.length);
  if (f.length === 0) return c;
  const stride: number[] = [];
  for (let j = 0, s = 1; j < k; s *= shape[j++]) stride.push(s);
  const idx = new Array<number>(k).fill(0),
    last = shape[k - 1],
    step = stride[k - 1];
  // the C order runs over the last axis innermost; a carry moves the Fortran offset along the other axes
  for (let q = 0, off = 0; q < c.length;) {
    for (let i = 0, o = off; i < last; i++, o += step) c[q++] = f[o];
    for (let j = k - 2; j >= 0; j--) {
      if (++idx[j] < shape[j]) {
        off += stride[j];
        break;
      }
      idx[j] = 0;
      off -= stride[j] * (shape[j] - 1);
    }
  }
  return c;
}

/** Refuses a Fortran-ordered file that cannot be read whole and reordered in `memory` bytes. */
function checkFortranFits(path: string, h: NpyHeader, memory: number): void {
  const n = h.rows * h.rowSize,
    need = n * (Number(h.stored.slice(1)) + 2 * SIZE[h.dtype]);
  const fix = 'or save a C-ordered copy, which is read by rows (numpy.save(path, numpy.ascontiguousarray(a)))';
  if (n > 2 ** 32)
    bad(path, `a Fortran-ordered array is read whole, and ${n} values are more than one array can hold; ${fix}`);
  if (need > memory)
    bad(
      path,
      `a Fortran-ordered array is read whole and reordered: that needs ${fmtBytes(need)}, ` +
        `${fmtBytes(memory)} is available; free memory, ${fix}`,
    );
}

/**
 * An NpyFile over `read(offset, n)`, which returns a buffer of its own holding n bytes of the file. A Fortran-ordered
 * file is read and reordered here, whole.
 */
function npyFile(
  path: string,
  h: NpyHeader,
  read: (offset: number, n: number) => ArrayBuffer,
  close: () => void,
  memory: number,
): NpyFile {
  const { shape, dtype, rows, rowSize, dataStart } = h,
    rowBytes = rowSize * Number(h.stored.slice(1));
  if (h.fortranOrder) checkFortranFits(path, h, memory);
  const whole = h.fortranOrder ? fortranToC(decode(read(dataStart, rows * rowBytes), h), shape) : undefined;
  const typed = (r0: number, r1: number): Values => {
    if (r0 < 0 || r1 > rows || r0 > r1) throw new RangeError(`${path}: rows ${r0}..${r1} out of 0..${rows}`);
    if (whole) return whole.slice(r0 * rowSize, r1 * rowSize);
    return decode(read(dataStart + r0 * rowBytes, (r1 - r0) * rowBytes), h);
  };
  return {
    path,
    shape,
    dtype,
    descr: h.descr,
    fortranOrder: h.fortranOrder,
    rows,
    rowSize,
    readF32: (r0 = 0, r1 = rows) => {
      const t = typed(r0, r1);
      return t instanceof Float32Array ? t : Float32Array.from(t);
    },
    readF64: (r0 = 0, r1 = rows) => {
      const t = typed(r0, r1);
      return t instanceof Float64Array ? t : Float64Array.from(t);
    },
    close,
  };
}

/** Largest single read: a typed array's length is limited, and one read call reads at most 2 GiB anyway. */
const CHUNK = 1 << 30;

/**
 * Opens an .npy file for reading by rows (a C-ordered file larger than memory is streamed; a Fortran-ordered one is
 * read whole here, see NpyOptions.memory).
 */
export function openNpy(path: string, options: NpyOptions = {}): NpyFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    bad(path, `cannot open (${(e as NodeJS.ErrnoException).code}); check the path`);
  }
  try {
    const read = (offset: number, n: number) => {
      const ab = new ArrayBuffer(n);
      for (let off = 0; off < n;) {
        const got = readSync(
          fd,
          new Uint8Array(ab, off, Math.min(n - off, CHUNK)),
          0,
          Math.min(n - off, CHUNK),
          offset + off,
        );
        if (got === 0) break;
        off += got;
      }
      return ab;
    };
    const st = fstatSync(fd);
    if (!st.isFile()) bad(path, 'not a regular file; give the path of a .npy file');
    const size = st.size,
      head = (n: number) => new Uint8Array(read(0, Math.min(size, n)));
    const h = parseHeader(path, head(headerSize(path, head(12))), size);
    const f = npyFile(path, h, read, () => closeSync(fd), options.memory ?? availableMemory());
    if (!h.fortranOrder) return f;
    closeSync(fd); // read whole: nothing more to read
    return { ...f, close: () => {} };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** An .npy file held in memory (e.g. picked in a browser); `name` names it in messages. */
export function npyFromBytes(bytes: Uint8Array, name: string, options: NpyOptions = {}): NpyFile {
  const h = parseHeader(name, bytes.subarray(0, headerSize(name, bytes.subarray(0, 12))), bytes.length);
  // a copy into a buffer of its own (a Buffer's bytes may sit anywhere in a shared pool, and its slice is a view)
  const read = (offset: number, n: number) => {
    const copy = new Uint8Array(n);
    copy.set(bytes.subarray(offset, offset + n));
    return copy.buffer;
  };
  return npyFile(name, h, read, () => {}, options.memory ?? availableMemory());
}

/** Reads a whole .npy file. */
export function readNpy(
  path: string,
  options: NpyOptions = {},
): { shape: number[]; dtype: NpyDtype; data: Float64Array | Float32Array } {
  const f = openNpy(path, options);
  try {
    return { shape: f.shape, dtype: f.dtype, data: f.dtype === 'f4' ? f.readF32() : f.readF64() };
  } finally {
    f.close();
  }
}

/** Encodes an array as .npy (format 1.0). */
export function encodeNpy(data: Float32Array | Float64Array | BigInt64Array | Int32Array, shape: number[]): Buffer {
  const descr =
    data instanceof Float32Array
      ? '<f4'
      : data instanceof Float64Array
        ? '<f8'
        : data instanceof BigInt64Array
          ? '<i8'
          : '<i4';
  const shp = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shp}, }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n'; // data starts 64-byte aligned
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  return Buffer.concat([
    pre,
    Buffer.from(header, 'latin1'),
    Buffer.from(data.buffer, data.byteOffset, data.byteLength),
  ]);
}

export { writeFileAtomic } from './atomic.js';

export function writeNpy(
  path: string,
  data: Float32Array | Float64Array | BigInt64Array | Int32Array,
  shape: number[],
): void {
  writeFileAtomic(path, encodeNpy(data, shape));
}
