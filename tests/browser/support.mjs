// What the browser tests share: starting the already-built `orch serve` in a
// fresh temporary directory (ORCH_BIN, default ../../target/debug/orch from
// this file) and Debian's chromium (CHROMIUM, default /usr/bin/chromium)
// driven by playwright-core.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ORCH_BIN = path.resolve(process.env.ORCH_BIN || path.join(HERE, '../../target/debug/orch'));
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Without the background-networking flags Chromium hangs on a closed network.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
export const UI_TIMEOUT = 15_000;

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Rejects after `ms` without keeping the process alive. */
const deadline = (ms, why) => new Promise((_, reject) => setTimeout(() => reject(why()), ms).unref());

/**
 * Starts `orch serve` in a fresh directory holding `files` ({name: text}),
 * with `env` added to the environment. Resolves once the admin key was
 * printed and GET /health answers 200.
 */
export async function startOrch({ env: extra = {}, files = {} } = {}) {
  if (!existsSync(ORCH_BIN)) {
    throw new Error(`${ORCH_BIN} does not exist; build it first (cargo build --bin orch) or set ORCH_BIN`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'orch-browser-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  // Inherited ORCH_* settings (a Redis store, another bind, …) must not leak in.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ORCH_')));
  env.ORCH_BIND = `127.0.0.1:${port}`;
  env.ORCH_LOG_FORMAT = 'text';
  env.NO_COLOR = '1';
  Object.assign(env, extra);

  const child = spawn(ORCH_BIN, ['serve'], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  // Last resort if this process dies without running the `after` hook.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.once('exit', () => process.removeListener('exit', killOnExit));
  const orch = { child, dir, base, key: null, output: '', exited: null };
  const remember = (text) => {
    orch.output += text;
    if (orch.output.length > 64_000) orch.output = orch.output.slice(-64_000);
  };
  // Keep reading both pipes to the end so orch never writes into a closed or full pipe.
  child.stderr.setEncoding('utf8').on('data', remember);
  const gotKey = new Promise((resolve) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      remember(`${line}\n`);
      if (orch.key === null && line.trim().startsWith('orch_')) {
        orch.key = line.trim();
        resolve();
      }
    });
  });
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      orch.exited = { code, signal };
      resolve();
    });
  });
  const fail = (why) => new Error(`${why}\n--- orch output ---\n${orch.output}`);

  try {
    await Promise.race([
      gotKey,
      exited.then(() => { throw fail(`orch exited (${JSON.stringify(orch.exited)}) before printing a key`); }),
      deadline(30_000, () => fail('orch printed no admin key within 30 s')),
    ]);
    const healthBy = Date.now() + 30_000;
    for (;;) {
      if (orch.exited) throw fail(`orch exited (${JSON.stringify(orch.exited)}) before /health answered`);
      try {
        const res = await fetch(`${base}/health`, { signal: AbortSignal.timeout(2_000) });
        if (res.status === 200) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > healthBy) throw fail(`GET ${base}/health did not answer 200 within 30 s`);
      await sleep(100);
    }
  } catch (err) {
    await stopOrch(orch);
    throw err;
  }
  return orch;
}

/** SIGTERM, then SIGKILL after 10 s; removes the directory. */
export async function stopOrch(orch) {
  if (!orch) return;
  const { child } = orch;
  if (orch.exited === null && child.exitCode === null && child.signalCode === null) {
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await gone;
    clearTimeout(timer);
  }
  rmSync(orch.dir, { recursive: true, force: true });
}

/** Chromium with a fresh profile; `close()` also removes the profile. */
export async function launchBrowser({ viewport = { width: 1280, height: 1000 } } = {}) {
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'orch-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
    timeout: 60_000,
  });
  context.setDefaultTimeout(UI_TIMEOUT);
  const page = context.pages()[0] ?? (await context.newPage());
  return {
    context,
    page,
    async close() {
      try {
        await context.close();
      } finally {
        rmSync(userDataDir, { recursive: true, force: true });
      }
    },
  };
}
