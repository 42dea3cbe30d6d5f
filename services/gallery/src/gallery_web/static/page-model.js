// The model page, its model card: the text people write (editable here, stored in the registry with its
// history) above what the system knows: the gate's evaluation, a federated version's sites, data, verdicts,
// optimization, deployments, online quality (feedback on its answers), alias history, versions and downloads. /models/{name} shows the production
// version (else the latest).

import { ApiError, api, deployer, maybe, monitor, optimizer, registry, trainer } from "./api.js";
import { askForToken, errorCard, navigate } from "./app.js";
import { ago, badge, h, metric, put, seg, statusBadge } from "./dom.js";
import { markdownBlock } from "./markdown.js";
import { importanceSection } from "./explain-views.js";
import { auditSection } from "./audit-view.js";
import { federationSection } from "./federation-view.js";
import { experimentsSection } from "./page-experiment.js";
import {
  aliasHistorySection,
  dataSection,
  deploymentsSection,
  downloadsSection,
  evaluationSection,
  onlineQualitySection,
  optimizerSection,
  verdictsSection,
  versionsSection,
} from "./model-sections.js";

const CARD_FIELDS = [
  ["description", "Description"],
  ["intended_use", "Intended use"],
  ["limitations", "Limitations and caveats"],
];

/** The answer of a settled promise, or the fallback (the section then shows what failed). */
const value = (settled, fallback) => (settled.status === "fulfilled" ? settled.value ?? fallback : fallback);

/** The card's text; a registry without the card endpoint yet still has the model's description. */
async function loadCard(name, model) {
  try {
    return await api(registry(`/models/${seg(name)}/card`));
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
      return { name, revision: 0, description: model.description, intended_use: null, limitations: null, updated_at: null, updated_by: null };
    }
    throw err;
  }
}

function cardView(card) {
  const meta = card.revision
    ? h("p", { class: "note", id: "card-revision" }, `revision ${card.revision}`, card.updated_by ? ` by ${card.updated_by}` : "", card.updated_at ? [", ", ago(card.updated_at)] : "")
    : h("p", { class: "note", id: "card-revision" }, "never edited");
  return [
    ...CARD_FIELDS.map(([key, label]) => h("div", { class: "card-field", dataset: { field: key } }, h("h3", {}, label), markdownBlock(card[key], `No ${label.toLowerCase()} written yet.`))),
    meta,
  ];
}

/** Every revision of the card, newest first: who, when, and the start of the description. */
function historyView(revisions) {
  const first = (text) => ((text || "").split("\n").find((line) => line.trim()) || "").replace(/^#+\s*/, "");
  return h(
    "ol",
    { class: "revisions" },
    revisions.map((r) =>
      h("li", { dataset: { revision: String(r.revision) } }, h("strong", {}, `revision ${r.revision}`), ` · ${r.updated_by || "unknown"} · `, ago(r.updated_at), h("span", { class: "note" }, ` — ${first(r.description).slice(0, 120)}`)),
    ),
  );
}

/** The card text section: rendered Markdown, an Edit button, and a form that PUTs the new revision. */
function cardSection(name, initial) {
  let card = initial;
  const section = h("section", { class: "card", id: "card-text" });
  const message = h("p", { class: "message", id: "card-message", role: "status" });

  function show() {
    const edit = h("button", { type: "button", id: "card-edit", class: "ghost-light" }, "Edit");
    edit.addEventListener("click", editing);
    const history = h("button", { type: "button", id: "card-history-toggle", class: "ghost-light", hidden: !card.revision }, "History");
    const revisions = h("div", { id: "card-history" });
    history.addEventListener("click", async () => {
      if (revisions.childElementCount) {
        put(revisions);
        return;
      }
      try {
        put(revisions, historyView(await api(registry(`/models/${seg(name)}/card/history`))));
      } catch (err) {
        put(revisions, errorCard(err));
      }
    });
    put(section, h("div", { class: "title-row" }, h("h2", {}, "Model card"), edit, history), message, revisions, cardView(card));
  }

  function editing() {
    message.textContent = "";
    message.className = "message";
    const form = h(
      "form",
      { id: "card-form", class: "card-form" },
      CARD_FIELDS.map(([key, label]) =>
        h("label", { class: "field block" }, label, h("textarea", { name: key, rows: key === "description" ? 8 : 4, value: card[key] || "", spellcheck: "true" })),
      ),
      h("p", { class: "note" }, "Markdown: # headings, lists, **bold**, *italic*, `code`, [links](https://…)."),
      h("div", { class: "actions" }, h("button", { type: "submit", id: "card-save" }, "Save"), h("button", { type: "button", id: "card-cancel", class: "ghost-light" }, "Cancel")),
    );
    async function save() {
      const body = Object.fromEntries(CARD_FIELDS.map(([key]) => [key, form.elements[key].value]));
      form.querySelector("#card-save").disabled = true;
      try {
        card = await api(registry(`/models/${seg(name)}/card`), { method: "PUT", body });
        show();
        message.textContent = `Saved as revision ${card.revision}.`;
        message.className = "message ok";
      } catch (err) {
        form.querySelector("#card-save").disabled = false;
        message.className = "message bad";
        if (err instanceof ApiError && err.unauthorized) {
          // the shell's prompt was raised already: make it retry this save, not redraw the page over the edits
          askForToken("Enter a token with the writer role to save the card.", save);
          message.textContent = `Saving the card needs a token with the writer role: ${err.message}.`;
        } else if (err instanceof ApiError && err.forbidden) {
          message.replaceChildren(
            `Saving the card needs a token with the writer role: ${err.message}. `,
            h("button", { type: "button", class: "link", onclick: () => askForToken("Enter a token with the writer role to save the card.", save) }, "Use another token"),
          );
        } else {
          message.textContent = `The card was not saved: ${err.message}`;
        }
      }
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      save();
    });
    form.querySelector("#card-cancel").addEventListener("click", () => {
      message.textContent = "";
      show();
    });
    put(section, h("div", { class: "title-row" }, h("h2", {}, "Model card — editing")), message, form);
    form.elements.description.focus();
  }

  show();
  return section;
}

function header(model, version, versions) {
  const base = `/models/${seg(model.name)}`;
  const picker = h(
    "select",
    { id: "version-picker", "aria-label": "version" },
    versions.map((v) => h("option", { value: String(v.version), selected: v.version === version?.version }, `v${v.version} · ${v.semver} · ${v.status}`)),
  );
  picker.addEventListener("change", () => navigate(`${base}/versions/${picker.value}`));
  const aliases = Object.entries(model.aliases || {}).map(([alias, v]) => badge(`@${alias} → v${v}`, "alias"));
  const tags = Object.entries(model.tags || {}).map(([k, v]) => h("span", { class: "tag" }, v ? `${k}=${v}` : k));
  const accuracy = version?.evaluation_report?.accuracy;
  return h(
    "div",
    { class: "page-head model-head" },
    h("div", { class: "crumbs" }, h("a", { href: "/" }, "Catalogue"), " / "),
    h("div", { class: "title-row" }, h("h1", { id: "model-title" }, model.name), version?.task ? badge(version.task, "task") : null, aliases),
    h(
      "div",
      { class: "title-row" },
      versions.length ? h("label", { class: "field inline" }, "Version ", picker) : null,
      version ? statusBadge(version.status) : null,
      typeof accuracy === "number" ? h("span", { class: "headline", id: "headline-accuracy" }, `accuracy ${metric("accuracy", accuracy)}`) : null,
      h("span", { class: "note" }, h("a", { id: "model-project", href: `/?project=${encodeURIComponent(model.project || "default")}`, title: "this project's models" }, `project ${model.project || "default"}`), " · ", model.owner ? `owner ${model.owner}` : "no owner", " · changed ", ago(model.updated_at)),
    ),
    tags.length ? h("div", { class: "tags" }, tags) : null,
    h(
      "nav",
      { class: "actions", "aria-label": "model" },
      h("a", { class: "button", href: `${base}/try` }, "Try it"),
      h("a", { class: "button ghost-light", href: `${base}/lineage` }, "Lineage"),
      h("a", { class: "button ghost-light", href: `/runs?model=${encodeURIComponent(model.name)}` }, "Experiments"),
      h("a", { class: "button ghost-light", href: `/monitoring/${seg(model.name)}`, "data-reload": true }, "Monitoring"),
    ),
  );
}

function guarded(build) {
  try {
    return build();
  } catch (err) {
    return errorCard(err);
  }
}

export async function render(view, route) {
  const name = route.params.name;
  route.title(name);
  const model = await api(registry(`/models/${seg(name)}`));
  const [versionsPage, card] = await Promise.all([api(registry(`/models/${seg(name)}/versions?limit=100`)), loadCard(name, model)]);
  const versions = versionsPage.versions || [];
  let number = route.params.version !== undefined ? Number(route.params.version) : model.aliases?.production ?? model.latest_version;
  if (route.params.version !== undefined && !Number.isInteger(number)) throw new ApiError(404, `no version ${route.params.version} of ${name}`);
  let version = versions.find((v) => v.version === number) || null;
  if (!version && number) version = await api(registry(`/models/${seg(name)}/versions/${number}`));
  if (version) route.title(`${name} v${version.version}`);
  if (!route.isCurrent()) return;

  view.append(header(model, version, versions), cardSection(name, card));
  if (!version) {
    view.append(h("section", { class: "card" }, h("h2", {}, "No versions yet"), h("p", {}, "Train one: ", h("code", {}, `gallery train spec.yaml`))));
    return;
  }
  const placeholder = h("div", { class: "sections" }, h("p", { class: "empty" }, "Loading the evaluation, deployments and history…"));
  view.append(placeholder);

  const [run, jobs, deployments, history, experiments, audit, quality, served] = await Promise.allSettled([
    version.run_id ? maybe(trainer(`/runs/${seg(version.run_id)}`)) : Promise.resolve(null),
    api(optimizer(`/optimize?model=${encodeURIComponent(name)}`)),
    maybe(deployer(`/deployments/${seg(name)}`)),
    maybe(registry(`/models/${seg(name)}/aliases/production/history`)),
    api(deployer(`/experiments?model=${encodeURIComponent(name)}`)),
    api(registry(`/audit?model=${encodeURIComponent(name)}&limit=200`)),
    maybe(monitor(`/models/${seg(name)}/quality`)),
    maybe(deployer(`/deployments/${seg(name)}/variants`)),
  ]);
  if (!route.isCurrent()) return;
  const job = value(jobs, []).find((j) => j.version === version.version && j.report) || value(jobs, []).find((j) => j.version === version.version) || null;
  const failed = (settled) => (settled.status === "rejected" ? errorCard(settled.reason) : null);
  put(
    placeholder,
    guarded(() => evaluationSection(version)),
    guarded(() => importanceSection(version)),
    guarded(() => federationSection(version)),
    h("div", { class: "two-col" }, guarded(() => dataSection(version, value(run, null))), guarded(() => verdictsSection(versions))),
    failed(jobs) || guarded(() => optimizerSection(job, value(served, []).filter((v) => v.version === version.version))),
    failed(deployments) || guarded(() => deploymentsSection(value(deployments, []))),
    failed(quality) || guarded(() => onlineQualitySection(name, version, value(quality, null))),
    failed(experiments) || guarded(() => experimentsSection(value(experiments, []))),
    h("div", { class: "two-col" }, guarded(() => versionsSection(model, versions, version.version)), failed(history) || guarded(() => aliasHistorySection(value(history, [])))),
    guarded(() => auditSection(value(audit, null), version.version)),
    guarded(() => downloadsSection(version)),
  );
}
