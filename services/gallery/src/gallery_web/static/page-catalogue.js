// The catalogue: every registered model as a card, searched, filtered and sorted by the server a page at a
// time (/api/gallery/catalogue), with the filters in the URL so a view can be shared.

import { api, gallery, registry } from "./api.js";
import { errorCard, setQuery } from "./app.js";
import { ago, badge, bytes, empty, h, metric, ms, put, seg, select, statusBadge } from "./dom.js";

const PAGE_SIZE = 24;
const STAGES = ["production", "validated", "rejected", "validating", "pending", "archived"];

/** The filters a URL's query holds. */
function filtersOf(query) {
  return {
    q: query.get("q") || "",
    project: query.get("project") || "",
    task: query.get("task") || "",
    stage: query.get("stage") || "",
    tag: query.getAll("tag").join(", "),
    metric: query.get("metric") || "",
    min_metric: query.get("min_metric") || "",
    sort: query.get("sort") || "name",
    order: query.get("order") || "",
  };
}

/** The query for the API (and the page's URL) from the filters. */
function queryOf(filters) {
  const tags = filters.tag
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
  const params = {
    q: filters.q.trim(),
    project: filters.project || "",
    task: filters.task,
    stage: filters.stage,
    tag: tags,
    // "metric ≥ x" and "sort by metric" need a metric's name: the gate's accuracy unless one is typed
    metric: filters.min_metric !== "" || filters.sort === "metric" ? filters.metric || "accuracy" : filters.metric,
    min_metric: filters.min_metric,
    sort: filters.sort === "name" ? "" : filters.sort,
    order: filters.order,
  };
  return params;
}

function search(params, pageToken) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (Array.isArray(value)) value.forEach((v) => query.append(key, v));
    else if (value !== "" && value !== null && value !== undefined) query.set(key, value);
  }
  query.set("limit", String(PAGE_SIZE));
  if (pageToken) query.set("page_token", pageToken);
  return api(gallery(`/catalogue?${query}`));
}

/** The projects the signed-in caller holds a role in, for the picker (none when the registry has no projects API). */
async function visibleProjects() {
  try {
    return (await api(registry("/projects"))).map((p) => p.name);
  } catch {
    return [];
  }
}

function controls(filters, projects) {
  return h(
    "form",
    { class: "card filters", id: "catalogue-filters", role: "search" },
    h(
      "label",
      { class: "field grow" },
      "Search",
      h("input", { type: "search", name: "q", value: filters.q, placeholder: "name, description or tag", autocomplete: "off" }),
    ),
    // a shared link's project stays chosen even when not listed: the registry then says it is not found
    select("project", "Project", [["", "any"], ...[...new Set([...projects, filters.project].filter(Boolean))].map((p) => [p, p])], filters.project),
    select("task", "Task", [["", "any"], ["classification", "classification"], ["regression", "regression"]], filters.task),
    select("stage", "Stage", [["", "any"], ...STAGES.map((s) => [s, s])], filters.stage),
    h("label", { class: "field" }, "Tag", h("input", { name: "tag", value: filters.tag, placeholder: "key or key=value", size: 14 })),
    h(
      "label",
      { class: "field" },
      "Metric ≥",
      h(
        "span",
        { class: "pair" },
        h("input", { name: "metric", value: filters.metric, placeholder: "accuracy", size: 9 }),
        h("input", { name: "min_metric", type: "number", step: "any", value: filters.min_metric, placeholder: "0.9", class: "short" }),
      ),
    ),
    select("sort", "Sort", [["name", "name"], ["updated", "last change"], ["metric", "metric"]], filters.sort),
    select("order", "Order", [["", "default"], ["asc", "ascending"], ["desc", "descending"]], filters.order),
    h("button", { type: "submit" }, "Apply"),
  );
}

function deploymentFacts(deployment) {
  if (!deployment || deployment.state === "none" || !deployment.state) return [statusBadge("none"), " not deployed"];
  const traffic = (deployment.traffic || [])
    .filter((t) => t.percent > 0 || t.stage !== "retired")
    .map((t) => `v${t.version} ${t.stage} ${Math.round(t.percent * 10) / 10} %`)
    .join(" · ");
  return [statusBadge(deployment.state), traffic ? h("span", { class: "traffic" }, ` ${traffic}`) : null];
}

/** One model's card in the catalogue grid. */
export function modelCard(entry) {
  const href = `/models/${seg(entry.name)}`;
  const prod = entry.production;
  const rows = [];
  if (prod) {
    rows.push(["production", h("span", {}, h("a", { href: `${href}/versions/${prod.version}` }, `v${prod.version}`), ` · ${prod.semver}`)]);
    if (prod.headline_metric) {
      rows.push([prod.headline_metric.name, h("strong", { class: "headline" }, metric(prod.headline_metric.name, prod.headline_metric.value))]);
    }
    const variant = prod.recommended_variant;
    if (variant) rows.push(["variant", `${variant.name} · ${bytes(variant.size_bytes)} · ${ms(variant.p50_ms)} p50`]);
  } else {
    rows.push(["production", h("span", { class: "muted" }, entry.latest_version ? `none yet · latest v${entry.latest_version}` : "no versions")]);
  }
  rows.push(["deployment", h("span", {}, deploymentFacts(entry.deployment))]);
  const tags = Object.entries(entry.tags || {});
  return h(
    "article",
    { class: "model-card", dataset: { model: entry.name } },
    h(
      "header",
      {},
      h("a", { class: "model-name", href }, entry.name),
      entry.project ? badge(entry.project, "project", `project ${entry.project}`) : null,
      entry.task ? badge(entry.task, "task") : null,
      entry.version_count ? h("span", { class: "note" }, `${entry.version_count} version${entry.version_count === 1 ? "" : "s"}`) : null,
    ),
    h("p", { class: entry.summary ? "summary" : "summary empty" }, entry.summary || "No description yet."),
    h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    tags.length
      ? h(
          "div",
          { class: "tags" },
          tags.map(([k, v]) => {
            const tag = v ? `${k}=${v}` : k;
            return h("a", { class: "tag", href: `/?tag=${encodeURIComponent(tag)}`, title: `models tagged ${tag}` }, tag);
          }),
        )
      : null,
    h("footer", {}, h("span", {}, entry.owner ? `by ${entry.owner}` : "no owner"), h("span", {}, "changed ", ago(entry.updated_at))),
  );
}

export async function render(view, route) {
  route.title("Catalogue");
  const filters = filtersOf(route.query);
  const form = controls(filters, await visibleProjects());
  const summary = h("p", { class: "note", id: "catalogue-total" });
  const grid = h("div", { class: "catalogue", id: "catalogue" });
  const more = h("button", { type: "button", id: "catalogue-more", class: "more", hidden: true }, "Show more");
  const problem = h("div");
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Models"), summary), form, problem, grid, more);

  let nextToken = null;
  let loading = 0;

  async function load(append) {
    const ticket = ++loading;
    const params = queryOf(Object.fromEntries(new FormData(form).entries()));
    if (!append) setQuery(params);
    more.disabled = true;
    let page;
    try {
      page = await search(params, append ? nextToken : null);
    } catch (err) {
      if (ticket !== loading || !route.isCurrent()) return;
      put(problem, errorCard(err));
      more.hidden = true;
      if (!append) put(grid);
      summary.textContent = "";
      return;
    }
    if (ticket !== loading || !route.isCurrent()) return;
    put(problem);
    if (!append) put(grid);
    grid.append(...page.models.map(modelCard));
    if (!append && page.models.length === 0) grid.append(empty("No model matches these filters."));
    if (page.warnings?.length) problem.append(h("p", { class: "message bad" }, page.warnings.join("; ")));
    nextToken = page.next_page_token;
    more.hidden = !nextToken;
    more.disabled = false;
    const shown = grid.querySelectorAll(".model-card").length;
    summary.textContent = `${page.total} model${page.total === 1 ? "" : "s"}${shown < page.total ? `, showing ${shown}` : ""}`;
    view.dataset.loaded = String(shown);
  }

  let typing = null;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load(false);
  });
  form.addEventListener("change", () => load(false));
  form.q.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => load(false), 250);
  });
  more.addEventListener("click", () => load(true));
  await load(false);
}
