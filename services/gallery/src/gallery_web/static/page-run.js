// One training run: its parameters, final metrics, curves, system figures and artifacts, and the model
// version it became.

import { api, maybe, registry, trainer } from "./api.js";
import { bytes, h, metric, num, seg, statusBadge, table, when } from "./dom.js";
import { curveCharts } from "./page-compare.js";
import { show } from "./page-runs.js";

function grouped(params) {
  const groups = new Map();
  for (const [key, value] of Object.entries(params || {})) {
    const [group] = key.includes(".") ? key.split(".") : ["general"];
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push([key, value]);
  }
  return groups;
}

/** A run that imported a model trained elsewhere: no curves, but the file and what was changed in it. */
function imported(run) {
  const changes = run.params.changes || [];
  return h(
    "section",
    { class: "card", id: "run-import" },
    h("h2", {}, "Imported"),
    h("p", { class: "note" }, "Trained elsewhere and imported from ", h("code", {}, run.params.file || "an ONNX file"), `; validation rows: ${run.params.validation || "–"}.`),
    changes.length
      ? [h("p", {}, "Changed to fit the features / logits contract:"), h("ul", { id: "import-changes" }, changes.map((c) => h("li", {}, c)))]
      : h("p", {}, "The file already had the features / logits contract: stored unchanged."),
  );
}

export async function render(view, route) {
  const id = route.params.id;
  route.title(`Run ${id}`);
  const [run, records] = await Promise.all([api(trainer(`/runs/${seg(id)}`)), api(trainer(`/runs/${seg(id)}/metrics`))]);
  const versions = await maybe(registry(`/models/${seg(run.model)}/versions?limit=100`)).catch(() => null);
  const version = versions?.versions?.find((v) => v.run_id === run.id) || null;
  if (!route.isCurrent()) return;
  const took = run.system?.duration_seconds;
  view.append(
    h(
      "div",
      { class: "page-head" },
      h("div", { class: "crumbs" }, h("a", { href: "/runs" }, "Experiments"), " / ", h("a", { href: `/runs?model=${encodeURIComponent(run.model)}` }, run.model), " / "),
      h("div", { class: "title-row" }, h("h1", { id: "run-title" }, `Run ${run.id}`), statusBadge(run.status)),
      h(
        "p",
        { class: "note" },
        `${run.model} · started ${when(run.started_at)}`,
        took ? ` · took ${num(took)} s` : "",
        version ? [" · became ", h("a", { href: `/models/${seg(run.model)}/versions/${version.version}` }, `v${version.version} (${version.semver})`), " ", statusBadge(version.status)] : " · not registered as a version",
      ),
      run.error ? h("p", { class: "message bad" }, run.error) : null,
    ),
    run.params?.source === "import"
      ? imported(run)
      : h("section", { class: "card", id: "curves" }, h("h2", {}, "Training curves"), h("div", { class: "charts" }, curveCharts([run], [records], (r) => r.id))),
    h(
      "div",
      { class: "two-col" },
      h("section", { class: "card", id: "run-metrics" }, h("h2", {}, "Final metrics"), table(["metric", "#value"], Object.entries(run.metrics || {}).map(([k, v]) => [h("code", {}, k), metric(k, v)]))),
      h(
        "section",
        { class: "card", id: "run-system" },
        h("h2", {}, "System"),
        table(["", ""], Object.entries(run.system || {}).map(([k, v]) => [k, k.endsWith("_bytes") ? bytes(v) : show(v)]), { class: "grid kv" }),
      ),
    ),
    h(
      "section",
      { class: "card", id: "run-params" },
      h("h2", {}, "Parameters"),
      h(
        "div",
        { class: "param-groups" },
        [...grouped(run.params)].map(([group, entries]) =>
          h("div", {}, h("h3", {}, group), table(["", ""], entries.filter(([, v]) => v !== null).map(([k, v]) => [h("code", {}, k.replace(`${group}.`, "")), show(v)]), { class: "grid kv" })),
        ),
      ),
    ),
    h(
      "section",
      { class: "card", id: "run-artifacts" },
      h("h2", {}, "Artifacts"),
      table(["artifact", "#size", "sha256", "where"], Object.entries(run.artifacts || {}).map(([k, a]) => [k, bytes(a.size), h("code", { title: a.sha256 }, (a.sha256 || "").slice(0, 16)), h("code", { class: "uri" }, a.uri)])),
      h("p", { class: "note" }, `Data set ${run.dataset_fingerprint || "–"} · config ${run.config_hash ? run.config_hash.slice(0, 16) : "–"} · job ${run.job_id}`),
    ),
  );
}
