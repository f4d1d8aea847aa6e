import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { writeFileAtomic } from './atomic.js';
import { SubpruneError } from './errors.js';

// NumPy .npy files (format 1.0–3.0, little-endian, C order): the calibration data, labels and layer problems.
// Read by rows, so a file larger than memory can be streamed; or from bytes in memory (a browser has no files).

export type NpyDtype = 'f4' | 'f8' | 'i8' | 'i4' | 'u1';
const SIZE: Record<NpyDtype, number> = { f4: 4, f8: 8, i8: 8, i4: 4, u1: 1 };

export interface NpyFile {
  path: string;
  shape: number[];
  dtype: NpyDtype;
  /** Rows = shape[0]; rowSize = product of the other dimensions. */
  rows: number;
  rowSize: number;
  /** Rows r0 ≤ r < r1 as float32 (converted from f8/i8/i4/u1). */
  readF32(r0?: number, r1?: number): Float32Array;
  /** Rows as float64. */
  readF64(r0?: number, r1?: number): Float64Array;
  close(): void;
}

function bad(path: string, what: string): never {
  throw new SubpruneError('bad-input', `${path}: ${what}`);
}

interface NpyHeader {
  shape: number[];
  dtype: NpyDtype;
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

/** The header of a file of `size` bytes from its first headerSize(...) bytes. */
function parseHeader(path: string, head: Uint8Array, size: number): NpyHeader {
  const dataStart = headerSize(path, head);
  if (dataStart > size || dataStart > head.length) bad(path, 'truncated .npy header');
  const header = latin1(head.subarray(head[6] === 1 ? 10 : 12, dataStart));
  const descr = /'descr':\s*'([<>|=])([a-z]\d+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shapeM = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeM) bad(path, 'unreadable .npy header');
  const dtype = descr[2] as NpyDtype;
  if (!(dtype in SIZE))
    bad(path, `dtype ${descr[1]}${descr[2]} is not supported; use float32 (or float64, int64, int32, uint8)`);
  if (descr[1] === '>' && SIZE[dtype] > 1)
    bad(path, 'big-endian data is not supported; save with a little-endian dtype');
  if (fortran[1] === 'True') bad(path, 'Fortran-ordered array; save a C-ordered copy (numpy.ascontiguousarray)');
  const shape = shapeM[1]
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s)
    .map(Number);
  if (shape.some((v) => !Number.isSafeInteger(v) || v < 0)) bad(path, `bad shape (${shapeM[1]})`);
  const rows = shape.length ? shape[0] : 1;
  const rowSize = shape.slice(1).reduce((a, b) => a * b, 1);
  const bytes = rows * rowSize * SIZE[dtype];
  if (dataStart + bytes > size)
    bad(path, `file holds ${size - dataStart} data bytes, the header promises ${bytes} (truncated?)`);
  return { shape, dtype, rows, rowSize, dataStart };
}

/** An NpyFile over `read(offset, n)`, which returns a fresh copy of n bytes of the file. */
function npyFile(
  path: string,
  h: NpyHeader,
  read: (offset: number, n: number) => Uint8Array,
  close: () => void,
): NpyFile {
  const { shape, dtype, rows, rowSize, dataStart } = h,
    rowBytes = rowSize * SIZE[dtype];
  const typed = (r0: number, r1: number) => {
    if (r0 < 0 || r1 > rows || r0 > r1) throw new RangeError(`${path}: rows ${r0}..${r1} out of 0..${rows}`);
    const ab = read(dataStart + r0 * rowBytes, (r1 - r0) * rowBytes).buffer as ArrayBuffer;
    switch (dtype) {
      case 'f4':
        return new Float32Array(ab);
      case 'f8':
        return new Float64Array(ab);
      case 'i8':
        return Float64Array.from(new BigInt64Array(ab), Number);
      case 'i4':
        return new Int32Array(ab);
      case 'u1':
        return new Uint8Array(ab);
    }
  };
  return {
    path,
    shape,
    dtype,
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

/** Opens an .npy file for reading by rows (a file larger than memory can be streamed). */
export function openNpy(path: string): NpyFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    bad(path, `cannot open (${(e as NodeJS.ErrnoException).code}); check the path`);
  }
  try {
    const read = (offset: number, n: number) => {
      const buf = new Uint8Array(n);
      for (let off = 0; off < n;) {
        const got = readSync(fd, buf, off, n - off, offset + off);
        if (got === 0) break;
        off += got;
      }
      return buf;
    };
    const st = fstatSync(fd);
    if (!st.isFile()) bad(path, 'not a regular file; give the path of a .npy file');
    const size = st.size;
    const h = parseHeader(path, read(0, Math.min(size, headerSize(path, read(0, Math.min(size, 12))))), size);
    return npyFile(path, h, read, () => closeSync(fd));
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** An .npy file held in memory (e.g. picked in a browser); `name` names it in messages. */
export function npyFromBytes(bytes: Uint8Array, name: string): NpyFile {
  const h = parseHeader(name, bytes.subarray(0, headerSize(name, bytes.subarray(0, 12))), bytes.length);
  return npyFile(
    name,
    h,
    (offset, n) => new Uint8Array(bytes.subarray(offset, offset + n)),
    () => {},
  ); // a copy, also of a Buffer
}

/** Reads a whole .npy file. */
export function readNpy(path: string): { shape: number[]; dtype: NpyDtype; data: Float64Array | Float32Array } {
  const f = openNpy(path);
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
