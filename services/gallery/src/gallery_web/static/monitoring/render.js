// Each section of the page, drawn from one API answer. Pure DOM; no fetching here.

import { lineChart } from "./chart.js";
import { ago, clock, duration, h, num, pValue, parseTime, percent, put, toggle, traceHue } from "./dom.js";

const $ = (id) => document.getElementById(id);
const FEATURES_SHOWN = 12;
const ALERTS_SHOWN = 20;
const DEFAULT_PSI_LIMIT = 0.2;

const versionLabel = (v) => (v === null || v === undefined ? "–" : `v${v}`);
const badge = (text, kind) => h("span", { class: `badge ${kind || ""}`.trim() }, text);

function swatch(color) {
  const el = h("span", { class: "swatch", "aria-hidden": "true" });
  el.style.backgroundColor = color;
  return el;
}

/** The model list on the left, with the production version and open alerts of each. */
export function renderModels(models, openAlerts, selected, onSelect) {
  const counts = new Map();
  for (const alert of openAlerts) counts.set(alert.model, (counts.get(alert.model) || 0) + 1);
  put(
    $("model-list"),
    models.map((m) => {
      const production = m.aliases?.production;
      const alerts = counts.get(m.model) || 0;
      return h("li", {},
        h("button", {
          type: "button",
          class: "model",
          "aria-current": m.model === selected ? "true" : null,
          dataset: { model: m.model },
          onclick: () => onSelect(m.model),
        },
        h("span", { class: "model-name" }, m.model),
        h("span", { class: "model-meta" },
          production !== null && production !== undefined ? badge(`production v${production}`, "ok") : null,
          badge(`${m.versions.length} version${m.versions.length === 1 ? "" : "s"}`, "muted"),
          alerts ? badge(`${alerts} open alert${alerts === 1 ? "" : "s"}`, "bad") : null)));
    }),
  );
  toggle($("models-empty"), models.length === 0);
}

/** Title, aliases and the versions table of the selected model. */
export function renderOverview(model, colorOf) {
  $("model-title").textContent = model.model;
  const aliases = Object.entries(model.aliases || {});
  put($("aliases"), aliases.map(([alias, version]) =>
    h("span", { class: "alias", dataset: { alias } }, `@${alias} → `, h("strong", {}, version === null ? "none" : `v${version}`))));
  const production = model.aliases?.production;
  const rows = [...model.versions].sort((a, b) => b.version - a.version).map((v) =>
    h("tr", { dataset: { version: v.version } },
      h("td", {}, swatch(colorOf(String(v.version))), versionLabel(v.version),
        v.version === production ? badge("@production", "ok alias-badge") : null),
      h("td", {}, v.stage ? badge(v.stage, `stage-${v.stage}`) : "–"),
      h("td", {}, v.variant || "–"),
      h("td", { class: "num" }, v.traffic_percent === null || v.traffic_percent === undefined ? "–" : `${num(v.traffic_percent, 0)} %`),
      h("td", {}, badge(v.last_event, `ev ev-${v.last_event}`)),
      h("td", { title: v.last_event_at }, ago(v.last_event_at))));
  put($("versions").tBodies[0], rows);
  $("versions").hidden = rows.length === 0;
  toggle($("versions-empty"), rows.length === 0);
}

/** The current figures table, the SLO line and the cache hit rate. */
export function renderFigures(figures, slo, colorOf) {
  $("window-label").textContent = `last ${duration(figures.window_s)}`;
  put($("slo"), slo ? [
    badge(`SLO p99 ≤ ${Number(slo.p99_ms.toPrecision(3))} ms`, "muted"),
    badge(`errors ≤ ${percent(slo.error_rate)}`, "muted"),
  ] : []);
  const over = (value, limit) => (value !== null && value !== undefined && limit !== undefined && value > limit ? "num over" : "num");
  const versions = [...figures.versions].sort((a, b) => Number(b.version) - Number(a.version));
  put($("figures").tBodies[0], versions.map((v) =>
    h("tr", { dataset: { version: v.version, variant: v.variant } },
      h("td", {}, swatch(colorOf(String(v.version))), versionLabel(v.version)),
      h("td", {}, v.variant),
      h("td", { class: "num" }, num(v.rps)),
      h("td", { class: over(v.error_rate, slo?.error_rate) }, percent(v.error_rate)),
      h("td", { class: "num" }, num(v.p50_ms)),
      h("td", { class: "num" }, num(v.p95_ms)),
      h("td", { class: over(v.p99_ms, slo?.p99_ms) }, num(v.p99_ms)),
      h("td", { class: "num" }, num(v.batch_size_mean)))));
  $("figures").hidden = versions.length === 0;
  toggle($("figures-empty"), versions.length === 0,
    `No traffic in the last ${duration(figures.window_s)}: the figures come from the model servers' metrics once requests arrive.`);
  toggle($("cache"), figures.cache_hit_rate !== null && figures.cache_hit_rate !== undefined,
    `Gateway response cache: ${percent(figures.cache_hit_rate)} of cacheable requests answered from the cache.`);
}

/** Throughput, p99 latency and error-rate charts, one line per version, and their legend. */
export function renderCharts(figures, slo, colorOf, versionInfo) {
  const times = figures.series.map((p) => parseTime(p.t)).filter((t) => !Number.isNaN(t));
  const xMax = times.length ? Math.max(...times) : Date.now();
  const xMin = xMax - figures.window_s * 1000;
  const keys = [...new Set([...figures.versions.map((v) => String(v.version)), ...figures.series.map((p) => String(p.version))])]
    .sort((a, b) => Number(a) - Number(b));
  const build = (field, scale = 1) => keys.map((key) => ({
    key,
    label: versionLabel(key),
    color: colorOf(key),
    points: figures.series.filter((p) => String(p.version) === key).map((p) => {
      const value = p[field];
      return [parseTime(p.t), value === null || value === undefined ? null : value * scale];
    }).sort((a, b) => a[0] - b[0]),
  }));
  const empty = `no traffic in the last ${duration(figures.window_s)}`;
  const plot = (id) => $(id).querySelector(".plot");
  $("charts").hidden = false;
  $("legend").hidden = false;
  lineChart(plot("chart-rps"), build("rps"), { xMin, xMax, unit: "req/s", limit: null, empty });
  lineChart(plot("chart-p99"), build("p99_ms"), { xMin, xMax, unit: "ms", limit: slo?.p99_ms ?? null, empty });
  lineChart(plot("chart-errors"), build("error_rate", 100), {
    xMin, xMax, unit: "%", limit: slo ? slo.error_rate * 100 : null, empty,
  });
  put($("legend"), keys.map((key) => {
    const info = versionInfo.get(key);
    const detail = info ? [info.stage, info.variant, info.traffic_percent !== null && info.traffic_percent !== undefined ? `${num(info.traffic_percent, 0)} %` : null].filter(Boolean) : [];
    return h("span", { class: "legend-item", dataset: { version: key } }, swatch(colorOf(key)),
      versionLabel(key), detail.length ? h("small", {}, ` ${detail.join(" · ")}`) : null);
  }));
}

/** A text model's figures beside its rows: unseen tokens against what is normal, and the odd texts counted. */
function textFigures(text) {
  if (!text) return [];
  const odd = [
    [text.empty_texts, "empty"],
    [text.undecodable_texts, "not UTF-8"],
    [text.truncated_texts, `cut at ${text.max_tokens_read} tokens`],
  ].filter(([count]) => count > 0).map(([count, what]) => `${count.toLocaleString("en-US")} ${what}`);
  return [
    text.unseen_token_share === null ? null
      : `${percent(text.unseen_token_share)} of tokens unseen in training (${percent(text.reference_unseen_share)} normally)`,
    `text PSI limit ${num(text.psi_threshold, 2)}`,
    odd.length ? `texts: ${odd.join(", ")}` : null,
  ];
}

/** The drift verdict, its reasons and per-feature PSI bars with KS statistics (a text input: its length and
 * token rows, by name). */
export function renderDrift(drift, slo, showAll, onToggle) {
  const limit = slo?.drift_psi ?? DEFAULT_PSI_LIMIT;
  const [flagText, flagKind] = drift.drifted ? ["drifted", "bad"] : drift.samples ? ["no drift", "ok"] : ["no samples", "muted"];
  for (const id of ["drift-flag", "drift-summary", "drift-reasons"]) $(id).hidden = false;
  const flag = $("drift-flag");
  flag.textContent = flagText;
  flag.className = `badge ${flagKind}`;
  const parts = [
    drift.version === null || drift.version === undefined ? "all versions" : `version ${drift.version}`,
    `${drift.samples.toLocaleString("en-US")} samples over the last ${duration(drift.window_s)}`,
    drift.prediction_psi === null || drift.prediction_psi === undefined ? null : `prediction PSI ${num(drift.prediction_psi, 3)}`,
    `PSI limit ${num(limit, 2)}`,
    ...textFigures(drift.text),
  ];
  $("drift-summary").textContent = parts.filter(Boolean).join(" · ");
  const warnings = drift.text?.warnings || [];
  put($("drift-reasons"), [
    ...(drift.reasons || []).map((r) => h("li", {}, r)),
    ...warnings.map((w) => h("li", { class: "warning" }, w)),
  ]);
  $("drift-reasons").classList.toggle("alarm", Boolean(drift.drifted));

  const features = [...drift.features].sort((a, b) => b.psi - a.psi);
  const shown = showAll ? features : features.slice(0, FEATURES_SHOWN);
  const scale = Math.max(limit * 2, ...features.map((f) => Math.max(f.psi, (f.threshold ?? 0) * 2)));
  put($("drift-features").tBodies[0], shown.map((f) => {
    // a text input's rows carry their own limit (the monitor's text PSI), the others the SLO's
    const own = f.threshold ?? limit;
    const warn = f.threshold !== null && f.threshold !== undefined ? drift.text?.warn_psi ?? own / 2 : own / 2;
    const level = f.psi >= own ? "bad" : f.psi >= warn ? "warn" : "ok";
    const fillEl = h("span", { class: `fill ${level}` });
    fillEl.style.width = `${Math.min(100, (f.psi / scale) * 100).toFixed(1)}%`;
    const mark = h("span", { class: "limit-mark", title: `limit ${own}` });
    mark.style.left = `${Math.min(100, (own / scale) * 100).toFixed(1)}%`;
    return h("tr", { dataset: { feature: f.feature }, class: level === "bad" ? "drifted" : null },
      h("td", { class: f.name ? "name" : "num" }, f.name || f.feature),
      h("td", { class: "psi" }, h("span", { class: "bar" }, fillEl, mark), h("span", { class: "psi-value" }, num(f.psi, 3))),
      h("td", { class: "num" }, num(f.ks, 3)),
      h("td", { class: `num ${f.p_value < 0.01 ? "low" : ""}`.trim() }, pValue(f.p_value)));
  }));
  $("drift-features").hidden = features.length === 0;
  const more = $("drift-more");
  toggle(more, features.length > FEATURES_SHOWN,
    showAll ? `show the ${FEATURES_SHOWN} largest` : `show all ${features.length} features`);
  more.onclick = onToggle;
  const emptyText = !drift.samples
    ? "No samples yet: the gateway publishes a share of the requests (GALLERY_SAMPLE_RATE) for this check."
    : "No per-feature figures for these samples yet.";
  toggle($("drift-empty"), features.length === 0, emptyText);
}

/** Recent alerts of the model, newest first; open ones stand out. */
export function renderAlerts(alerts, model) {
  const evidence = (e) => Object.entries(e || {})
    .filter(([, v]) => v === null || ["number", "string", "boolean"].includes(typeof v))
    .slice(0, 6)
    .map(([k, v]) => h("span", { class: "kv" }, `${k}=${typeof v === "number" ? num(v) : v}`));
  $("alert-list").hidden = false;
  put($("alert-list"), alerts.slice(0, ALERTS_SHOWN).map((a) =>
    h("li", { class: a.closed_at ? "closed" : "open", dataset: { alert: a.id } },
      h("div", { class: "alert-head" },
        badge(a.kind, `kind-${a.kind}`),
        h("span", {}, versionLabel(a.version)),
        a.variant ? h("span", { class: "variant", title: "the optimized variant whose answers broke the SLO" },
          a.variant) : null,
        a.closed_at ? badge("closed", "muted") : badge("open", "bad"),
        h("span", { class: "when", title: a.opened_at }, `opened ${clock(a.opened_at)} (${ago(a.opened_at)})`),
        a.closed_at ? h("span", { class: "when", title: a.closed_at }, `closed ${clock(a.closed_at)}`) : null),
      h("p", { class: "reason" }, a.reason),
      h("div", { class: "evidence" }, evidence(a.evidence)))));
  toggle($("alerts-empty"), alerts.length === 0, `No alerts for ${model}: its SLOs and drift thresholds have held.`);
}

/** The lifecycle of the model, oldest first, each step with its trace id. */
export function renderTimeline(events) {
  const list = $("timeline-list");
  list.hidden = false;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 8;
  put(list, events.map((e) => {
    const item = h("li", { dataset: { event: e.event, eventId: e.event_id } },
      h("time", { datetime: e.time, title: e.time }, clock(e.time)),
      h("span", { class: "tl-version" }, versionLabel(e.version)),
      badge(e.event, `ev ev-${e.event}`),
      h("span", { class: "summary" }, e.summary),
      e.trace_id ? h("code", { class: "trace", title: "trace id" }, e.trace_id) : h("span", { class: "trace none" }, "no trace"));
    if (e.trace_id) item.style.borderLeftColor = `hsl(${traceHue(e.trace_id)} 65% 50%)`;
    return item;
  }));
  if (atBottom) list.scrollTop = list.scrollHeight;
  toggle($("timeline-empty"), events.length === 0);
}

/** Put a section in its "could not load" state. */
export function renderSectionError(emptyId, hideIds, message) {
  for (const id of hideIds) $(id).hidden = true;
  toggle($(emptyId), true, `Could not load this: ${message}`);
}
