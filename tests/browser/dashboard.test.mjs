// The dashboard at /ui, driven in a real browser the way a person uses it:
// sign in with the admin key, preview and run a batch plan from the
// playground, watch it finish in the live DAG, open a node's output,
// redeliver its webhook, test an MCP server, create a read-only key and see
// that it gets no action buttons. A screenshot of each main view is saved
// under target/ui-screenshots/ for a reviewer.
//
// It builds nothing: it runs the already-built binary (ORCH_BIN) and the
// orch-mcp test server beside it (scripts/test builds both), with Debian's
// chromium (support.mjs).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { HERE, ORCH_BIN, UI_TIMEOUT, launchBrowser, startOrch, stopOrch } from './support.mjs';

const SHOTS = path.resolve(HERE, '../../target/ui-screenshots');
const TEST_SERVER = process.env.ORCH_MCP_TEST_SERVER || path.join(path.dirname(ORCH_BIN), 'orch-mcp-test-server');

const PLAN = {
  nodes: [
    { id: 'fetch', tool: 'test.echo', args: { message: 'hello from the dashboard' } },
    { id: 'wait', sleep: { ms: 1500 } },
    { id: 'title', echo: { title: 'Weekly report' } },
    { id: 'draft', value: { title: '${nodes.title.output.title}', fetched: '${nodes.fetch.output}' }, depends_on: ['wait'] },
    { id: 'publish', echo: 'published', depends_on: ['draft'] },
  ],
};

/** A webhook receiver on loopback that answers 200 and counts what it got. */
async function startReceiver() {
  const got = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      got.push({ path: req.url, body });
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { got, url: `http://127.0.0.1:${server.address().port}/hook`, close: () => new Promise((r) => server.close(r)) };
}

describe('the dashboard at /ui', { timeout: 240_000 }, () => {
  let orch;
  let browser;
  let page;
  let receiver;
  let jobId;
  let readOnlyKey;
  const pageErrors = [];
  const consoleErrors = [];
  const urls = [];

  const shot = (name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  const go = async (hash) => {
    await page.evaluate((h) => { location.hash = h; }, hash);
  };

  before(async () => {
    assert.ok(existsSync(TEST_SERVER), `${TEST_SERVER} is missing: cargo build -p orch-mcp --bin orch-mcp-test-server`);
    mkdirSync(SHOTS, { recursive: true });
    receiver = await startReceiver();
    orch = await startOrch({
      env: { ORCH_WEBHOOK_ALLOW: '127.0.0.1/32' },
      files: { 'mcp-config.json': JSON.stringify({ mcpServers: { test: { command: TEST_SERVER } } }) },
    });
    browser = await launchBrowser({ viewport: { width: 1360, height: 900 } });
    page = browser.page;
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    page.on('console', (msg) => { if (msg.type() === 'error') consoleErrors.push(msg.text()); });
    page.on('request', (req) => urls.push(req.url()));
  });

  after(async () => {
    try {
      await browser?.close();
    } finally {
      await stopOrch(orch);
      await receiver?.close();
    }
  });

  test('the shell loads without a key, under a strict CSP', async () => {
    const res = await page.goto(`${orch.base}/ui`);
    assert.equal(res.status(), 200);
    const csp = res.headers()['content-security-policy'];
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    await page.getByLabel('API key').waitFor();
    await shot('sign-in');
  });

  test('a wrong key is refused with a message', async () => {
    await page.getByLabel('API key').fill('orch_not-a-key');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'not valid' }).waitFor();
  });

  test('signing in with the admin key shows the overview', async () => {
    await page.getByLabel('API key').fill(orch.key);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.locator('.chart').first().waitFor();
    await page.locator('td', { hasText: 'test' }).first().waitFor();
    // The key lives in this tab's sessionStorage only.
    const stored = await page.evaluate(() => ({ session: sessionStorage.getItem('orch.key'), local: localStorage.length }));
    assert.equal(stored.session, orch.key);
    assert.equal(stored.local, 0);
    await shot('overview');
  });

  test('the playground previews a plan: levels, critical path, graph', async () => {
    await page.getByRole('link', { name: 'Playground' }).click();
    await page.getByLabel('Plan (JSON)').fill(JSON.stringify(PLAN, null, 2));
    await page.getByLabel('Webhook callback URL (optional)').fill(receiver.url);
    await page.getByRole('button', { name: 'Preview' }).click();
    await page.locator('#pg-critical').waitFor();
    assert.equal(await page.locator('#pg-critical').innerText(), 'wait → draft → publish');
    assert.equal(await page.locator('svg.dag g.node').count(), 5);
    assert.equal(await page.locator('svg.dag g.node.critical').count(), 3);
    await shot('playground');
  });

  test('Run submits the job and the DAG follows it live to the end', async () => {
    await page.getByRole('button', { name: 'Run' }).click();
    await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/);
    jobId = page.url().split('/').pop();
    const node = (id) => page.locator(`svg.dag g.node[data-node="${id}"]`);
    // `wait` sleeps 1.5 s: it is seen running before it succeeds.
    await node('wait').and(page.locator('[data-status="running"]')).waitFor();
    await page.locator('svg.dag g.node[data-status="succeeded"]').nth(4).waitFor({ timeout: 30_000 });
    assert.equal(await page.locator('svg.dag g.node[data-status="succeeded"]').count(), 5);
    assert.equal(await page.locator('svg.dag g.node.critical').count(), 3, 'the critical path is marked');
    await page.getByText('succeeded', { exact: true }).first().waitFor();
    await page.locator('.timeline li[data-type="succeeded"]').waitFor();
  });

  test("a node's output opens on click and with the keyboard", async () => {
    await page.locator('svg.dag g.node[data-node="title"]').click();
    await page.locator('[data-output="title"]').filter({ hasText: 'Weekly report' }).waitFor();
    await page.locator('svg.dag g.node[data-node="fetch"]').focus();
    await page.keyboard.press('Enter');
    await page.locator('[data-output="fetch"]').filter({ hasText: 'hello from the dashboard' }).waitFor();
    await shot('dag');
  });

  test('the webhook delivery is listed with its attempts and can be redelivered', async () => {
    const delivery = page.locator('details[data-delivery]').first();
    await delivery.locator('.badge.s-succeeded').waitFor({ timeout: 30_000 });
    assert.ok(receiver.got.length >= 1, 'the receiver got the webhook');
    await delivery.locator('summary').click();
    await delivery.getByRole('cell', { name: 'HTTP 200' }).first().waitFor();
    const before = receiver.got.length;
    await delivery.getByRole('button', { name: 'Redeliver' }).click();
    await page.locator('.toast', { hasText: 'Redelivery queued' }).waitFor();
    await page.locator('details[data-delivery]').nth(1).waitFor();
    for (let i = 0; i < 100 && receiver.got.length === before; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(receiver.got.length, before + 1, 'the redelivery reached the receiver');
    await shot('job');
  });

  test('the jobs list shows the job, paged with a cursor', async () => {
    await go('#/jobs');
    const row = page.locator(`tr[data-job="${jobId}"]`);
    await row.waitFor();
    assert.equal(await row.getAttribute('data-status'), 'succeeded');
    await shot('jobs');
  });

  test('testing an MCP server reports it up', async () => {
    await go('#/servers');
    const row = page.locator('tr[data-server="test"]');
    await row.getByRole('button', { name: 'Test' }).click();
    await page.locator('.toast', { hasText: /^test: ok in/ }).waitFor();
    await shot('servers');
    await row.getByRole('link', { name: 'test' }).click();
    await page.locator('button[data-tool="echo"]').click();
    await page.getByLabel('message *').fill('tried from the browser');
    await page.getByRole('button', { name: 'Call tool' }).click();
    await page.getByText('tried from the browser').last().waitFor();
    await shot('tool');
  });

  test('an admin creates a read-only key; its secret is shown once', async () => {
    await go('#/keys');
    await page.getByLabel('Name').fill('viewer');
    for (const scope of ['jobs:write', 'tools:call', 'admin']) await page.getByLabel(scope, { exact: true }).uncheck();
    await page.getByLabel('jobs:read_all', { exact: true }).check();
    await page.getByLabel('jobs:read', { exact: true }).check();
    await page.getByRole('button', { name: 'Create key' }).click();
    readOnlyKey = (await page.locator('#secret-value').innerText()).trim();
    assert.match(readOnlyKey, /^orch_/);
    await shot('keys-secret');
    await page.getByRole('button', { name: 'Done' }).click();
    await page.locator('tr[data-key]', { hasText: 'viewer' }).waitFor();
    await shot('keys');
    await go('#/audit');
    await page.locator('td', { hasText: 'POST /v1/keys' }).first().waitFor();
    await shot('audit');
  });

  test('a jobs:read key gets a read-only view with no action buttons', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API key').fill(readOnlyKey);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Jobs' }).waitFor();
    const nav = await page.locator('nav a').allInnerTexts();
    assert.deepEqual(nav, ['Overview', 'Jobs', 'Sessions']);
    assert.equal(await page.getByRole('link', { name: 'New batch job' }).count(), 0);
    await go(`#/jobs/${jobId}`);
    await page.locator('svg.dag g.node[data-status="succeeded"]').nth(4).waitFor();
    await page.locator('details[data-delivery]').nth(1).waitFor();
    for (const d of await page.locator('details[data-delivery] summary').all()) await d.click();
    assert.equal(await page.locator('main button').count(), 0, 'no action button for a read-only key');
    await shot('read-only-job');
  });

  test('readable on a phone', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await go('#/jobs');
    await page.locator(`tr[data-job="${jobId}"]`).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the page is no wider than the phone (${overflow} px over)`);
    await shot('phone-jobs');
  });

  test('no script error, no CSP violation, no secret in a URL', () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(consoleErrors.filter((m) => /Content Security Policy|Refused/.test(m)), []);
    for (const url of urls) {
      assert.ok(!url.includes(orch.key) && !(readOnlyKey && url.includes(readOnlyKey)), `a key in ${url}`);
    }
  });
});
