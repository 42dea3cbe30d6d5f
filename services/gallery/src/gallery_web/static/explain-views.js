// Explanations drawn: signed attribution bars for tables, a heat map over the picture for image-shaped
// inputs (red pushes toward the class, blue away), and the gate's global feature importance.

import { barList } from "./chart.js";
import { empty, h, num } from "./dom.js";

const TOP = 12;

/** Bars that grow right (toward the class, green) or left (against it, red) from a centre line. */
export function signedBars(items, { format = (v) => num(v, 3) } = {}) {
  const widest = Math.max(1e-12, ...items.map((i) => Math.abs(i.value)));
  return h(
    "ul",
    { class: "bars signed" },
    items.map((item) => {
      const share = Math.abs(item.value) / widest;
      const side = item.value >= 0 ? "plus" : "minus";
      return h(
        "li",
        { dataset: { label: item.label, value: String(item.value) } },
        h("span", { class: "bar-label", title: item.label }, item.label),
        h("span", { class: "bar" }, h("span", { class: `fill ${side}`, style: { width: `${share * 50}%` } })),
        h("span", { class: "bar-value" }, `${item.value >= 0 ? "+" : ""}${format(item.value)}`),
      );
    }),
  );
}

/**
 * A canvas of `geometry` ({height, width, channels, chw}) with `values` (flat, one per input value) drawn as a
 * heat map: red for positive, blue for negative, over the grey picture `pixels` when given.
 */
export function heatMap(values, geometry, { pixels = null, range = null, scale = 16, signed = true } = {}) {
  const { height, width, channels, chw } = geometry;
  const at = (flat, y, x) => {
    let sum = 0;
    for (let c = 0; c < channels; c += 1) sum += flat[chw ? c * height * width + y * width + x : (y * width + x) * channels + c];
    return sum / channels;
  };
  const canvas = h("canvas", { width: width * scale, height: height * scale, class: "pixels heat-map" });
  const ctx = canvas.getContext("2d");
  let widest = 1e-12;
  for (let y = 0; y < height; y += 1) for (let x = 0; x < width; x += 1) widest = Math.max(widest, Math.abs(at(values, y, x)));
  const [lo, hi] = range || [0, 1];
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const grey = pixels ? Math.round(255 * (1 - Math.min(1, Math.max(0, (at(pixels, y, x) - lo) / (hi - lo || 1))))) : 255;
      ctx.fillStyle = `rgb(${grey},${grey},${grey})`;
      ctx.fillRect(x * scale, y * scale, scale, scale);
      const v = at(values, y, x) / widest;
      const colour = !signed || v >= 0 ? "220, 38, 38" : "37, 99, 235";
      ctx.fillStyle = `rgba(${colour}, ${0.75 * Math.abs(v)})`;
      ctx.fillRect(x * scale, y * scale, scale, scale);
    }
  }
  return canvas;
}

/** The feature (group) names and attributions of one explained row, largest magnitude first. */
export function ranked(answer, explained) {
  const names = answer.groups || [];
  return explained.group_attributions
    .map((value, i) => ({ label: names[i] ?? `feature ${i}`, value }))
    .sort((a, b) => Math.abs(b.value) - Math.abs(a.value));
}

/** One explained row: the headline, the bars (tables) or the heat map and top patches (pictures). */
export function explanationView(answer, { geometry = null, pixels = null, range = null } = {}) {
  const explained = answer.explanations?.[0];
  if (!explained) return empty("The explanation holds no rows.");
  const items = ranked(answer, explained);
  const what = answer.output === "probability" ? `the probability of class ${explained.target_name}` : "the output";
  const headline = h(
    "p",
    { class: "note" },
    `${answer.method.toUpperCase()} (${answer.explainer}, ${answer.parameters?.nsamples} samples, seed ${answer.parameters?.seed}) explains ${what}: `,
    h("strong", {}, num(explained.base_value, 3)),
    " on average over the training data → ",
    h("strong", {}, num(explained.output, 3)),
    " for this input.",
  );
  const picture = answer.image_shape && geometry;
  const body = picture
    ? h(
        "div",
        { class: "explain-picture" },
        heatMap([explained.attributions].flat(Infinity), geometry, { pixels, range }),
        h("div", {}, h("h3", {}, "Patches that matter most"), signedBars(items.slice(0, 6))),
      )
    : signedBars(items.slice(0, TOP));
  return h(
    "div",
    { id: "try-explanation", dataset: { method: answer.method, top: items[0]?.label ?? "", target: String(explained.target) } },
    headline,
    body,
    h("p", { class: "note" }, picture ? "Red pushed toward the class, blue away from it." : "Green pushed toward the class, red away from it."),
  );
}

/** The model page's section: the gate's global importance (mean |SHAP| on held-out rows; a text model's by word occlusion). */
export function importanceSection(version) {
  const found = version.evaluation_report?.feature_importance;
  const body = [];
  if (!found) {
    body.push(empty("The gate's report for this version holds no feature importance (it was judged before explanations existed)."));
  } else if (found.error) {
    body.push(h("p", { class: "message bad" }, `The gate could not compute feature importance: ${found.error}`));
  } else {
    const groups = found.groups || [];
    const widest = Math.max(1e-12, ...groups.map((g) => g.importance));
    const bars = barList(
      groups.slice(0, TOP).map((g) => ({ label: g.name, value: g.importance / widest, raw: g.importance })),
      { format: (_, item) => num(item.raw, 3), className: "wide-values importance" },
    );
    const shape = found.image_shape;
    const chart = shape
      ? h(
          "div",
          { class: "explain-picture" },
          heatMap(found.values, { channels: shape[0], height: shape[1], width: shape[2], chw: true }, { signed: false }),
          h("div", {}, h("h3", {}, "Patches that matter most"), bars),
        )
      : bars;
    // a text model's importance is per word, by occlusion (the gate's word_importance.py), not Kernel SHAP
    const note = found.method === "word-occlusion"
      ? `Mean drop of the predicted class's probability when a word is removed from a text, over ${found.rows} held-out texts (word occlusion).`
      : `Mean |SHAP| per ${shape ? "patch" : "feature"} for the predicted class over ${found.rows} held-out rows (${found.method}, ${found.nsamples} samples each, background of ${found.background_rows} training centroids).`;
    body.push(chart, h("p", { class: "note" }, note));
  }
  return h("section", { class: "card", id: "feature-importance", dataset: { top: found?.groups?.[0]?.name ?? "" } }, h("h2", {}, "Feature importance"), body);
}
