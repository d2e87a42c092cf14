// Jobs: the filterable, paged list (cursor paging of GET /v1/jobs, refreshed
// while shown) and a job's page: its live DAG (batch), timings, input,
// result, events and webhook deliveries, followed over Server-Sent Events.

import {
  ago, api, badge, between, button, can, card, dur, errorBox, fill, follow, h, json, shortId, table, toast, when,
} from './lib.js';
import { drawDag, stepOf } from './dag.js';
import { markdown } from './md.js';

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const KINDS = ['chat', 'batch', 'delivery'];
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

export async function jobs(main, ctx, id) {
  return id ? detail(main, ctx, id) : list(main, ctx);
}

function select(id, labelText, options, value) {
  return h('label', { for: id }, labelText,
    h('select', { id, name: id },
      h('option', { value: '' }, 'Any'),
      options.map((o) => h('option', { value: o, selected: o === value }, o))));
}

async function list(main, ctx) {
  ctx.setTitle('Jobs');
  const q = ctx.query;
  const filters = { status: q.get('status') || '', kind: q.get('kind') || '', limit: q.get('limit') || '50' };
  const cursors = [null]; // cursor of each page seen so far
  let page = 0;
  let next = null;

  const statusSel = select('f-status', 'Status', STATUSES, filters.status);
  const kindSel = select('f-kind', 'Kind', KINDS, filters.kind);
  const sizeSel = h('label', { for: 'f-limit' }, 'Per page',
    h('select', { id: 'f-limit' }, ['25', '50', '100', '200'].map((n) => h('option', { value: n, selected: n === filters.limit }, n))));
  const apply = () => {
    const params = new URLSearchParams();
    for (const [k, el] of [['status', statusSel], ['kind', kindSel], ['limit', sizeSel]]) {
      const v = el.querySelector('select').value;
      if (v && !(k === 'limit' && v === '50')) params.set(k, v);
    }
    ctx.go(`jobs${params.size ? `?${params}` : ''}`);
  };
  for (const el of [statusSel, kindSel, sizeSel]) el.querySelector('select').addEventListener('change', apply);

  const body = h('div', { 'aria-live': 'polite', 'aria-busy': 'true' });
  const where = h('span', { class: 'muted small' });
  const newer = h('button', { type: 'button', class: 'btn sm', disabled: true }, '← Newer');
  const older = h('button', { type: 'button', class: 'btn sm', disabled: true }, 'Older →');
  const live = h('input', { type: 'checkbox', id: 'f-live', checked: true });

  fill(main,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Jobs'), h('p', {}, 'Newest first. Open a job for its graph, events, result and webhook deliveries.')),
      can('jobs:write') ? h('a', { class: 'btn primary', href: '#/playground' }, 'New batch job') : null),
    h('div', { class: 'filters' }, statusSel, kindSel, sizeSel,
      h('label', { class: 'inline', for: 'f-live' }, live, 'Live')),
    body,
    h('div', { class: 'pager' }, where, newer, older));

  const load = async (quiet) => {
    const params = new URLSearchParams({ limit: filters.limit });
    if (filters.status) params.set('status', filters.status);
    if (filters.kind) params.set('kind', filters.kind);
    if (cursors[page]) params.set('cursor', cursors[page]);
    try {
      const res = await api(`/v1/jobs?${params}`, { signal: ctx.signal });
      next = res.next_cursor ?? null;
      fill(body, jobTable(res.jobs));
      body.setAttribute('aria-busy', 'false');
      const size = Number(filters.limit);
      where.textContent = res.jobs.length
        ? `Page ${page + 1} · jobs ${page * size + 1}–${page * size + res.jobs.length}`
        : `Page ${page + 1}`;
      newer.disabled = page === 0;
      older.disabled = !next;
    } catch (err) {
      if (!quiet && err.name !== 'AbortError') fill(body, errorBox(err));
    }
  };
  newer.addEventListener('click', () => { if (page > 0) { page--; load(); } });
  older.addEventListener('click', () => {
    if (!next) return;
    cursors[page + 1] = next;
    page++;
    load();
  });
  ctx.every(3000, () => { if (live.checked) load(true); });
  await load();
}

function jobTable(list) {
  const now = Date.now();
  return table(
    ['Job', 'Kind', 'Status', h('th', { class: 'num', scope: 'col' }, 'Progress'), h('th', { class: 'num', scope: 'col' }, 'Attempts'), 'Created', h('th', { class: 'num', scope: 'col' }, 'Run time')],
    list.map((j) => {
      const p = j.progress ?? {};
      const run = j.started_at ? (j.finished_at ? between(j.started_at, j.finished_at) : now - new Date(j.started_at)) : null;
      return h('tr', { 'data-job': j.id, 'data-status': j.status },
        h('td', {}, h('a', { href: `#/jobs/${j.id}`, class: 'mono', title: j.id }, shortId(j.id)),
          j.metadata && Object.keys(j.metadata).length ? h('div', { class: 'small muted' }, metaLine(j.metadata)) : null),
        h('td', {}, h('span', { class: 'tag' }, j.kind)),
        h('td', {}, badge(j.status), j.cancel_requested && !TERMINAL.has(j.status) ? h('span', { class: 'small muted' }, ' cancelling') : null),
        h('td', { class: 'num' }, p.total ? `${p.completed ?? 0}/${p.total}` : '—'),
        h('td', { class: 'num' }, `${j.attempts}/${j.max_attempts}`),
        h('td', {}, ago(j.created_at)),
        h('td', { class: 'num' }, dur(run)));
    }),
    'No jobs match. Submit one from the playground or the API.');
}

function metaLine(meta) {
  return Object.entries(meta).slice(0, 3).map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' · ').slice(0, 90);
}

/* ---------- one job ---------- */

async function detail(main, ctx, id) {
  ctx.setTitle(`Job ${shortId(id)}`);
  let job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal: ctx.signal });
  const input = await api(`/v1/jobs/${encodeURIComponent(id)}/input`, { signal: ctx.signal }).catch(() => null);

  const statusEl = h('span');
  const actions = h('div', { class: 'row' });
  const timings = h('div');
  const resultBody = h('div', {}, h('p', { class: 'muted' }, 'Not finished yet.'));
  const eventsList = h('ol', { class: 'timeline', 'aria-label': 'Events' });
  const deliveriesBody = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const dagCard = job.kind === 'batch' ? h('section', { class: 'card', id: 'dag-card' }) : null;

  const renderHead = () => {
    fill(statusEl, badge(job.status), ' ', h('span', { class: 'tag' }, job.kind),
      job.cancel_requested && !TERMINAL.has(job.status) ? h('span', { class: 'small muted' }, ' cancelling…') : null);
    fill(actions,
      can('jobs:write') && !TERMINAL.has(job.status) && !job.cancel_requested
        ? button('Cancel job', async () => {
          job = await api(`/v1/jobs/${id}/cancel`, { method: 'POST' });
          toast('Cancellation requested');
          renderHead();
        }, { class: 'btn danger' })
        : null,
      h('a', { class: 'btn', href: '#/jobs' }, 'All jobs'));
    fill(timings, h('dl', { class: 'kv' },
      h('dt', {}, 'Created'), h('dd', {}, when(job.created_at)),
      h('dt', {}, 'Started'), h('dd', {}, when(job.started_at)),
      h('dt', {}, 'Finished'), h('dd', {}, when(job.finished_at)),
      h('dt', {}, 'Waited'), h('dd', {}, dur(between(job.created_at, job.started_at))),
      h('dt', {}, 'Ran'), h('dd', {}, dur(between(job.started_at, job.finished_at ?? (job.started_at ? new Date().toISOString() : null)))),
      h('dt', {}, 'Attempts'), h('dd', {}, `${job.attempts} of ${job.max_attempts}`),
      job.worker ? [h('dt', {}, 'Worker'), h('dd', { class: 'mono' }, job.worker)] : null,
      job.error ? [h('dt', {}, 'Error'), h('dd', {}, h('span', { class: 'tag' }, job.error.code), ' ', job.error.message,
        job.error.retryable ? h('span', { class: 'muted' }, ' (retryable)') : null)] : null,
      Object.keys(job.metadata ?? {}).length ? [h('dt', {}, 'Metadata'), h('dd', {}, json(job.metadata))] : null));
  };

  fill(main,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Job ', h('span', { class: 'mono' }, shortId(id))), h('p', { class: 'mono small' }, id, ' ', statusEl)),
      actions),
    h('div', { class: 'stack' },
      dagCard,
      h('div', { class: 'grid cols-2' },
        card('Timings', timings),
        card('Input', inputView(job, input)),
        card('Result', resultBody),
        card('Webhook deliveries', deliveriesBody)),
      card('Events', eventsList)));
  renderHead();

  const dag = dagCard ? liveDag(dagCard, ctx, job, input) : null;
  const loadResult = async () => {
    try {
      const res = await api(`/v1/jobs/${id}/result`, { signal: ctx.signal });
      fill(resultBody, resultView(job, res));
    } catch (err) {
      if (err.status !== 409) fill(resultBody, errorBox(err));
    }
  };
  const loadDeliveries = async () => {
    try {
      const res = await api(`/v1/jobs/${id}/deliveries`, { signal: ctx.signal });
      fill(deliveriesBody, deliveriesView(res.deliveries, loadDeliveries));
    } catch (err) {
      fill(deliveriesBody, errorBox(err));
    }
  };
  await dag?.load();
  loadDeliveries();
  if (TERMINAL.has(job.status)) loadResult();

  let refresh = null;
  const refreshJob = () => {
    clearTimeout(refresh);
    refresh = setTimeout(async () => {
      job = await api(`/v1/jobs/${id}`, { signal: ctx.signal }).catch(() => job);
      renderHead();
    }, 150);
  };
  let ended = false;
  follow(`/v1/jobs/${encodeURIComponent(id)}/events`, {
    signal: ctx.signal,
    done: () => ended,
    onEvent: ({ data: env }) => {
      if (!env || typeof env !== 'object') return;
      eventsList.append(eventItem(env));
      dag?.event(env);
      if (env.type !== 'progress' || env.data?.node === undefined) refreshJob();
      else if (job.kind === 'batch') { job.progress = env.data; }
      if (TERMINAL.has(env.type)) {
        ended = true;
        refreshJob();
        setTimeout(() => { loadResult(); loadDeliveries(); dag?.load(); }, 200);
      }
    },
  }).catch((err) => eventsList.append(h('li', {}, errorBox(err))));
  // Deliveries keep moving after the job ends (retries): refresh them now and then.
  ctx.every(4000, () => { if (ended) loadDeliveries(); });
}

function inputView(job, input) {
  if (!input) return h('p', { class: 'muted' }, 'Not available.');
  const { key, ...rest } = input;
  const by = key ? h('p', { class: 'small muted' }, 'Submitted by ', h('strong', {}, key.name), ' ', h('span', { class: 'mono' }, key.id)) : null;
  if (job.kind === 'chat' && Array.isArray(input.messages)) {
    const options = Object.fromEntries(Object.entries(rest).filter(([k]) => k !== 'messages'));
    return h('div', { class: 'stack' }, by,
      input.messages.map((m) => h('div', {}, h('div', { class: 'small muted' }, m.role), markdown(m.content))),
      Object.keys(options).length ? json(options) : null);
  }
  if (rest.request) {
    return h('div', { class: 'stack' }, by, h('div', {}, h('div', { class: 'small muted' }, 'Request'), markdown(rest.request)), json(rest));
  }
  return h('div', {}, by, json(rest));
}

function resultView(job, res) {
  if (res.error) {
    return h('div', { class: 'stack' }, h('div', { class: 'alert error' }, h('strong', {}, res.error.code), ': ', res.error.message),
      res.result ? json(res.result) : null);
  }
  const r = res.result;
  if (job.kind === 'chat' && r && typeof r.text === 'string') {
    return h('div', { class: 'stack' },
      markdown(r.text),
      h('p', { class: 'small muted' }, [r.routed_to && `routed to ${r.routed_to}`, r.route_reason].filter(Boolean).join(' · ')),
      r.usage ? h('details', {}, h('summary', {}, 'Usage'), json(r.usage)) : null);
  }
  if (r && typeof r.output === 'string') return markdown(r.output);
  return json(r ?? null);
}

function eventItem(env) {
  const d = env.data ?? {};
  let what = '';
  if (env.type === 'progress') {
    if (d.node) what = `${d.node} ${d.status}${d.duration_ms !== undefined ? ` in ${dur(d.duration_ms)}` : ''}${d.error ? `: ${d.error.message ?? ''}` : ''}`;
    else if (d.type === 'planned') what = 'planned';
    else if (d.status === 'resumed') what = `resumed ${d.resumed} finished node(s) from the last attempt`;
    else what = JSON.stringify(d).slice(0, 140);
  } else if (d.error) what = `${d.error.code}: ${d.error.message}`;
  else if (d.attempt) what = `attempt ${d.attempt}`;
  return h('li', { 'data-type': env.type },
    h('span', { class: 'muted mono' }, env.seq),
    h('span', {}, badge(env.type === 'progress' ? (d.status ?? 'running') : env.type, env.type)),
    h('span', {}, h('span', { class: 'muted' }, new Date(env.at).toLocaleTimeString(), ' '), what));
}

function deliveriesView(list, reload) {
  if (!list.length) return h('p', { class: 'muted' }, 'No webhook deliveries: the job has no callback and no subscription matched.');
  return h('div', {}, list.map((d) => h('details', { 'data-delivery': d.id },
    h('summary', {}, badge(d.status), ' ', h('span', { class: 'tag' }, d.event), ' ', h('span', { class: 'small' }, d.target),
      h('span', { class: 'muted small' }, ` · ${d.attempts}/${d.max_attempts} attempts`, d.response_status ? ` · HTTP ${d.response_status}` : '')),
    h('div', { class: 'stack small' },
      h('dl', { class: 'kv' },
        h('dt', {}, 'Delivery'), h('dd', { class: 'mono' }, d.id),
        h('dt', {}, 'Created'), h('dd', {}, when(d.created_at)),
        d.finished_at ? [h('dt', {}, 'Finished'), h('dd', {}, when(d.finished_at))] : null,
        d.next_attempt_at ? [h('dt', {}, 'Next attempt'), h('dd', {}, when(d.next_attempt_at))] : null,
        d.redelivery_of ? [h('dt', {}, 'Redelivery of'), h('dd', { class: 'mono' }, d.redelivery_of)] : null,
        d.skipped ? [h('dt', {}, 'Skipped'), h('dd', {}, d.skipped)] : null,
        d.error ? [h('dt', {}, 'Error'), h('dd', {}, typeof d.error === 'string' ? d.error : d.error.message ?? JSON.stringify(d.error))] : null),
      table(['#', 'When', 'Outcome', 'Detail'], (d.log ?? []).map((a, i) => h('tr', {},
        h('td', {}, i + 1),
        h('td', {}, a.at ? new Date(a.at).toLocaleTimeString() : '—'),
        h('td', {}, a.response_status ? `HTTP ${a.response_status}` : a.error?.code ?? a.type ?? '—'),
        h('td', { class: 'small' }, [a.duration_ms !== undefined ? dur(a.duration_ms) : null, a.error?.message,
          a.body_excerpt ? `answer: ${a.body_excerpt.slice(0, 120)}` : null].filter(Boolean).join(' · ') || '—'))),
      'No attempt yet.'),
      can('jobs:write') && d.job_id
        ? h('div', {}, button('Redeliver', async () => {
          await api(`/v1/deliveries/${d.id}/redeliver`, { method: 'POST' });
          toast('Redelivery queued');
          await reload();
        }, { class: 'btn sm', 'data-action': 'redeliver' }))
        : null))));
}

/* ---------- the live DAG ---------- */

/** The DAG card of a batch job: structure from /graph, states from the job's events. */
function liveDag(cardEl, ctx, job, input) {
  const id = job.id;
  let plan = input?.plan ?? null;
  let graph = null;
  const states = new Map(); // node → {status, duration_ms, resumed, output?}
  let selected = null;
  const canvas = h('div', { class: 'dag-scroll' });
  const panel = h('aside', { class: 'card', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Select a node to see its state, duration and output.'));
  const summary = h('span', { class: 'sub' });
  fill(cardEl,
    h('h2', {}, 'Graph', summary),
    h('div', { class: 'dag-wrap' },
      h('div', {}, canvas,
        h('div', { class: 'legend' },
          h('span', { class: 'crit' }, '━ critical path'), h('span', {}, '┅ resumed from an earlier attempt'),
          h('span', {}, 'Tab to a node, Enter to open it'))),
      panel));

  const nodeDef = (nid) => plan?.nodes?.find((n) => n.id === nid);
  const weight = (nid) => {
    const st = states.get(nid);
    if (st?.duration_ms !== undefined && st?.duration_ms !== null) return st.duration_ms;
    const def = nodeDef(nid);
    return def?.sleep?.ms ?? 1;
  };
  let pending = false;
  const draw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (!graph) return;
      const ids = Object.keys(graph.nodes);
      if (!ids.length) {
        fill(canvas, h('p', { class: 'empty' }, 'Planning… the graph appears once the planner answers.'));
        return;
      }
      const order = plan?.nodes?.map((n) => n.id).filter((n) => ids.includes(n)) ?? ids.sort();
      const nodes = order.map((nid) => ({ id: nid, step: stepOf(nodeDef(nid)), ...states.get(nid) }));
      const { path } = drawDag(canvas, {
        nodes, edges: graph.edges, weight, selected, onSelect: (nid) => { selected = nid; showNode(nid); },
        label: `Graph of job ${id}`,
      });
      const done = nodes.filter((n) => n.status === 'succeeded').length;
      const resumed = nodes.filter((n) => n.resumed).length;
      summary.textContent = `${done}/${nodes.length} succeeded${resumed ? ` · ${resumed} resumed` : ''} · critical path ${path.join(' → ')}`;
      if (selected) showNode(selected, true);
    });
  };

  const showNode = async (nid, quiet) => {
    const st = states.get(nid) ?? {};
    const def = nodeDef(nid);
    const out = h('div', {}, h('p', { class: 'muted' }, st.status === 'succeeded' || st.status === 'failed' ? 'Loading output…' : 'No output yet.'));
    if (quiet && panel.dataset.node === nid && panel.dataset.status === st.status) return;
    panel.dataset.node = nid;
    panel.dataset.status = st.status ?? '';
    fill(panel,
      h('h2', {}, h('span', { class: 'mono' }, nid), badge(st.status ?? 'pending')),
      h('dl', { class: 'kv' },
        h('dt', {}, 'Step'), h('dd', {}, stepOf(def) || '—'),
        h('dt', {}, 'Duration'), h('dd', {}, dur(st.duration_ms)),
        st.attempts ? [h('dt', {}, 'Attempts'), h('dd', {}, st.attempts)] : null,
        h('dt', {}, 'Resumed'), h('dd', {}, st.resumed ? 'yes: its output was kept from an earlier attempt' : 'no'),
        def?.depends_on?.length ? [h('dt', {}, 'Depends on'), h('dd', { class: 'mono' }, def.depends_on.join(', '))] : null),
      st.error ? h('div', { class: 'alert error' }, st.error.code ? `${st.error.code}: ` : '', st.error.message ?? JSON.stringify(st.error)) : null,
      h('h3', {}, 'Output'), out,
      def ? h('details', {}, h('summary', {}, 'Definition'), json(def)) : null);
    if (st.status === 'succeeded' || st.status === 'failed') {
      try {
        const value = await api(`/v1/jobs/${id}/outputs/${encodeURIComponent(nid)}`, { signal: ctx.signal });
        fill(out, typeof value === 'string' ? markdown(value) : json(value));
        out.setAttribute('data-output', nid);
      } catch (err) {
        fill(out, err.status === 404 ? h('p', { class: 'muted' }, 'This node has no output.') : errorBox(err));
      }
    }
  };

  return {
    async load() {
      try {
        graph = await api(`/v1/jobs/${id}/graph`, { signal: ctx.signal });
      } catch (err) {
        fill(canvas, errorBox(err));
        return;
      }
      // The states come from the job's events (replayed from the first), which
      // also tell which nodes a later attempt resumed; the graph gives the shape.
      for (const nid of Object.keys(graph.nodes)) if (!states.has(nid)) states.set(nid, { status: 'pending' });
      draw();
    },
    event(env) {
      const d = env.data ?? {};
      if (env.type === 'running') {
        // A new attempt: finished nodes are kept (resumed) unless they start again.
        for (const st of states.values()) {
          if (st.status === 'succeeded' || (st.status === 'failed' && st.output !== undefined)) st.resumed = true;
          else if (st.status === 'running') st.status = 'pending';
        }
      } else if (env.type === 'progress' && d.type === 'planned' && d.plan) {
        plan = d.plan;
        this.load();
        return;
      } else if (env.type === 'progress' && d.node) {
        const st = states.get(d.node) ?? {};
        if (d.status === 'started' || d.status === 'retrying') Object.assign(st, { status: 'running', resumed: false });
        else Object.assign(st, { status: d.status, duration_ms: d.duration_ms, attempts: d.attempts, error: d.error, output: d.output, resumed: false });
        states.set(d.node, st);
      } else if (env.type === 'cancelled') {
        for (const st of states.values()) if (st.status === 'pending' || st.status === 'running') st.status = 'skipped';
      }
      draw();
    },
  };
}
