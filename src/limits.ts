// What subprune refuses up front rather than guess or crash on: operator sets it does not know, ops of other domains,
// constants it cannot rewrite, and layers or captures too big for the kernels' memory.
import { badInput } from './errors.js';
import { DataType, dataTypeName, opsetVersion, type Model, type NodeProto, type TensorProto } from './onnx/index.js';
import { gramBytes } from './kernels/gram.js';
import { fmtBytes } from './kernels/memory.js';
import { selectionBytes } from './select/greedy.js';
import type { NpyFile } from './npy.js';

/**
 * ai.onnx opsets subprune accepts: onnxruntime 1.30 guarantees opset 7 and later and loads up to 26 (test/limits.test.ts
 * checks both ends against onnxruntime). The op table's rules follow the semantics of every opset in this range.
 */
export const OPSETS = { min: 7, max: 26 } as const;

export function checkOpset(model: Model): void {
  const v = opsetVersion(model);
  if (v === undefined)
    throw badInput('the model imports no ai.onnx operator set (opset_import); it is not a model subprune can read.');
  if (v < OPSETS.min || v > OPSETS.max) {
    throw badInput(
      `the model uses ai.onnx opset ${v}; subprune supports opsets ${OPSETS.min} to ${OPSETS.max}. Re-export the model with an opset in that range (e.g. torch.onnx.export(..., opset_version=17)).`,
    );
  }
}

/** The op name the op table knows a node by: ops of other domains (custom or vendor ops) never match a rule. */
export function opOf(n: NodeProto): string {
  return n.domain === '' || n.domain === 'ai.onnx' ? n.opType : `${n.domain}::${n.opType}`;
}

const FLOATS = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE]);

/** Why a constant cannot be sliced or replaced by the rewrite (it reads and writes FLOAT, FLOAT16 and DOUBLE only). */
export function notRewritable(t: TensorProto): string | undefined {
  return FLOATS.has(t.dataType)
    ? undefined
    : `constant "${t.name}" has data type ${dataTypeName(t.dataType)}; subprune rewrites FLOAT, FLOAT16 and DOUBLE constants only`;
}

/** WebAssembly's 4 GiB, less room for the kernels' other buffers (as selectChannels counts). */
export const KERNEL_BYTES = 2 ** 32 - (64 << 20);

/** Why a unit cannot be selected at all: its Gram matrix or a one-channel selection does not fit the kernels' memory. */
export function tooBig(u: { d: number; m: number; g: number }): string | undefined {
  const need = Math.max(gramBytes(u.d), selectionBytes(u.d, u.m, u.g, 1));
  if (need <= KERNEL_BYTES) return undefined;
  return `its consumer input has d = ${u.d} columns: the ${u.d}×${u.d} Gram matrix and the selection need ${fmtBytes(need)} of kernel memory, more than WebAssembly's 4 GiB`;
}

/** Memory the process may still use, where the platform says (Node: MemAvailable on Linux); Infinity elsewhere. */
function available(): number {
  const os = globalThis.process?.getBuiltinModule?.('node:os') as typeof import('node:os') | undefined;
  return os?.freemem?.() ?? Infinity;
}

/**
 * Splits units into capture passes (forward passes over the calibration set) whose Gram matrices fit the kernels'
 * memory together: one pass unless they do not. Checked before any allocation: every unit must fit alone, and all
 * the Gram matrices together fit the host memory available (they are copied out after each pass and kept).
 */
export function capturePasses<U extends { id: string; d: number }>(
  units: readonly U[],
  asymmetric: boolean,
  passBytes = KERNEL_BYTES,
): U[][] {
  const passes: U[][] = [];
  let cur: U[] = [],
    used = 0,
    total = 0;
  for (const u of units) {
    const need = gramBytes(u.d, asymmetric);
    if (need > KERNEL_BYTES)
      throw badInput(
        `capturing unit ${u.id} needs ${fmtBytes(need)} of kernel memory for its Gram matrices (d = ${u.d}); WebAssembly allows 4 GiB`,
      );
    if (cur.length && used + need > passBytes) {
      passes.push(cur);
      cur = [];
      used = 0;
    }
    cur.push(u);
    used += need;
    total += need;
  }
  if (cur.length) passes.push(cur);
  // the kept Gram matrices on the host, plus one pass's worth in kernel memory
  const needed = total + Math.min(total, KERNEL_BYTES),
    free = available();
  if (needed > free) {
    const big = [...units]
      .sort((a, b) => b.d - a.d)
      .slice(0, 3)
      .map((u) => `${u.id} (d = ${u.d})`)
      .join(', ');
    throw badInput(
      `capturing ${units.length} unit${units.length > 1 ? 's' : ''} needs ${fmtBytes(needed)} of memory (largest: ${big}), ${fmtBytes(free)} is available${units.length > 1 ? '; --mode sequential captures one unit at a time' : ''}`,
    );
  }
  return passes;
}

/**
 * The least-squares re-fit of a unit needs at least as many rows of its consumer input as columns (d): with fewer, any
 * of infinitely many weights fit the calibration data exactly, and the one the factorisation picks can be wildly off on
 * other data (LeNet re-fitted from 128 samples, every channel kept: relative output error 346 on the test set).
 * Repeated samples add no rows, so rows count in proportion to the distinct samples.
 */
export function checkRefitRows(
  unit: { id: string; d: number },
  rows: number,
  samples: number,
  distinct = samples,
): void {
  const effective = Math.floor((rows * distinct) / samples);
  if (effective >= unit.d) return;
  const need = Math.ceil((unit.d * samples) / Math.max(rows, 1));
  const given =
    distinct < samples ? `${samples} calibration samples (${distinct} distinct)` : `${samples} calibration samples`;
  throw badInput(
    `unit ${unit.id}: the ${given} give ${effective} rows of its consumer input, fewer than its d = ${unit.d} columns, so the least-squares re-fit is underdetermined (it would fit these samples and fail on others); give at least ${need} distinct samples, or use --no-refit`,
  );
}

/** How many different samples the data holds (exact repeats count once), by two 32-bit hashes of each sample. */
export function distinctSamples(data: NpyFile, batch = 256): number {
  const seen = new Set<string>();
  for (let r0 = 0; r0 < data.rows; r0 += batch) {
    const x = data.readF32(r0, Math.min(data.rows, r0 + batch)),
      bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
    for (let o = 0; o < bits.length; o += data.rowSize) {
      let h1 = 0x811c9dc5,
        h2 = 0x9747b28c;
      for (let i = o; i < o + data.rowSize; i++) {
        h1 = Math.imul(h1 ^ bits[i]!, 0x01000193);
        h2 = Math.imul(h2 ^ bits[i]!, 0x5bd1e995) ^ (h2 >>> 15);
      }
      seen.add(`${h1 >>> 0}:${h2 >>> 0}`);
    }
  }
  return seen.size;
}
