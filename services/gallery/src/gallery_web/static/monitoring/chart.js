// A small time-series line chart drawn as inline SVG: one line per version, a dot per point.

import { duration, num, svg } from "./dom.js";

const W = 420;
const H = 170;
const M = { left: 46, right: 12, top: 10, bottom: 22 };
const PLOT_W = W - M.left - M.right;
const PLOT_H = H - M.top - M.bottom;

/** A "nice" tick step (1, 2 or 5 × 10^k) that splits [0, max] into at most four intervals. */
function niceStep(max) {
  if (!(max > 0)) return 0.25;
  const raw = max / 4;
  const exp = 10 ** Math.floor(Math.log10(raw));
  for (const step of [1, 2, 5, 10]) {
    if (raw <= step * exp) return step * exp;
  }
  return 10 * exp;
}

function tickLabel(value) {
  if (value === 0) return "0";
  if (Math.abs(value) >= 1000) return `${(value / 1000).toFixed(value % 1000 === 0 ? 0 : 1)}k`;
  if (Math.abs(value) >= 10) return String(Math.round(value));
  return String(Number(value.toPrecision(2)));
}

/**
 * Draw `series` into `container`, replacing what was there.
 *
 * series: [{key, label, color, points: [[timeMs, value|null], ...]}]
 * options: {xMin, xMax (ms), unit (for tooltips), limit (a threshold line, or null), empty (text)}
 */
export function lineChart(container, series, options) {
  const { xMin, xMax, unit, limit, empty } = options;
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v !== null && Number.isFinite(v)));
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart-svg",
    role: "img",
    "aria-label": container.closest("figure")?.querySelector("figcaption")?.textContent || "chart",
  });
  const step = niceStep(Math.max(0, ...values));
  const yMax = Math.max(step, Math.ceil(Math.max(0, ...values) / step - 1e-9) * step);
  const x = (t) => M.left + ((t - xMin) / Math.max(1, xMax - xMin)) * PLOT_W;
  const y = (v) => M.top + PLOT_H - (v / yMax) * PLOT_H;

  for (let i = 0; i * step <= yMax + 1e-9; i += 1) {
    const value = i * step;
    root.append(
      svg("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(value), y2: y(value) }),
      svg("text", { class: "tick", x: M.left - 6, y: y(value) + 3.5, "text-anchor": "end" }, tickLabel(value)),
    );
  }
  const span = (xMax - xMin) / 1000;
  for (let i = 0; i <= 3; i += 1) {
    const t = xMin + ((xMax - xMin) * i) / 3;
    const label = i === 3 ? "now" : `−${duration(span - (span * i) / 3)}`;
    const anchor = i === 0 ? "start" : i === 3 ? "end" : "middle";
    root.append(svg("text", { class: "tick", x: x(t), y: H - 6, "text-anchor": anchor }, label));
  }
  if (limit !== null && limit !== undefined && limit <= yMax) {
    root.append(
      svg("line", { class: "limit", x1: M.left, x2: W - M.right, y1: y(limit), y2: y(limit) },
        svg("title", {}, `SLO ${tickLabel(limit)} ${unit}`)),
    );
  }

  if (values.length === 0) {
    root.append(svg("text", { class: "chart-empty", x: M.left + PLOT_W / 2, y: M.top + PLOT_H / 2, "text-anchor": "middle" }, empty));
  }
  for (const s of series) {
    const visible = s.points.filter(([t]) => t >= xMin && t <= xMax);
    let d = "";
    let pen = false;
    for (const [t, v] of visible) {
      if (v === null || !Number.isFinite(v)) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    const group = svg("g", { class: "series", dataset: { version: s.key } });
    if (d) group.append(svg("path", { class: "line", d, stroke: s.color }));
    for (const [t, v] of visible) {
      if (v === null || !Number.isFinite(v)) continue;
      const when = new Date(t).toLocaleTimeString();
      group.append(
        svg("circle", { class: "pt", cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2.2, fill: s.color },
          svg("title", {}, `${s.label} · ${when} · ${num(v)} ${unit}`)),
      );
    }
    root.append(group);
  }
  container.replaceChildren(root);
}
