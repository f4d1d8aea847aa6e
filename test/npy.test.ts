import { describe, it, expect } from 'vitest';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNpy, npyFromBytes, encodeNpy, type NpyFile } from '../src/npy.js';

// The file reader (openNpy) and the in-memory reader (npyFromBytes, the browser's) share the header parsing; both
// are checked against the data bytes of files written by numpy (the bundled models/*.npy).

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
      [Buffer.from(good.toString('latin1').replace('<f4', '>f4'), 'latin1'), /big-endian/],
      [
        Buffer.from(good.toString('latin1').replace("'fortran_order': False", "'fortran_order': True "), 'latin1'),
        /Fortran/,
      ],
    ];
    for (const [bytes, msg] of cases) {
      const path = join(dir, 'broken.npy');
      writeFileSync(path, bytes);
      expect(() => openNpy(path)).toThrow(msg);
      expect(() => npyFromBytes(bytes, path)).toThrow(msg);
    }
  });
});
