// The model page's "Federated training" panel for a version trained by federated learning: how it was trained
// (strategy, rounds, minimum sites, secure aggregation, the privacy budget) and each site's share and final
// validation accuracy, the worst site highlighted. The registry holds only the sites' names, fingerprints and
// counts, never their data.

import { badge, h, metric, num, table } from "./dom.js";

const FINGERPRINT_CHARS = 12;

/** Each site's validation accuracy in the final round (`site.<name>.val_accuracy`), where it reported one. */
export function siteAccuracies(federation, metrics) {
  const found = {};
  for (const site of federation.sites || []) {
    const value = metrics?.[`site.${site.name}.val_accuracy`];
    if (typeof value === "number" && Number.isFinite(value)) found[site.name] = value;
  }
  return found;
}

/** A privacy parameter as written in its configuration: four significant digits, no trailing zeros. */
const param = (value) => (typeof value === "number" ? String(Number(value.toPrecision(4))) : "–");

function budget(privacy) {
  if (!privacy) return "none";
  return `ε ${param(privacy.epsilon)}, δ ${param(privacy.delta)} (${privacy.mechanism}, noise ${param(privacy.noise_multiplier)}, clipping ${param(privacy.clipping_norm)})`;
}

function figure(key, value, label) {
  return h("div", { class: "figure", dataset: { fact: key } }, h("span", { class: "figure-value" }, value), h("span", { class: "figure-label" }, label));
}

/** The panel, or null for a version trained in one place. */
export function federationSection(version) {
  const federation = version.lineage?.federation;
  if (!federation) return null;
  const accuracy = siteAccuracies(federation, version.metrics);
  const measured = Object.entries(accuracy);
  const worst = measured.length ? measured.reduce((a, b) => (b[1] < a[1] ? b : a))[0] : null;
  const spread = measured.length ? Math.max(...measured.map(([, v]) => v)) - accuracy[worst] : null;
  const rows = (federation.sites || []).map((site) => ({
    props: { class: site.name === worst ? "worst" : null, dataset: { site: site.name } },
    cells: [
      h("span", {}, site.name, site.name === worst ? badge("worst", "bad") : null),
      site.data_fingerprint ? h("code", { title: site.data_fingerprint }, site.data_fingerprint.slice(0, FINGERPRINT_CHARS)) : "–",
      num(site.examples),
      num(site.rounds),
      metric("val_accuracy", accuracy[site.name]),
    ],
  }));
  const sites = federation.sites?.length ?? 0;
  return h(
    "section",
    { class: "card", id: "federation", dataset: { worst: worst ?? "", sites: String(sites) } },
    h("h2", {}, "Federated training"),
    h("p", { class: "note" }, `Trained across ${sites} site${sites === 1 ? "" : "s"} without their data leaving them: each site trained on its own rows and sent only model weights.`),
    h(
      "div",
      { class: "figures" },
      figure("strategy", federation.strategy, "strategy"),
      figure("rounds", num(federation.rounds), "rounds"),
      figure("min_sites", num(federation.min_sites), "minimum sites"),
      figure("secure_aggregation", federation.secure_aggregation ? "yes" : "no", "secure aggregation (SecAgg+)"),
      figure("privacy", budget(federation.privacy), "privacy budget"),
    ),
    table(["site", "data fingerprint", "#examples", "#rounds", "#validation accuracy"], rows, { id: "federation-sites" }),
    worst === null
      ? h("p", { class: "note" }, "No site reported a validation accuracy.")
      : h(
          "p",
          { id: "federation-spread" },
          "Worst site: ",
          h("strong", {}, worst),
          ` (${metric("val_accuracy", accuracy[worst])}); spread between the best and the worst site: ${(spread * 100).toFixed(1)} points.`,
        ),
    h("p", { class: "note" }, "Validation accuracy: the final model on each site's own validation rows, as the site reported it."),
  );
}
