// Compare 2 to 5 runs as MLflow's compare view does: training curves overlaid, the parameters that differ
// highlighted, final metrics side by side. /compare?runs=a,b,c

import { api, trainer } from "./api.js";
import { lineChart } from "./chart.js";
import { PALETTE, h, metric, seg, statusBadge, table, when } from "./dom.js";
import { exact, show } from "./page-runs.js";

const NOT_CURVES = new Set(["kind", "step", "epoch", "time", "samples_per_sec"]);
const LOWER_IS_BETTER = /loss|error|ece|rmse|mae|latency|_ms$/;
const HIGHER_IS_BETTER = /acc|f1|auc|precision|recall|r2/;

/** One chart per metric the epoch records hold, a line per run; and train loss per step. */
export function curveCharts(runs, records, labelOf) {
  const keys = [...new Set(records.flatMap((r) => r.epochs.flatMap((e) => Object.keys(e))))].filter((k) => !NOT_CURVES.has(k));
  keys.sort((a, b) => (a.includes("acc") ? -1 : 0) - (b.includes("acc") ? -1 : 0) || a.localeCompare(b));
  const charts = keys.map((key) =>
    lineChart(
      runs.map((run, i) => ({
        key: run.id,
        label: labelOf(run, i),
        color: PALETTE[i % PALETTE.length],
        points: records[i].epochs.filter((e) => typeof e[key] === "number").map((e) => [e.epoch, e[key]]),
      })),
      { id: key, title: `${key.replace(/_/g, " ")} by epoch`, xLabel: "epoch", yLabel: key, legend: false },
    ),
  );
  if (records.some((r) => r.steps.some((s) => typeof s.train_loss === "number"))) {
    charts.push(
      lineChart(
        runs.map((run, i) => ({
          key: run.id,
          label: labelOf(run, i),
          color: PALETTE[i % PALETTE.length],
          points: records[i].steps.filter((s) => typeof s.train_loss === "number").map((s) => [s.step, s.train_loss]),
        })),
        { id: "step_train_loss", title: "train loss by step", xLabel: "step", yLabel: "train_loss", legend: false },
      ),
    );
  }
  return charts;
}

function paramsTable(runs) {
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.params || {})))].sort();
  const differs = (k) => new Set(runs.map((r) => exact(r.params?.[k]))).size > 1;
  const differing = keys.filter(differs);
  const rows = [...differing, ...keys.filter((k) => !differs(k))].map((k) => ({
    props: { class: differs(k) ? "differs" : "same", dataset: { param: k } },
    cells: [h("code", {}, k), ...runs.map((r) => show(r.params?.[k]))],
  }));
  const tableEl = table(["parameter", ...runs.map((r) => r.id)], rows, { id: "compare-params", class: "grid only-differences" });
  const toggle = h("input", { type: "checkbox", id: "show-all-params" });
  toggle.addEventListener("change", () => tableEl.classList.toggle("only-differences", !toggle.checked));
  return h(
    "section",
    { class: "card", id: "params" },
    h("div", { class: "title-row" }, h("h2", {}, "Parameters"), h("span", { class: "note" }, differing.length ? `${differing.length} of ${keys.length} differ (highlighted)` : `all ${keys.length} are the same`), h("label", { class: "note" }, toggle, " show all")),
    h("div", { class: "scroll-x" }, tableEl),
  );
}

function metricsTable(runs) {
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.metrics || {})))].sort();
  const rows = keys.map((k) => {
    const values = runs.map((r) => r.metrics?.[k]);
    const finite = values.filter((v) => typeof v === "number");
    // the best run is marked only for metrics with a known direction (not, say, epochs_run)
    const direction = LOWER_IS_BETTER.test(k) ? Math.min : HIGHER_IS_BETTER.test(k) ? Math.max : null;
    const best = direction && finite.length > 1 && new Set(finite).size > 1 ? direction(...finite) : null;
    return {
      props: { dataset: { metric: k } },
      cells: [h("code", {}, k), ...values.map((v) => (v === best ? h("strong", { class: "best" }, metric(k, v)) : metric(k, v)))],
    };
  });
  return h("section", { class: "card", id: "final-metrics" }, h("h2", {}, "Final metrics"), table(["metric", ...runs.map((r) => `#${r.id}`)], rows));
}

export async function render(view, route) {
  const ids = (route.query.get("runs") || "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  route.title(`Compare ${ids.length} runs`);
  if (ids.length < 2 || ids.length > 5) {
    view.append(
      h(
        "section",
        { class: "card problem" },
        h("h2", {}, "Pick 2 to 5 runs"),
        h("p", {}, `Compare takes 2 to 5 runs (/compare?runs=a,b); this link names ${ids.length}. `, h("a", { href: "/runs" }, "Choose runs")),
      ),
    );
    return;
  }
  const runs = await Promise.all(ids.map((id) => api(trainer(`/runs/${seg(id)}`))));
  const records = await Promise.all(ids.map((id) => api(trainer(`/runs/${seg(id)}/metrics`))));
  if (!route.isCurrent()) return;
  const labelOf = (run) => `${run.id.slice(0, 8)} (${run.model})`;
  view.append(
    h(
      "div",
      { class: "page-head" },
      h("div", { class: "crumbs" }, h("a", { href: "/runs" }, "Experiments"), " / "),
      h("h1", {}, `Comparing ${runs.length} runs`),
      h(
        "ul",
        { class: "run-keys" },
        runs.map((run, i) =>
          h(
            "li",
            { dataset: { run: run.id } },
            h("span", { class: "swatch", style: { background: PALETTE[i % PALETTE.length] } }),
            h("a", { href: `/runs/${seg(run.id)}` }, run.id),
            ` · ${run.model} · `,
            statusBadge(run.status),
            ` · ${when(run.started_at)}`,
          ),
        ),
      ),
    ),
    h("section", { class: "card", id: "curves" }, h("h2", {}, "Training curves"), h("div", { class: "charts" }, curveCharts(runs, records, labelOf))),
    h("div", { class: "two-col" }, paramsTable(runs), metricsTable(runs)),
  );
}
