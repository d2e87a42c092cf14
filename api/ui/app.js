// The dashboard's entry: sign-in with an API key (kept in this tab's
// sessionStorage only), the shell with its navigation, and a hash router
// that loads each view's module on first use.

import { ApiError, api, can, errorBox, fill, h, onUnauthorized, session } from './lib.js';

const app = document.getElementById('app');

/** Views by the first part of the hash; each module's `render(main, ctx, ...params)`. */
const VIEWS = [
  { path: 'overview', title: 'Overview', load: () => import('./overview.js'), fn: 'overview' },
  { path: 'jobs', title: 'Jobs', load: () => import('./jobs.js'), fn: 'jobs' },
  { path: 'playground', title: 'Playground', load: () => import('./playground.js'), fn: 'playground', scope: 'jobs:write' },
  { path: 'servers', title: 'Servers & tools', load: () => import('./admin.js'), fn: 'servers', scope: 'tools:call' },
  { path: 'sessions', title: 'Sessions', load: () => import('./admin.js'), fn: 'sessions' },
  { path: 'keys', title: 'Keys', load: () => import('./admin.js'), fn: 'keys', scope: 'admin' },
  { path: 'audit', title: 'Audit log', load: () => import('./admin.js'), fn: 'audit', scope: 'admin' },
];

let current = null; // { controller, timers }

function signIn(message) {
  session.key = null;
  session.me = null;
  stopView();
  const input = h('input', {
    id: 'key', name: 'key', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
    placeholder: 'orch_…', 'aria-describedby': 'key-help',
  });
  const error = h('div', { 'aria-live': 'assertive' }, message ? errorBox(message) : null);
  const submit = h('button', { type: 'submit', class: 'btn primary' }, 'Sign in');
  const form = h('form', { class: 'form', novalidate: true },
    h('label', { for: 'key' }, 'API key', input),
    h('p', { id: 'key-help', class: 'small' },
      'Kept in this tab only (sessionStorage) and sent as a header; never stored on disk or put in a URL. ',
      'Create one with ', h('code', {}, 'orch keys create'), '.'),
    error, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) { fill(error, errorBox('Paste an API key.')); input.focus(); return; }
    submit.disabled = true;
    try {
      session.me = await api('/v1/me', { key });
      session.key = key;
      input.value = '';
      start();
    } catch (err) {
      fill(error, errorBox(err instanceof ApiError && err.status === 401 ? 'That key is not valid (unknown, revoked or expired).' : err));
      input.select();
    } finally {
      submit.disabled = false;
    }
  });
  fill(app, h('main', { class: 'signin' },
    h('div', { class: 'card' },
      h('div', { class: 'brand' }, h('img', { src: '/ui/icon.svg', alt: '' }), 'Orch'),
      h('h1', {}, 'Sign in'),
      h('p', {}, 'Use an API key. What you see follows its scopes: a jobs:read key gets a read-only view.'),
      form)));
  document.title = 'Sign in · Orch';
  input.focus();
}

function signOut() {
  signIn();
  history.replaceState(null, '', '#/');
}

function shell() {
  const me = session.me;
  const nav = h('nav', { class: 'nav', 'aria-label': 'Main' },
    VIEWS.filter((v) => !v.scope || can(v.scope)).map((v) => h('a', { href: `#/${v.path}`, 'data-view': v.path }, v.title)));
  const scopes = me.scopes.join(', ');
  fill(app,
    h('a', { class: 'skip', href: '#main' }, 'Skip to content'),
    h('div', { class: 'shell' },
      h('aside', { class: 'side' },
        h('div', { class: 'brand' }, h('img', { src: '/ui/icon.svg', alt: '' }), 'Orch'),
        nav,
        h('div', { class: 'who' },
          h('div', {}, h('strong', {}, me.name), h('div', { class: 'mono', title: scopes }, scopes)),
          h('button', { type: 'button', class: 'btn sm', onclick: signOut }, 'Sign out'))),
      h('main', { id: 'main', tabindex: -1 })));
}

function stopView() {
  if (!current) return;
  current.controller.abort();
  current.timers.forEach(clearInterval);
  current = null;
}

async function route() {
  if (!session.me) return;
  const hash = location.hash.replace(/^#\/?/, '');
  const [pathPart, queryPart = ''] = hash.split('?');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  const fallback = can('admin') ? 'overview' : 'jobs';
  const view = VIEWS.find((v) => v.path === (parts[0] || fallback)) ?? VIEWS.find((v) => v.path === fallback);
  stopView();
  const controller = new AbortController();
  const timers = [];
  current = { controller, timers };
  const ctx = {
    signal: controller.signal,
    query: new URLSearchParams(queryPart),
    /** Runs `fn` every `ms` while this view is shown and the tab is visible. */
    every(ms, fn) { timers.push(setInterval(() => { if (!document.hidden) fn(); }, ms)); },
    go(path) { location.hash = `#/${path}`; },
    setTitle(text) { document.title = `${text} · Orch`; },
  };
  for (const a of app.querySelectorAll('.nav a')) {
    if (a.dataset.view === view.path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const main = document.getElementById('main');
  ctx.setTitle(view.title);
  try {
    if (view.scope && !can(view.scope)) {
      fill(main, errorBox(`This key lacks the scope ${view.scope} needed for ${view.title}.`));
      return;
    }
    const module = await view.load();
    if (controller.signal.aborted) return;
    await module[view.fn](main, ctx, ...parts.slice(1));
  } catch (err) {
    if (!controller.signal.aborted && err?.name !== 'AbortError') fill(main, errorBox(err));
  }
}

async function start() {
  shell();
  if (!location.hash || location.hash === '#/') history.replaceState(null, '', `#/${can('admin') ? 'overview' : 'jobs'}`);
  await route();
}

onUnauthorized.handler = () => signIn('The key stopped working (revoked, expired or rotated). Sign in again.');
window.addEventListener('hashchange', route);

(async () => {
  if (!session.key) return signIn();
  try {
    session.me = await api('/v1/me');
    await start();
  } catch (err) {
    signIn(err instanceof ApiError && err.status === 401 ? null : err);
  }
})();
