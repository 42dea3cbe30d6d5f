// Usage: what the gateways metered for pay-per-use serving (the deployer's /api/v1/usage), per period, model,
// version and caller, with requests over time as a chart and the report as CSV. The filters live in the URL.

import { api, deployer, download } from "./api.js";
import { navigate } from "./app.js";
import { lineChart } from "./chart.js";
import { PALETTE, empty, h, num, parseTime, put, select, table, when } from "./dom.js";

const SPANS = [["1h", "last hour"], ["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"]];
const PERIODS = [["hour", "per hour"], ["day", "per day"]];
const PERIOD_MS = { hour: 3600e3, day: 86400e3 };

/** The filters a URL's query holds. */
function filtersOf(query) {
  return {
    since: query.get("since") || "24h",
    period: query.get("period") === "day" ? "day" : "hour",
    model: query.get("model") || "",
    caller: query.get("caller") || "",
  };
}

function reportPath(filters, format = "json") {
  const query = new URLSearchParams({ since: filters.since, period: filters.period, format });
  if (filters.model) query.set("model", filters.model);
  if (filters.caller) query.set("caller", filters.caller);
  return deployer(`/usage?${query}`);
}

function controls(filters, onChange) {
  const form = h(
    "form",
    { class: "card filters", id: "usage-filters" },
    select("since", "Since", SPANS.some(([v]) => v === filters.since) ? SPANS : [[filters.since, filters.since], ...SPANS], filters.since),
    select("period", "Period", PERIODS, filters.period),
    h("label", { class: "field" }, "Model", h("input", { name: "model", value: filters.model, placeholder: "any", size: 14 })),
    h("label", { class: "field" }, "Caller", h("input", { name: "caller", value: filters.caller, placeholder: "any", size: 18 })),
    h("button", { type: "submit" }, "Show"),
    h("button", { type: "button", class: "ghost", id: "usage-csv" }, "Download CSV"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    onChange({
      since: data.get("since"),
      period: data.get("period"),
      model: String(data.get("model") || "").trim(),
      caller: String(data.get("caller") || "").trim(),
    });
  });
  form.querySelector("#usage-csv").addEventListener("click", () => download(reportPath(filters, "csv"), "usage.csv"));
  return form;
}

/** Requests per period and model, one line per model, from `since` to `until` (empty periods count 0). */
function requestsChart(report) {
  const step = PERIOD_MS[report.period];
  const start = parseTime(report.since);
  const first = Math.floor(start / step) * step;
  const periods = Math.max(1, Math.ceil((parseTime(report.until) - first) / step));
  const perModel = new Map();
  for (const row of report.rows) {
    const counts = perModel.get(row.model) || new Array(periods).fill(0);
    const index = Math.floor((parseTime(row.period_start) - first) / step);
    if (index >= 0 && index < periods) counts[index] += row.requests;
    perModel.set(row.model, counts);
  }
  const unit = report.period === "day" ? "days" : "hours";
  const series = [...perModel.entries()].map(([model, counts], i) => ({
    key: model,
    label: model,
    color: PALETTE[i % PALETTE.length],
    points: counts.map((n, k) => [k - periods + 1, n]),
  }));
  return lineChart(series, {
    id: "usage-requests",
    title: "Requests over time",
    xLabel: `${unit} ago (0: the current ${report.period})`,
    yLabel: "requests",
    zero: true,
    emptyText: "no requests metered",
  });
}

function usageTable(report) {
  const rows = report.rows.map((row) => ({
    props: { dataset: { model: row.model, version: row.version, caller: row.caller, period: row.period_start } },
    cells: [when(row.period_start), row.model, row.version, row.caller, String(row.requests), String(row.rows), num(row.compute_seconds, 3)],
  }));
  const totals = report.totals;
  rows.push({
    props: { class: "total", dataset: { total: "" } },
    cells: [h("strong", {}, "total"), "", "", "", String(totals.requests), String(totals.rows), num(totals.compute_seconds, 3)],
  });
  return table(["Period start", "Model", "Version", "Caller", "#Requests", "#Rows", "#Compute s"], rows, { id: "usage-table" });
}

export async function render(view, route) {
  route.title("Usage");
  const filters = filtersOf(route.query);
  const onChange = (chosen) => {
    const query = new URLSearchParams(Object.entries(chosen).filter(([, v]) => v));
    navigate(`/usage?${query}`);
  };
  put(
    view,
    h(
      "header",
      { class: "page-head" },
      h("h1", {}, "Usage"),
      h("p", { class: "muted" }, "Requests, rows and compute seconds the gateways metered per model, version and caller (the token's name)."),
    ),
    controls(filters, onChange),
  );
  const report = await api(reportPath(filters));
  if (!route.isCurrent()) return;
  view.append(
    h(
      "div",
      { id: "usage-report", dataset: { requests: String(report.totals.requests) } },
      h("section", { class: "card" }, requestsChart(report)),
      h(
        "section",
        { class: "card" },
        h("h2", {}, `Usage per ${report.period}`),
        report.rows.length ? usageTable(report) : empty("No usage metered in this span."),
      ),
    ),
  );
}
