// Experiments: the trainer's runs (per model, newest first) with their parameters, metrics and status;
// pick 2 to 5 to compare. `?search=ID` shows a hyperparameter search as its trials and their scores.

import { api, gallery, trainer } from "./api.js";
import { errorCard, navigate, setQuery } from "./app.js";
import { lineChart } from "./chart.js";
import { empty, h, metric, num, put, seg, statusBadge, table, when } from "./dom.js";

const MAX_COMPARE = 5;
const DEFAULT_PARAMS = ["model.architecture", "model.hidden", "training.epochs", "training.learning_rate", "training.batch_size"];
const HEADLINE_METRICS = ["val_accuracy", "test_accuracy", "val_loss"];

/** A parameter's value for people: numbers to 4 significant digits, lists and objects as JSON. */
export function show(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number" && !Number.isInteger(v)) return String(Number(v.toPrecision(4)));
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

/** A parameter's value for comparing runs: exact. */
export const exact = (v) => JSON.stringify(v ?? null);

/** Parameters whose values differ between `runs` (at most `limit`), else a default set. */
export function varyingParams(runs, limit = 6) {
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.params || {})))];
  const varying = keys.filter((k) => new Set(runs.map((r) => exact(r.params?.[k]))).size > 1 && k !== "name");
  const chosen = varying.length ? varying : DEFAULT_PARAMS.filter((k) => keys.includes(k));
  return chosen.slice(0, limit);
}

async function searchSection(searchId, runs) {
  let search;
  try {
    search = await api(trainer(`/searches/${seg(searchId)}`));
  } catch (err) {
    return errorCard(err);
  }
  const runOfJob = new Map(runs.map((r) => [r.job_id, r]));
  const keys = [...new Set(search.trials.flatMap((t) => Object.keys(t.params)))];
  const rows = search.trials.map((t) => {
    const run = runOfJob.get(t.job_id);
    const winner = run && run.id === search.winner_run_id;
    return {
      props: { class: winner ? "recommended" : null, dataset: { trial: String(t.number) } },
      cells: [
        String(t.number),
        statusBadge(t.state),
        metric(search.metric, t.value),
        ...keys.map((k) => show(t.params[k])),
        run ? h("a", { href: `/runs/${seg(run.id)}` }, run.id.slice(0, 8)) : t.job_id.slice(0, 8),
        t.reasons.join("; "),
      ],
    };
  });
  const points = search.trials.filter((t) => typeof t.value === "number").map((t) => [t.number, t.value]);
  let best = null;
  const bestSoFar = search.trials
    .filter((t) => typeof t.value === "number")
    .map((t) => {
      best = best === null ? t.value : search.direction === "minimize" ? Math.min(best, t.value) : Math.max(best, t.value);
      return [t.number, best];
    });
  return h(
    "section",
    { class: "card", id: "search" },
    h("h2", {}, `Search ${search.id}`),
    h("p", { class: "note" }, `${search.model} · ${search.direction} ${search.metric} · budget ${search.budget} trials · `, statusBadge(search.status), search.winner_run_id ? [" · winner ", h("a", { href: `/runs/${seg(search.winner_run_id)}` }, search.winner_run_id)] : ""),
    h(
      "div",
      { class: "split" },
      table(["#trial", "state", `#${search.metric}`, ...keys, "run", "why"], rows, { id: "trials" }),
      lineChart(
        [
          { key: "trial", label: "trial score", color: "#2563eb", points },
          { key: "best", label: "best so far", color: "#16a34a", points: bestSoFar },
        ],
        { id: "search-scores", title: "Scores by trial", xLabel: "trial", yLabel: search.metric },
      ),
    ),
  );
}

export async function render(view, route) {
  route.title("Experiments");
  const model = route.query.get("model") || "";
  const searchId = route.query.get("search") || "";
  const form = h(
    "form",
    { class: "card filters", id: "runs-filters" },
    h("label", { class: "field" }, "Model", h("input", { name: "model", value: model, list: "model-names", placeholder: "every model", autocomplete: "off" })),
    h("datalist", { id: "model-names" }),
    h("label", { class: "field" }, "Search id", h("input", { name: "search", value: searchId, placeholder: "a hyperparameter search", autocomplete: "off" })),
    h("button", { type: "submit" }, "Show"),
  );
  const compare = h("button", { type: "button", id: "compare-selected", disabled: true }, "Compare selected");
  const hint = h("span", { class: "note", id: "compare-hint" }, `Tick 2 to ${MAX_COMPARE} runs to compare them.`);
  const list = h("section", { class: "card", id: "runs" }, empty("Loading runs…"));
  const searchSlot = h("div");
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Experiments"), h("div", { class: "actions" }, compare, hint)), form, searchSlot, list);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const key of ["model", "search"]) if (form.elements[key].value.trim()) params.set(key, form.elements[key].value.trim());
    navigate(`/runs${params.toString() ? `?${params}` : ""}`);
  });
  api(gallery("/catalogue?limit=100"))
    .then((page) => put(view.querySelector("#model-names"), page.models.map((m) => h("option", { value: m.name }))))
    .catch(() => {}); // only suggestions: the field still takes any name

  const runs = await api(trainer(`/runs?limit=200${model ? `&model=${encodeURIComponent(model)}` : ""}`));
  if (!route.isCurrent()) return;
  setQuery({ model, search: searchId });
  if (searchId) put(searchSlot, await searchSection(searchId, runs));

  const selected = new Set();
  const refresh = () => {
    compare.disabled = selected.size < 2 || selected.size > MAX_COMPARE;
    hint.textContent = selected.size > MAX_COMPARE ? `At most ${MAX_COMPARE} runs.` : `${selected.size} selected; tick 2 to ${MAX_COMPARE} runs to compare them.`;
  };
  compare.addEventListener("click", () => navigate(`/compare?runs=${[...selected].map(encodeURIComponent).join(",")}`));

  if (!runs.length) {
    put(list, h("h2", {}, "Runs"), empty(model ? `No runs of ${model} yet.` : "No runs yet. Train a model: gallery train examples/digits.yaml"));
    return;
  }
  const params = varyingParams(runs);
  const rows = runs.map((run) => {
    const box = h("input", { type: "checkbox", class: "pick", "aria-label": `select run ${run.id}`, dataset: { run: run.id } });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(run.id);
      else selected.delete(run.id);
      refresh();
    });
    return {
      props: { dataset: { run: run.id } },
      cells: [
        box,
        h("a", { href: `/runs/${seg(run.id)}` }, run.id),
        h("a", { href: `/models/${seg(run.model)}` }, run.model),
        statusBadge(run.status),
        when(run.started_at),
        run.system?.duration_seconds ? `${num(run.system.duration_seconds)} s` : "–",
        ...params.map((k) => show(run.params?.[k])),
        ...HEADLINE_METRICS.map((k) => metric(k, run.metrics?.[k])),
      ],
    };
  });
  put(
    list,
    h("h2", {}, model ? `Runs of ${model}` : "Runs", h("small", {}, `${runs.length} newest`)),
    h("div", { class: "scroll-x" }, table(["", "run", "model", "status", "started", "#took", ...params.map((p) => p.replace(/^(training|model|preparation)\./, "")), ...HEADLINE_METRICS.map((m) => `#${m}`)], rows, { id: "runs-table" })),
  );
}
