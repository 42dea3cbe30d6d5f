// Lineage as a graph: data set → training run (its search) → version → optimizer variants → deployments,
// drawn as SVG in layered columns from /api/gallery/models/{name}/lineage; each node links to its page.

import { api, gallery } from "./api.js";
import { empty, h, seg, svg } from "./dom.js";

const COLUMNS = ["dataset", "search", "run", "version", "variant", "deployment"];
const TITLES = { dataset: "data set", search: "search", run: "training run", version: "version", variant: "variant", deployment: "deployment" };
const NODE_W = 168;
const NODE_H = 46;
const GAP_X = 64;
const GAP_Y = 16;
const TOP = 30;

/** Columns of node ids, each column ordered by where its parents sit (fewer crossings). */
export function layout(graph) {
  const used = COLUMNS.filter((kind) => graph.nodes.some((n) => n.kind === kind));
  const extra = [...new Set(graph.nodes.map((n) => n.kind))].filter((k) => !COLUMNS.includes(k));
  const order = [...used, ...extra];
  const parents = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) parents.get(e.target)?.push(e.source);
  const row = new Map();
  const columns = order.map((kind) => graph.nodes.filter((n) => n.kind === kind));
  columns.forEach((nodes) => {
    const rank = (n) => {
      const known = parents.get(n.id).filter((p) => row.has(p)).map((p) => row.get(p));
      return known.length ? known.reduce((a, b) => a + b, 0) / known.length : Number.MAX_SAFE_INTEGER;
    };
    nodes.sort((a, b) => rank(a) - rank(b));
    nodes.forEach((n, i) => row.set(n.id, i));
  });
  return { order, columns };
}

function clip(text, max) {
  const s = String(text ?? "");
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

export function drawLineage(graph) {
  const { order, columns } = layout(graph);
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const width = order.length * NODE_W + (order.length - 1) * GAP_X + 20;
  const height = TOP + tallest * (NODE_H + GAP_Y) + 10;
  const place = new Map();
  columns.forEach((nodes, col) => {
    const offset = ((tallest - nodes.length) * (NODE_H + GAP_Y)) / 2;
    nodes.forEach((n, i) => place.set(n.id, { x: 10 + col * (NODE_W + GAP_X), y: TOP + offset + i * (NODE_H + GAP_Y) }));
  });
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "lineage-svg", width, height, role: "img", "aria-label": "lineage graph" });
  order.forEach((kind, col) => {
    root.append(svg("text", { class: "column-title", x: 10 + col * (NODE_W + GAP_X) + NODE_W / 2, y: 16, "text-anchor": "middle" }, TITLES[kind] || kind));
  });
  for (const e of graph.edges) {
    const a = place.get(e.source);
    const b = place.get(e.target);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x;
    const y2 = b.y + NODE_H / 2;
    const mid = (x1 + x2) / 2;
    root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, dataset: { source: e.source, target: e.target } }));
  }
  for (const n of graph.nodes) {
    const p = place.get(n.id);
    const box = svg(
      "g",
      { class: `node kind-${n.kind}`, dataset: { id: n.id, kind: n.kind }, transform: `translate(${p.x},${p.y})` },
      svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
      svg("text", { class: "node-label", x: 10, y: 19 }, clip(n.label, 24)),
      svg("text", { class: "node-detail", x: 10, y: 35 }, clip(n.detail, 28)),
      svg("title", {}, [n.label, n.detail].filter(Boolean).join("\n")),
    );
    root.append(n.href ? svg("a", { href: n.href, class: "node-link" }, box) : box);
  }
  return root;
}

export async function render(view, route) {
  const name = route.params.name;
  route.title(`${name} lineage`);
  const graph = await api(gallery(`/models/${seg(name)}/lineage`));
  if (!route.isCurrent()) return;
  view.append(
    h(
      "div",
      { class: "page-head" },
      h("div", { class: "crumbs" }, h("a", { href: "/" }, "Catalogue"), " / ", h("a", { href: `/models/${seg(name)}` }, name), " / "),
      h("h1", {}, `Lineage of ${name}`),
      h("p", { class: "note" }, "From the data set through training runs and versions to optimizer variants and deployments. Click a node to open it."),
    ),
    h(
      "section",
      { class: "card", id: "lineage" },
      graph.nodes.length ? h("div", { class: "lineage-scroll" }, drawLineage(graph)) : empty("Nothing recorded yet."),
      h("p", { class: "note" }, `${graph.nodes.length} nodes, ${graph.edges.length} edges`),
      graph.warnings?.length ? h("p", { class: "message bad" }, `Left out: ${graph.warnings.join("; ")}`) : null,
    ),
  );
}
