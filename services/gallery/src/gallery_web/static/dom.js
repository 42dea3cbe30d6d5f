// DOM building and number/time formatting shared by the Gallery's pages.
// Text from the API always goes in as text nodes, never as HTML: names, descriptions and tags are untrusted.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, props, children) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "value" && "value" in el) el.value = value;
    else if (key === "checked" && "checked" in el) el.checked = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, "12"). */
export function h(tag, props, ...children) {
  return fill(document.createElement(tag), props, children);
}

/** An SVG element: svg("circle", {cx: 1, cy: 2, r: 3}). */
export function svg(tag, props, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), props, children);
}

/** Replace an element's children. */
export function put(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

/** The path segment for a name: model names may hold dots and dashes, never slashes, but encode anyway. */
export const seg = (value) => encodeURIComponent(String(value));

/** Milliseconds since the epoch from the API's ISO-8601 UTC strings (microseconds and a missing zone allowed). */
export function parseTime(iso) {
  if (!iso) return NaN;
  let text = String(iso).replace(/(\.\d{3})\d+/, "$1");
  if (!/(Z|[+-]\d\d:?\d\d)$/.test(text)) text += "Z";
  return Date.parse(text);
}

const pad = (n) => String(n).padStart(2, "0");

/** Local date and time, "2026-12-05 16:42". */
export function when(iso) {
  const ms = parseTime(iso);
  if (Number.isNaN(ms)) return "–";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A span of seconds for people: "45 s", "5 min", "2 h", "3 d". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return `${s} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** "12 s ago" for an ISO time, with the exact time as a tooltip. */
export function ago(iso, now = Date.now()) {
  const ms = parseTime(iso);
  if (Number.isNaN(ms)) return h("span", {}, "–");
  return h("time", { datetime: iso, title: when(iso) }, `${duration((now - ms) / 1000)} ago`);
}

const DASH = "–";

/** A figure with a sensible number of digits; a dash for null. */
export function num(value, digits) {
  if (value === null || value === undefined || typeof value !== "number" || Number.isNaN(value)) return DASH;
  if (digits !== undefined) return value.toFixed(digits);
  const abs = Math.abs(value);
  if (Number.isInteger(value) && abs < 1e6) return value.toLocaleString("en-US");
  if (abs >= 100) return Math.round(value).toLocaleString("en-US");
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 0.01 || abs === 0) return value.toFixed(3);
  return value.toExponential(2);
}

/** A share (0..1) as a percentage. */
export function percent(share, digits) {
  if (share === null || share === undefined || Number.isNaN(share)) return DASH;
  const p = share * 100;
  return `${p.toFixed(digits ?? (p >= 10 || p === 0 ? 1 : 2))} %`;
}

/** A difference in points with its sign, one decimal: "+1.2", "0.0", "-3.4". */
export function points(value) {
  if (value === null) return "–";
  const rounded = Math.round(value * 10) / 10;
  return rounded === 0 ? "0.0" : `${rounded > 0 ? "+" : ""}${rounded.toFixed(1)}`;
}

/** A metric for people: accuracy-like shares in [0, 1] as percentages, everything else as a number. */
export function metric(name, value) {
  if (typeof value !== "number") return value === undefined || value === null ? DASH : String(value);
  if (/acc|recall|precision|f1|auc/i.test(name) && value >= 0 && value <= 1) return percent(value, 2);
  return num(value);
}

/** Bytes as B / KB / MB / GB. */
export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return DASH;
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`;
}

/** Milliseconds with sensible precision. */
export function ms(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return DASH;
  if (value >= 100) return `${Math.round(value)} ms`;
  if (value >= 1) return `${value.toFixed(1)} ms`;
  return `${value.toFixed(3)} ms`;
}

/** A badge: a small rounded label, coloured by `kind` (ok, warn, bad, muted or a class of its own). */
export function badge(text, kind = "", title) {
  return h("span", { class: `badge ${kind}`.trim(), title }, text);
}

const STATUS_KIND = {
  validated: "ok",
  finished: "ok",
  succeeded: "ok",
  completed: "ok",
  serving: "ok",
  production: "ok",
  rejected: "bad",
  failed: "bad",
  rolled_back: "bad",
  canary: "warn",
  shadow: "warn",
  pending: "muted",
  validating: "warn",
  running: "warn",
  archived: "muted",
  retired: "muted",
  none: "muted",
};

/** A badge for a status word, coloured the same on every page. */
export function statusBadge(status) {
  return badge(status ?? "–", STATUS_KIND[status] || "", undefined);
}

/** An italic note for an empty section. */
export function empty(text) {
  return h("p", { class: "empty" }, text);
}

/** A labelled <select> named `name`; options are [value, text] pairs, `value` the one selected. */
export function select(name, label, options, value) {
  return h(
    "label",
    { class: "field" },
    label,
    h("select", { name }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))),
  );
}

/** A table from headers and rows; a header starting with "#" is a right-aligned number column. */
export function table(headers, rows, props = {}) {
  const numeric = headers.map((header) => typeof header === "string" && header.startsWith("#"));
  const label = (header) => (typeof header === "string" ? header.replace(/^#/, "") : header);
  return h(
    "table",
    { class: "grid", ...props },
    h("thead", {}, h("tr", {}, headers.map((header, i) => h("th", { class: numeric[i] ? "num" : null }, label(header))))),
    h(
      "tbody",
      {},
      rows.map((row) => {
        const cells = Array.isArray(row) ? row : row.cells;
        const tr = h("tr", Array.isArray(row) ? {} : row.props || {});
        cells.forEach((cell, i) => tr.append(h("td", { class: numeric[i] ? "num" : null }, cell)));
        return tr;
      }),
    ),
  );
}

export const PALETTE = ["#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#db2777", "#ca8a04", "#4b5563"];
