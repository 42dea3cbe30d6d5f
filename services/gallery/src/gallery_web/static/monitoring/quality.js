// The Online quality section: feedback on each version's answers (the gateway's model.outcome, kept by
// the monitor) as a table beside the gate's test figures, each variant that answered beside the optimizer's
// figures of it, and charts of online accuracy and rmse.

import { lineChart } from "./chart.js";
import { duration, h, num, parseTime, percent, points, put, toggle } from "./dom.js";

const $ = (id) => document.getElementById(id);
const versionLabel = (v) => `v${v}`;
const rows = (n) => Number(n).toLocaleString("en-US");

function swatch(color) {
  const el = h("span", { class: "swatch", "aria-hidden": "true" });
  el.style.backgroundColor = color;
  return el;
}

/** Online accuracy against the row's test accuracy, in points: negative when it does worse online. */
function drop(v) {
  if (v.accuracy === null || testAccuracy(v) === null) return null;
  return (v.accuracy - testAccuracy(v)) * 100;
}

/** A version's test accuracy is the gate's; a variant's the optimizer's, on the same test split. */
const testAccuracy = (v) => (v.variants ? v.gate_accuracy : v.test_accuracy) ?? null;
const testRmse = (v) => (v.variants ? v.gate_rmse : v.test_rmse) ?? null;

/** A version's variants get rows of their own when the route named them: which variant gave which answers. */
const namedVariants = (v) => (v.variants || []).filter((variant, _, all) => all.length > 1 || variant.variant !== "");

/** The quality SLOs in force, as badges; none when every threshold is off. */
function sloBadges(slo) {
  if (!slo) return [];
  const parts = [];
  if (slo.min_online_accuracy !== null && slo.min_online_accuracy !== undefined) parts.push(`accuracy ≥ ${percent(slo.min_online_accuracy)}`);
  if (slo.max_accuracy_drop !== null && slo.max_accuracy_drop !== undefined) parts.push(`at most ${num(slo.max_accuracy_drop * 100, 1)} pt below the test accuracy`);
  if (slo.max_rmse_ratio !== null && slo.max_rmse_ratio !== undefined) parts.push(`rmse ≤ ${num(slo.max_rmse_ratio)}× the test rmse`);
  if (slo.max_online_rmse !== null && slo.max_online_rmse !== undefined) parts.push(`rmse ≤ ${num(slo.max_online_rmse)}`);
  if (!parts.length) return [h("span", { class: "badge muted" }, "no quality SLO")];
  parts.push(`judged from ${rows(slo.quality_min_rows)} rows`);
  return parts.map((text) => h("span", { class: "badge muted" }, text));
}

/** The line an accuracy chart draws as its limit: the SLO's floor, else the newest version's gate less the drop. */
function accuracyLimit(quality, slo) {
  if (!slo) return null;
  if (slo.min_online_accuracy !== null && slo.min_online_accuracy !== undefined) return slo.min_online_accuracy * 100;
  if (slo.max_accuracy_drop === null || slo.max_accuracy_drop === undefined) return null;
  const gated = quality.versions.filter((v) => v.gate_accuracy !== null);
  if (!gated.length) return null;
  const newest = gated.reduce((a, b) => (Number(b.version) > Number(a.version) ? b : a));
  return (newest.gate_accuracy - slo.max_accuracy_drop) * 100;
}

/** The table of versions with feedback, each followed by its variants: only the columns some row has figures for. */
function renderTable(quality, colorOf) {
  const versions = [...quality.versions].sort((a, b) => Number(b.version) - Number(a.version));
  const labelled = versions.some((v) => v.labelled_rows > 0);
  const valued = versions.some((v) => v.valued_rows > 0);
  const rewarded = versions.some((v) => v.rewarded > 0);
  const name = (v) => (v.variants
    ? [swatch(colorOf(String(v.version))), versionLabel(v.version)]
    : h("span", { class: "variant-name" }, v.variant || "(unnamed variant)"));
  const columns = [
    ["version · variant", false, name],
    ["answers with feedback", true, (v) => rows(v.outcomes)],
    ...(labelled ? [
      ["labelled rows", true, (v) => rows(v.labelled_rows)],
      ["online accuracy", true, (v) => percent(v.accuracy), "accuracy"],
      ["test accuracy", true, (v) => percent(testAccuracy(v)), "test_accuracy"],
      ["Δ points", true, (v) => points(drop(v)), "drop"],
    ] : []),
    ...(valued ? [
      ["valued rows", true, (v) => rows(v.valued_rows)],
      ["online rmse", true, (v) => num(v.rmse), "rmse"],
      ["test rmse", true, (v) => num(testRmse(v)), "test_rmse"],
    ] : []),
    ...(rewarded ? [["mean reward", true, (v) => num(v.mean_reward, 3)]] : []),
  ];
  const tips = {
    "test accuracy": "a version's: the validation gate's; a variant's: the optimizer's, on the same test split",
    "test rmse": "a version's: the validation gate's; a variant's: the optimizer's, on the same test split",
  };
  const row = (v, dataset, cls) => h("tr", { dataset, class: cls },
    ...columns.map(([, numeric, cell, field]) => h("td", {
      class: [numeric ? "num" : null, field === "drop" && drop(v) !== null && drop(v) <= -0.05 ? "worse" : null].filter(Boolean).join(" ") || null,
      dataset: field ? { field } : {},
    }, cell(v))));
  const table = $("quality-table");
  put(table.tHead, [h("tr", {}, ...columns.map(([title, numeric]) =>
    h("th", { class: numeric ? "num" : null, title: tips[title] || null }, title)))]);
  put(table.tBodies[0], versions.flatMap((v) => [
    row(v, { version: v.version }, null),
    ...namedVariants(v).map((variant) => row(variant, { variantOf: v.version, variant: variant.variant }, "variant")),
  ]));
  table.hidden = versions.length === 0;
  return { labelled, valued };
}

/** The whole section from one answer of GET /models/{model}/quality and the model's SLOs. */
export function renderQuality(quality, slo, colorOf) {
  $("quality-label").textContent = `answers of the last ${duration(quality.window_s)}`;
  put($("quality-slo"), sloBadges(slo));
  const { labelled, valued } = renderTable(quality, colorOf);
  toggle($("quality-empty"), quality.versions.length === 0,
    `No feedback on answers of the last ${duration(quality.window_s)}. Keep the model's answers for feedback `
    + "(record_outcomes in its deployment policy), send the true class of an answer with "
    + "POST /v2/models/{model}/feedback or gallery feedback, and each version's online accuracy shows here.");

  const xMax = Date.now();
  const xMin = xMax - quality.window_s * 1000;
  const half = (quality.bucket_s * 1000) / 2;
  const keys = [...new Set(quality.series.map((p) => String(p.version)))].sort((a, b) => Number(a) - Number(b));
  const build = (field, scale) => keys.map((key) => ({
    key,
    label: versionLabel(key),
    color: colorOf(key),
    points: quality.series.filter((p) => String(p.version) === key && p[field] !== null)
      // at the middle of its bucket; the first and the current bucket only partly in the window, at its edge
      .map((p) => [Math.min(xMax, Math.max(xMin, parseTime(p.t) + half)), p[field] * scale]),
  }));
  const empty = `no feedback in the last ${duration(quality.window_s)}`;
  toggle($("chart-accuracy"), labelled);
  toggle($("chart-rmse"), valued);
  if (labelled) {
    lineChart($("chart-accuracy").querySelector(".plot"), build("accuracy", 100), {
      xMin, xMax, unit: "%", limit: accuracyLimit(quality, slo), empty,
    });
  }
  if (valued) {
    lineChart($("chart-rmse").querySelector(".plot"), build("rmse", 1), {
      xMin, xMax, unit: "", limit: slo?.max_online_rmse ?? null, empty,
    });
  }
}
