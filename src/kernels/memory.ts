// Allocation inside the kernels' linear memory. Kernels take byte offsets; the host views them with typed arrays.
// A stack allocator is enough: a selection allocates its arrays, runs, copies results out and releases them.

const PAGE = 65536;
const MAX_PAGES = 65536; // 4 GiB, wasm32's limit
/** Where allocations start: offset 0 stays null, and below this sits the thread pool's control block (pool.ts). */
export const ARENA_START = 2048;

/** The kernel memory a run may plan for: WebAssembly's 4 GiB, less room for the kernels' other buffers. */
export const KERNEL_BYTES = 2 ** 32 - (64 << 20);

/** KERNEL_BYTES as a refusal names it: a need of 3.99 GiB is too much, which "more than 4 GiB" would contradict. */
export const KERNEL_LIMIT = `the ${fmtBytes(KERNEL_BYTES)} of WebAssembly's 4 GiB the kernels may plan for`;

/** Memory the process may still use, where the platform says (Node: MemAvailable on Linux); Infinity elsewhere. */
export function availableMemory(): number {
  const os = globalThis.process?.getBuiltinModule?.('node:os') as typeof import('node:os') | undefined;
  return os?.freemem?.() ?? Infinity;
}

/** n rounded up to a multiple of 16, for any offset below 4 GiB (bitwise ops would wrap past 2 GiB). */
export const align16 = (n: number) => Math.ceil(n / 16) * 16;

export class Arena {
  readonly memory: WebAssembly.Memory;
  private top = ARENA_START;

  /**
   * memory: where to allocate (default: a fresh unshared memory); zero(ptr, bytes): how to clear a new allocation
   * (the wasm kernels' memory.fill: a typed array's fill writes shared memory byte by byte, 35× slower).
   */
  constructor(
    memory?: WebAssembly.Memory,
    private readonly zero = (ptr: number, bytes: number): void => {
      new Uint8Array(this.memory.buffer, ptr, bytes).fill(0);
    },
  ) {
    this.memory = memory ?? new WebAssembly.Memory({ initial: 16, maximum: MAX_PAGES });
  }

  /** Reserves `bytes` (16-byte aligned, zero-filled) and returns the offset; grows the memory when needed. */
  alloc(bytes: number): number {
    const ptr = align16(this.top);
    const end = ptr + bytes;
    if (end > MAX_PAGES * PAGE) {
      throw new RangeError(`kernel memory: ${fmtBytes(end)} needed, WebAssembly allows at most 4 GiB`);
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE));
    this.zero(ptr, bytes);
    this.top = end;
    return ptr;
  }

  f64(ptr: number, length: number): Float64Array {
    return new Float64Array(this.memory.buffer, ptr, length);
  }
  f32(ptr: number, length: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, length);
  }
  i32(ptr: number, length: number): Int32Array {
    return new Int32Array(this.memory.buffer, ptr, length);
  }

  /** Everything allocated after `mark()` is freed by `release(mark)`. */
  mark(): number {
    return this.top;
  }
  release(mark: number): void {
    this.top = mark;
  }
}

export function fmtBytes(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}
