// Swagger UI at /docs, driven in a real browser the way a person uses it:
// open /docs, Execute without a key (401), click Authorize and paste the key,
// then "Try it out" → "Execute" on `GET /v1/jobs` (200) and
// `POST /v1/jobs/chat` (202).
//
// It builds nothing: it runs the already-built binary with `orch serve` in a
// fresh temporary directory and drives Debian's chromium (support.mjs). Run
// it with `npm test` here, or `bash scripts/test` for the whole suite.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { UI_TIMEOUT, launchBrowser, startOrch, stopOrch } from './support.mjs';

const SCREENSHOT = '/tmp/swagger-authorized.png';

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
  let browser;
  let page;
  const pageErrors = [];

  before(async () => {
    orch = await startOrch();
    browser = await launchBrowser();
    page = browser.page;
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    // A person types /docs; the server redirects to /docs/.
    const res = await page.goto(`${orch.base}/docs`);
    assert.equal(res.status(), 200, 'GET /docs (after redirects) answers 200');
    await opblock(page, 'get', '/v1/jobs').waitFor({ timeout: UI_TIMEOUT });
  });

  after(async () => {
    try {
      await browser?.close();
    } finally {
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
