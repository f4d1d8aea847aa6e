// Atomic file writes: a temporary file in the target's folder (same filesystem, so the rename is atomic), flushed,
// then renamed over the target. Readers never see half a file, and a failed or interrupted write leaves none behind:
// the temporary files in flight are tracked so that the CLI's signal handler can remove them (removeTempFiles).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { badInput } from './errors.js';

const inFlight = new Set<string>();

export function writeFileAtomic(file: string, bytes: Uint8Array): void {
  const tmp = path.join(
    path.dirname(file),
    `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`,
  );
  inFlight.add(tmp);
  try {
    const fd = fs.openSync(tmp, 'wx');
    try {
      fs.writeFileSync(fd, bytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw badInput(`cannot write ${file}: ${(e as Error).message}; check that its folder exists and is writable`, e);
  } finally {
    inFlight.delete(tmp);
  }
}

/** Registers a temporary file or folder (removed with everything in it) for removeTempFiles until untracked. */
export function trackTemp(tmp: string): void {
  inFlight.add(tmp);
}
export function untrackTemp(tmp: string): void {
  inFlight.delete(tmp);
}

/** Removes the temporary files and folders of writes still in progress (for an interrupted process about to exit). */
export function removeTempFiles(): void {
  for (const tmp of inFlight) fs.rmSync(tmp, { force: true, recursive: true });
  inFlight.clear();
}

/**
 * Fails early, before any work, if `file` cannot be written: its folder must exist and accept a new file (checked by
 * creating and removing a probe file, which also catches read-only mounts that access() does not).
 */
export function checkWritable(file: string): void {
  const dir = path.dirname(path.resolve(file));
  const probe = path.join(dir, `.subprune-probe.${process.pid}.${randomBytes(4).toString('hex')}`);
  try {
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) throw new Error('it is a folder');
    fs.closeSync(fs.openSync(probe, 'wx'));
    fs.rmSync(probe);
  } catch (e) {
    throw badInput(`cannot write ${file}: ${(e as Error).message}; check that its folder exists and is writable`, e);
  }
}
