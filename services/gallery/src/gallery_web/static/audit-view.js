// The model page's audit section: who put the shown version in production and why (from the audit trail the
// registry serves, GET /api/v1/audit?model=), and the model's latest recorded changes with who, why and the trace.

import { badge, empty, h, table, when } from "./dom.js";

const PRODUCTION_ACTIONS = new Set(["promotion", "deployment", "rollback", "alias_move", "experiment_decision"]);

/** Whether `record` is a change that made `version` the production one. */
function putInProduction(record, version) {
  if (!PRODUCTION_ACTIONS.has(record.action)) return false;
  const after = record.after || {};
  if (record.action === "alias_move") return record.alias === "production" && after.version === version;
  if (record.action === "rollback") return after.production === version;
  if (record.action === "experiment_decision") return after.winner === version && after.traffic_moved;
  return record.version === version && after.stage === "production";
}

/** A change's before → after in a few words: a single value as it is, more as compact JSON. */
function change(record) {
  const brief = (value) => {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "object") return String(value);
    const entries = Object.entries(value);
    if (entries.length === 1) return entries[0][1] === null ? "–" : String(entries[0][1]);
    return JSON.stringify(value).slice(0, 80);
  };
  return `${brief(record.before)} → ${brief(record.after)}`;
}

/** `records`: the model's audit records, newest first; null when the trail could not be read (no bus). */
export function auditSection(records, version) {
  const title = h("h2", {}, "Audit trail");
  if (records === null) return h("section", { class: "card", id: "audit" }, title, empty("The audit trail is not available from this registry."));
  const made = records.find((r) => putInProduction(r, version));
  const who = made
    ? h(
        "p",
        { id: "audit-production" },
        h("strong", {}, `v${version} was put in production by ${made.actor}`),
        ` (${made.action.replace("_", " ")}, ${when(made.time)})`,
        made.reason ? [" — why: ", h("q", { id: "audit-production-reason" }, made.reason)] : " — no reason given",
        made.trace_id ? h("span", { class: "note" }, ` · trace ${made.trace_id}`) : null,
      )
    : h("p", { id: "audit-production", class: "note" }, `No record of v${version} being put in production.`);
  if (!records.length) return h("section", { class: "card", id: "audit" }, title, who, empty("No changes of this model are recorded yet."));
  const rows = records.slice(0, 20).map((r) => [when(r.time), r.actor, badge(r.action.replace("_", " ")), r.target, change(r), r.reason || ""]);
  return h("section", { class: "card", id: "audit" }, title, who, table(["when", "who", "what", "target", "before → after", "why"], rows));
}
