/**
 * The one error type subprune throws on purpose.
 * - 'bad-input': something is wrong with what the user gave us (file, model, data, flags);
 *   the message says what is wrong and what to do about it.
 * - 'internal': a bug in subprune (an invariant broke); worth a report.
 * The CLI maps the code to an exit status; anything that is not a SubpruneError is a bug too.
 */
export type ErrorCode = 'bad-input' | 'internal';

export class SubpruneError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SubpruneError';
    this.code = code;
  }
}

/** Shorthand for the common case. */
export function badInput(message: string, cause?: unknown): SubpruneError {
  return new SubpruneError('bad-input', message, cause === undefined ? undefined : { cause });
}

/** A broken invariant: a bug in subprune, not in the user's input. */
export function internal(message: string, cause?: unknown): SubpruneError {
  return new SubpruneError('internal', message, cause === undefined ? undefined : { cause });
}
