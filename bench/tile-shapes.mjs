// node bench/tile-shapes.mjs [samples]: the Gram register tile measured in isolation, to choose assembly/index.ts's.
// Generates the inner kernel of gramTiles for several tile shapes (rows × columns of G, packed panels of W columns),
// compiles each with asc twice (multiply + add, and relaxed SIMD's fused multiply-add), and times G += XᵀX over
// 16 blocks of 128 rows at d = 1008 (a multiple of every panel width here, so no edge tiles). Rates are per CPU second
// of this thread (process.cpuUsage), which load from other processes disturbs far less than wall time; the variants
// alternate so that what disturbance there is hits all alike.
import asc from 'assemblyscript/asc';
import { execArgv, argv } from 'node:process';
import { spawnSync } from 'node:child_process';

const samples = Number(argv[2] ?? 30);
// [rows, columns, panel width]
const shapes = [
  [4, 8, 8],
  [2, 16, 16],
  [3, 12, 12],
  [6, 8, 24],
  [4, 12, 12],
];

function source(fma) {
  let s = `
@inline function madd(a: v128, b: v128, c: v128): v128 {
  return ${fma ? 'f32x4.relaxed_madd(a, b, c)' : 'f32x4.add(c, f32x4.mul(a, b))'};
}
@inline function addLanes(dst: usize, v: v128): void {
  v128.store(dst, f64x2.add(v128.load(dst), f64x2.promote_low_f32x4(v)));
  v128.store(dst, f64x2.add(v128.load(dst, 16), f64x2.promote_low_f32x4(v128.shuffle<f32>(v, v, 2, 3, 0, 1))), 16);
}
export function pack(X: usize, ld: i32, rb: i32, d: i32, P: usize, W: i32): void {
  const step = <usize>rb * W * 4;
  for (let r = 0; r < rb; r++) {
    let dst = P + <usize>r * W * 4;
    for (let p = 0; p < d / W; p++) { memory.copy(dst, X + ((<usize>r * ld + p * W) << 2), W * 4); dst += step; }
  }
}
`;
  for (const [mr, nr, W] of shapes) {
    const nv = nr / 4,
      acc = [];
    for (let i = 0; i < mr; i++) for (let j = 0; j < nv; j++) acc.push(`c${i}${j}`);
    const loads = Array.from({ length: nv }, (_, j) => `const b${j} = v128.load(b, ${16 * j});`).join(' ');
    const body = Array.from(
      { length: mr },
      (_, i) =>
        `{ const s = v128.load32_splat(a, ${4 * i}); ` +
        Array.from({ length: nv }, (_, j) => `c${i}${j} = madd(s, b${j}, c${i}${j});`).join(' ') +
        ' }',
    ).join('\n    ');
    const stores = Array.from(
      { length: mr },
      (_, i) =>
        Array.from({ length: nv }, (_, j) => `addLanes(out + ${32 * j}, c${i}${j});`).join(' ') + ' out += row;',
    ).join('\n  ');
    s += `
function t${mr}x${nr}(a: usize, b: usize, rb: i32, out: usize, ldc: i32): void {
  let ${acc.map((c) => c + ' = f32x4.splat(0)').join(', ')};
  const end = b + <usize>rb * ${W * 4};
  while (b < end) {
    ${loads}
    ${body}
    a += ${W * 4}; b += ${W * 4};
  }
  const row = (<usize>ldc) << 3;
  ${stores}
}
export function gram${mr}x${nr}(P: usize, d: i32, rb: i32, C: usize): void {
  const panel = <usize>rb * ${W * 4};
  for (let i = 0; i < d; i += ${mr}) {
    const a = P + <usize>(i / ${W}) * panel + <usize>((i % ${W}) << 2);
    for (let j0 = (i / ${nr}) * ${nr}; j0 < d; j0 += ${nr}) {
      const b = P + <usize>(j0 / ${W}) * panel + <usize>((j0 % ${W}) << 2);
      t${mr}x${nr}(a, b, rb, C + ((<usize>i * d + j0) << 3), d);
    }
  }
}
`;
  }
  return s;
}

async function compile(fma) {
  let binary;
  const { error, stderr } = await asc.main(
    ['tiles.ts', '-O3', '--runtime', 'stub', '--importMemory', '--noAssert', '--enable', 'simd']
      .concat(fma ? ['--enable', 'relaxed-simd'] : [])
      .concat(['-o', 'tiles.wasm']),
    {
      readFile: (name) => (name === 'tiles.ts' ? source(fma) : null),
      writeFile: (name, contents) => {
        if (name.endsWith('.wasm')) binary = contents;
      },
      listFiles: () => [],
    },
  );
  if (error) throw new Error(`asc: ${error.message}\n${stderr.toString()}`);
  return binary;
}

const plain = await compile(false),
  fused = await compile(true);
// Node 20 runs relaxed SIMD only behind a flag (newer Node runs it, and refuses the flag): run again with it.
const FLAG = '--experimental-wasm-relaxed-simd';
if (!WebAssembly.validate(fused)) {
  if (execArgv.includes(FLAG)) throw new Error('this Node runs no relaxed SIMD');
  process.exit(spawnSync(process.execPath, [...execArgv, FLAG, ...argv.slice(1)], { stdio: 'inherit' }).status ?? 1);
}

const d = 1008,
  RB = 128,
  N = 16 * RB;
const memory = new WebAssembly.Memory({ initial: 400 });
const X = 1 << 16,
  P = X + N * d * 4,
  C = P + RB * d * 4;
const x = new Float32Array(memory.buffer, X, N * d);
for (let i = 0, s = 1; i < x.length; i++) {
  s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
  x[i] = s / 2 ** 32 - 0.5;
}
const builds = [
  ['multiply + add', new WebAssembly.Module(plain)],
  ['relaxed_madd', new WebAssembly.Module(fused)],
];
const rates = new Map();
for (let r = 0; r <= samples; r++) {
  for (const [name, module] of builds) {
    const k = new WebAssembly.Instance(module, { env: { memory, abort() {} } }).exports;
    for (const [mr, nr, W] of shapes) {
      const c0 = process.cpuUsage();
      for (let r0 = 0; r0 < N; r0 += RB) {
        k.pack(X + r0 * d * 4, d, RB, d, P, W);
        k[`gram${mr}x${nr}`](P, d, RB, C);
      }
      const c = process.cpuUsage(c0);
      const key = `${name}|${mr}×${nr}`;
      if (r > 0) rates.set(key, [...(rates.get(key) ?? []), (N * d * (d + 1)) / ((c.user + c.system) / 1e6) / 1e9]);
    }
  }
}
console.log(`G += XᵀX, d = ${d}, ${N} rows, GFLOP/s per CPU second, median (90th percentile) of ${samples}\n`);
console.log(`| tile | ${builds.map(([n]) => n).join(' | ')} |`);
console.log(`|---|${builds.map(() => '---:|').join('')}`);
for (const [mr, nr] of shapes) {
  const cells = builds.map(([n]) => {
    const v = rates.get(`${n}|${mr}×${nr}`).sort((a, b) => a - b);
    return `${v[v.length >> 1].toFixed(1)} (${v[Math.floor(0.9 * v.length)].toFixed(1)})`;
  });
  console.log(`| ${mr}×${nr} | ${cells.join(' | ')} |`);
}
