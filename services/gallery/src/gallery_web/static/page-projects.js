// Projects: the projects the signed-in caller holds a role in (the registry's /api/v1/projects), with the
// caller's role there and, for a project the caller is an admin of, its members.

import { api, registry } from "./api.js";
import { errorCard } from "./app.js";
import { ago, badge, empty, h, table } from "./dom.js";

function membersOf(project) {
  if (project.members === null || project.members === undefined) return h("p", { class: "note" }, "Members are shown to the project's admins.");
  const rows = Object.entries(project.members).map(([principal, role]) => [principal, role]);
  if (rows.length === 0) return h("p", { class: "note" }, "No members: installation-wide roles hold here.");
  return table(["member", "role"], rows, { class: "members" });
}

function projectCard(project) {
  return h(
    "article",
    { class: "card project", dataset: { project: project.name } },
    h(
      "header",
      {},
      h("a", { class: "project-name", href: `/?project=${encodeURIComponent(project.name)}`, title: "this project's models" }, project.name),
      badge(project.your_role || "none", "role", `your role in ${project.name}`),
    ),
    h("p", { class: project.description ? "summary" : "summary empty" }, project.description || "No description."),
    h("p", { class: "note" }, `created by ${project.created_by} `, ago(project.created_at)),
    membersOf(project),
  );
}

export async function render(view, route) {
  route.title("Projects");
  let projects;
  try {
    projects = await api(registry("/projects"));
  } catch (err) {
    view.append(errorCard(err));
    return;
  }
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Projects"), h("p", { class: "note" }, `${projects.length} visible to you`)),
    projects.length ? h("div", { class: "projects", id: "projects" }, projects.map(projectCard)) : empty("You hold a role in no project."),
  );
}
