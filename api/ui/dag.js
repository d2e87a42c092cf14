// A plan's DAG as SVG: nodes laid out left to right by level (longest path
// from a source), ordered within a level by their parents' places to keep
// edges short, the critical path (longest by duration) marked. Nodes are
// focusable buttons: click, Enter or Space selects one.

import { dur, s } from './lib.js';

const W = 176;
const H = 54;
const GAP_X = 64;
const GAP_Y = 18;
const PAD = 16;

/** What a plan node does, in a few words. */
export function stepOf(node) {
  if (!node) return '';
  if (node.tool) return node.tool;
  if (node.map) return `map ${node.map.node?.tool ?? ''}`.trim();
  if (node.llm) return `llm ${node.llm.model ?? ''}`.trim();
  if (node.sleep) return `sleep ${node.sleep.ms} ms`;
  for (const k of ['echo', 'value', 'fail']) if (k in node) return k;
  return '';
}

/** Levels: each node one past its deepest dependency. */
export function levels(ids, edges) {
  const parents = new Map(ids.map((id) => [id, []]));
  for (const [a, b] of edges) parents.get(b)?.push(a);
  const level = new Map();
  const visit = (id, seen = new Set()) => {
    if (level.has(id)) return level.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const l = Math.max(-1, ...parents.get(id).map((p) => visit(p, seen))) + 1;
    level.set(id, l);
    return l;
  };
  ids.forEach((id) => visit(id));
  const out = [];
  for (const id of ids) (out[level.get(id)] ??= []).push(id);
  return out.filter(Boolean);
}

/** The longest path through the DAG, weighting each node with `weight(id)`. */
export function criticalPath(ids, edges, weight) {
  const parents = new Map(ids.map((id) => [id, []]));
  for (const [a, b] of edges) parents.get(b)?.push(a);
  const best = new Map();
  const cost = (id) => {
    if (best.has(id)) return best.get(id).total;
    best.set(id, { total: 0, via: null }); // cycle guard
    let via = null;
    let before = 0;
    for (const p of parents.get(id)) {
      const c = cost(p);
      if (c > before || via === null) { before = c; via = p; }
    }
    const total = before + Math.max(0, weight(id) ?? 0);
    best.set(id, { total, via });
    return total;
  };
  let end = null;
  // On a tie the later node wins, so the path runs to its end.
  for (const id of ids) if (end === null || cost(id) >= cost(end)) end = id;
  const path = [];
  for (let at = end; at !== null && at !== undefined; at = best.get(at).via) path.unshift(at);
  return { path, total: end === null ? 0 : cost(end) };
}

/**
 * Draws the graph into `container`. `nodes`: [{id, step, status, duration_ms,
 * resumed}], `edges`: [[from, to]], and `critical` (the path to mark) or
 * `weight(id)` to find it. Returns { path, focus(id) }.
 */
export function drawDag(container, { nodes, edges, weight, critical, selected, onSelect, label = 'Plan graph' }) {
  const ids = nodes.map((n) => n.id);
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const cols = levels(ids, edges);
  const parents = new Map(ids.map((id) => [id, []]));
  for (const [a, b] of edges) parents.get(b)?.push(a);
  // Order each level by the mean place of its parents (one downward pass).
  const place = new Map();
  cols.forEach((col, x) => {
    if (x > 0) {
      const key = (id) => {
        const ps = parents.get(id).filter((p) => place.has(p));
        return ps.length ? ps.reduce((t, p) => t + place.get(p), 0) / ps.length : Infinity;
      };
      col.sort((a, b) => key(a) - key(b));
    }
    col.forEach((id, y) => place.set(id, y));
  });
  const tallest = Math.max(1, ...cols.map((c) => c.length));
  const width = PAD * 2 + cols.length * W + Math.max(0, cols.length - 1) * GAP_X;
  const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
  const pos = new Map();
  cols.forEach((col, x) => {
    const offset = ((tallest - col.length) * (H + GAP_Y)) / 2;
    col.forEach((id, y) => pos.set(id, { x: PAD + x * (W + GAP_X), y: PAD + offset + y * (H + GAP_Y) }));
  });
  const path = critical ?? criticalPath(ids, edges, weight).path;
  const onPath = new Set(path);
  const critEdge = new Set(path.slice(1).map((id, i) => `${path[i]}\u0000${id}`));

  const svg = s('svg', {
    class: 'dag', width, height, viewBox: `0 0 ${width} ${height}`, role: 'group', 'aria-label': label,
  });
  svg.append(s('defs', {}, s('marker', {
    id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse',
  }, s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }))));
  const edgeLayer = s('g', { 'aria-hidden': 'true' });
  for (const [a, b] of edges) {
    const p = pos.get(a);
    const q = pos.get(b);
    if (!p || !q) continue;
    const x1 = p.x + W;
    const y1 = p.y + H / 2;
    const x2 = q.x - 2;
    const y2 = q.y + H / 2;
    const mid = (x1 + x2) / 2;
    edgeLayer.append(s('path', {
      class: `edge${critEdge.has(`${a}\u0000${b}`) ? ' critical' : ''}`,
      d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
      'marker-end': 'url(#arrow)',
    }));
  }
  svg.append(edgeLayer);
  const groups = new Map();
  for (const id of ids) {
    const n = byId.get(id);
    const { x, y } = pos.get(id);
    const status = n.status ?? 'pending';
    const meta = [status, n.duration_ms !== undefined && n.duration_ms !== null ? dur(n.duration_ms) : null, n.resumed ? 'resumed' : null]
      .filter(Boolean).join(' · ');
    const g = s('g', {
      class: `node st-${status}${onPath.has(id) ? ' critical' : ''}${n.resumed ? ' resumed' : ''}${id === selected ? ' selected' : ''}`,
      transform: `translate(${x},${y})`,
      tabindex: 0,
      role: 'button',
      'data-node': id,
      'data-status': status,
      'aria-label': `Node ${id}: ${meta}${onPath.has(id) ? ', on the critical path' : ''}`,
    },
    s('title', {}, `${id}\n${n.step || ''}\n${meta}`),
    s('rect', { class: 'box', width: W, height: H, rx: 7 }),
    s('rect', { class: 'bar', x: 0, y: 8, width: 4, height: H - 16, rx: 2 }),
    s('text', { x: 14, y: 19 }, clip(id, 22)),
    s('text', { x: 14, y: 33, class: 'kind' }, clip(n.step || '', 26)),
    s('text', { x: 14, y: 46, class: 'meta' }, clip(meta, 28)));
    const choose = () => {
      for (const other of groups.values()) other.classList.remove('selected');
      g.classList.add('selected');
      onSelect?.(id);
    };
    g.addEventListener('click', choose);
    g.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); choose(); }
    });
    groups.set(id, g);
    svg.append(g);
  }
  container.replaceChildren(svg);
  return { path, focus: (id) => groups.get(id)?.focus() };
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/** Edges of a previewed plan, from its Mermaid text (`nI --> nJ` are node indexes). */
export function edgesFromMermaid(plan, mermaid) {
  const edges = [];
  for (const m of String(mermaid).matchAll(/\bn(\d+)\s*-[-.]+>\s*n(\d+)\b/g)) {
    const a = plan.nodes[Number(m[1])]?.id;
    const b = plan.nodes[Number(m[2])]?.id;
    if (a !== undefined && b !== undefined) edges.push([a, b]);
  }
  return edges;
}
