// The plan playground: write a plan (JSON) or a request in plain language,
// preview it with POST /v1/plans (graph, levels, critical path, estimate),
// then run it as a batch job and follow it on the job's page.

import { api, button, card, dur, errorBox, fill, h, toast } from './lib.js';
import { drawDag, edgesFromMermaid, stepOf } from './dag.js';

const EXAMPLE = {
  nodes: [
    { id: 'fetch', sleep: { ms: 600 } },
    { id: 'title', echo: { title: 'Weekly report' } },
    { id: 'outline', sleep: { ms: 300 }, depends_on: ['title'] },
    { id: 'draft', value: { title: '${nodes.title.output.title}', fetched: '${nodes.fetch.output}' }, depends_on: ['outline'] },
    { id: 'publish', echo: 'published', depends_on: ['draft'] },
  ],
};

const DRAFT = 'orch.playground';

export async function playground(main, ctx) {
  ctx.setTitle('Playground');
  let mode = 'plan';
  const saved = JSON.parse(sessionStorage.getItem(DRAFT) || 'null');
  const planText = h('textarea', { id: 'pg-plan', spellcheck: 'false', 'aria-describedby': 'pg-plan-help' },
    saved?.plan ?? JSON.stringify(EXAMPLE, null, 2));
  const requestText = h('textarea', { id: 'pg-request', rows: 6, placeholder: "Fetch this week's GitHub issues of orch/orch and write a summary page to Notion" }, saved?.request ?? '');
  const tools = h('input', { id: 'pg-tools', placeholder: 'notion.create_page, github.list_issues', value: saved?.tools ?? '' });
  const callback = h('input', { id: 'pg-callback', type: 'url', placeholder: 'https://n8n.example.com/webhook-waiting/…', value: saved?.callback ?? '' });
  const planPane = h('div', { class: 'form' },
    h('label', { for: 'pg-plan' }, 'Plan (JSON)', planText),
    h('p', { id: 'pg-plan-help', class: 'small muted' }, 'Nodes with ', h('code', {}, 'tool'), ', ', h('code', {}, 'map'), ', ', h('code', {}, 'llm'), ', ',
      h('code', {}, 'value'), ', ', h('code', {}, 'echo'), ' or ', h('code', {}, 'sleep'), ' steps; ', h('code', {}, 'depends_on'),
      ' and ', h('code', {}, '${nodes.x.output}'), ' references make the edges. See docs/plans.md.'));
  const requestPane = h('div', { class: 'form', hidden: true },
    h('label', { for: 'pg-request' }, 'Request (plain language)', requestText),
    h('label', { for: 'pg-tools' }, 'Extra tools the planner may use (comma-separated, optional)', tools));
  const tabPlan = h('button', { type: 'button', role: 'tab', 'aria-selected': 'true', id: 'tab-plan' }, 'Plan');
  const tabRequest = h('button', { type: 'button', role: 'tab', 'aria-selected': 'false', id: 'tab-request' }, 'Request');
  const setMode = (m) => {
    mode = m;
    tabPlan.setAttribute('aria-selected', String(m === 'plan'));
    tabRequest.setAttribute('aria-selected', String(m === 'request'));
    planPane.hidden = m !== 'plan';
    requestPane.hidden = m !== 'request';
  };
  tabPlan.addEventListener('click', () => setMode('plan'));
  tabRequest.addEventListener('click', () => setMode('request'));
  if (saved?.mode === 'request') setMode('request');

  const out = h('div', { class: 'stack', 'aria-live': 'polite' });
  const remember = () => sessionStorage.setItem(DRAFT, JSON.stringify({
    mode, plan: planText.value, request: requestText.value, tools: tools.value, callback: callback.value,
  }));

  /** The body of POST /v1/plans (and of the job): the plan or the request. */
  const body = () => {
    remember();
    if (mode === 'plan') {
      try {
        const parsed = JSON.parse(planText.value);
        return { plan: parsed.plan && parsed.plan.nodes ? parsed.plan : parsed };
      } catch (err) {
        throw new Error(`The plan is not valid JSON: ${err.message}`);
      }
    }
    const b = { request: requestText.value.trim() };
    const list = tools.value.split(',').map((t) => t.trim()).filter(Boolean);
    if (list.length) b.tools = list;
    return b;
  };

  const preview = async () => {
    fill(out, h('p', { class: 'muted' }, mode === 'request' ? 'Asking the planner…' : 'Checking…'));
    try {
      const b = body();
      const res = await api('/v1/plans', { method: 'POST', body: b });
      const plan = res.plan ?? b.plan;
      fill(out, previewView(plan, res));
      return plan;
    } catch (err) {
      fill(out, issuesView(err));
      return null;
    }
  };

  const run = async () => {
    let b;
    try {
      b = body();
    } catch (err) {
      fill(out, errorBox(err));
      return;
    }
    if (callback.value.trim()) b.callback = { url: callback.value.trim() };
    b.metadata = { source: 'dashboard' };
    try {
      const accepted = await api('/v1/jobs/batch', { method: 'POST', body: b });
      toast(`Job ${accepted.id} queued`);
      ctx.go(`jobs/${accepted.id}`);
    } catch (err) {
      fill(out, issuesView(err));
    }
  };

  fill(main,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Plan playground'),
        h('p', {}, 'Write a plan or describe the job; preview its graph and analysis; run it and watch it live.'))),
    h('div', { class: 'grid cols-2' },
      card(null,
        h('div', { class: 'row' }, h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Input' }, tabPlan, tabRequest)),
        h('div', { class: 'form' },
          planPane, requestPane,
          h('label', { for: 'pg-callback' }, 'Webhook callback URL (optional)', callback),
          h('div', { class: 'row' },
            button('Preview', preview, { class: 'btn', id: 'pg-preview' }),
            button('Run', run, { class: 'btn primary', id: 'pg-run' }),
            h('span', { class: 'spacer' }),
            button('Example', () => { planText.value = JSON.stringify(EXAMPLE, null, 2); setMode('plan'); }, { class: 'btn sm' })))),
      h('div', {}, out)));
}

function previewView(plan, res) {
  const a = res.analysis;
  const canvas = h('div', { class: 'dag-scroll' });
  const edges = edgesFromMermaid(plan, res.mermaid);
  const detail = h('div', { class: 'small' });
  const view = h('div', { class: 'stack' },
    card('Analysis',
      h('div', { class: 'grid cols-4' },
        stat('Estimated', dur(a.estimated_ms)),
        stat('Total work', dur(a.total_work_ms)),
        stat('Levels', a.depth),
        stat('Widest level', a.width)),
      h('h3', {}, 'Critical path'),
      h('p', { class: 'mono', id: 'pg-critical' }, a.critical_path.join(' → ')),
      h('h3', {}, 'Levels'),
      h('ol', { class: 'small' }, a.levels.map((l) => h('li', { class: 'mono' }, l.join(', ')))),
      res.planning ? h('details', {}, h('summary', {}, 'How the planner made it'), h('pre', { class: 'code' }, JSON.stringify(res.planning, null, 2))) : null),
    card('Graph', canvas, detail));
  drawDag(canvas, {
    nodes: plan.nodes.map((n) => ({ id: n.id, step: stepOf(n), status: 'pending', duration_ms: a.node_estimates_ms?.[n.id] })),
    edges,
    critical: a.critical_path,
    onSelect: (id) => fill(detail, h('h3', {}, id), h('pre', { class: 'code' }, JSON.stringify(plan.nodes.find((n) => n.id === id), null, 2))),
    label: 'Preview of the plan',
  });
  return view;
}

function stat(label, value) {
  return h('div', { class: 'stat' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
}

function issuesView(err) {
  const issues = err.details?.issues;
  if (!Array.isArray(issues) || !issues.length) return errorBox(err);
  return h('div', { class: 'alert error', role: 'alert' },
    h('strong', {}, `${issues.length} problem${issues.length > 1 ? 's' : ''} with the plan`),
    h('ul', {}, issues.map((i) => h('li', {}, h('code', {}, i.field), ': ', i.message))));
}
