// Overview: the queue now (GET /health), throughput, success rate and queue
// depth over the last hours (from the newest jobs, GET /v1/jobs), providers
// (credentials, cooldowns, usage) and MCP servers (state, latency, tools).

import { ago, api, badge, can, card, dur, errorBox, fill, h, s, table } from './lib.js';

const SAMPLE_PAGES = 5; // 5 × 200 newest jobs
const BUCKETS = 24;

export async function overview(main, ctx) {
  ctx.setTitle('Overview');
  const stats = h('div', { class: 'grid cols-4' });
  const charts = h('div', { class: 'grid cols-2' });
  const providers = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const servers = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const sampleNote = h('span', { class: 'sub' });
  fill(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Overview'), h('p', {}, 'The queue, throughput, providers and MCP servers.'))),
    h('div', { class: 'stack' },
      stats,
      h('section', { class: 'card' }, h('h2', {}, 'Over time', sampleNote), charts),
      h('div', { class: 'grid cols-2' }, card('Providers', providers), card('MCP servers', servers))));

  const loadHealth = async () => {
    try {
      const health = await api('/health', { signal: ctx.signal });
      const q = health.queue ?? {};
      const d = health.deliveries ?? {};
      fill(stats,
        stat('Queued', q.queued ?? '—', 'chat and batch jobs waiting'),
        stat('Running', q.running ?? '—', `${health.workers ?? 0} worker${health.workers === 1 ? '' : 's'} alive`),
        stat('Succeeded / failed', `${q.succeeded ?? 0} / ${q.failed ?? 0}`, `${q.cancelled ?? 0} cancelled, all time`),
        stat('Webhooks pending', d.queued ?? '—', `${d.failed ?? 0} gave up · store ${health.store?.status ?? health.status}`));
      if (!can('tools:call')) {
        fill(servers, serversTable(health.servers.map((x) => ({ ...x, latency_ms: null, tools: null }))));
      }
    } catch (err) {
      fill(stats, errorBox(err));
    }
  };

  const loadCharts = async () => {
    const sample = [];
    let cursor = null;
    for (let i = 0; i < SAMPLE_PAGES; i++) {
      const res = await api(`/v1/jobs?limit=200${cursor ? `&cursor=${cursor}` : ''}`, { signal: ctx.signal });
      sample.push(...res.jobs);
      cursor = res.next_cursor;
      if (!cursor) break;
    }
    const now = Date.now();
    const oldest = sample.length ? Math.min(...sample.map((j) => new Date(j.created_at).getTime())) : now - 3600_000;
    const span = Math.min(24 * 3600_000, Math.max(15 * 60_000, now - oldest));
    const step = span / BUCKETS;
    const start = now - span;
    const buckets = Array.from({ length: BUCKETS }, (_, i) => ({ t: start + i * step, ok: 0, failed: 0, depth: 0 }));
    for (const j of sample) {
      const end = j.finished_at ? new Date(j.finished_at).getTime() : null;
      if (end && end >= start) {
        const b = buckets[Math.min(BUCKETS - 1, Math.floor((end - start) / step))];
        if (j.status === 'succeeded') b.ok++;
        else if (j.status === 'failed') b.failed++;
      }
      // Waiting at the end of a bucket: created by then, not yet started (or finished) by then.
      const created = new Date(j.created_at).getTime();
      const left = j.started_at ? new Date(j.started_at).getTime() : end ?? Infinity;
      for (const b of buckets) {
        const at = b.t + step;
        if (created <= at && left > at) b.depth++;
      }
    }
    const label = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    sampleNote.textContent = `newest ${sample.length} jobs · ${dur(step)} buckets${can('jobs:read_all') ? '' : ' · your jobs only'}`;
    fill(charts,
      chartCard('Throughput', 'finished jobs per bucket (red: failed)', barChart(buckets, label)),
      chartCard('Success rate', 'succeeded ÷ finished, per bucket', lineChart(buckets.map((b) => ({
        t: b.t, v: b.ok + b.failed ? b.ok / (b.ok + b.failed) : null,
      })), label, { max: 1, percent: true, cls: 'green' })),
      chartCard('Queue depth', 'jobs waiting to start', lineChart(buckets.map((b) => ({ t: b.t, v: b.depth })), label, {})));
  };

  const loadProviders = async () => {
    try {
      const [list, usage, tokens] = await Promise.all([
        api('/v1/providers', { signal: ctx.signal }),
        api('/v1/usage?group_by=provider', { signal: ctx.signal }).catch(() => ({ groups: [] })),
        api('/health/tokens', { signal: ctx.signal }).catch(() => []),
      ]);
      const used = new Map(usage.groups.map((g) => [g.group, g]));
      const token = new Map(tokens.map((t) => [t.provider, t]));
      fill(providers, table(['Provider', 'State', 'Credential', 'Busy', 'Turns (24 h)', 'Tokens in/out', 'p50'],
        list.map((p) => {
          const u = used.get(p.name);
          const t = token.get(p.name);
          return h('tr', {},
            h('td', {}, h('strong', {}, p.name), ' ', h('span', { class: 'tag' }, p.kind),
              p.fixes.length ? h('div', { class: 'small muted' }, p.fixes[0]) : null),
            h('td', {}, p.cooldown_until
              ? [badge('degraded', 'cooldown'), h('div', { class: 'small muted' }, 'until ', ago(p.cooldown_until), p.cooldown_reason ? ` · ${p.cooldown_reason}` : '')]
              : badge(p.ready ? 'ok' : 'failed', p.ready ? 'ready' : 'not ready')),
            h('td', {}, t ? badge(t.status === 'ok' ? 'ok' : t.status, t.status) : badge(p.credentials?.status ?? 'pending', p.credentials?.status ?? '—'),
              t?.expires_at ? h('div', { class: 'small muted' }, 'expires ', ago(t.expires_at)) : null),
            h('td', { class: 'num' }, `${p.in_use}/${p.limit}`),
            h('td', { class: 'num' }, u ? `${u.turns}${u.failed ? ` (${u.failed} failed)` : ''}` : '0'),
            h('td', { class: 'num' }, u ? `${u.input_tokens} / ${u.output_tokens}` : '—'),
            h('td', { class: 'num' }, u?.latency_ms?.p50 !== undefined ? dur(u.latency_ms.p50) : '—'));
        }), 'No providers configured.'));
    } catch (err) {
      fill(providers, errorBox(err));
    }
  };

  const loadServers = async () => {
    if (!can('tools:call')) return;
    try {
      const res = await api('/v1/servers', { signal: ctx.signal });
      fill(servers, serversTable(res.servers));
    } catch (err) {
      fill(servers, errorBox(err));
    }
  };

  await Promise.all([loadHealth(), loadCharts().catch((err) => fill(charts, errorBox(err))), loadProviders(), loadServers()]);
  ctx.every(5000, loadHealth);
  ctx.every(30_000, () => loadCharts().catch(() => {}));
  ctx.every(15_000, () => { loadProviders(); loadServers(); });
}

function serversTable(list) {
  return table(['Server', 'State', 'Latency', 'Tools'], list.map((x) => h('tr', {},
    h('td', {}, can('tools:call') ? h('a', { href: `#/servers/${encodeURIComponent(x.name)}` }, x.name) : x.name,
      x.last_error ? h('div', { class: 'small muted' }, x.last_error) : null),
    h('td', {}, badge(x.state)),
    h('td', { class: 'num' }, x.latency_ms === null || x.latency_ms === undefined ? '—' : dur(x.latency_ms)),
    h('td', { class: 'num' }, x.tools ?? '—'))), 'No MCP servers configured.');
}

function stat(label, value, note) {
  return h('section', { class: 'card stat' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value),
    note ? h('div', { class: 'small muted' }, note) : null);
}

function chartCard(title, note, chart) {
  return h('figure', { class: 'card', role: 'group', 'aria-label': title, style: null },
    h('h2', {}, title, h('span', { class: 'sub' }, note)), chart);
}

const CW = 520;
const CH = 150;
const M = { l: 34, r: 8, t: 8, b: 20 };

function frame(max, label, points, percent) {
  const g = s('g', {});
  for (const f of [0, 0.5, 1]) {
    const y = M.t + (CH - M.t - M.b) * (1 - f);
    g.append(s('line', { class: f ? 'grid-line' : 'axis', x1: M.l, x2: CW - M.r, y1: y, y2: y }),
      s('text', { x: M.l - 4, y: y + 3, 'text-anchor': 'end' }, percent ? `${Math.round(f * 100)}%` : String(Math.round(max * f * 10) / 10)));
  }
  const n = points.length;
  for (const i of [0, Math.floor(n / 2), n - 1]) {
    const x = M.l + ((CW - M.l - M.r) * (i + 0.5)) / n;
    g.append(s('text', { x, y: CH - 5, 'text-anchor': 'middle' }, label(points[i].t)));
  }
  return g;
}

function barChart(buckets, label) {
  const max = Math.max(1, ...buckets.map((b) => b.ok + b.failed));
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${CW} ${CH}`, role: 'img', 'aria-label': `Finished jobs per bucket, at most ${max}` });
  svg.append(frame(max, label, buckets, false));
  const w = (CW - M.l - M.r) / buckets.length;
  const hgt = CH - M.t - M.b;
  buckets.forEach((b, i) => {
    const x = M.l + i * w + 1;
    const okH = (hgt * b.ok) / max;
    const failH = (hgt * b.failed) / max;
    const base = M.t + hgt;
    if (b.ok) svg.append(s('rect', { class: 'bar', x, y: base - okH, width: Math.max(1, w - 2), height: okH }, s('title', {}, `${b.ok} succeeded`)));
    if (b.failed) svg.append(s('rect', { class: 'bar fail', x, y: base - okH - failH, width: Math.max(1, w - 2), height: failH }, s('title', {}, `${b.failed} failed`)));
  });
  return svg;
}

function lineChart(points, label, { max, percent, cls = '' }) {
  const top = max ?? Math.max(1, ...points.map((p) => p.v ?? 0));
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${CW} ${CH}`, role: 'img', 'aria-label': `${percent ? 'Rate' : 'Count'} per bucket` });
  svg.append(frame(top, label, points, percent));
  const w = (CW - M.l - M.r) / points.length;
  const hgt = CH - M.t - M.b;
  let d = '';
  points.forEach((p, i) => {
    if (p.v === null) return;
    const x = M.l + w * (i + 0.5);
    const y = M.t + hgt * (1 - p.v / top);
    d += `${d && points[i - 1]?.v !== null ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)} `;
  });
  if (d) svg.append(s('path', { class: `line ${cls}`, d }));
  else svg.append(s('text', { x: CW / 2, y: CH / 2, 'text-anchor': 'middle' }, 'no finished jobs in this window'));
  return svg;
}
