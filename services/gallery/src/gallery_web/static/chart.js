// Charts drawn as inline SVG, no library: overlaid line charts (training curves), a labelled scatter
// (latency against accuracy) and a reliability diagram (calibration). Each returns a <figure>.

import { h, num, svg } from "./dom.js";

const W = 460;
const H = 240;
const M = { left: 52, right: 14, top: 12, bottom: 38 };
const PLOT_W = W - M.left - M.right;
const PLOT_H = H - M.top - M.bottom;

/** Tick values for [lo, hi]: 1, 2 or 5 × 10^k steps, about `count` of them. */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const exp = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((s) => s * exp).find((s) => raw <= s) || 10 * exp;
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** [lo, hi] padded to nice ticks around finite `values`; `zero` keeps 0 in range. */
function domain(values, { zero = false, min, max } = {}) {
  const finite = values.filter(Number.isFinite);
  let lo = min ?? (finite.length ? Math.min(...finite) : 0);
  let hi = max ?? (finite.length ? Math.max(...finite) : 1);
  if (zero) lo = Math.min(lo, 0);
  if (hi === lo) {
    const pad = Math.abs(hi) * 0.1 || 1;
    if (min === undefined) lo -= pad;
    if (max === undefined) hi += pad;
  }
  const t = ticks(lo, hi);
  const step = t.length > 1 ? t[1] - t[0] : 0;
  if (min === undefined && t[0] > lo) lo = t[0] - step;
  else if (min === undefined) lo = Math.min(lo, t[0]);
  if (max === undefined && t[t.length - 1] < hi) hi = t[t.length - 1] + step;
  return [lo, hi];
}

function label(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 1000) return `${Number((value / 1000).toPrecision(3))}k`;
  if (abs >= 0.01) return String(Number(value.toPrecision(3)));
  return value.toExponential(1).replace(".0e", "e");
}

/** An empty plot frame with axes, grid lines and labels; returns {root, x, y}. */
function frame({ xDomain, yDomain, xLabel, yLabel, title, className = "" }) {
  const [x0, x1] = xDomain;
  const [y0, y1] = yDomain;
  const x = (v) => M.left + ((v - x0) / (x1 - x0 || 1)) * PLOT_W;
  const y = (v) => M.top + PLOT_H - ((v - y0) / (y1 - y0 || 1)) * PLOT_H;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: `chart-svg ${className}`.trim(), role: "img", "aria-label": title || yLabel || "chart" });
  for (const v of ticks(y0, y1)) {
    if (v < y0 - 1e-12 || v > y1 + 1e-12) continue;
    root.append(
      svg("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
      svg("text", { class: "tick", x: M.left - 6, y: y(v) + 3.5, "text-anchor": "end" }, label(v)),
    );
  }
  for (const v of ticks(x0, x1, 6)) {
    if (v < x0 - 1e-12 || v > x1 + 1e-12) continue;
    root.append(
      svg("line", { class: "grid", x1: x(v), x2: x(v), y1: M.top, y2: M.top + PLOT_H }),
      svg("text", { class: "tick", x: x(v), y: M.top + PLOT_H + 14, "text-anchor": "middle" }, label(v)),
    );
  }
  root.append(svg("rect", { class: "axis", x: M.left, y: M.top, width: PLOT_W, height: PLOT_H }));
  if (xLabel) root.append(svg("text", { class: "axis-label", x: M.left + PLOT_W / 2, y: H - 6, "text-anchor": "middle" }, xLabel));
  if (yLabel) {
    root.append(
      svg("text", { class: "axis-label", x: 12, y: M.top + PLOT_H / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${M.top + PLOT_H / 2})` }, yLabel),
    );
  }
  return { root, x, y };
}

function figure(title, root, legend, props = {}) {
  return h("figure", { class: "chart", ...props }, title ? h("figcaption", {}, title) : null, h("div", { class: "plot" }, root), legend);
}

/** A legend: one swatch and label per series. */
export function legend(series) {
  return h(
    "div",
    { class: "legend" },
    series.map((s) => h("span", { dataset: { key: s.key } }, h("span", { class: "swatch", style: { background: s.color } }), s.label)),
  );
}

/**
 * Overlaid lines. series: [{key, label, color, points: [[x, y], ...]}].
 * options: {id, title, xLabel, yLabel, zero, yMin, yMax, emptyText, legend (false: the page shows the key)}.
 */
export function lineChart(series, options = {}) {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const { root, x, y } = frame({
    xDomain: domain(xs, { min: xs.length ? Math.min(...xs.filter(Number.isFinite)) : 0 }),
    yDomain: domain(ys, { zero: options.zero, min: options.yMin, max: options.yMax }),
    ...options,
  });
  if (!ys.some(Number.isFinite)) {
    root.append(svg("text", { class: "chart-empty", x: M.left + PLOT_W / 2, y: M.top + PLOT_H / 2, "text-anchor": "middle" }, options.emptyText || "no data"));
  }
  for (const s of series) {
    let d = "";
    let pen = false;
    for (const [px, py] of s.points) {
      if (!Number.isFinite(px) || !Number.isFinite(py)) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${x(px).toFixed(1)},${y(py).toFixed(1)}`;
      pen = true;
    }
    const group = svg("g", { class: "series", dataset: { key: s.key } });
    if (d) group.append(svg("path", { class: "line", d, stroke: s.color }, svg("title", {}, s.label)));
    if (s.points.length <= 60) {
      for (const [px, py] of s.points) {
        if (!Number.isFinite(px) || !Number.isFinite(py)) continue;
        group.append(
          svg("circle", { class: "pt", cx: x(px).toFixed(1), cy: y(py).toFixed(1), r: 2.4, fill: s.color },
            svg("title", {}, `${s.label} · ${options.xLabel || "x"} ${num(px)} · ${num(py)}`)),
        );
      }
    }
    root.append(group);
  }
  const keyed = series.length > 1 && options.legend !== false;
  return figure(options.title, root, keyed ? legend(series) : null, { dataset: { chart: options.id || "" } });
}

/**
 * A scatter with a label per point. points: [{key, label, x, y, color, highlight}].
 * options: {title, xLabel, yLabel, yMin, yMax}.
 */
export function scatterChart(points, options = {}) {
  const shown = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const { root, x, y } = frame({
    xDomain: domain(shown.map((p) => p.x), { zero: true }),
    yDomain: domain(shown.map((p) => p.y), { min: options.yMin, max: options.yMax }),
    ...options,
  });
  if (!shown.length) {
    root.append(svg("text", { class: "chart-empty", x: M.left + PLOT_W / 2, y: M.top + PLOT_H / 2, "text-anchor": "middle" }, options.emptyText || "no data"));
  }
  const placed = []; // label boxes so far: a label that would overlap one moves down a line
  for (const p of shown) {
    const cx = x(p.x);
    const cy = y(p.y);
    const widthOf = String(p.label).length * 5.6;
    const anchorEnd = cx > W - 110;
    let ly = cy - 6;
    const left = () => (anchorEnd ? cx - 7 - widthOf : cx + 7);
    while (placed.some((b) => Math.abs(b.y - ly) < 11 && left() < b.x + b.w && b.x < left() + widthOf)) ly += 11;
    placed.push({ x: left(), y: ly, w: widthOf });
    root.append(
      svg(
        "g",
        { class: `point${p.highlight ? " highlight" : ""}`, dataset: { key: p.key } },
        svg("circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: p.highlight ? 5.5 : 4, fill: p.color || "#2563eb" }),
        svg("text", { class: "point-label", x: (anchorEnd ? cx - 7 : cx + 7).toFixed(1), y: ly.toFixed(1), "text-anchor": anchorEnd ? "end" : "start" }, p.label),
        svg("title", {}, `${p.label} · ${options.xLabel || "x"} ${num(p.x)} · ${options.yLabel || "y"} ${num(p.y)}`),
      ),
    );
  }
  return figure(options.title, root, null, { dataset: { chart: options.id || "" } });
}

/**
 * A reliability diagram: accuracy against confidence per bin, the diagonal is perfect calibration, and
 * bars' opacity shows how many samples each bin holds. bins: [{confidence, accuracy, count}].
 */
export function reliabilityDiagram(bins, options = {}) {
  const { root, x, y } = frame({ xDomain: [0, 1], yDomain: [0, 1], xLabel: "confidence", yLabel: "accuracy", ...options });
  root.append(svg("line", { class: "diagonal", x1: x(0), y1: y(0), x2: x(1), y2: y(1) }));
  const total = bins.reduce((sum, b) => sum + (b.count || 0), 0) || 1;
  bins.forEach((b, i) => {
    if (!b.count || !Number.isFinite(b.accuracy)) return;
    const lo = b.lower ?? i / bins.length;
    const up = b.upper ?? (i + 1) / bins.length;
    const width = x(up) - x(lo);
    root.append(
      svg(
        "rect",
        {
          class: "bin",
          x: (x(lo) + 1).toFixed(1),
          y: y(b.accuracy).toFixed(1),
          width: Math.max(1, width - 2).toFixed(1),
          height: (y(0) - y(b.accuracy)).toFixed(1),
          "fill-opacity": (0.25 + 0.75 * Math.sqrt(b.count / total)).toFixed(2),
        },
        svg("title", {}, `confidence ${num(b.confidence)} · accuracy ${num(b.accuracy)} · ${b.count} samples`),
      ),
    );
    if (Number.isFinite(b.confidence)) {
      root.append(svg("circle", { class: "gap", cx: x(b.confidence).toFixed(1), cy: y(b.accuracy).toFixed(1), r: 2.5 }));
    }
  });
  return figure(options.title ?? "Reliability diagram", root, null, { dataset: { chart: "reliability" } });
}

/** Horizontal bars for values in [0, 1]: [{label, value, highlight}] → a list with one bar each. */
export function barList(items, { format = (v) => `${(v * 100).toFixed(1)} %`, className = "" } = {}) {
  return h(
    "ul",
    { class: `bars ${className}`.trim() },
    items.map((item) =>
      h(
        "li",
        { class: item.highlight ? "highlight" : null, dataset: { label: item.label } },
        h("span", { class: "bar-label" }, item.label),
        h("span", { class: "bar" }, h("span", { class: "fill", style: { width: `${Math.max(0, Math.min(1, item.value)) * 100}%` } })),
        h("span", { class: "bar-value" }, format(item.value, item)),
      ),
    ),
  );
}
