// A small markdown renderer that builds DOM nodes and never parses HTML:
// any `<tag>` in the text stays text. Headings, paragraphs, lists, block
// quotes, fenced code, rules, and inline code, bold, italics and links
// (http, https and mailto only).

import { h } from './lib.js';

export function markdown(text) {
  const root = h('div', { class: 'md' });
  const lines = String(text ?? '').replace(/\r\n?/g, '\n').split('\n');
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (/^\s*$/.test(line)) { i++; continue; }
    const fence = line.match(/^\s*(```|~~~)\s*([\w+-]*)/);
    if (fence) {
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++;
      root.append(h('pre', {}, h('code', fence[2] ? { 'data-lang': fence[2] } : {}, body.join('\n'))));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*?)\s*#*\s*$/);
    if (heading) {
      root.append(h(`h${Math.min(6, heading[1].length + 2)}`, {}, inline(heading[2])));
      i++;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { root.append(h('hr')); i++; continue; }
    if (/^\s*>/.test(line)) {
      const body = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) body.push(lines[i++].replace(/^\s*> ?/, ''));
      root.append(h('blockquote', {}, markdown(body.join('\n')).childNodes));
      continue;
    }
    const item = /^\s*([-*+]|\d+[.)])\s+/;
    if (item.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = h(ordered ? 'ol' : 'ul');
      while (i < lines.length && item.test(lines[i])) {
        let body = lines[i++].replace(item, '');
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !item.test(lines[i])) body += ` ${lines[i++].trim()}`;
        const task = body.match(/^\[( |x)\]\s+(.*)$/i);
        list.append(task
          ? h('li', {}, h('input', { type: 'checkbox', disabled: true, checked: task[1] !== ' ', 'aria-label': 'done' }), ' ', inline(task[2]))
          : h('li', {}, inline(body)));
      }
      root.append(list);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !/^(#{1,6}\s|\s*(```|~~~)|\s*>|\s*([-*+]|\d+[.)])\s)/.test(lines[i])) para.push(lines[i++].trim());
    if (!para.length) para.push(lines[i++].trim());
    root.append(h('p', {}, inline(para.join(' '))));
  }
  return root;
}

const SAFE_URL = /^(https?:|mailto:)/i;

/** Inline markup of one block, as an array of nodes. */
export function inline(text) {
  const out = [];
  const pattern = /(`+)([\s\S]*?)\1|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g;
  let last = 0;
  let m;
  while ((m = pattern.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1]) out.push(h('code', {}, m[2]));
    else if (m[3] || m[4]) out.push(h('strong', {}, inline(m[3] || m[4])));
    else if (m[5] || m[6]) out.push(h('em', {}, inline(m[5] || m[6])));
    else if (m[7]) out.push(SAFE_URL.test(m[8]) ? link(m[8], inline(m[7])) : m[0]);
    else if (m[9]) out.push(link(m[9], m[9]));
    last = pattern.lastIndex;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function link(href, children) {
  return h('a', { href, rel: 'noopener noreferrer nofollow', target: '_blank' }, children);
}
