// Swagger UI at /docs, driven in a real browser the way a person uses it:
// open /docs, Execute without a key (401), click Authorize and paste the key,
// then "Try it out" → "Execute" on `GET /v1/jobs` (200) and
// `POST /v1/jobs/chat` (202).
//
// It builds nothing: it runs the already-built binary named by ORCH_BIN
// (default ../../target/debug/orch from this file) with `orch serve` in a fresh
// temporary directory, and drives Debian's chromium (CHROMIUM, default
// /usr/bin/chromium) through playwright-core. Run it with `npm test` here, or
// `bash scripts/test` for the whole suite.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ORCH_BIN = path.resolve(process.env.ORCH_BIN || path.join(HERE, '../../target/debug/orch'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = '/tmp/swagger-authorized.png';
// Without the background-networking flags Chromium hangs on a closed network.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const UI_TIMEOUT = 15_000;

/** A port that was free a moment ago on 127.0.0.1. */
function freePort() {
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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Rejects after `ms` without keeping the process alive. */
const deadline = (ms, why) => new Promise((_, reject) => setTimeout(() => reject(why()), ms).unref());

/**
 * Starts `orch serve` in a fresh directory. Resolves once the admin key was
 * printed and GET /health answers 200.
 */
async function startOrch() {
  if (!existsSync(ORCH_BIN)) {
    throw new Error(`${ORCH_BIN} does not exist; build it first (cargo build --bin orch) or set ORCH_BIN`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'orch-swagger-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  // Inherited ORCH_* settings (a Redis store, another bind, …) must not leak in.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ORCH_')));
  env.ORCH_BIND = `127.0.0.1:${port}`;
  env.ORCH_LOG_FORMAT = 'text';
  env.NO_COLOR = '1';

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
async function stopOrch(orch) {
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

/** The expanded-or-not operation block of `method path`. */
function opblock(page, method, apiPath) {
  return page
    .locator(`.opblock.opblock-${method}`)
    .filter({ has: page.locator(`.opblock-summary-path[data-path="${apiPath}"]`) });
}

/** Expands the operation (if needed) and switches it to "Try it out" (if needed). */
async function tryItOut(page, method, apiPath) {
  const op = opblock(page, method, apiPath);
  assert.equal(await op.count(), 1, `exactly one opblock for ${method.toUpperCase()} ${apiPath}`);
  if (!(await op.evaluate((el) => el.classList.contains('is-open')))) {
    await op.locator('.opblock-summary').first().click();
  }
  const execute = op.locator('button.execute');
  if (!(await execute.isVisible())) {
    await op.locator('button.try-out__btn').click();
  }
  await execute.waitFor({ state: 'visible', timeout: UI_TIMEOUT });
  return op;
}

/**
 * Clicks Execute and waits for both the HTTP exchange and Swagger UI showing
 * its status in the live response table. Returns { request, status, body }.
 */
async function execute(page, op, method, apiPath) {
  const live = op.locator('.responses-wrapper .live-responses-table');
  // A response from an earlier Execute is cleared first, as a person would,
  // so what we read below can only be the new one.
  const clear = op.locator('button.btn-clear');
  if (await clear.isVisible()) {
    await clear.click();
    await live.waitFor({ state: 'detached' });
  }
  const exchange = page.waitForResponse(
    (res) => res.request().method() === method.toUpperCase() && new URL(res.url()).pathname === apiPath,
  );
  await op.locator('button.execute').click();
  const response = await exchange;
  const cell = live.locator('tbody tr.response .response-col_status');
  await cell.filter({ hasText: new RegExp(`^\\s*${response.status()}\\b`) }).waitFor();
  const status = Number.parseInt((await cell.textContent()).trim(), 10);
  const body = await live.locator('tbody tr.response .response-col_description').innerText();
  return { request: response.request(), status, body };
}

describe('Swagger UI at /docs with the bearer scheme', { timeout: 180_000 }, () => {
  let orch;
  let context;
  let page;
  let userDataDir;
  const pageErrors = [];

  before(async () => {
    orch = await startOrch();
    userDataDir = mkdtempSync(path.join(tmpdir(), 'orch-chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 1000 },
      timeout: 60_000,
    });
    context.setDefaultTimeout(UI_TIMEOUT);
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    // A person types /docs; the server redirects to /docs/.
    const res = await page.goto(`${orch.base}/docs`);
    assert.equal(res.status(), 200, 'GET /docs (after redirects) answers 200');
    await opblock(page, 'get', '/v1/jobs').waitFor({ timeout: UI_TIMEOUT });
  });

  after(async () => {
    try {
      await context?.close();
    } finally {
      if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
      await stopOrch(orch);
    }
  });

  test('the page loads the document without script errors', async () => {
    assert.match(await page.locator('.info .title').innerText(), /Orch/);
    assert.equal(await page.locator('button.authorize').first().isVisible(), true);
    assert.deepEqual(pageErrors, []);
  });

  test('Execute before Authorize shows 401', async () => {
    const op = await tryItOut(page, 'get', '/v1/jobs');
    const { request, status, body } = await execute(page, op, 'get', '/v1/jobs');
    assert.equal(request.headers().authorization, undefined, 'no Authorization header before Authorize');
    assert.equal(status, 401);
    assert.match(body, /"error"/, 'the body is the error shape');
  });

  test('Authorize with the API key', async () => {
    await page.locator('.scheme-container button.authorize').click();
    const modal = page.locator('.modal-ux');
    await modal.waitFor({ state: 'visible' });
    await modal.locator('input').fill(orch.key);
    await modal.locator('.auth-btn-wrapper button.authorize').click();
    // Authorized: the modal says so and offers Logout instead of the input.
    await modal.locator('.auth-container h6', { hasText: 'Authorized' }).waitFor();
    await modal.locator('.auth-btn-wrapper button', { hasText: 'Logout' }).waitFor();
    assert.equal(await modal.locator('input').count(), 0, 'the key input is gone');
    await modal.locator('button.btn-done').click();
    await modal.waitFor({ state: 'detached' });
    assert.match(await page.locator('.scheme-container button.authorize').getAttribute('class'), /\blocked\b/);
  });

  test('GET /v1/jobs → Try it out → Execute shows 200', async () => {
    const op = await tryItOut(page, 'get', '/v1/jobs');
    const { request, status, body } = await execute(page, op, 'get', '/v1/jobs');
    assert.equal(request.headers().authorization, `Bearer ${orch.key}`);
    assert.equal(status, 200);
    assert.match(body, /"jobs"/);
    await op.locator('.responses-wrapper .live-responses-table').scrollIntoViewIfNeeded();
    await page.screenshot({ path: SCREENSHOT });
  });

  test('POST /v1/jobs/chat → Try it out → Execute shows 202', async () => {
    const op = await tryItOut(page, 'post', '/v1/jobs/chat');
    // The body editor is pre-filled from the schema's example.
    const example = await op.locator('textarea.body-param__text').inputValue();
    assert.match(example, /"messages"/);
    const { request, status, body } = await execute(page, op, 'post', '/v1/jobs/chat');
    assert.equal(request.headers().authorization, `Bearer ${orch.key}`);
    assert.equal(status, 202);
    assert.match(body, /"status": "queued"/);
    // Absolute, from the request's Host, so n8n can follow it.
    assert.match(body, /"status_url": "http:\/\/127\.0\.0\.1:\d+\/v1\/jobs\//);
  });

  test('the chat job is then listed by GET /v1/jobs', async () => {
    const op = await tryItOut(page, 'get', '/v1/jobs');
    const { status, body } = await execute(page, op, 'get', '/v1/jobs');
    assert.equal(status, 200);
    assert.match(body, /"kind": "chat"/);
    assert.deepEqual(pageErrors, []);
  });
});
