// Runs before `npm test` (the `pretest` script): provides what the tests need beyond node_modules. Today that is
// Debian's chromium for the browser test (test/web-page.test.ts, which drives /usr/bin/chromium with playwright-core;
// playwright's own browser download cannot work offline). Missing and run as root with apt-get: installed here.
// Otherwise the tests do not start, and the message names the one command to run: the browser test is never skipped.
// Usage: node scripts/pretest.mjs
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

export const CHROMIUM = '/usr/bin/chromium';
export const APT_GET = '/usr/bin/apt-get';

/**
 * What to do about the browser: 'ready' (it is there), 'install' (root with apt-get: install it) or 'refuse' with the
 * one-line message for the user. `uid` is process.getuid(); the paths are parameters so that every branch is testable.
 */
export function chromiumPlan({ chromium = CHROMIUM, aptGet = APT_GET, uid = process.getuid?.() ?? -1 } = {}) {
  if (existsSync(chromium)) return { action: 'ready' };
  const why = `${chromium} is missing: the browser test (test/web-page.test.ts) needs Debian's chromium`;
  if (!existsSync(aptGet))
    return {
      action: 'refuse',
      message: `${why}; this machine has no apt-get: install Chromium as ${chromium}, then re-run npm test`,
    };
  if (uid !== 0)
    return {
      action: 'refuse',
      message: `${why}; install it with: sudo apt-get update && sudo apt-get install -y chromium`,
    };
  return { action: 'install' };
}

const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
// Another apt (unattended upgrades, a second install) may hold the lock for a while: wait for it, do not fail.
const LOCK = ['-o', 'DPkg::Lock::Timeout=600'];

function apt(aptGet, args) {
  console.error(`pretest: ${aptGet} ${args.join(' ')}`);
  return spawnSync(aptGet, [...LOCK, ...args], { stdio: ['ignore', 'inherit', 'inherit'], env: APT_ENV }).status;
}

/** Whether apt knows a version of chromium to install (it does not before the first `apt-get update`). */
function aptKnowsChromium() {
  const r = spawnSync('apt-cache', ['policy', 'chromium'], { encoding: 'utf8', env: APT_ENV });
  return r.status === 0 && /Candidate: (?!\(none\))\S/.test(r.stdout);
}

/** Installs chromium with apt-get, updating the package lists first when apt does not know it or they are stale. */
export function installChromium({ chromium = CHROMIUM, aptGet = APT_GET } = {}) {
  console.error(`pretest: ${chromium} is missing; installing Debian's chromium for the browser test (as root)`);
  let updated = false;
  if (!aptKnowsChromium()) {
    if (apt(aptGet, ['update']) !== 0) return false;
    updated = true;
  }
  let status = apt(aptGet, ['install', '-y', 'chromium']);
  // stale lists name files the mirror no longer has: refresh them once and try again
  if (status !== 0 && !updated && apt(aptGet, ['update']) === 0) status = apt(aptGet, ['install', '-y', 'chromium']);
  return status === 0 && existsSync(chromium);
}

function main() {
  const plan = chromiumPlan();
  if (plan.action === 'ready') return 0;
  if (plan.action === 'refuse') {
    console.error(`pretest: ${plan.message}`);
    return 1;
  }
  if (installChromium()) {
    console.error(`pretest: installed ${CHROMIUM}`);
    return 0;
  }
  console.error(
    'pretest: could not install chromium with apt-get (output above); fix that, then run: ' +
      'apt-get update && apt-get install -y chromium',
  );
  return 1;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) process.exitCode = main();
