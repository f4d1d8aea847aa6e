import { openSync, readSync, closeSync, fstatSync, writeFileSync, renameSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { SubpruneError } from './errors.js';

// NumPy .npy files (format 1.0–3.0, little-endian, C order): the calibration data, labels and layer problems.
// Read by rows, so a file larger than memory can be streamed.

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

export function openNpy(path: string): NpyFile {
  let fd: number;
  try { fd = openSync(path, 'r'); } catch (e) { bad(path, `cannot open (${(e as NodeJS.ErrnoException).code}); check the path`); }
  try {
    const size = fstatSync(fd).size;
    const pre = Buffer.alloc(12);
    readSync(fd, pre, 0, 12, 0);
    if (pre.subarray(0, 6).toString('latin1') !== '\x93NUMPY') bad(path, 'not a .npy file (no \\x93NUMPY magic); save arrays with numpy.save');
    const major = pre[6];
    const hlen = major === 1 ? pre.readUInt16LE(8) : pre.readUInt32LE(8);
    const start = major === 1 ? 10 : 12;
    if (start + hlen > size) bad(path, 'truncated .npy header');
    const hb = Buffer.alloc(hlen);
    readSync(fd, hb, 0, hlen, start);
    const header = hb.toString('latin1');
    const descr = /'descr':\s*'([<>|=])([a-z]\d+)'/.exec(header);
    const fortran = /'fortran_order':\s*(True|False)/.exec(header);
    const shapeM = /'shape':\s*\(([^)]*)\)/.exec(header);
    if (!descr || !fortran || !shapeM) bad(path, 'unreadable .npy header');
    const dtype = descr[2] as NpyDtype;
    if (!(dtype in SIZE)) bad(path, `dtype ${descr[1]}${descr[2]} is not supported; use float32 (or float64, int64, int32, uint8)`);
    if (descr[1] === '>' && SIZE[dtype] > 1) bad(path, 'big-endian data is not supported; save with a little-endian dtype');
    if (fortran[1] === 'True') bad(path, 'Fortran-ordered array; save a C-ordered copy (numpy.ascontiguousarray)');
    const shape = shapeM[1].split(',').map((s) => s.trim()).filter((s) => s).map(Number);
    if (shape.some((v) => !Number.isInteger(v) || v < 0)) bad(path, `bad shape (${shapeM[1]})`);
    const rows = shape.length ? shape[0] : 1;
    const rowSize = shape.slice(1).reduce((a, b) => a * b, 1);
    const dataStart = start + hlen, bytes = rows * rowSize * SIZE[dtype];
    if (dataStart + bytes > size) bad(path, `file holds ${size - dataStart} data bytes, the header promises ${bytes} (truncated?)`);

    const read = (r0: number, r1: number): Buffer => {
      if (r0 < 0 || r1 > rows || r0 > r1) throw new RangeError(`${path}: rows ${r0}..${r1} out of 0..${rows}`);
      const n = (r1 - r0) * rowSize * SIZE[dtype];
      const buf = Buffer.alloc(n);
      let off = 0;
      while (off < n) off += readSync(fd, buf, off, n - off, dataStart + r0 * rowSize * SIZE[dtype] + off);
      return buf;
    };
    const typed = (buf: Buffer) => {
      const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
      switch (dtype) {
        case 'f4': return new Float32Array(ab);
        case 'f8': return new Float64Array(ab);
        case 'i8': return Float64Array.from(new BigInt64Array(ab), Number);
        case 'i4': return new Int32Array(ab);
        case 'u1': return new Uint8Array(ab);
      }
    };
    return {
      path, shape, dtype, rows, rowSize,
      readF32: (r0 = 0, r1 = rows) => { const t = typed(read(r0, r1)); return t instanceof Float32Array ? t : Float32Array.from(t); },
      readF64: (r0 = 0, r1 = rows) => { const t = typed(read(r0, r1)); return t instanceof Float64Array ? t : Float64Array.from(t); },
      close: () => closeSync(fd),
    };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
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
  const descr = data instanceof Float32Array ? '<f4' : data instanceof Float64Array ? '<f8' : data instanceof BigInt64Array ? '<i8' : '<i4';
  const shp = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shp}, }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n'; // data starts 64-byte aligned
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1; pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  return Buffer.concat([pre, Buffer.from(header, 'latin1'), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]);
}

/** Writes a file through a temporary file in the same folder, renamed into place: a reader never sees half a file. */
export function writeFileAtomic(path: string, bytes: Uint8Array): void {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  writeFileSync(tmp, bytes);
  renameSync(tmp, path);
}

export function writeNpy(path: string, data: Float32Array | Float64Array | BigInt64Array | Int32Array, shape: number[]): void {
  writeFileAtomic(path, encodeNpy(data, shape));
}
