// Shared pieces of the dashboard: building DOM without innerHTML, the API
// client (the key from sessionStorage, sent only as a header), Server-Sent
// Events over fetch (EventSource cannot send a header), formatting, badges.

const KEY = 'orch.key';

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) { if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY); },
  /** The signed-in key as `GET /v1/me` answers it. */
  me: null,
};

/** Whether the signed-in key has `scope` (admin has every scope). */
export function can(scope) {
  const scopes = session.me?.scopes ?? [];
  return scopes.includes('admin') || scopes.includes(scope);
}

/** An element: h('a', {href, class, onclick}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);
}

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else if (name === 'value' && 'value' in el) el.value = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = body?.error ?? {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.details = error.details;
  }
}

/** Called when the key stops working (401): the app goes back to sign-in. */
export const onUnauthorized = { handler: () => {} };

/**
 * Calls the API with the signed-in key. Resolves with the parsed JSON (or the
 * text for non-JSON answers, null for 204); rejects with ApiError.
 */
export async function api(path, { method = 'GET', body, headers = {}, signal, key } = {}) {
  const init = { method, signal, headers: { ...headers }, cache: 'no-store', referrerPolicy: 'no-referrer' };
  const secret = key ?? session.key;
  if (secret) init.headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const type = res.headers.get('content-type') || '';
  const data = res.status === 204 ? null : type.includes('json') ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) {
    if (res.status === 401 && !key) onUnauthorized.handler();
    throw new ApiError(res.status, data);
  }
  return data;
}

/**
 * Follows a Server-Sent Events stream with the key in a header, calling
 * `onEvent({id, event, data})` for each event and reconnecting (with
 * Last-Event-ID) when the connection drops before `done()` says to stop.
 */
export async function follow(path, { signal, onEvent, done = () => false, lastEventId = 0 }) {
  let last = lastEventId;
  while (!signal.aborted && !done()) {
    try {
      const res = await fetch(path, {
        headers: { Authorization: `Bearer ${session.key}`, Accept: 'text/event-stream', 'Last-Event-ID': String(last) },
        signal,
        cache: 'no-store',
      });
      if (!res.ok) {
        if (res.status === 401) onUnauthorized.handler();
        throw new ApiError(res.status, await res.json().catch(() => null));
      }
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        buffer += value.replace(/\r\n?/g, '\n');
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = { id: null, event: 'message', data: '' };
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'id') event.id = val;
            else if (field === 'event') event.event = val;
            else if (field === 'data') event.data += (event.data ? '\n' : '') + val;
          }
          if (!event.data) continue;
          if (event.id) last = Number(event.id);
          try { event.data = JSON.parse(event.data); } catch { /* keep the text */ }
          onEvent(event);
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status < 500 && err.status !== 429) throw err;
    }
    if (!done() && !signal.aborted) await sleep(1000, signal);
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/* Formatting */

const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

/** "3 min ago", with the exact time in a title. */
export function ago(ts) {
  if (!ts) return h('span', { class: 'muted' }, '—');
  const t = new Date(ts);
  const secs = Math.round((t.getTime() - Date.now()) / 1000);
  const abs = Math.abs(secs);
  const text = abs < 60 ? rtf.format(secs, 'second')
    : abs < 3600 ? rtf.format(Math.round(secs / 60), 'minute')
    : abs < 86400 ? rtf.format(Math.round(secs / 3600), 'hour')
    : rtf.format(Math.round(secs / 86400), 'day');
  return h('time', { datetime: t.toISOString(), title: t.toLocaleString() }, text);
}

export function when(ts) {
  return ts ? new Date(ts).toLocaleString() : '—';
}

/** 850 ms, 2.4 s, 3 min 5 s. */
export function dur(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const m = Math.floor(ms / 60_000);
  if (m < 60) return `${m} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function between(a, b) {
  return a && b ? new Date(b) - new Date(a) : null;
}

export function badge(status, label) {
  return h('span', { class: `badge s-${String(status).replace(/[^a-z_]/gi, '')}` }, label ?? status);
}

export function shortId(id) {
  return String(id).slice(-12);
}

export function json(value) {
  return h('pre', { class: 'code' }, typeof value === 'string' ? value : JSON.stringify(value, null, 2));
}

export function toast(message, kind = 'ok') {
  const box = document.getElementById('toasts');
  const el = h('div', { class: `toast ${kind}` }, message);
  box.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}

export function errorBox(err) {
  return h('div', { class: 'alert error', role: 'alert' }, err instanceof ApiError ? `${err.message}` : String(err?.message ?? err));
}

/** A button that runs `action` once at a time and reports its error. */
export function button(label, action, attrs = {}) {
  const el = h('button', { type: 'button', class: 'btn', ...attrs }, label);
  el.addEventListener('click', async () => {
    el.disabled = true;
    try {
      await action(el);
    } catch (err) {
      toast(err.message || String(err), 'error');
    } finally {
      if (el.isConnected) el.disabled = false;
    }
  });
  return el;
}

export function card(title, ...children) {
  return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, ...children);
}

export function table(headers, rows, empty = 'Nothing here yet.') {
  if (!rows.length) return h('div', { class: 'table-wrap' }, h('p', { class: 'empty' }, empty));
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, headers.map((x) => (typeof x === 'string' ? h('th', { scope: 'col' }, x) : x)))),
      h('tbody', {}, rows)));
}

/** Saves text as a file without putting anything in a URL the server sees. */
export function download(name, text, type = 'text/plain') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
