// Try it: a real inference through the gateway (OIP v2 JSON) and the answer as class probabilities.
// Image-shaped inputs: pick a held-out test example (drawn on a canvas) or draw one; texts (a model whose
// input is BYTES): type one, or pre-fill it from a test row; tables: edit the feature values, pre-filled
// from a test row.

import { ApiError, api, gallery, gateway, maybe, registry } from "./api.js";
import { errorCard } from "./app.js";
import { barList } from "./chart.js";
import { empty, h, num, put, seg } from "./dom.js";
import { explanationView } from "./explain-views.js";

const CANVAS_PX = 224; // the drawing canvas's side, whatever the input's size

/** {height, width, channels, chw} for a row shape the examples endpoint calls an image. */
export function imageGeometry(shape) {
  if (shape.length === 1) {
    const side = Math.round(Math.sqrt(shape[0]));
    return side * side === shape[0] ? { height: side, width: side, channels: 1, chw: true } : null;
  }
  if (shape.length === 2) return { height: shape[0], width: shape[1], channels: 1, chw: true };
  if (shape.length === 3) {
    return [1, 3].includes(shape[0])
      ? { height: shape[1], width: shape[2], channels: shape[0], chw: true }
      : { height: shape[0], width: shape[1], channels: shape[2], chw: false };
  }
  return null;
}

/** Softmax of logits; values that already are probabilities stay as they are. */
export function probabilities(values) {
  const sum = values.reduce((a, b) => a + b, 0);
  if (values.every((v) => v >= 0 && v <= 1) && Math.abs(sum - 1) < 1e-3) return values;
  const max = Math.max(...values);
  const exps = values.map((v) => Math.exp(v - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

/** A pixel grid: values in a flat Float array, drawn on a canvas with ink (high values) dark. */
class PixelGrid {
  constructor(geometry, range, scale) {
    this.g = geometry;
    this.range = range;
    this.values = new Float32Array(geometry.height * geometry.width * geometry.channels);
    this.canvas = h("canvas", { width: geometry.width * scale, height: geometry.height * scale, class: "pixels" });
    this.scale = scale;
  }

  index(y, x, c) {
    const { height, width, channels, chw } = this.g;
    return chw ? c * height * width + y * width + x : (y * width + x) * channels + c;
  }

  set(flat) {
    this.values.set(flat.slice(0, this.values.length));
    this.draw();
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const [lo, hi] = this.range;
    const span = hi - lo || 1;
    for (let y = 0; y < this.g.height; y += 1) {
      for (let x = 0; x < this.g.width; x += 1) {
        let color;
        if (this.g.channels >= 3) {
          const rgb = [0, 1, 2].map((c) => Math.round(255 * Math.min(1, Math.max(0, (this.values[this.index(y, x, c)] - lo) / span))));
          color = `rgb(${rgb.join(",")})`;
        } else {
          const v = Math.round(255 * (1 - Math.min(1, Math.max(0, (this.values[this.index(y, x, 0)] - lo) / span))));
          color = `rgb(${v},${v},${v})`;
        }
        ctx.fillStyle = color;
        ctx.fillRect(x * this.scale, y * this.scale, this.scale, this.scale);
      }
    }
  }

  /** Let the pointer paint ink: each touch adds half the range to the cell under it, a little to its neighbours. */
  paintable(onChange) {
    let down = false;
    const paint = (event) => {
      const rect = this.canvas.getBoundingClientRect();
      const x = Math.floor(((event.clientX - rect.left) / rect.width) * this.g.width);
      const y = Math.floor(((event.clientY - rect.top) / rect.height) * this.g.height);
      const [lo, hi] = this.range;
      for (const [dy, dx, weight] of [[0, 0, 0.5], [0, 1, 0.15], [1, 0, 0.15], [0, -1, 0.15], [-1, 0, 0.15]]) {
        const yy = y + dy;
        const xx = x + dx;
        if (yy < 0 || xx < 0 || yy >= this.g.height || xx >= this.g.width) continue;
        for (let c = 0; c < this.g.channels; c += 1) {
          const i = this.index(yy, xx, c);
          this.values[i] = Math.min(hi, this.values[i] + (hi - lo) * weight);
        }
      }
      this.draw();
      onChange();
    };
    this.canvas.addEventListener("pointerdown", (event) => {
      down = true;
      this.canvas.setPointerCapture(event.pointerId);
      paint(event);
    });
    this.canvas.addEventListener("pointermove", (event) => down && paint(event));
    this.canvas.addEventListener("pointerup", () => {
      down = false;
    });
  }
}

function resultView(answer, version, label) {
  const output = answer.outputs?.[0];
  if (!output) return h("p", { class: "message bad" }, "The answer holds no output.");
  const values = output.data.map(Number);
  const served = h("p", { class: "note" }, `served by ${answer.model_name} v${answer.model_version}${answer.id ? ` · request ${answer.id}` : ""}`);
  if (version.task === "regression" || values.length === 1) {
    return h("div", { id: "try-result", dataset: { predicted: String(values[0]) } }, h("p", { class: "prediction" }, "Prediction: ", h("strong", {}, num(values[0]))), served);
  }
  const probs = probabilities(values);
  const best = probs.indexOf(Math.max(...probs));
  const names = version.class_names || probs.map((_, i) => String(i));
  const truth = label === null || label === undefined ? null : names[label] ?? String(label);
  return h(
    "div",
    { id: "try-result", dataset: { predicted: names[best] } },
    h(
      "p",
      { class: "prediction" },
      "Predicted class ",
      h("strong", { id: "predicted-class" }, names[best]),
      ` with ${(probs[best] * 100).toFixed(1)} %`,
      truth !== null ? h("span", { class: `note ${truth === names[best] ? "ok" : "bad"}` }, ` · the example's label is ${truth}`) : null,
    ),
    barList(names.map((n, i) => ({ label: n, value: probs[i], highlight: i === best })), { className: "probabilities" }),
    served,
  );
}

export async function render(view, route) {
  const name = route.params.name;
  route.title(`Try ${name}`);
  const model = await api(registry(`/models/${seg(name)}`));
  const number = Number(route.query.get("version")) || model.aliases?.production || model.latest_version;
  if (!number) throw new ApiError(404, `${name} has no versions to try`);
  const version = await api(registry(`/models/${seg(name)}/versions/${number}`));
  const examples = await maybe(gallery(`/models/${seg(name)}/versions/${number}/examples?n=12`));
  if (!route.isCurrent()) return;

  const input = version.signature?.inputs?.[0] || { name: "features", datatype: "FP32", shape: [-1, examples?.shape?.reduce((a, b) => a * b, 1) || 1] };
  const rowShape = examples?.shape || input.shape.slice(1).map((d) => (d < 0 ? 1 : d));
  const size = rowShape.reduce((a, b) => a * b, 1);
  const rows = examples?.examples || [];
  const flat = (row) => [row.input].flat(Infinity).map(Number);
  const result = h("div", { class: "result" }, empty("Pick an example or enter values, then Predict."));
  const send = h("button", { type: "button", id: "try-send" }, "Predict");
  const method = h(
    "select",
    { id: "try-method", "aria-label": "explanation method", title: "How the answer is explained" },
    h("option", { value: "shap" }, "explain with SHAP"),
    h("option", { value: "lime" }, "explain with LIME"),
    h("option", { value: "" }, "no explanation"),
  );
  const isText = Boolean(examples?.text) || input.datatype === "BYTES";
  let current = { values: isText ? [""] : new Array(size).fill(0), label: null };
  let pictureRange = null;

  // a picture's [channels, height, width] when the Gallery knows it, else guessed from the row's shape
  const pictured = examples?.image_shape;
  const geometry = examples?.image
    ? pictured?.length === 3
      ? { channels: pictured[0], height: pictured[1], width: pictured[2], chw: true }
      : imageGeometry(rowShape)
    : null;
  let editor;
  if (geometry) {
    const all = rows.flatMap(flat);
    const range = all.length ? [Math.min(0, ...all), Math.max(...all)] : [0, 1];
    pictureRange = range;
    const grid = new PixelGrid(geometry, range, Math.max(4, Math.round(CANVAS_PX / Math.max(geometry.width, geometry.height))));
    grid.draw();
    grid.paintable(() => {
      current = { values: Array.from(grid.values), label: null };
    });
    const clear = h("button", { type: "button", class: "ghost-light", id: "try-clear" }, "Clear");
    clear.addEventListener("click", () => {
      grid.set(new Array(size).fill(range[0]));
      current = { values: Array.from(grid.values), label: null };
      for (const b of view.querySelectorAll("button.example")) b.setAttribute("aria-pressed", "false");
    });
    const picks = rows.map((row) => {
      const thumb = new PixelGrid(geometry, range, Math.max(3, Math.round(40 / geometry.width)));
      thumb.set(flat(row));
      const button = h("button", { type: "button", class: "example", title: `test row ${row.index}, label ${examples.class_names?.[row.label] ?? row.label}`, dataset: { index: String(row.index), label: String(row.label) } }, thumb.canvas);
      button.addEventListener("click", () => {
        grid.set(flat(row));
        current = { values: flat(row), label: row.label };
        for (const b of view.querySelectorAll("button.example")) b.setAttribute("aria-pressed", String(b === button));
      });
      return button;
    });
    editor = h(
      "div",
      { class: "try-image" },
      h("div", {}, h("h3", {}, "Held-out test examples"), picks.length ? h("div", { class: "examples" }, picks) : empty("No examples available.")),
      h("div", {}, h("h3", {}, "Input (draw with the mouse)"), grid.canvas, h("div", { class: "actions" }, clear, send, method)),
    );
    if (picks.length) picks[0].click();
  } else if (isText) {
    method.value = ""; // a text model is explained by the gate's word importance, on its model page
    const area = h("textarea", { id: "try-text", rows: "5", "aria-label": "text to classify", placeholder: "Type a text, or pick a held-out example" });
    area.addEventListener("input", () => {
      current = { values: [area.value], label: null };
    });
    const picker = h(
      "select",
      { id: "try-row", "aria-label": "test row" },
      rows.map((row, i) => h("option", { value: String(i) }, `test row ${row.index} (label ${examples.class_names?.[row.label] ?? row.label})`)),
    );
    const fill = () => {
      const row = rows[Number(picker.value)];
      if (!row) return;
      area.value = String(row.input);
      current = { values: [String(row.input)], label: row.label };
    };
    picker.addEventListener("change", fill);
    editor = h(
      "div",
      { class: "try-text" },
      rows.length ? h("label", { class: "field inline" }, "Pre-fill from ", picker) : null,
      area,
      h("div", { class: "actions" }, send),
      h("p", { class: "note" }, "Which words sway the model: the feature importance on its model page (the gate's word occlusion)."),
    );
    fill();
  } else {
    const fields = Array.from({ length: size }, (_, i) => h("input", { type: "number", step: "any", name: `f${i}`, value: "0", class: "short" }));
    const sync = () => {
      current = { values: fields.map((f) => Number(f.value) || 0), label: null };
    };
    fields.forEach((f) => f.addEventListener("input", sync));
    const picker = h(
      "select",
      { id: "try-row", "aria-label": "test row" },
      rows.map((row, i) => h("option", { value: String(i) }, `test row ${row.index} (label ${examples.class_names?.[row.label] ?? row.label})`)),
    );
    const fill = () => {
      const row = rows[Number(picker.value)];
      if (!row) return;
      flat(row).forEach((v, i) => {
        if (fields[i]) fields[i].value = String(Number(v.toPrecision(6)));
      });
      current = { values: flat(row), label: row.label };
    };
    picker.addEventListener("change", fill);
    editor = h(
      "div",
      { class: "try-table" },
      rows.length ? h("label", { class: "field inline" }, "Pre-fill from ", picker) : null,
      h("div", { class: "feature-grid" }, fields.map((f, i) => h("label", { class: "field" }, examples?.feature_names?.[i] ?? `feature ${i}`, f))),
      h("div", { class: "actions" }, send, method),
    );
    fill();
  }

  send.addEventListener("click", async () => {
    send.disabled = true;
    put(result, empty("Asking the gateway…"));
    const body = { inputs: [{ name: input.name, datatype: input.datatype || "FP32", shape: [1, ...rowShape], data: current.values }] };
    const sent = current.values;
    try {
      const answer = await api(gateway(`/v2/models/${seg(name)}/infer`), { method: "POST", body });
      put(result, resultView(answer, version, current.label));
      if (method.value) await explainAnswer(answer, body, sent);
    } catch (err) {
      put(result, errorCard(err));
    } finally {
      send.disabled = false;
    }
  });

  // Why that answer: the same input explained by the version that answered, for the class it picked
  async function explainAnswer(answer, body, sent) {
    const why = h("div", { class: "explanation" }, empty(`Explaining with ${method.value.toUpperCase()}…`));
    result.append(why);
    const predicted = result.querySelector("#try-result")?.dataset.predicted;
    const names = version.class_names || [];
    const target = names.indexOf(predicted);
    const parameters = { method: method.value, ...(target >= 0 ? { target } : {}) };
    try {
      const explained = await api(gateway(`/v2/models/${seg(name)}/versions/${seg(answer.model_version)}/explain`), { method: "POST", body: { ...body, parameters } });
      put(why, explanationView(explained, { geometry, pixels: sent, range: pictureRange }));
    } catch (err) {
      put(why, errorCard(err));
    }
  }

  view.append(
    h(
      "div",
      { class: "page-head" },
      h("div", { class: "crumbs" }, h("a", { href: "/" }, "Catalogue"), " / ", h("a", { href: `/models/${seg(name)}` }, name), " / "),
      h("h1", {}, `Try ${name}`),
      h("p", { class: "note" }, `A real request through the gateway, served by whichever version takes traffic now. Examples from v${version.version}'s held-out test split${examples?.rows ? ` (${examples.rows} rows)` : ""}.`),
    ),
    h("div", { class: "two-col" }, h("section", { class: "card", id: "try-input" }, h("h2", {}, "Input"), editor), h("section", { class: "card", id: "try-answer" }, h("h2", {}, "Answer"), result)),
  );
}
