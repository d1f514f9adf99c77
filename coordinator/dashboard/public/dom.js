// Building DOM nodes and formatting numbers. Every value from the API reaches the page as a text node or an
// attribute, never as HTML, so a job or node name cannot inject markup.

/**
 * h('td#id.num.warn', {title: 'x', onclick: fn, 'data-testid': 'y'}, child, …): an element with classes from the tag,
 * attributes, listeners (on*) and children (strings become text; null, undefined and false are skipped; arrays
 * are flattened). `value`, `checked` and `disabled` are set as properties so forms behave.
 */
export function h(tag, attrs, ...children) {
  const [head, ...classes] = tag.split('.');
  const [name, id] = head.split('#');
  const el = document.createElement(name);
  if (id) el.id = id;
  if (classes.length) el.setAttribute('class', classes.join(' '));
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = undefined;
  }
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'value' || key === 'checked' || key === 'disabled') el[key] = value;
    else if (key === 'class') el.setAttribute('class', [...classes, value].join(' '));
    else el.setAttribute(key, value === true ? '' : String(value));
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

/** Replaces everything inside `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function num(x, digits = 2) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  return x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function ms(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  return x >= 10_000 ? `${num(x / 1000, 1)} s` : `${num(x, x < 10 ? 2 : 0)} ms`;
}

export function bytes(x) {
  if (!Number.isFinite(x)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (x >= 1024 && i < units.length - 1) (x /= 1024), i++;
  return `${num(x, i ? 1 : 0)} ${units[i]}`;
}

/** "3 s", "4 min", "2 h": how long ago, for ages a person reads at a glance. */
export function age(msAgo) {
  const s = Math.max(0, msAgo) / 1000;
  if (s < 60) return `${s < 10 ? num(s, 1) : Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${num(s / 3600, 1)} h`;
  return `${num(s / 86400, 1)} d`;
}

export function time(epochMs) {
  if (!epochMs) return '–';
  const d = new Date(epochMs);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString('en-GB') : d.toLocaleString('en-GB');
}

export function pct(x) {
  return x === null || x === undefined || !Number.isFinite(x) ? '–' : `${num(100 * x, 1)}%`;
}

/** A state or status as a coloured pill; `kind` picks the colour class (defaults to the text). */
export function badge(text, kind = text) {
  return h(`span.badge.badge-${kind}`, text);
}

/** A table with a header row; `rows` are arrays of cells or ready <tr>s. */
export function table(headers, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', h('tr', headers.map((c) => h('th', c)))),
    h('tbody', rows.map((r) => (r instanceof Node ? r : h('tr', r.map((c) => (c instanceof Node && c.tagName === 'TD' ? c : h('td', c))))))));
}

/** A titled section of a page. */
export function card(title, ...children) {
  return h('section.card', title ? h('h2', title) : null, ...children);
}

export function empty(text) {
  return h('p.empty', text);
}
