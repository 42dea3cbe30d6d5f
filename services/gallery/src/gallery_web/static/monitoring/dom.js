// Time and number formatting of the Monitoring view; elements come from the Gallery's own helpers.
// Text from the API always goes in as text nodes, never as HTML: names and summaries are untrusted.

// Elements are built by the Gallery's own helpers, so both views treat API text the same way.
import { h, parseTime, points, put, svg } from "../dom.js";

export { h, parseTime, points, put, svg };

/** Show or hide an element (the `hidden` attribute) and set its text when given. */
export function toggle(el, shown, text) {
  el.hidden = !shown;
  if (shown && text !== undefined) el.textContent = text;
}

const pad = (n) => String(n).padStart(2, "0");

/** Local wall-clock time; the date too when it is not today. */
export function clock(iso) {
  const ms = parseTime(iso);
  if (Number.isNaN(ms)) return "–";
  const d = new Date(ms);
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const today = new Date();
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** A span of seconds for people: "45 s", "5 min", "2 h", "3 d". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return `${s} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** "12 s ago" for an ISO time. */
export function ago(iso, now = Date.now()) {
  const ms = parseTime(iso);
  if (Number.isNaN(ms)) return "–";
  return `${duration((now - ms) / 1000)} ago`;
}

const DASH = "–";

/** A figure with a sensible number of digits; a dash for null. */
export function num(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return DASH;
  if (digits !== undefined) return value.toFixed(digits);
  const abs = Math.abs(value);
  if (abs >= 100) return Math.round(value).toLocaleString("en-US");
  if (abs >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

/** A share (0..1) as a percentage. */
export function percent(share) {
  if (share === null || share === undefined || Number.isNaN(share)) return DASH;
  const p = share * 100;
  if (p !== 0 && Math.abs(p) < 0.1) return `${p.toFixed(3)} %`;
  return `${p.toFixed(p >= 10 ? 1 : 2)} %`;
}

/** A p-value: scientific notation once it is tiny. */
export function pValue(p) {
  if (p === null || p === undefined || Number.isNaN(p)) return DASH;
  return p < 0.001 ? p.toExponential(1) : p.toFixed(3);
}

/** A stable hue (0..359) for a trace id, so the steps of one trace share a colour and neighbours differ. */
export function traceHue(traceId) {
  let hash = 0x811c9dc5;
  for (const ch of traceId) hash = Math.imul(hash ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return Math.round(((hash % 997) * 137.508) % 360);
}
