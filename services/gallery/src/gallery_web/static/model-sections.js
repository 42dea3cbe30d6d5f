// The model page's read-only sections, each drawn from one answer: the gate's evaluation, the data, the
// verdicts over time, the optimizer's report, deployments, the alias history, versions and downloads.

import { download, gallery, registry } from "./api.js";
import { barList, reliabilityDiagram, scatterChart } from "./chart.js";
import { ago, badge, bytes, empty, h, metric, ms, num, percent, points, seg, statusBadge, table, when } from "./dom.js";

const EVAL_METRICS = ["accuracy", "macro_f1", "loss", "ece", "rmse", "mae", "r2"];

/** The gate's confusion matrix if its report holds one: rows are true classes, columns predictions. */
function confusionOf(report) {
  const found = report.confusion_matrix ?? report.confusion;
  if (Array.isArray(found)) return { matrix: found, labels: null };
  if (found && Array.isArray(found.matrix)) return { matrix: found.matrix, labels: found.labels || null };
  return null;
}

/** Calibration bins from the gate's report, in whichever of the usual shapes it holds them. */
function calibrationOf(report) {
  const found = report.calibration ?? report.reliability ?? report.calibration_bins;
  const bins = Array.isArray(found) ? found : found?.bins;
  if (!Array.isArray(bins) || !bins.length) return null;
  return bins.map((b, i) => ({
    lower: b.lower ?? b.bin_lower ?? (Array.isArray(b.range) ? b.range[0] : i / bins.length),
    upper: b.upper ?? b.bin_upper ?? (Array.isArray(b.range) ? b.range[1] : (i + 1) / bins.length),
    confidence: b.confidence ?? b.mean_confidence ?? b.avg_confidence,
    accuracy: b.accuracy ?? b.mean_accuracy ?? b.avg_accuracy,
    count: b.count ?? b.n ?? b.samples ?? 0,
  }));
}

/** A heat table: each cell shaded by its share of the row (true class). */
export function heatTable(matrix, labels) {
  const names = labels || matrix.map((_, i) => String(i));
  const max = Math.max(1, ...matrix.flat());
  return h(
    "table",
    { class: "heat", id: "confusion-matrix" },
    h("thead", {}, h("tr", {}, h("th", { class: "corner" }, "true ↓ / predicted →"), names.map((n) => h("th", {}, n)))),
    h(
      "tbody",
      {},
      matrix.map((row, i) => {
        const total = row.reduce((a, b) => a + b, 0) || 1;
        return h(
          "tr",
          {},
          h("th", {}, names[i]),
          row.map((count, j) => {
            const share = count / total;
            const tint = i === j ? `rgba(22, 163, 74, ${0.12 + 0.7 * share})` : `rgba(220, 38, 38, ${count ? 0.1 + 0.8 * share : 0})`;
            return h("td", { style: { background: tint }, title: `true ${names[i]}, predicted ${names[j]}: ${count} (${percent(share)})`, class: count / max > 0.5 ? "strong" : null }, String(count));
          }),
        );
      }),
    ),
  );
}

export function evaluationSection(version) {
  const report = version.evaluation_report;
  const body = [];
  if (!report) {
    body.push(empty(version.status === "pending" || version.status === "validating" ? "The gate has not judged this version yet." : "No evaluation report."));
    return h("section", { class: "card", id: "evaluation" }, h("h2", {}, "The gate's evaluation"), body);
  }
  const figures = EVAL_METRICS.filter((k) => typeof report[k] === "number").map((k) =>
    h("div", { class: "figure", dataset: { metric: k } }, h("span", { class: "figure-value" }, metric(k, report[k])), h("span", { class: "figure-label" }, k)),
  );
  if (typeof report.latency_p50_ms === "number") {
    figures.push(h("div", { class: "figure", dataset: { metric: "latency_p50_ms" } }, h("span", { class: "figure-value" }, ms(report.latency_p50_ms)), h("span", { class: "figure-label" }, "latency p50")));
  }
  if (typeof report.latency_p99_ms === "number") {
    figures.push(h("div", { class: "figure", dataset: { metric: "latency_p99_ms" } }, h("span", { class: "figure-value" }, ms(report.latency_p99_ms)), h("span", { class: "figure-label" }, "latency p99")));
  }
  body.push(h("div", { class: "figures" }, figures));
  const notes = [];
  if (report.n_test) notes.push(`${report.n_test} held-out rows`);
  if (report.evaluator) notes.push(`evaluated with ${report.evaluator}`);
  if (report.test_split?.sha256) notes.push(`test split ${report.test_split.sha256.slice(0, 12)}`);
  body.push(h("p", { class: "note" }, notes.join(" · ")));

  const policy = report.policy;
  if (policy) {
    const rules = [
      ...Object.entries(policy.min_metrics || {}).map(([k, v]) => `${k} ≥ ${v}`),
      ...Object.entries(policy.max_metrics || {}).map(([k, v]) => `${k} ≤ ${v}`),
      `${policy.champion_metric} within ${policy.champion_tolerance} of @${policy.champion_alias}`,
    ];
    body.push(h("p", { class: "note" }, "Policy: ", rules.join(" · ")));
  }

  const recall = report.per_class_recall;
  const detail = h("div", { class: "eval-grid" });
  if (recall && Object.keys(recall).length) {
    const items = Object.entries(recall).map(([label, value]) => ({ label, value }));
    const worst = Math.min(...items.map((i) => i.value));
    items.forEach((i) => {
      i.highlight = i.value === worst && worst < 1;
    });
    detail.append(h("div", { id: "per-class-recall" }, h("h3", {}, "Recall per class"), barList(items)));
  }
  const confusion = confusionOf(report);
  if (confusion) {
    detail.append(h("div", {}, h("h3", {}, "Confusion matrix"), heatTable(confusion.matrix, confusion.labels || version.class_names)));
  }
  const bins = calibrationOf(report);
  if (bins) {
    detail.append(h("div", {}, h("h3", {}, "Calibration"), reliabilityDiagram(bins, { title: `Reliability diagram${typeof report.ece === "number" ? ` (ECE ${num(report.ece)})` : ""}` })));
  }
  if (detail.childElementCount) body.push(detail);
  const missing = [!confusion && "a confusion matrix", !bins && "calibration bins"].filter(Boolean);
  if (missing.length) body.push(h("p", { class: "note" }, `The gate's report for this version holds no ${missing.join(" and no ")}.`));
  return h("section", { class: "card", id: "evaluation" }, h("h2", {}, "The gate's evaluation"), body);
}

const PREP_KEYS = /^preparation\./;

export function dataSection(version, run) {
  const report = version.evaluation_report || {};
  const rows = [];
  const fingerprint = version.lineage?.dataset_fingerprint || run?.dataset_fingerprint;
  rows.push(["data set fingerprint", fingerprint ? h("code", { title: fingerprint }, fingerprint.slice(0, 16)) : "–"]);
  if (run) {
    const p = run.params;
    const source = [p["data.source"], p["data.name"] || p["data.uri"] || p["data.path"]].filter(Boolean).join(" · ");
    if (source) rows.push(["source", source]);
    const split = ["train", "validation", "test"].map((k) => p[`preparation.split.${k}`]).filter((v) => v !== undefined);
    if (split.length === 3) rows.push(["split", `train ${percent(split[0], 0)} · validation ${percent(split[1], 0)} · test ${percent(split[2], 0)}`]);
  }
  if (report.n_test) rows.push(["test rows", num(report.n_test)]);
  const sizes = report.split_sizes || report.splits;
  if (sizes && typeof sizes === "object") rows.push(["split sizes", Object.entries(sizes).map(([k, v]) => `${k} ${num(v)}`).join(" · ")]);
  const body = [table(["", ""], rows, { class: "grid kv" })];
  const balance = report.class_balance || report.class_counts || report.support;
  if (balance && typeof balance === "object") {
    const entries = Object.entries(balance);
    const total = entries.reduce((a, [, v]) => a + v, 0) || 1;
    const counts = entries.every(([, v]) => Number.isInteger(v));
    const largest = Math.max(...entries.map(([, v]) => v)) || 1;
    // bars to the largest class (an imbalance shows at a glance), labels as counts and shares of the whole
    const shares = entries.map(([label, v]) => ({ label, value: v / largest, share: counts ? v / total : v, count: counts ? v : null }));
    const format = (_, item) => (item.count === null ? percent(item.share) : `${item.count} · ${percent(item.share, 0)}`);
    const where = report.n_test ? ` (the ${num(report.n_test)} test rows)` : "";
    body.push(h("h3", {}, `Class balance${where}`), barList(shares, { className: "compact wide-values", format }));
  } else if (version.class_names) {
    body.push(h("p", { class: "note" }, `${version.class_names.length} classes: ${version.class_names.join(", ")}. The gate's report holds no class counts.`));
  }
  if (run) {
    const steps = Object.entries(run.params).filter(([k, v]) => PREP_KEYS.test(k) && v !== null && v !== false && !k.startsWith("preparation.split."));
    if (steps.length) {
      body.push(h("h3", {}, "Preprocessing (from the training spec)"), h("ul", { class: "steps" }, steps.map(([k, v]) => h("li", {}, h("code", {}, k), " = ", JSON.stringify(v)))));
    }
  }
  return h("section", { class: "card", id: "data" }, h("h2", {}, "Data"), body);
}

/** The gate's verdict on each version, newest first: passed or the reasons it failed, and the champion comparison. */
export function verdictsSection(versions) {
  const items = versions.map((v) => {
    const champion = v.evaluation_report?.champion;
    let against = null;
    if (champion && champion.version !== v.version && champion.value !== undefined) {
      const own = v.evaluation_report?.[champion.metric];
      against = `${champion.metric} ${num(own)} against champion v${champion.version} (@${champion.alias}) ${num(champion.value)}`;
    } else if (champion?.note) {
      against = champion.note;
    } else if (champion?.error) {
      against = champion.error;
    }
    return h(
      "li",
      { class: `verdict ${v.status}`, dataset: { version: String(v.version) } },
      h("div", { class: "verdict-head" }, h("a", { href: `/models/${seg(v.name)}/versions/${v.version}` }, `v${v.version}`), h("span", { class: "note" }, v.semver), statusBadge(v.status), h("span", { class: "note" }, when(v.created_at))),
      against ? h("p", { class: "note" }, against) : null,
      v.rejection_reasons?.length ? h("ul", { class: "reasons alarm" }, v.rejection_reasons.map((r) => h("li", {}, r))) : null,
    );
  });
  return h("section", { class: "card", id: "verdicts" }, h("h2", {}, "Champion / challenger verdicts"), items.length ? h("ol", { class: "verdicts" }, items) : empty("No versions yet."));
}

/** `served`: the deployer's variants of the version (GET /deployments/{model}/variants), which mark the one
 * serving and those withdrawn after their answers broke the quality SLO; empty when it does not serve. */
export function optimizerSection(job, served) {
  const report = job?.report;
  const deployed = new Map((served || []).map((v) => [v.variant, v]));
  const marks = (name) => {
    const v = deployed.get(name);
    if (!v) return [];
    return [
      v.serving ? badge("serving", "ok") : null,
      v.withdrawn ? h("span", { class: "badge bad", title: v.withdrawn, dataset: { withdrawn: v.withdrawn } }, "withdrawn") : null,
    ];
  };
  const title = h("h2", {}, "Optimization");
  if (!job) return h("section", { class: "card", id: "optimizer" }, title, empty("The optimizer has no job for this version."));
  if (!report) {
    const text = job.status === "failed" ? `The optimizer failed: ${job.error || "no reason given"}` : `The optimizer's job is ${job.status}${job.step ? ` (${job.step})` : ""}.`;
    return h("section", { class: "card", id: "optimizer" }, title, empty(text));
  }
  const variants = report.variants || [];
  // a classifier's variants are held to its accuracy, a regressor's to its r2 (older reports name no score)
  const score = report.score === "r2" ? "r2" : "accuracy";
  const delta = score === "r2" ? "r2_delta" : "accuracy_delta";
  const rows = variants.map((v) => ({
    props: { class: v.name === report.recommended ? "recommended" : null, dataset: { variant: v.name } },
    cells: [
      h("span", {}, v.name, v.name === report.recommended ? badge("recommended", "ok") : null, ...marks(v.name)),
      v.error ? h("span", { class: "bad" }, v.error) : bytes(v.size_bytes),
      ms(v.latency_b1_p50_ms),
      ms(v.latency_b32_p50_ms),
      metric(score, v[score]),
      v[delta] === null || v[delta] === undefined ? "–" : `${v[delta] >= 0 ? "+" : ""}${(v[delta] * 100).toFixed(2)} pt`,
      v.within_budget ? badge("yes", "ok") : badge("no", "bad"),
    ],
  }));
  const scatter = scatterChart(
    variants.filter((v) => !v.error).map((v) => ({
      key: v.name,
      label: v.name,
      x: v[report.ranking_metric] ?? v.latency_b32_p50_ms,
      y: v[score],
      color: v.name === report.recommended ? "#16a34a" : v.within_budget ? "#2563eb" : "#9ca3af",
      highlight: v.name === report.recommended,
    })),
    { id: "latency-accuracy", title: `Latency against ${score}`, xLabel: `${(report.ranking_metric || "latency_b32_p50_ms").replace(/_/g, " ")}`, yLabel: score },
  );
  const measured = report.measured_on ? `Measured on ${report.measured_on.model} (${report.measured_on.hardware_class}, ${report.measured_on.cores} cores).` : "";
  return h(
    "section",
    { class: "card", id: "optimizer" },
    title,
    h("p", {}, "Recommended: ", h("strong", {}, report.recommended || "none"), report.recommendation_reason ? ` — ${report.recommendation_reason}` : ""),
    h("p", { class: "note" }, measured),
    h("div", { class: "split" }, table(["variant", "#size", "#b1 p50", "#b32 p50", `#${score}`, `#Δ ${score}`, "in budget"], rows, { id: "variants" }), scatter),
    withdrawnNote(served || []),
    perTargetBlock(report),
  );
}

/** Why the deployer withdrew a variant, and how to bring it back. */
function withdrawnNote(served) {
  const withdrawn = served.filter((v) => v.withdrawn);
  if (!withdrawn.length) return null;
  return h("div", { class: "withdrawn-note" }, withdrawn.map((v) =>
    h("p", { class: "note", dataset: { variant: v.variant } },
      h("strong", {}, v.variant), ` withdrawn: ${v.withdrawn}. It is not rolled in again unless served by hand (`,
      h("code", {}, `gallery variants MODEL:${v.version} --serve ${v.variant}`), ").")));
}

/** The recommendation per hardware class and execution provider, and every variant's figures on each
 * (reports from before the optimizer measured per target have none: nothing is shown). */
function perTargetBlock(report) {
  const score = report.score === "r2" ? "r2" : "accuracy";
  const recommendations = Object.entries(report.recommendations || {});
  if (!recommendations.length) return null;
  const recommended = recommendations.map(([target, rec]) => ({
    props: { dataset: { target } },
    cells: [target, rec.variant ? h("strong", {}, rec.variant) : "none", rec.reason || ""],
  }));
  const figures = (report.variants || []).flatMap((v) =>
    (v.measurements || []).map((m) => ({
      props: { dataset: { variant: v.name, target: m.target } },
      cells: [v.name, m.hardware_class, m.provider, ms(m.latency_b1_p50_ms), ms(m.latency_b32_p50_ms), metric(score, m[score]), m.error ? h("span", { class: "bad" }, m.error) : ""],
    })),
  );
  const absent = Object.entries(report.targets?.absent || {}).map(([provider, why]) => `${provider} (${why})`);
  return h(
    "div",
    { id: "per-target" },
    h("h3", {}, "Per hardware class and execution provider"),
    table(["target", "recommended", "why"], recommended, { id: "target-recommendations" }),
    absent.length ? h("p", { class: "note" }, `Not measured: ${absent.join("; ")}.`) : null,
    table(["variant", "hardware class", "provider", "#b1 p50", "#b32 p50", `#${score}`, "note"], figures, { id: "target-measurements" }),
  );
}

/** A figure box as the evaluation's: the value large, its name under it. */
function figure(key, value, label) {
  return h("div", { class: "figure", dataset: { metric: key } }, h("span", { class: "figure-value" }, value), h("span", { class: "figure-label" }, label));
}

/** How the version answers in service, from feedback on its answers (the monitor's online quality), beside
 * the gate's figure; `quality` is null when the monitor has seen nothing of the model. */
export function onlineQualitySection(name, version, quality) {
  const title = h("div", { class: "title-row" }, h("h2", {}, "Online quality"),
    h("a", { href: `/monitoring/${seg(name)}`, "data-reload": true }, "Monitoring →"));
  const figures = quality?.versions.find((v) => v.version === String(version.version));
  const window = quality ? `${Math.round(quality.window_s / 3600)} h` : "1 h";
  if (!figures) {
    return h("section", { class: "card", id: "online-quality" }, title, empty(
      `No feedback on v${version.version}'s answers in the last ${window}. Keep the model's answers for feedback `
      + "(record_outcomes in its deployment policy) and send their true classes to POST /v2/models/{model}/feedback "
      + "or with gallery feedback."));
  }
  const boxes = [];
  if (figures.labelled_rows) {
    const drop = figures.gate_accuracy === null ? null : (figures.accuracy - figures.gate_accuracy) * 100;
    boxes.push(
      figure("online_accuracy", percent(figures.accuracy, 2), `online accuracy, ${figures.labelled_rows.toLocaleString("en-US")} rows`),
      figure("gate_accuracy", percent(figures.gate_accuracy, 2), "the gate's accuracy"),
      figure("accuracy_delta", drop === null ? "–" : `${points(drop)} pt`, "online − gate"),
    );
  }
  if (figures.valued_rows) {
    boxes.push(
      figure("online_rmse", num(figures.rmse), `online rmse, ${figures.valued_rows.toLocaleString("en-US")} rows`),
      figure("gate_rmse", num(figures.gate_rmse), "the gate's rmse"),
    );
  }
  if (figures.rewarded) boxes.push(figure("mean_reward", num(figures.mean_reward), `mean reward, ${figures.rewarded} answers`));
  return h("section", { class: "card", id: "online-quality" }, title, h("div", { class: "figures" }, boxes),
    variantQualityTable(figures),
    h("p", { class: "note" }, `Feedback on ${figures.outcomes.toLocaleString("en-US")} answers given in the last ${window}.`));
}

/** Which variant gave the answers (a fallback's count for the fallback), beside the optimizer's figures of it. */
function variantQualityTable(figures) {
  const variants = figures.variants || [];
  if (!variants.length || (variants.length === 1 && !variants[0].variant)) return null;
  const headers = ["variant", "#answers with feedback"];
  if (figures.labelled_rows) headers.push("#online accuracy", "#optimizer's accuracy");
  if (figures.valued_rows) headers.push("#online rmse", "#optimizer's rmse");
  const rows = variants.map((v) => ({
    props: { dataset: { variant: v.variant } },
    cells: [
      v.variant || "(unnamed)",
      v.outcomes.toLocaleString("en-US"),
      ...(figures.labelled_rows ? [percent(v.accuracy, 2), percent(v.test_accuracy, 2)] : []),
      ...(figures.valued_rows ? [num(v.rmse), num(v.test_rmse)] : []),
    ],
  }));
  return h("div", { class: "variant-quality" }, table(headers, rows));
}

export function deploymentsSection(deployments) {
  const title = h("h2", {}, "Deployments and traffic");
  if (!deployments.length) return h("section", { class: "card", id: "deployments" }, title, empty("Not deployed."));
  const rows = deployments.map((d) => ({
    props: { dataset: { version: String(d.version), stage: d.stage } },
    cells: [`v${d.version}`, d.variant || "fp32", statusBadge(d.stage), `${num(d.traffic_percent)} %`, d.state, `${d.ready_replicas}/${d.desired_replicas}`, d.reason || "", ago(d.updated_at)],
  }));
  return h("section", { class: "card", id: "deployments" }, title, table(["version", "variant", "stage", "#traffic", "state", "#replicas", "why", "changed"], rows));
}

export function aliasHistorySection(history) {
  const title = h("h2", {}, "Alias history");
  if (!history.length) return h("section", { class: "card", id: "alias-history" }, title, empty("The production alias has never moved."));
  const rows = history.map((c) => [
    when(c.at),
    `@${c.alias}`,
    c.from_version ? `v${c.from_version}` : "–",
    c.to_version ? `v${c.to_version}` : "deleted",
    c.actor,
    c.reason || "",
  ]);
  return h("section", { class: "card", id: "alias-history" }, title, table(["when", "alias", "from", "to", "who", "why"], rows));
}

export function versionsSection(model, versions, selected) {
  const headline = (v) => v.evaluation_report?.accuracy ?? v.metrics?.test_accuracy;
  const rows = versions.map((v) => ({
    props: { class: v.version === selected ? "selected" : null, dataset: { version: String(v.version) } },
    cells: [
      h("a", { href: `/models/${seg(model.name)}/versions/${v.version}` }, `v${v.version}`),
      v.semver,
      statusBadge(v.status),
      (v.aliases || []).map((a) => badge(`@${a}`, "alias")),
      metric("accuracy", headline(v)),
      v.run_id ? h("a", { href: `/runs/${seg(v.run_id)}` }, v.run_id.slice(0, 8)) : "–",
      when(v.created_at),
    ],
  }));
  return h("section", { class: "card", id: "versions" }, h("h2", {}, "Versions"), table(["version", "SemVer", "status", "aliases", "#accuracy", "run", "created"], rows));
}

const DOWNLOAD_ROLES = ["onnx", "int8", "fp16", "pruned", "distilled", "edge_bundle", "report", "weights", "spec"];

export function downloadsSection(version) {
  const name = version.name;
  const cardPath = registry(`/models/${seg(name)}/versions/${version.version}/card`);
  const message = h("p", { class: "note", id: "download-message" });
  const cardButton = h("button", { type: "button", id: "download-card" }, "Model card (Markdown)");
  cardButton.addEventListener("click", async () => {
    message.textContent = "";
    try {
      await download(cardPath, `${name}-v${version.version}-README.md`);
    } catch (err) {
      message.textContent = `The card could not be downloaded: ${err.message}`;
    }
  });
  const artifacts = DOWNLOAD_ROLES.map((role) => [role, version.artifacts?.[role]]).filter(([, a]) => a);
  const fileButton = (role, a) => {
    const suffix = (a.uri.split("/").pop().match(/(\.[A-Za-z0-9]+){1,2}$/) || [""])[0];
    const button = h("button", { type: "button", dataset: { download: role } }, "Download");
    button.addEventListener("click", async () => {
      message.textContent = "";
      try {
        await download(gallery(`/models/${seg(name)}/versions/${version.version}/artifacts/${seg(role)}`), `${name}-v${version.version}-${role}${suffix}`);
      } catch (err) {
        message.textContent = `${role} could not be downloaded: ${err.message}`;
      }
    });
    return button;
  };
  const rows = artifacts.map(([role, a]) => ({
    props: { dataset: { role } },
    cells: [role, a.format || "–", bytes(a.size), h("code", { title: a.sha256 }, a.sha256.slice(0, 16)), h("code", { class: "uri" }, a.uri), fileButton(role, a)],
  }));
  return h(
    "section",
    { class: "card", id: "downloads" },
    h("h2", {}, "Downloads"),
    h("div", { class: "actions" }, cardButton),
    message,
    artifacts.length ? table(["artifact", "format", "#size", "sha256", "where", ""], rows) : empty("No artifacts attached."),
    h("p", { class: "note" }, "Each file is checked against the sha256 the registry holds before the Gallery sends it."),
  );
}
