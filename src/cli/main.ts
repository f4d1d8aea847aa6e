import { SubpruneError } from '../errors.js';
import { removeTempFiles } from '../atomic.js';
import { endProgressLine } from './progress.js';
import { runSelect, selectHelp } from './select.js';
import { runPrune, pruneHelp } from './prune.js';
import { runCapture, captureHelp } from './capture.js';
import { runInspect, inspectHelp } from './inspect.js';
import { runEval, evalHelp } from './eval.js';
import { runStudyCommand, studyHelp } from './study.js';

// Exit codes: 0 done, 2 bad input (the message says what to fix), 1 internal error (a bug: please report).
const EXIT_BAD_INPUT = 2,
  EXIT_INTERNAL = 1;

const commands: Record<string, { run: (argv: string[]) => void | Promise<void>; help: string; summary: string }> = {
  prune: {
    run: runPrune,
    help: pruneHelp,
    summary: 'remove channels from an ONNX model using unlabeled calibration data',
  },
  capture: {
    run: runCapture,
    help: captureHelp,
    summary: "capture one part of the calibration data's statistics, to prune from several (--stats)",
  },
  inspect: {
    run: runInspect,
    help: inspectHelp,
    summary: 'list the prunable groups of a model and the candidates refused',
  },
  eval: { run: runEval, help: evalHelp, summary: 'accuracy of a model and its agreement with a reference model' },
  select: { run: runSelect, help: selectHelp, summary: 'greedy channel selection for one layer given as .npy files' },
  study: {
    run: runStudyCommand,
    help: studyHelp,
    summary: 'accuracy against compression for every method, as in the paper (table, JSON, SVG)',
  },
};

const usage = `subprune: structured pruning of ONNX models with a few hundred unlabeled samples
(El Halabi, Srinivas, Lacoste-Julien, "Data-Efficient Structured Pruning via Submodular Optimization", NeurIPS 2022)

Usage: subprune <command> [options]      subprune <command> --help for its options

Commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

Global options:
  --debug    show the stack trace of an error
  -h, --help this help`;

/**
 * node:util's parse error in the CLI's words: an unknown option names the flags of the command's help that begin with
 * the same letters ('-c' → --calib, --compression), instead of node's advice on positionals starting with '-'.
 */
export function parseError(message: string, help: string): string {
  const unknown = /^Unknown option '(-{1,2})([^'=]+)/.exec(message);
  if (!unknown) return message;
  const given = unknown[2]!,
    flags = [...new Set(help.match(/--[a-z][a-z0-9-]*/g) ?? [])];
  // the longest prefix (up to 3 letters) that some flag shares: '--jsn' → --json, '--labl' → --labels
  const near = [3, 2, 1]
    .map((n) => flags.filter((f) => f.slice(2).startsWith(given.slice(0, n))))
    .find((fs) => fs.length > 0);
  const hint = near && near.length <= 4 ? `; did you mean ${near.join(', ')}?` : '';
  return `unknown option ${unknown[1]}${given}${hint}`;
}

/** Runs one command; returns the exit code (the CLI entry, `cli`, sets it; tests call this directly). */
export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  const args = argv.filter((a) => a !== '--debug');
  const [name, ...rest] = args;
  if (!name || name === '-h' || name === '--help' || name === 'help') {
    const c = commands[rest[0]];
    console.log(c ? c.help : usage);
    return 0;
  }
  const cmd = commands[name];
  if (!cmd) {
    console.error(
      `subprune: unknown command '${name}'; commands: ${Object.keys(commands).join(', ')} (subprune --help)`,
    );
    return EXIT_BAD_INPUT;
  }
  try {
    await cmd.run(rest);
    return 0;
  } catch (e) {
    const err = e as Error & { code?: string };
    endProgressLine();
    if (debug) console.error(err.stack ?? err);
    if (e instanceof SubpruneError) {
      if (!debug) console.error(`subprune ${name}: ${e.message}`);
      return e.code === 'bad-input' ? EXIT_BAD_INPUT : EXIT_INTERNAL;
    }
    if (err.code?.startsWith?.('ERR_PARSE_ARGS')) {
      console.error(`subprune ${name}: ${parseError(err.message, cmd.help)} (subprune ${name} --help)`);
      return EXIT_BAD_INPUT;
    }
    if (!debug)
      console.error(
        `subprune ${name}: internal error: ${err.message} (run with --debug for the stack trace and please report it)`,
      );
    return EXIT_INTERNAL;
  }
}

/**
 * The process entry (bin/subprune.js). Ctrl-C or SIGTERM removes the temporary files of writes in progress and exits
 * 130 or 143; output only ever appears by rename after verification, so an interrupted run leaves no partial file.
 * Errors that escape main (a crashed worker thread) still end as one line and exit code 1.
 */
export async function cli(argv = process.argv.slice(2)): Promise<void> {
  const stop = (signal: string, code: number) => () => {
    removeTempFiles();
    endProgressLine();
    console.error(`subprune: interrupted (${signal}); no partial output was left`);
    process.exit(code);
  };
  process.once('SIGINT', stop('SIGINT', 130));
  process.once('SIGTERM', stop('SIGTERM', 143));
  const crash = (e: unknown) => {
    removeTempFiles();
    console.error(
      argv.includes('--debug')
        ? ((e as Error)?.stack ?? e)
        : `subprune: internal error: ${(e as Error)?.message ?? e} (run with --debug for the stack trace and ` +
            'please report it)',
    );
    process.exit(EXIT_INTERNAL);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
  process.exitCode = await main(argv);
}
