import { describe, it, expect } from 'vitest';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNpy, npyFromBytes, encodeNpy, readNpy, type NpyFile } from '../src/npy.js';

// The file reader (openNpy) and the in-memory reader (npyFromBytes, the browser's) share the header parsing; both
// are checked against the data bytes of files written by numpy (the bundled models/*.npy), and against numpy's own
// reading of the layouts and dtypes it writes (test/fixtures/npy, made by make.py there).

const dir = mkdtempSync(join(tmpdir(), 'subprune-npy-'));
const both = (bytes: Uint8Array, name: string): NpyFile[] => {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return [openNpy(path), npyFromBytes(bytes, path)];
};

describe('npy', () => {
  it('reads numpy-written float32 and int64 files, whole and by rows, from a file and from bytes', () => {
    const raw = readFileSync('models/calib.npy');
    const tail = new Float32Array(
      raw.buffer.slice(raw.byteOffset + raw.length - 512 * 784 * 4, raw.byteOffset + raw.length),
    );
    for (const f of both(raw, 'calib.npy')) {
      expect(f.shape).toEqual([512, 1, 28, 28]);
      expect([f.dtype, f.rows, f.rowSize]).toEqual(['f4', 512, 784]);
      expect(f.readF32()).toEqual(tail);
      expect(f.readF32(100, 103)).toEqual(tail.subarray(100 * 784, 103 * 784));
      expect(() => f.readF32(0, 513)).toThrow(RangeError);
      f.close();
    }
    const labels = readFileSync('models/test-labels.npy');
    const want = Float64Array.from(
      new BigInt64Array(
        labels.buffer.slice(labels.byteOffset + labels.length - 2000 * 8, labels.byteOffset + labels.length),
      ),
      Number,
    );
    for (const f of both(labels, 'labels.npy')) {
      expect([f.dtype, f.shape]).toEqual(['i8', [2000]]);
      expect(f.readF64()).toEqual(want);
      f.close();
    }
  });

  it('reads format 2.0 headers (4-byte length)', () => {
    const v1 = encodeNpy(Float64Array.from([1, 2, 3, 4, 5, 6]), [2, 3]);
    const hlen = v1.readUInt16LE(8),
      v2 = Buffer.alloc(v1.length + 2);
    v1.copy(v2, 0, 0, 8);
    v2[6] = 2;
    v2.writeUInt32LE(hlen, 8);
    v1.copy(v2, 12, 10);
    for (const f of both(v2, 'v2.npy')) {
      expect(f.shape).toEqual([2, 3]);
      expect([...f.readF64(1, 2)]).toEqual([4, 5, 6]);
      f.close();
    }
  });

  it('refuses broken files with the same message from a file and from bytes', () => {
    const good = encodeNpy(new Float32Array(12), [3, 4]);
    const cases: [Uint8Array, RegExp][] = [
      [Buffer.from('not a numpy file at all'), /not a \.npy file/],
      [good.subarray(0, 5), /not a \.npy file/],
      [good.subarray(0, 40), /truncated \.npy header/],
      [good.subarray(0, good.length - 4), /header promises 48/],
      [readFileSync(`${FIX}/refused-c8.npy`), /complex dtype '<c8' is not supported; save the array as float32/],
      [readFileSync(`${FIX}/refused-U3.npy`), /unicode string dtype '<U3' is not supported/],
      [readFileSync(`${FIX}/refused-structured.npy`), /a structured array \(named fields\) is not supported/],
    ];
    for (const [bytes, msg] of cases) {
      const path = join(dir, 'broken.npy');
      writeFileSync(path, bytes);
      expect(() => openNpy(path)).toThrow(msg);
      expect(() => npyFromBytes(bytes, path)).toThrow(msg);
    }
  });
});

// Each fixture NAME.npy beside NAME.ref.npy: the same values as numpy reads them, C-ordered and little-endian
// (float32 where the stored type is float16 or float32, float64 otherwise), and the type subprune reads them as.
const FIX = 'test/fixtures/npy';
const PAIRS: [string, string, string][] = [
  ['fortran-2d', '<f4', 'f4'],
  ['fortran-4d', '<f4', 'f4'],
  ['fortran-3d-f8-big', '>f8', 'f8'],
  ['big-f4', '>f4', 'f4'],
  ['big-f8', '>f8', 'f8'],
  ['big-i8', '>i8', 'i8'],
  ['big-i4', '>i4', 'i4'],
  ['big-i2', '>i2', 'i4'],
  ['big-u2', '>u2', 'i4'],
  ['big-f2', '>f2', 'f4'],
  ['f2', '<f2', 'f4'],
  ['i1', '|i1', 'i4'],
  ['i2', '<i2', 'i4'],
  ['u2', '<u2', 'i4'],
  ['u4', '<u4', 'i8'],
  ['u8', '<u8', 'i8'],
  ['b1', '|b1', 'u1'],
];

const bits = (a: Float32Array | Float64Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

describe('npy: the layouts and dtypes numpy writes, against numpy', () => {
  it.each(PAIRS)('%s (%s) reads as numpy reads it, in C order, from a file and from bytes', (name, descr, dtype) => {
    const ref = openNpy(`${FIX}/${name}.ref.npy`),
      f32 = ref.dtype === 'f4';
    const want = f32 ? ref.readF32() : ref.readF64();
    for (const f of both(readFileSync(`${FIX}/${name}.npy`), `${name}.npy`)) {
      expect([f.descr, f.dtype, f.fortranOrder]).toEqual([descr, dtype, name.startsWith('fortran')]);
      expect([f.shape, f.rows, f.rowSize]).toEqual([ref.shape, ref.rows, ref.rowSize]);
      // bit for bit (signed zeros, NaN payloads of float16), whole and by rows
      expect(bits(f32 ? f.readF32() : f.readF64())).toEqual(bits(want));
      const r0 = Math.min(1, f.rows - 1),
        r1 = f.rows;
      expect(bits(f32 ? f.readF32(r0, r1) : f.readF64(r0, r1))).toEqual(
        bits(want.subarray(r0 * f.rowSize, r1 * f.rowSize)),
      );
      expect(f.readF64()).toEqual(ref.readF64());
      f.close();
    }
    ref.close();
  });

  it('reads float16 specials exactly: signed zeros, subnormals, ±65504, infinities, NaN', () => {
    const v = openNpy(`${FIX}/f2.npy`).readF32(0, 2);
    expect([...v]).toEqual([
      0,
      -0,
      2 ** -24,
      -(2 ** -24),
      2 ** -14 - 2 ** -24,
      2 ** -14,
      65504,
      -65504,
      Math.fround(0.333251953125),
      Infinity,
      -Infinity,
      NaN,
    ]);
    expect(Object.is(v[1], -0)).toBe(true);
  });

  it('readNpy reads a Fortran-ordered file in C order', () => {
    const got = readNpy(`${FIX}/fortran-4d.npy`),
      want = readNpy(`${FIX}/fortran-4d.ref.npy`);
    expect([got.shape, got.dtype]).toEqual([[3, 2, 4, 5], 'f4']);
    expect(got.data).toEqual(want.data);
  });

  it('refuses a Fortran-ordered file that does not fit the memory it may take, saying how much it needs', () => {
    // 3·2·4·5 float32 values: 480 bytes of data, read and reordered in 480 + 2·480 bytes
    const msg = new RegExp(
      'fortran-4d\\.npy: a Fortran-ordered array is read whole and reordered: that needs 0\\.0 MiB, ' +
        '0\\.0 MiB is available; free memory, or save a C-ordered copy',
    );
    expect(() => openNpy(`${FIX}/fortran-4d.npy`, { memory: 1439 })).toThrow(msg);
    expect(() => npyFromBytes(readFileSync(`${FIX}/fortran-4d.npy`), 'fortran-4d.npy', { memory: 1439 })).toThrow(msg);
    expect(openNpy(`${FIX}/fortran-4d.npy`, { memory: 1440 }).rows).toBe(3);
    // a C-ordered file is read by rows: no such limit
    expect(openNpy(`${FIX}/fortran-4d.ref.npy`, { memory: 0 }).readF32(2, 3)).toHaveLength(40);
  });
});
