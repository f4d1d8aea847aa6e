// `npm run format:check` (and .ci/run): prettier's formatting, no line over 120 columns in the code (prettier
// leaves long strings and comments alone), and no merge conflict markers in any tracked text. Generated code
// (src/onnx/gen) is exempt; prettier cannot parse AssemblyScript decorators, so assembly/ (in .prettierignore) gets
// the width check only. Width is counted in UTF-8 bytes, the strictest count a tool may use (·, ², → are one column
// but two or three bytes).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const FOLDERS = ['src', 'assembly', 'bench', 'scripts', 'test', 'models', '.ci'];
const WIDTH = 120;

// Code prettier formats; the width check also reads the page's HTML, the Python that makes models and fixtures, and CI.
const listed = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', ...FOLDERS], {
  encoding: 'utf8',
})
  .split('\n')
  .filter((f) => f && !f.startsWith('src/onnx/gen/'));
const files = listed.filter((f) => /\.(ts|mjs|js)$/.test(f));
const sources = listed.filter((f) => /\.(ts|mjs|js|py|html)$/.test(f) || f === '.ci/run');

let failed = false;
try {
  execFileSync('npx', ['prettier', '--check', '--log-level', 'warn', ...files], { stdio: 'inherit' });
} catch {
  failed = true;
  console.error('prettier: the files above are not formatted; run `npx prettier --write <file>`');
}
const long = sources.flatMap((f) =>
  readFileSync(f, 'utf8')
    .split('\n')
    .flatMap((line, i) => {
      const n = Buffer.byteLength(line);
      return n > WIDTH ? [`${f}:${i + 1}: ${n} bytes`] : [];
    }),
);
if (long.length) {
  failed = true;
  console.error(`${long.length} lines over ${WIDTH} columns (build long messages from named parts):`);
  console.error(long.join('\n'));
}
// a merge's conflict markers left in any tracked text (stop 29 committed one in README.md, which CI ran past)
const texts = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard'], { encoding: 'utf8' })
  .split('\n')
  .filter((f) => /\.(ts|mjs|js|py|html|md|json|yml|txt)$/.test(f) || f === '.ci/run');
const conflicts = texts.flatMap((f) =>
  readFileSync(f, 'utf8')
    .split('\n')
    .flatMap((line, i) => (/^(<{7}|>{7})( |$)/.test(line) ? [`${f}:${i + 1}`] : [])),
);
if (conflicts.length) {
  failed = true;
  console.error(`merge conflict markers left in: ${conflicts.join(', ')}`);
}
if (failed) process.exit(1);
console.log(`format: ${files.length} files formatted, no line over ${WIDTH} columns`);
