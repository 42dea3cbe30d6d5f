// One online experiment: its arms, the decision with its evidence, and curves of each arm's metric, share of
// traffic and the always-valid p-value as samples came in. Also the experiments section of a model's page.

import { api, deployer } from "./api.js";
import { lineChart } from "./chart.js";
import { PALETTE, badge, empty, h, num, percent, seg, statusBadge, table, when } from "./dom.js";

const METRIC_LABEL = { accuracy: "online accuracy", reward: "mean reward", squared_error: "mean squared error", error_rate: "error rate", p99: "share slower than the control's p99" };

function link(experiment) {
  return `/models/${seg(experiment.model)}/experiments/${seg(experiment.id)}`;
}

function outcome(experiment) {
  if (experiment.status === "running") return badge("running", "warn");
  if (experiment.status === "stopped") return badge("stopped", "muted");
  return experiment.winner ? badge(`v${experiment.winner} won`, "ok") : badge("no difference", "muted");
}

/** The experiments of a model, newest first, for its page. */
export function experimentsSection(experiments) {
  const title = h("h2", {}, "Online experiments");
  if (!experiments.length) {
    return h("section", { class: "card", id: "experiments" }, title, empty("None yet: gallery experiment start MODEL --versions A,B --metric accuracy --mde 0.03"));
  }
  const rows = experiments.map((e) => ({
    props: { dataset: { experiment: e.id } },
    cells: [h("a", { href: link(e) }, e.id), e.versions.map((v) => `v${v}`).join(" vs "), METRIC_LABEL[e.metric] || e.metric, e.policy, outcome(e), when(e.started_at)],
  }));
  return h("section", { class: "card", id: "experiments" }, title, table(["experiment", "arms", "metric", "policy", "status", "started"], rows));
}

function decision(experiment) {
  const verdict = experiment.verdict;
  const parts = [h("h2", {}, "Decision"), h("p", { class: "decision-status" }, outcome(experiment))];
  if (experiment.status === "running") {
    const planned = experiment.planned_samples_per_arm;
    parts.push(h("p", {}, "Still running: the test decides as outcomes arrive", planned ? ` (planned: at most ${planned} samples per arm).` : "."));
  }
  if (experiment.reason) parts.push(h("p", { class: "reason" }, experiment.reason));
  if (verdict) {
    parts.push(
      table(
        ["", ""],
        [
          ["effect", num(verdict.effect, 4)],
          ["interval", `${num(verdict.interval[0], 4)} to ${num(verdict.interval[1], 4)}`],
          ["p-value (always valid)", num(verdict.p_value, 4)],
          ["samples", Object.entries(verdict.samples).map(([v, n]) => `v${v}: ${n}`).join(", ")],
        ],
        { class: "grid kv", id: "evidence" },
      ),
    );
  }
  return h("section", { class: "card", id: "decision", dataset: { status: experiment.status, winner: String(experiment.winner ?? "") } }, ...parts);
}

function armsSection(experiment) {
  const label = METRIC_LABEL[experiment.metric] || experiment.metric;
  const rows = experiment.arms.map((arm) => ({
    props: { dataset: { version: String(arm.version) } },
    cells: [`v${arm.version}`, arm.role, String(arm.samples), num(arm.mean, 4), percent(arm.share)],
  }));
  return h("section", { class: "card", id: "arms" }, h("h2", {}, "Arms"), table(["version", "role", "#samples", `#${label}`, "#traffic"], rows));
}

function curves(experiment) {
  const history = experiment.history || [];
  const total = (point) => Object.values(point.samples).reduce((a, b) => a + b, 0);
  const series = (value) =>
    experiment.versions.map((v, i) => ({
      key: String(v),
      label: `v${v}${i === 0 ? " (control)" : ""}`,
      color: PALETTE[i % PALETTE.length],
      points: history.map((p) => [total(p), value(p, String(v))]).filter(([, y]) => y !== null && y !== undefined),
    }));
  const charts = [
    lineChart(series((p, v) => p.means[v]), { id: "means", title: `${METRIC_LABEL[experiment.metric] || experiment.metric} by samples`, xLabel: "samples", yLabel: experiment.metric, emptyText: "no outcomes yet" }),
    lineChart(series((p, v) => p.shares[v]), { id: "shares", title: "share of traffic", xLabel: "samples", yLabel: "share", yMin: 0, yMax: 1 }),
    lineChart(
      [{ key: "p", label: "p-value", color: PALETTE[7], points: history.filter((p) => p.p_value !== null).map((p) => [total(p), p.p_value]) }],
      { id: "p-value", title: `always-valid p-value (decides below ${experiment.alpha})`, xLabel: "samples", yLabel: "p", yMin: 0, yMax: 1, emptyText: "not judged yet" },
    ),
  ];
  return h("section", { class: "card", id: "curves" }, h("h2", {}, "Curves"), h("div", { class: "charts" }, charts));
}

export async function render(view, route) {
  const { name, id } = route.params;
  route.title(`Experiment ${id}`);
  const experiment = await api(deployer(`/experiments/${seg(id)}`));
  if (!route.isCurrent()) return;
  view.append(
    h(
      "div",
      { class: "page-head" },
      h("div", { class: "crumbs" }, h("a", { href: "/" }, "Catalogue"), " / ", h("a", { href: `/models/${seg(name)}#experiments` }, experiment.model), " / "),
      h("div", { class: "title-row" }, h("h1", { id: "experiment-title" }, `Experiment ${experiment.id}`), statusBadge(experiment.status)),
      h(
        "p",
        { class: "note" },
        `${experiment.versions.map((v) => `v${v}`).join(" vs ")} on ${METRIC_LABEL[experiment.metric] || experiment.metric} · mde ${experiment.mde} · α ${experiment.alpha} · `,
        experiment.policy === "bandit" ? `bandit (floor ${percent(experiment.floor)})` : `fixed split ${experiment.split.map((s) => `${num(s)} %`).join(" / ")}`,
        ` · started ${when(experiment.started_at)}`,
        experiment.ended_at ? ` · ended ${when(experiment.ended_at)}` : "",
      ),
    ),
    h("div", { class: "two-col" }, decision(experiment), armsSection(experiment)),
    curves(experiment),
  );
}
