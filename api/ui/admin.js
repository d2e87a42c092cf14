// Servers and tools (status, test, reload, enable/disable, register; tool
// schemas with a try-it form), sessions (transcript, memory export), keys
// (create with the secret shown once, rotate, revoke, limits) and the audit log.

import {
  ago, api, badge, button, can, card, download, dur, errorBox, fill, h, json, table, toast, when,
} from './lib.js';
import { markdown } from './md.js';

/* ---------- servers and tools ---------- */

export async function servers(main, ctx, name) {
  if (name) return serverPage(main, ctx, name);
  ctx.setTitle('Servers & tools');
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const admin = can('admin');
  const load = async () => {
    const res = await api('/v1/servers', { signal: ctx.signal });
    fill(body,
      res.file_error ? h('div', { class: 'alert error' }, 'mcp-config.json: ', res.file_error) : null,
      res.invalid.length ? h('div', { class: 'alert error' }, h('strong', {}, 'Left out: '),
        res.invalid.map((i) => h('div', {}, `${i.server} (${i.source}) ${i.field}: ${i.message}`))) : null,
      table(['Server', 'Source', 'Transport', 'State', h('th', { class: 'num', scope: 'col' }, 'Latency'), h('th', { class: 'num', scope: 'col' }, 'Tools'), admin ? 'Actions' : null].filter(Boolean),
        res.servers.map((x) => h('tr', { 'data-server': x.name },
          h('td', {}, h('a', { href: `#/servers/${encodeURIComponent(x.name)}` }, h('strong', {}, x.name)),
            x.last_error ? h('div', { class: 'small muted' }, x.last_error) : null),
          h('td', {}, h('span', { class: 'tag' }, x.source ?? '—')),
          h('td', {}, x.transport),
          h('td', {}, badge(x.state)),
          h('td', { class: 'num' }, x.latency_ms === null ? '—' : dur(x.latency_ms)),
          h('td', { class: 'num' }, x.tools),
          admin ? h('td', {}, h('div', { class: 'row' }, serverActions(x, load))) : null)),
        'No MCP servers yet.'));
  };
  fill(main,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Servers & tools'), h('p', {}, 'MCP servers from mcp-config.json and the API, and their tools.')),
      admin ? h('div', { class: 'row' }, button('Reload config', async () => {
        const r = await api('/v1/servers/reload', { method: 'POST' });
        toast(`Reloaded: ${r.added.length} added, ${r.removed.length} removed, ${r.changed.length} changed`);
        await load();
      }, { 'data-action': 'reload' })) : null),
    h('div', { class: 'stack' }, body, admin ? registerForm(load) : null));
  await load();
  ctx.every(10_000, () => load().catch(() => {}));
}

function serverActions(x, reload) {
  const secret = JSON.stringify(x.config ?? {}).includes('<redacted>');
  const toggle = x.source === 'api'
    ? button(x.state === 'disabled' ? 'Enable' : 'Disable', async () => {
      const config = { ...x.config, disabled: x.state !== 'disabled' };
      await api(`/v1/servers/${encodeURIComponent(x.name)}`, { method: 'PUT', body: { config } });
      toast(`${x.name} ${config.disabled ? 'disabled' : 'enabled'}`);
      await reload();
    }, { class: 'btn sm', disabled: secret, title: secret ? 'Its headers or env hold secrets: change it with PUT /v1/servers/{name}' : null })
    : null;
  return [
    button('Test', async () => {
      const t = await api(`/v1/servers/${encodeURIComponent(x.name)}/test`, { method: 'POST' });
      if (t.ok) toast(`${x.name}: ok in ${dur(t.latency_ms)}, ${t.tools.length} tools`);
      else toast(`${x.name}: ${t.error}`, 'error');
      await reload();
    }, { class: 'btn sm', 'data-action': 'test' }),
    toggle,
    x.source === 'api' ? button('Remove', async () => {
      if (!window.confirm(`Remove the server ${x.name}?`)) return;
      await api(`/v1/servers/${encodeURIComponent(x.name)}`, { method: 'DELETE' });
      toast(`${x.name} removed`);
      await reload();
    }, { class: 'btn sm danger' }) : null,
  ];
}

function registerForm(reload) {
  const name = h('input', { id: 'srv-name', required: true, pattern: '[A-Za-z0-9][A-Za-z0-9_-]{0,63}', placeholder: 'remote' });
  const url = h('input', { id: 'srv-url', type: 'url', required: true, placeholder: 'https://mcp.example.com/mcp' });
  const transport = h('select', { id: 'srv-transport' }, h('option', { value: 'streamable-http' }, 'Streamable HTTP'), h('option', { value: 'sse' }, 'SSE (legacy)'));
  const timeout = h('input', { id: 'srv-timeout', type: 'number', min: 1, value: '30' });
  const result = h('div');
  const form = h('form', { class: 'form' },
    h('div', { class: 'grid cols-4' },
      h('label', { for: 'srv-name' }, 'Name', name),
      h('label', { for: 'srv-url' }, 'URL', url),
      h('label', { for: 'srv-transport' }, 'Transport', transport),
      h('label', { for: 'srv-timeout' }, 'Timeout (s)', timeout)),
    h('p', { class: 'small muted' }, 'Headers with secrets: register with POST /v1/servers and ${VAR} references, so no secret passes through the browser.'),
    h('div', {}, h('button', { type: 'submit', class: 'btn primary' }, 'Register server')),
    result);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const config = { transportType: transport.value, url: url.value.trim(), timeout: Number(timeout.value) || 30 };
      await api('/v1/servers', { method: 'POST', body: { name: name.value.trim(), config } });
      toast(`${name.value} registered`);
      form.reset();
      fill(result);
      await reload();
    } catch (err) {
      fill(result, errorBox(err));
    }
  });
  return card('Register an HTTP server', form);
}

async function serverPage(main, ctx, name) {
  ctx.setTitle(name);
  const [server, tools] = await Promise.all([
    api(`/v1/servers/${encodeURIComponent(name)}`, { signal: ctx.signal }),
    api('/v1/tools', { signal: ctx.signal }),
  ]);
  const mine = tools.tools.filter((t) => t.server === name);
  const panel = h('div', {}, h('p', { class: 'muted' }, 'Choose a tool to see its schema and try it.'));
  fill(main,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, name, ' ', badge(server.state)),
        h('p', {}, `${server.transport} · ${server.tools} tools · latency ${server.latency_ms === null ? '—' : dur(server.latency_ms)}`)),
      h('div', { class: 'row' }, can('admin') ? serverActions(server, () => servers(main, ctx, name)) : null, h('a', { class: 'btn', href: '#/servers' }, 'All servers'))),
    h('div', { class: 'grid cols-2' },
      card('Tools', table(['Tool', 'Description'], mine.map((t) => h('tr', {},
        h('td', {}, h('button', { type: 'button', class: 'btn sm', 'data-tool': t.tool, onclick: () => showTool(panel, ctx, t) }, t.tool),
          t.auto_approved ? h('div', { class: 'small muted' }, 'auto-approved') : null),
        h('td', { class: 'small' }, t.description ?? ''))), 'This server lists no tools.')),
      h('div', { class: 'stack' }, panel, card('Configuration', json(server.config)))));
}

async function showTool(panel, ctx, t) {
  const detail = await api(`/v1/tools/${encodeURIComponent(t.server)}/${encodeURIComponent(t.tool)}`, { signal: ctx.signal });
  const schema = detail.input_schema ?? {};
  const props = schema.properties ?? {};
  const required = new Set(schema.required ?? []);
  const simple = Object.values(props).every((p) => ['string', 'number', 'integer', 'boolean'].includes(p.type));
  const fields = simple ? Object.entries(props).map(([k, p]) => {
    const id = `arg-${k}`;
    const input = p.type === 'boolean' ? h('input', { id, type: 'checkbox', name: k })
      : p.enum ? h('select', { id, name: k }, p.enum.map((v) => h('option', { value: v }, v)))
        : h('input', { id, name: k, type: p.type === 'string' ? 'text' : 'number', required: required.has(k), value: p.default ?? '' });
    return h('label', { for: id }, `${k}${required.has(k) ? ' *' : ''}`, p.description ? h('span', { class: 'small muted' }, p.description) : null, input);
  }) : [];
  const raw = h('textarea', { id: 'arg-json', rows: 8, spellcheck: 'false' }, JSON.stringify(Object.fromEntries(Object.keys(props).map((k) => [k, props[k].default ?? null])), null, 2));
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'form' },
    simple ? fields : h('label', { for: 'arg-json' }, 'Arguments (JSON)', raw),
    h('div', {}, h('button', { type: 'submit', class: 'btn primary' }, 'Call tool')),
    out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let args;
    try {
      if (simple) {
        args = {};
        for (const [k, p] of Object.entries(props)) {
          const el = form.querySelector(`[name="${CSS.escape(k)}"]`);
          if (p.type === 'boolean') args[k] = el.checked;
          else if (el.value !== '') args[k] = p.type === 'string' ? el.value : Number(el.value);
        }
      } else args = JSON.parse(raw.value);
      const res = await api(`/v1/tools/${encodeURIComponent(t.server)}/${encodeURIComponent(t.tool)}`, { method: 'POST', body: { arguments: args } });
      fill(out, h('p', { class: 'small muted' }, `answered in ${dur(res.latency_ms)}`),
        (res.content ?? []).map((c) => (c.type === 'text' ? markdown(c.text) : json(c))),
        res.structured_content ? json(res.structured_content) : null);
    } catch (err) {
      fill(out, errorBox(err));
    }
  });
  fill(panel, card(detail.name, detail.description ? h('p', {}, detail.description) : null,
    h('details', {}, h('summary', {}, 'Input schema'), json(schema)),
    detail.output_schema ? h('details', {}, h('summary', {}, 'Output schema'), json(detail.output_schema)) : null,
    h('h3', {}, 'Try it'), form));
}

/* ---------- sessions ---------- */

export async function sessions(main, ctx, id) {
  if (id) return sessionPage(main, ctx, id);
  ctx.setTitle('Sessions');
  const res = await api('/v1/sessions?limit=100', { signal: ctx.signal });
  fill(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Sessions'), h('p', {}, 'Chat conversations kept by X-Session-ID.'))),
    table(['Session', 'Messages', 'Last routed to', 'Updated', 'Expires'], res.sessions.map((x) => h('tr', {},
      h('td', {}, h('a', { href: `#/sessions/${encodeURIComponent(x.id)}`, class: 'mono' }, x.id)),
      h('td', { class: 'num' }, x.message_count),
      h('td', {}, x.last_routed_to ?? '—'),
      h('td', {}, ago(x.updated_at)),
      h('td', {}, ago(x.expires_at)))), 'No sessions.'));
}

async function sessionPage(main, ctx, id) {
  ctx.setTitle(`Session ${id}`);
  const x = await api(`/v1/sessions/${encodeURIComponent(id)}`, { signal: ctx.signal });
  fill(main,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Session ', h('span', { class: 'mono' }, id)), h('p', {}, `${x.message_count} messages · expires ${when(x.expires_at)}`)),
      h('div', { class: 'row' },
        button('Export memory (markdown)', async () => {
          const text = await api(`/v1/sessions/${encodeURIComponent(id)}/memory`);
          download(`${id}.md`, typeof text === 'string' ? text : JSON.stringify(text, null, 2), 'text/markdown');
        }),
        can('jobs:write') ? button('Forget', async () => {
          if (!window.confirm(`Forget the session ${id}?`)) return;
          await api(`/v1/sessions/${encodeURIComponent(id)}`, { method: 'DELETE' });
          toast('Session forgotten');
          ctx.go('sessions');
        }, { class: 'btn danger' }) : null,
        h('a', { class: 'btn', href: '#/sessions' }, 'All sessions'))),
    card('Transcript', (x.messages ?? []).length
      ? h('div', { class: 'stack' }, x.messages.map((m) => h('div', {}, h('div', { class: 'small muted' }, m.role, m.routed_to ? ` · ${m.routed_to}` : ''), markdown(m.content ?? ''))))
      : h('p', { class: 'muted' }, 'No messages.')));
}

/* ---------- keys ---------- */

const SCOPES = ['jobs:read', 'jobs:write', 'jobs:read_all', 'tools:call', 'admin'];

export async function keys(main, ctx) {
  ctx.setTitle('Keys');
  const body = h('div');
  const load = async () => {
    const res = await api('/v1/keys', { signal: ctx.signal });
    fill(body, table(['Key', 'Scopes', 'Limits', 'Last used', 'Created', 'Actions'], res.keys.map((k) => h('tr', { 'data-key': k.id },
      h('td', {}, h('strong', {}, k.name), h('div', { class: 'small mono muted' }, `${k.prefix}… · ${k.id}`),
        k.revoked_at ? badge('failed', 'revoked') : k.expires_at ? h('div', { class: 'small muted' }, 'expires ', ago(k.expires_at)) : null,
        k.rotated_until ? h('div', { class: 'small muted' }, 'old secret works until ', ago(k.rotated_until)) : null),
      h('td', {}, k.scopes.map((x) => h('span', { class: 'tag' }, x)).flatMap((el) => [el, ' '])),
      h('td', { class: 'small' },
        [k.rate_limit_per_minute !== null ? `${k.rate_limit_per_minute || '∞'}/min` : null,
          k.jobs_per_day !== null ? `${k.jobs_per_day || '∞'} jobs/day` : null,
          k.servers ? `servers: ${k.servers.join(', ')}` : null,
          k.tools ? `tools: ${k.tools.join(', ')}` : null,
          k.providers ? `providers: ${k.providers.join(', ')}` : null].filter(Boolean).join(' · ') || 'defaults'),
      h('td', {}, ago(k.last_used_at)),
      h('td', {}, ago(k.created_at)),
      h('td', {}, k.revoked_at ? '—' : h('div', { class: 'row' },
        button('Rotate', async () => {
          if (!window.confirm(`Rotate ${k.name}? The old secret keeps working for 24 hours.`)) return;
          const r = await api(`/v1/keys/${k.id}/rotate`, { method: 'POST', body: {} });
          showSecret(`New secret of ${k.name}`, r);
          await load();
        }, { class: 'btn sm' }),
        button('Limits', () => editLimits(k, load), { class: 'btn sm' }),
        button('Revoke', async () => {
          if (!window.confirm(`Revoke ${k.name}? Requests with it fail at once.`)) return;
          await api(`/v1/keys/${k.id}`, { method: 'DELETE' });
          toast(`${k.name} revoked`);
          await load();
        }, { class: 'btn sm danger' })))))));
  };
  fill(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'API keys'), h('p', {}, 'Secrets are shown once, when a key is created or rotated.'))),
    h('div', { class: 'stack' }, body, createForm(load)));
  await load();
}

function createForm(reload) {
  const name = h('input', { id: 'key-name', required: true, maxlength: 100, placeholder: 'n8n production' });
  const boxes = SCOPES.map((x) => h('label', { class: 'inline' }, h('input', { type: 'checkbox', name: 'scope', value: x, checked: x.startsWith('jobs:r') || x === 'jobs:write' }), x));
  const rate = h('input', { id: 'key-rate', type: 'number', min: 0, placeholder: 'server default' });
  const perDay = h('input', { id: 'key-jobs', type: 'number', min: 0, placeholder: 'server default' });
  const expires = h('input', { id: 'key-expires', type: 'date' });
  const result = h('div');
  const form = h('form', { class: 'form' },
    h('div', { class: 'grid cols-4' },
      h('label', { for: 'key-name' }, 'Name', name),
      h('label', { for: 'key-rate' }, 'Requests a minute', rate),
      h('label', { for: 'key-jobs' }, 'Jobs a day', perDay),
      h('label', { for: 'key-expires' }, 'Expires', expires)),
    h('fieldset', { class: 'row' }, h('legend', { class: 'small' }, 'Scopes'), boxes),
    h('div', {}, h('button', { type: 'submit', class: 'btn primary' }, 'Create key')),
    result);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { name: name.value.trim(), scopes: [...form.querySelectorAll('input[name="scope"]:checked')].map((x) => x.value) };
    if (rate.value !== '') body.rate_limit_per_minute = Number(rate.value);
    if (perDay.value !== '') body.jobs_per_day = Number(perDay.value);
    if (expires.value) body.expires_at = new Date(`${expires.value}T00:00:00Z`).toISOString();
    try {
      const created = await api('/v1/keys', { method: 'POST', body });
      fill(result);
      showSecret(`Key ${created.name} created`, created);
      form.reset();
      await reload();
    } catch (err) {
      fill(result, errorBox(err));
    }
  });
  return card('Create a key', form);
}

/** The secret in a modal dialog, once; nothing keeps it after the dialog closes. */
function showSecret(title, created) {
  const dialog = h('dialog', { 'aria-labelledby': 'secret-title' },
    h('div', { class: 'form' },
      h('h2', { id: 'secret-title' }, title),
      h('p', {}, 'Copy the secret now: it is not shown again.'),
      h('div', { class: 'secret', id: 'secret-value' }, created.secret),
      created.webhook_secret ? [h('p', { class: 'small muted' }, 'Webhook signing secret:'), h('div', { class: 'secret small' }, created.webhook_secret)] : null,
      h('div', { class: 'row' },
        button('Copy', async () => { await navigator.clipboard.writeText(created.secret); toast('Copied'); }),
        h('button', { type: 'button', class: 'btn primary', onclick: () => dialog.close() }, 'Done'))));
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

function editLimits(k, reload) {
  const rate = h('input', { id: 'lim-rate', type: 'number', min: 0, value: k.rate_limit_per_minute ?? '' });
  const perDay = h('input', { id: 'lim-jobs', type: 'number', min: 0, value: k.jobs_per_day ?? '' });
  const error = h('div');
  const dialog = h('dialog', { 'aria-labelledby': 'lim-title' });
  const form = h('form', { class: 'form', method: 'dialog' },
    h('h2', { id: 'lim-title' }, `Limits of ${k.name}`),
    h('label', { for: 'lim-rate' }, 'Requests a minute (0: unlimited; empty: server default)', rate),
    h('label', { for: 'lim-jobs' }, 'Jobs a day (0: unlimited; empty: server default)', perDay),
    error,
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'btn primary' }, 'Save'),
      h('button', { type: 'button', class: 'btn', onclick: () => dialog.close() }, 'Cancel')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api(`/v1/keys/${k.id}`, {
        method: 'PATCH',
        body: { rate_limit_per_minute: rate.value === '' ? null : Number(rate.value), jobs_per_day: perDay.value === '' ? null : Number(perDay.value) },
      });
      dialog.close();
      toast('Limits saved');
      await reload();
    } catch (err) {
      fill(error, errorBox(err));
    }
  });
  dialog.append(form);
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

/* ---------- audit ---------- */

export async function audit(main, ctx) {
  ctx.setTitle('Audit log');
  const q = ctx.query;
  const body = h('div');
  const cursors = [null];
  let page = 0;
  let next = null;
  const outcome = h('select', { id: 'a-outcome' }, ['', 'ok', 'denied', 'error'].map((v) => h('option', { value: v, selected: v === (q.get('outcome') ?? '') }, v || 'Any')));
  const action = h('select', { id: 'a-action' }, ['', 'request', 'tool_call'].map((v) => h('option', { value: v, selected: v === (q.get('action') ?? '') }, v || 'Any')));
  const newer = h('button', { type: 'button', class: 'btn sm', disabled: true }, '← Newer');
  const older = h('button', { type: 'button', class: 'btn sm', disabled: true }, 'Older →');
  const load = async () => {
    const params = new URLSearchParams({ limit: '50' });
    if (outcome.value) params.set('outcome', outcome.value);
    if (action.value) params.set('action', action.value);
    if (cursors[page]) params.set('cursor', cursors[page]);
    const res = await api(`/v1/audit?${params}`, { signal: ctx.signal });
    next = res.next_cursor ?? null;
    newer.disabled = page === 0;
    older.disabled = !next;
    fill(body, table(['When', 'Key', 'Action', 'Route', 'Target', 'Outcome'], res.records.map((r) => h('tr', {},
      h('td', {}, ago(r.at)),
      h('td', {}, r.key_name ?? '—', r.key_id ? h('div', { class: 'small mono muted' }, r.key_id) : null),
      h('td', {}, h('span', { class: 'tag' }, r.action)),
      h('td', { class: 'mono small' }, `${r.method} ${r.route}`),
      h('td', { class: 'small' }, r.target_kind ? `${r.target_kind}: ` : '', r.job_id && r.target_kind !== 'job' ? h('a', { href: `#/jobs/${r.job_id}` }, r.target ?? r.job_id)
        : r.target_kind === 'job' && r.target ? h('a', { href: `#/jobs/${r.target}` }, r.target) : r.target ?? '—'),
      h('td', {}, badge(r.outcome), r.status ? h('span', { class: 'small muted' }, ` ${r.status}`) : null))), 'No records match.'));
  };
  for (const el of [outcome, action]) el.addEventListener('change', () => { cursors.length = 1; page = 0; load(); });
  newer.addEventListener('click', () => { page--; load(); });
  older.addEventListener('click', () => { cursors[page + 1] = next; page++; load(); });
  // Records are written in batches: the first page catches up while shown.
  ctx.every(5000, () => { if (page === 0) load().catch(() => {}); });
  fill(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Audit log'), h('p', {}, 'Every change and tool call: who, what, when and how it went. Never a secret or an argument value.'))),
    h('div', { class: 'filters' }, h('label', { for: 'a-outcome' }, 'Outcome', outcome), h('label', { for: 'a-action' }, 'Action', action)),
    body,
    h('div', { class: 'pager' }, newer, older));
  await load();
}
