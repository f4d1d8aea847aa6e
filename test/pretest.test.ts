import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
// @ts-expect-error: a plain .mjs script, no types
import { chromiumPlan, CHROMIUM } from '../scripts/pretest.mjs';

// `npm test` runs scripts/pretest.mjs first: it installs Debian's chromium for the browser test when it is missing
// and it runs as root, and otherwise stops the tests with the one command to run. Every branch, with paths that do
// and do not exist and a root and a non-root uid.

const missing = '/nonexistent/chromium',
  present = process.execPath; // any file that exists

describe('pretest: the browser the tests need', () => {
  it('does nothing when chromium is there', () => {
    expect(chromiumPlan({ chromium: present, uid: 1000 })).toEqual({ action: 'ready' });
  });

  it('installs it as root with apt-get', () => {
    expect(chromiumPlan({ chromium: missing, aptGet: present, uid: 0 })).toEqual({ action: 'install' });
  });

  it('tells a non-root user the exact command', () => {
    expect(chromiumPlan({ chromium: missing, aptGet: present, uid: 1000 })).toEqual({
      action: 'refuse',
      message:
        "/nonexistent/chromium is missing: the browser test (test/web-page.test.ts) needs Debian's chromium; " +
        'install it with: sudo apt-get update && sudo apt-get install -y chromium',
    });
  });

  it('tells a machine without apt-get where the browser must be', () => {
    const plan = chromiumPlan({ chromium: missing, aptGet: '/nonexistent/apt-get', uid: 0 });
    expect(plan.action).toBe('refuse');
    expect(plan.message).toMatch(/no apt-get: install Chromium as \/nonexistent\/chromium, then re-run npm test/);
  });

  it('is the browser the test drives, and passes here', () => {
    expect(CHROMIUM).toBe('/usr/bin/chromium');
    // the script itself, as npm runs it: the browser was provided, so it exits 0 (execFileSync throws otherwise)
    execFileSync(process.execPath, ['scripts/pretest.mjs'], { stdio: 'pipe' });
  });
});
