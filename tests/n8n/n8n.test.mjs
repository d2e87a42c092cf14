// Real n8n (1.123.81, installed by install.sh under target/n8n) against
// `orch serve`: every ready workflow of n8n-nodes/workflows (stock nodes and
// the community node), the community node's operations, and the AI Agent with
// the MCP Client Tool, end to end. The model is a `cli` provider running
// fake-model.mjs (deterministic); a local receiver stands in for Obsidian's
// Local REST API and Notion's API; the MCP server is the reference
// server-everything from mcp/tests/servers. The n8n nodes keep their defaults:
// the workflows are imported as shipped, with only their Config values (URLs)
// and credentials set, as a user would.
//
// It builds nothing in Rust: it runs target/debug/orch (ORCH_BIN). It packs
// n8n-nodes (`npm pack`, which builds it) and installs the tarball into n8n's
// community-node folder. Run with `npm test` here, or `bash scripts/test`.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const ORCH_BIN = path.resolve(process.env.ORCH_BIN || path.join(ROOT, 'target/debug/orch'));
const WORKFLOWS = path.join(ROOT, 'n8n-nodes/workflows');
const EVERYTHING = path.join(ROOT, 'mcp/tests/servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js');
const OBSIDIAN_KEY = 'obsidian-test-key';
const NOTION_KEY = 'secret_notion_test';
const NOTION_PARENT = '0f5e6d7c-1111-4222-8333-944455556666';
const HMAC_SECRET = 'orch-n8n-test-resume-url-secret';
const run = promisify(execFile);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

/** Polls `check` until it returns something truthy, or fails after `ms` with `why()`. */
async function eventually(check, ms, why) {
  const by = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > by) throw new Error(await why());
    await sleep(200);
  }
}

/** The environment of a child, without inherited ORCH_* / N8N_* settings. */
function cleanEnv() {
  return Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('ORCH_') && !k.startsWith('N8N_') && k !== 'WEBHOOK_URL'),
  );
}

/** Keeps the last 64 kB a child printed, for failure messages. */
function capture(child) {
  const out = { text: '' };
  const remember = (t) => {
    out.text = (out.text + t).slice(-64_000);
  };
  child.stderr.setEncoding('utf8').on('data', remember);
  return { out, remember };
}

/**
 * Obsidian's Local REST API (PUT /vault/{path}, Bearer key) and Notion's API
 * (POST /v1/pages, Bearer key and Notion-Version), recording what they got.
 */
async function startReceivers() {
  const got = [];
  const server = createHttpServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const record = { method: req.method, url: decodeURIComponent(req.url), headers: req.headers, body };
      got.push(record);
      if (req.method === 'PUT' && req.url.startsWith('/vault/')) {
        if (req.headers.authorization !== `Bearer ${OBSIDIAN_KEY}`) return void res.writeHead(401).end();
        return void res.writeHead(204).end();
      }
      if (req.method === 'POST' && req.url === '/v1/pages') {
        if (req.headers.authorization !== `Bearer ${NOTION_KEY}` || !req.headers['notion-version']) {
          return void res.writeHead(401, { 'content-type': 'application/json' }).end('{"object":"error"}');
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        return void res.end(JSON.stringify({ object: 'page', id: 'page-1', url: 'https://www.notion.so/page-1' }));
      }
      res.writeHead(404).end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { got, base: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

/** `orch serve` in a fresh directory with the fake model and server-everything. */
async function startOrch(dir) {
  if (!existsSync(ORCH_BIN)) throw new Error(`${ORCH_BIN} does not exist; build it (cargo build --bin orch) or set ORCH_BIN`);
  if (!existsSync(EVERYTHING)) throw new Error(`${EVERYTHING} is missing: run npm ci in mcp/tests/servers`);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  writeFileSync(
    path.join(dir, 'orch.toml'),
    [
      '[providers.model]',
      "kind = 'cli'",
      `command = '${process.execPath}'`,
      `args = ['${path.join(HERE, 'fake-model.mjs')}', '--system={system}']`,
      "output = { format = 'text' }",
      '[routing]',
      "default_model = 'model'",
      '',
    ].join('\n'),
  );
  writeFileSync(
    path.join(dir, 'mcp-config.json'),
    JSON.stringify({
      mcpServers: { everything: { command: process.execPath, args: [EVERYTHING], autoApprove: ['echo'] } },
    }),
  );
  const env = cleanEnv();
  Object.assign(env, {
    ORCH_BIND: `127.0.0.1:${port}`,
    ORCH_WEBHOOK_ALLOW: '127.0.0.0/8',
    ORCH_LOG_FORMAT: 'text',
    NO_COLOR: '1',
  });
  const child = spawn(ORCH_BIN, ['serve'], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const { out, remember } = capture(child);
  const orch = { child, base, key: null, out };
  await new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      remember(`${line}\n`);
      if (orch.key === null && line.trim().startsWith('orch_')) {
        orch.key = line.trim();
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`orch exited (${code}) before printing a key\n${out.text}`)));
    setTimeout(() => reject(new Error(`orch printed no key within 30 s\n${out.text}`)), 30_000).unref();
  });
  await eventually(
    async () => (await fetch(`${base}/health`).catch(() => null))?.status === 200,
    30_000,
    () => `orch /health did not answer\n${out.text}`,
  );
  orch.call = async (method, p, body, headers = {}) => {
    const res = await fetch(`${base}${p}`, {
      method,
      headers: { authorization: `Bearer ${orch.key}`, 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: res.status, json, text };
  };
  return orch;
}

/** The n8n binary: N8N_BIN, or the cached install (installing it the first time). */
function n8nBinary() {
  if (process.env.N8N_BIN) return process.env.N8N_BIN;
  const out = execFileSync('bash', [path.join(HERE, 'install.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return out.trim().split('\n').pop();
}

/** Packs n8n-nodes (npm pack builds it) and installs the tarball as n8n installs community packages. */
function installCommunityNode(n8nFolder, scratch) {
  const pkg = path.join(ROOT, 'n8n-nodes');
  const tgz = execFileSync('npm', ['pack', '--silent', '--pack-destination', scratch], { cwd: pkg, encoding: 'utf8' })
    .trim()
    .split('\n')
    .pop();
  const nodes = path.join(n8nFolder, 'nodes');
  mkdirSync(nodes, { recursive: true });
  writeFileSync(path.join(nodes, 'package.json'), JSON.stringify({ name: 'installed-nodes', private: true }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--omit=dev', path.join(scratch, tgz)], {
    cwd: nodes,
    stdio: 'ignore',
  });
  return path.join(scratch, tgz);
}

/** A ready workflow with its Config values set, as a user sets them after importing. */
function readyWorkflow(folder, file, config) {
  const wf = JSON.parse(readFileSync(path.join(WORKFLOWS, folder, file), 'utf8'));
  for (const n of wf.nodes) {
    if (n.name === 'Config') {
      for (const a of n.parameters.assignments.assignments) if (a.name in config) a.value = config[a.name];
    }
    if (n.type === '@n8n/n8n-nodes-langchain.mcpClientTool' && config.mcp_url) n.parameters.endpointUrl = config.mcp_url;
  }
  return wf;
}

/** The JSON of every item a node output in an `n8n execute --rawOutput` run. */
function outputOf(runData, name) {
  const runs = runData[name];
  assert.ok(runs, `node "${name}" did not run; ran: ${Object.keys(runData).join(', ')}`);
  const r = runs[runs.length - 1];
  assert.ok(!r.error, `node "${name}" failed: ${JSON.stringify(r.error)}`);
  return (r.data?.main?.[0] ?? []).map((i) => i.json);
}

const state = {};

before(async () => {
  state.scratch = mkdtempSync(path.join(tmpdir(), 'orch-n8n-'));
  state.n8n = n8nBinary();
  state.receivers = await startReceivers();
  mkdirSync(path.join(state.scratch, 'orch'));
  state.orch = await startOrch(path.join(state.scratch, 'orch'));

  state.home = path.join(state.scratch, 'n8n');
  state.n8nFolder = path.join(state.home, '.n8n');
  mkdirSync(state.n8nFolder, { recursive: true });
  state.tgz = installCommunityNode(state.n8nFolder, state.scratch);
  state.port = await freePort();
  state.n8nBase = `http://127.0.0.1:${state.port}`;
  state.env = {
    ...cleanEnv(),
    N8N_USER_FOLDER: state.home,
    N8N_EXPRESSION_ENGINE: 'legacy',
    N8N_RUNNERS_ENABLED: 'false',
    N8N_DIAGNOSTICS_ENABLED: 'false',
    N8N_VERSION_NOTIFICATIONS_ENABLED: 'false',
    N8N_TEMPLATES_ENABLED: 'false',
    N8N_PORT: String(state.port),
    N8N_LISTEN_ADDRESS: '127.0.0.1',
    WEBHOOK_URL: `${state.n8nBase}/`,
    N8N_HMAC_SIGNATURE_SECRET: HMAC_SECRET,
    N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS: 'false',
  };

  const { orch, receivers } = state;
  const credentials = [
    { id: 'orchHeaderAuth01', name: 'Orch API key (Header Auth)', type: 'httpHeaderAuth', data: { name: 'Authorization', value: `Bearer ${orch.key}` } },
    { id: 'obsidianRestApi1', name: 'Obsidian Local REST API', type: 'httpHeaderAuth', data: { name: 'Authorization', value: `Bearer ${OBSIDIAN_KEY}` } },
    { id: 'notionApiCred001', name: 'Notion', type: 'notionApi', data: { apiKey: NOTION_KEY } },
    { id: 'orchApiCred00001', name: 'Orch API', type: 'orchApi', data: { baseUrl: orch.base, apiKey: orch.key } },
    { id: 'orchOpenAiCred01', name: 'Orch as OpenAI', type: 'openAiApi', data: { apiKey: orch.key, url: `${orch.base}/v1`, header: false } },
    { id: 'orchBearerCred01', name: 'Orch API key (Bearer)', type: 'httpBearerAuth', data: { token: orch.key } },
  ];
  writeFileSync(path.join(state.scratch, 'credentials.json'), JSON.stringify(credentials));
  await state.cli(['import:credentials', `--input=${path.join(state.scratch, 'credentials.json')}`]);

  const config = {
    orch_url: orch.base,
    obsidian_url: receivers.base,
    notion_url: receivers.base,
    notion_parent_page_id: NOTION_PARENT,
    session_id: 'n8n-memory-test',
    mcp_url: `${orch.base}/mcp`,
  };
  const dir = path.join(state.scratch, 'workflows');
  mkdirSync(dir);
  for (const folder of readdirSync(WORKFLOWS)) {
    for (const file of readdirSync(path.join(WORKFLOWS, folder)).filter((f) => f.endsWith('.json'))) {
      const wf = readyWorkflow(folder, file, config);
      writeFileSync(path.join(dir, `${wf.id}.json`), JSON.stringify(wf));
    }
  }
  writeFileSync(path.join(dir, 'orchNodeOps00001.json'), JSON.stringify(operationsWorkflow()));
  writeFileSync(path.join(dir, 'orchPlanExpr0001.json'), JSON.stringify(planInExpressionWorkflow(config)));
  await state.cli(['import:workflow', '--separate', `--input=${dir}`]);
});

/** Runs an n8n CLI command to its end; rejects with its output on failure. */
state.cli = async (args) => {
  try {
    return await run(state.n8n, args, { env: state.env, maxBuffer: 256 * 1024 * 1024, timeout: 120_000 });
  } catch (e) {
    throw new Error(`n8n ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
};

/** `n8n execute --id --rawOutput`: the run data of the finished execution. */
async function execute(id) {
  const { stdout, stderr } = await state.cli(['execute', `--id=${id}`, '--rawOutput']);
  const start = stdout.indexOf('{');
  assert.ok(start >= 0, `n8n execute printed no JSON:\n${stdout}\n${stderr}`);
  const run = JSON.parse(stdout.slice(start));
  assert.equal(run.status, 'success', `execution of ${id}: ${JSON.stringify(run.data?.resultData?.error ?? run, null, 1).slice(0, 4000)}`);
  return run.data.resultData.runData;
}

after(async () => {
  if (state.n8nChild) {
    state.n8nChild.kill('SIGTERM');
    await new Promise((r) => {
      state.n8nChild.once('exit', r);
      setTimeout(() => state.n8nChild.kill('SIGKILL'), 10_000).unref();
    });
  }
  if (state.orch) {
    state.orch.child.kill('SIGTERM');
    await new Promise((r) => state.orch.child.once('exit', r));
  }
  state.receivers?.close();
  // ORCH_N8N_KEEP=1 keeps n8n's folder (database.sqlite has every execution) for a look.
  if (state.scratch && !process.env.ORCH_N8N_KEEP) rmSync(state.scratch, { recursive: true, force: true });
  else if (state.scratch) console.log(`kept ${state.scratch}`);
});

/** One workflow with a node per operation of the community node, run once each. */
function operationsWorkflow() {
  const plan = { nodes: [{ id: 'a', tool: 'everything.echo', args: { message: 'from a plan' } }], output: '{{nodes.a.output}}' };
  const ops = [
    ['Chat send', { resource: 'chat', operation: 'send', prompt: 'hello from the node', model: 'auto', jobOptions: { sessionId: 'n8n-node-session' } }],
    ['Chat submit', { resource: 'chat', operation: 'submit', prompt: 'submitted from the node', jobOptions: {} }],
    ['Batch submit', { resource: 'job', operation: 'submit', batchInput: 'plan', plan: JSON.stringify(plan), jobOptions: { title: 'Plan from n8n' } }],
    ['Pause', null],
    ['Job get', { resource: 'job', operation: 'get', jobId: "={{ $('Batch submit').item.json.id }}" }],
    ['Job result', { resource: 'job', operation: 'result', jobId: "={{ $('Batch submit').item.json.id }}" }],
    ['Job list', { resource: 'job', operation: 'list', returnAll: false, limit: 5, filters: { kind: 'batch' } }],
    ['Plan preview', { resource: 'plan', operation: 'preview', batchInput: 'plan', plan: JSON.stringify(plan) }],
    ['Plan mermaid', { resource: 'plan', operation: 'mermaid', batchInput: 'plan', plan: JSON.stringify(plan) }],
    ['Tool list', { resource: 'tool', operation: 'list' }],
    ['Tool call', {
      resource: 'tool', operation: 'call', tool: 'everything.echo', argumentsInput: 'form',
      arguments: {
        mappingMode: 'defineBelow', value: { message: 'form args' }, matchingColumns: [],
        schema: [{ id: 'message', displayName: 'message', required: true, defaultMatch: false, display: true, type: 'string' }],
      },
    }],
    ['Tool call JSON', { resource: 'tool', operation: 'call', tool: 'everything.echo', argumentsInput: 'json', argumentsJson: '{"message": "json args"}' }],
    ['Session get', { resource: 'session', operation: 'get', sessionId: 'n8n-node-session' }],
    ['Session export', { resource: 'session', operation: 'exportMemory', sessionId: 'n8n-node-session' }],
    ['Session delete', { resource: 'session', operation: 'delete', sessionId: 'n8n-node-session' }],
    ['Server list', { resource: 'server', operation: 'list' }],
    ['Server test', { resource: 'server', operation: 'test', server: 'everything' }],
    ['Slow chat', { resource: 'chat', operation: 'submit', prompt: 'answer slowly until cancelled', jobOptions: {} }],
    ['Job cancel', { resource: 'job', operation: 'cancel', jobId: "={{ $('Slow chat').item.json.id }}" }],
  ];
  const nodes = [{ id: 'op-0', name: 'Start', type: 'n8n-nodes-base.manualTrigger', typeVersion: 1, position: [0, 0], parameters: {} }];
  ops.forEach(([name, parameters], i) => {
    nodes.push(
      parameters
        ? { id: `op-${i + 1}`, name, type: 'n8n-nodes-orch.orch', typeVersion: 1, position: [200 * (i + 1), 0], parameters, executeOnce: true,
            credentials: { orchApi: { id: 'orchApiCred00001', name: 'Orch API' } } }
        : { id: `op-${i + 1}`, name, type: 'n8n-nodes-base.wait', typeVersion: 1.1, position: [200 * (i + 1), 0],
            parameters: { amount: 3, unit: 'seconds' }, webhookId: 'b7d3a0c5-0000-4000-8000-00000000a001' },
    );
  });
  const connections = {};
  for (let i = 0; i + 1 < nodes.length; i++) connections[nodes[i].name] = { main: [[{ node: nodes[i + 1].name, type: 'main', index: 0 }]] };
  return { id: 'orchNodeOps00001', name: 'Orch node: every operation', active: false, settings: { executionOrder: 'v1' }, nodes, connections };
}

/**
 * A plan typed into an HTTP Request node's JSON body in expression mode (needed
 * for $execution.resumeUrl), with ${...} references, → Wait → Obsidian.
 */
function planInExpressionWorkflow(config) {
  const wf = readyWorkflow('chat-to-obsidian', 'workflow.json', config);
  const submit = wf.nodes.find((n) => n.name === 'Submit chat job');
  submit.name = 'Submit plan';
  submit.parameters.url = "={{ $('Config').item.json.orch_url }}/v1/jobs/batch";
  submit.parameters.jsonBody = `={
  "plan": {
    "nodes": [
      {"id": "fetch", "tool": "everything.echo", "args": {"message": "{{ $json.prompt }}"}},
      {"id": "quote", "tool": "everything.echo", "args": {"message": "quoted: \${nodes.fetch.output}"}}
    ],
    "output": "\${nodes.quote.output}"
  },
  "title": "Plan from n8n",
  "callback": {"url": "{{ $execution.resumeUrl }}"}
}`;
  for (const n of wf.nodes) n.id = n.id.replace(/^(.{8})/, 'b1a2c3d4');
  wf.connections.Config.main[0][0].node = 'Submit plan';
  wf.connections['Submit plan'] = wf.connections['Submit chat job'];
  delete wf.connections['Submit chat job'];
  wf.nodes.find((n) => n.type === 'n8n-nodes-base.webhook').parameters.path = 'orch-plan-in-expression';
  for (const n of wf.nodes) if (n.webhookId) n.webhookId = n.webhookId.replace(/^(.{8})/, 'b1a2c3d4');
  wf.id = 'orchPlanExpr0001';
  wf.name = 'Test: plan in expression mode → Wait → Obsidian';
  return wf;
}

describe('n8n execute', () => {
  test('the n8n-nodes folder is a placeholder (defect 9): n8n-nodes-orch packs, has no runtime dependencies and is installed where n8n loads community nodes', () => {
    const pkg = JSON.parse(readFileSync(path.join(state.n8nFolder, 'nodes/node_modules/n8n-nodes-orch/package.json'), 'utf8'));
    assert.deepEqual(pkg.dependencies ?? {}, {});
    assert.deepEqual(pkg.n8n.nodes, ['dist/nodes/Orch/Orch.node.js']);
    assert.ok(existsSync(path.join(state.n8nFolder, 'nodes/node_modules/n8n-nodes-orch/dist/nodes/Orch/orch.svg')));
  });

  test('every operation of the community node works against Orch', async () => {
    const runData = await execute('orchNodeOps00001');
    const one = (name) => {
      const items = outputOf(runData, name);
      assert.equal(items.length, 1, `${name}: ${JSON.stringify(items)}`);
      return items[0];
    };
    assert.equal(one('Chat send').text, 'Orch answer: hello from the node');
    assert.match(one('Chat submit').status_url, /^http:\/\/127\.0\.0\.1:\d+\/v1\/jobs\//);
    const batch = one('Batch submit');
    assert.equal(one('Job get').id, batch.id);
    assert.equal(one('Job get').status, 'succeeded');
    assert.match(JSON.stringify(one('Job result')), /Echo: from a plan/);
    const listed = outputOf(runData, 'Job list');
    assert.ok(listed.some((j) => j.id === batch.id), JSON.stringify(listed));
    assert.equal(one('Plan preview').valid, true);
    assert.match(one('Plan mermaid').mermaid, /^flowchart/);
    assert.ok(outputOf(runData, 'Tool list').some((t) => t.name === 'everything.echo'));
    assert.match(JSON.stringify(one('Tool call')), /Echo: form args/);
    assert.match(JSON.stringify(one('Tool call JSON')), /Echo: json args/);
    assert.equal(one('Session get').messages.length, 2);
    assert.match(one('Session export').markdown, /hello from the node/);
    assert.equal(one('Session delete').deleted, true);
    assert.ok(outputOf(runData, 'Server list').some((s) => s.name === 'everything'));
    assert.equal(one('Server test').ok, true);
    const cancelled = await eventually(
      async () => {
        const r = await state.orch.call('GET', `/v1/jobs/${one('Slow chat').id}`);
        return r.json?.status === 'cancelled' && r.json;
      },
      15_000,
      async () => `the slow chat job was not cancelled: ${JSON.stringify((await state.orch.call('GET', `/v1/jobs/${one('Slow chat').id}`)).json)}`,
    );
    assert.equal(cancelled.status, 'cancelled');
  });

  test('session memory export → Obsidian, stock nodes and community node', async () => {
    const { orch, receivers } = state;
    const r = await orch.call('POST', '/v1/chat/completions', { model: 'model', messages: [{ role: 'user', content: 'What is Orch?' }] }, { 'x-session-id': 'n8n-memory-test' });
    assert.equal(r.status, 200, r.text);
    for (const id of ['orchSessionObs01', 'orchSessionObs02']) {
      const before = receivers.got.length;
      await execute(id);
      const puts = receivers.got.slice(before).filter((g) => g.method === 'PUT');
      assert.equal(puts.length, 1, JSON.stringify(receivers.got.slice(before)));
      assert.match(puts[0].url, /^\/vault\/Sessions\/session_n8n-memory-test_.*\.md$/);
      assert.equal(puts[0].headers['content-type'], 'text/markdown');
      assert.match(puts[0].body, /^---\n/);
      assert.match(puts[0].body, /What is Orch\?/);
      assert.match(puts[0].body, /Orch answer: What is Orch\?/);
    }
  });

  const RESPONSES_TODO = { todo: 'the OpenAI Chat Model 1.3 defaults to the Responses API: POST /v1/responses lands with helper "responses"' };

  test('AI Agent on Orch (OpenAI Chat Model with its defaults) calls a tool of Orch\'s /mcp through the MCP Client Tool', RESPONSES_TODO, async () => {
    const runData = await execute('orchAgentMcp0001');
    const [answer] = outputOf(runData, 'AI Agent');
    assert.equal(answer.output, 'The echo tool said: ping from n8n');
  });

  test('AI Agent on Orch calls an MCP tool through the Orch node used as its tool', RESPONSES_TODO, async () => {
    const runData = await execute('orchAgentMcp0002');
    const [answer] = outputOf(runData, 'AI Agent');
    assert.equal(answer.output, 'The echo tool said: ping from n8n');
  });
});

describe('n8n start (Wait flows)', () => {
  before(async () => {
    for (const id of ['orchChatObsidn01', 'orchChatObsidn02', 'orchBatchNotion1', 'orchBatchNotion2', 'orchPlanExpr0001']) {
      await state.cli(['update:workflow', `--id=${id}`, '--active=true']);
    }
    const child = spawn(state.n8n, ['start'], { env: state.env, stdio: ['ignore', 'pipe', 'pipe'] });
    state.n8nChild = child;
    process.once('exit', () => child.kill('SIGKILL'));
    const { out, remember } = capture(child);
    child.stdout.setEncoding('utf8').on('data', remember);
    state.n8nOut = out;
    await eventually(
      async () => (await fetch(`${state.n8nBase}/healthz/readiness`).catch(() => null))?.status === 200,
      90_000,
      () => `n8n did not get ready\n${out.text}`,
    );
    // Readiness comes before the active workflows' webhooks are registered.
    await eventually(
      () => (out.text.match(/Activated workflow/g) ?? []).length >= 5,
      60_000,
      () => `n8n did not activate the 5 webhook workflows\n${out.text}`,
    );
  });

  const trigger = async (path_, body) => {
    const res = await fetch(`${state.n8nBase}/webhook/${path_}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `${path_}: ${await res.text()}\n${state.n8nOut.text}`);
  };

  const noteFor = (text) =>
    eventually(
      () => state.receivers.got.find((g) => g.method === 'PUT' && g.body.includes(text)),
      60_000,
      async () =>
        `no note with "${text}" reached Obsidian\n${JSON.stringify(state.receivers.got.map((g) => g.url))}\n` +
        `Orch's latest jobs: ${(await state.orch.call('GET', '/v1/jobs?limit=3')).text}\n${state.n8nOut.text}`,
    );

  for (const [label, hook] of [['stock nodes', 'orch-chat-to-obsidian'], ['community node', 'orch-chat-to-obsidian-node']]) {
    test(`chat → Wait → Obsidian (${label})`, async () => {
      const prompt = `Summarise the week (${label})`;
      await trigger(hook, { prompt });
      const put = await noteFor(`Orch answer: ${prompt}`);
      assert.match(put.url, /^\/vault\/Inbox\/\d{4}-\d\d-\d\d-summarise-the-week.*\.md$/);
      assert.equal(put.headers['content-type'], 'text/markdown');
      assert.match(put.body, /^---\n/);
    });
  }

  for (const [label, hook] of [['stock nodes', 'orch-batch-to-notion'], ['community node', 'orch-batch-to-notion-node']]) {
    test(`batch from a request → Wait → Notion (${label})`, async () => {
      const request = `List what changed this week (${label})`;
      await trigger(hook, { request });
      const page = await eventually(
        () => state.receivers.got.find((g) => g.url === '/v1/pages' && g.body.includes(request)),
        60_000,
        () => `no Notion page for "${request}"\n${state.n8nOut.text}`,
      );
      const body = JSON.parse(page.body);
      assert.equal(body.parent.page_id, NOTION_PARENT);
      // The Notion credential sends its own Notion-Version.
      assert.ok(page.headers['notion-version'], JSON.stringify(page.headers));
      const text = body.children.map((b) => b[b.type].rich_text.map((t) => t.text.content).join('')).join('\n');
      assert.match(text, /Orch answer: Write it up: .*Echo: List what changed this week/s);
    });
  }

  test('a plan typed in expression mode with ${...} references keeps its dependencies through n8n', async () => {
    const prompt = 'plan typed in n8n';
    await trigger('orch-plan-in-expression', { prompt });
    const put = await noteFor('Plan from n8n');
    assert.match(put.body, /Echo: quoted: Echo: plan typed in n8n/);
  });

  test('the community node resumes only on a callback signed with its key (an unsigned or forged POST to its resume URL gets 401)', async () => {
    const prompt = 'answer slowly please (signature check)';
    await trigger('orch-chat-to-obsidian-node', { prompt });
    // The execution is waiting for Orch: find it in n8n's database.
    const require = createRequire(path.join(path.dirname(state.n8n), '..', 'n8n', 'package.json'));
    const sqlite3 = require('sqlite3');
    const db = new sqlite3.Database(path.join(state.n8nFolder, 'database.sqlite'), sqlite3.OPEN_READONLY);
    const query = (sql) => new Promise((res, rej) => db.all(sql, (e, rows) => (e ? rej(e) : res(rows))));
    const waiting = await eventually(
      async () => (await query("SELECT id FROM execution_entity WHERE workflowId = 'orchChatObsidn02' AND status = 'waiting'"))[0],
      20_000,
      () => 'the execution never waited',
    );
    db.close();
    const wf = JSON.parse(readFileSync(path.join(WORKFLOWS, 'chat-to-obsidian/workflow-community-node.json'), 'utf8'));
    const nodeId = wf.nodes.find((n) => n.type === 'n8n-nodes-orch.orch').id;
    const url = new URL(`${state.n8nBase}/webhook-waiting/${waiting.id}/${nodeId}`);
    url.searchParams.set('signature', createHmac('sha256', HMAC_SECRET).update(`${url.host}${url.pathname}${url.search}`).digest('hex'));
    const body = JSON.stringify({ type: 'job.succeeded', status: 'succeeded', markdown: 'forged' });
    const unsigned = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    assert.equal(unsigned.status, 401, await unsigned.text());
    const forged = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'webhook-id': 'msg_1', 'webhook-timestamp': String(Math.floor(Date.now() / 1000)), 'webhook-signature': 'v1,AAAA' },
      body,
    });
    assert.equal(forged.status, 401, await forged.text());
    // Orch's own, signed callback still resumes it.
    const put = await noteFor(`Orch answer: ${prompt}`);
    assert.doesNotMatch(put.body, /forged/);
  });
});
