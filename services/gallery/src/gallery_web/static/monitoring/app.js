// The Gallery's Monitoring view: polls the monitor's /api/v1 through the gallery's proxy
// (/api/monitor/api/v1/...) every few seconds and redraws the page. The address names the model:
// /monitoring/<model> (an old #model=<name> link still works).

import { clock, toggle, traceHue } from "./dom.js";
import {
  renderAlerts, renderCharts, renderDrift, renderFigures, renderModels, renderOverview, renderSectionError, renderTimeline,
} from "./render.js";
import { renderQuality } from "./quality.js";

const REFRESH_MS = 3000;
const REQUEST_TIMEOUT_MS = 8000;
const TOKEN_KEY = "gallery.token"; // the same key as every page of the Gallery
const API = "/api/monitor/api/v1";
const PAGE = "/monitoring";
const PALETTE = ["#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#db2777", "#ca8a04", "#4b5563"];
const $ = (id) => document.getElementById(id);

const state = {
  selected: null,
  windowS: Number($("window").value),
  qualityWindowS: Number($("quality-window").value),
  token: sessionStorage.getItem(TOKEN_KEY),
  showAllFeatures: false,
  generation: 0,
  timer: null,
  lastUpdate: null,
  waitingForToken: false,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
  } catch (err) {
    const reason = err.name === "AbortError" ? `no answer in ${REQUEST_TIMEOUT_MS / 1000} s` : "unreachable";
    throw new ApiError(0, `the gallery is ${reason}`);
  } finally {
    clearTimeout(timeout);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 502 || response.status === 504) {
    // the gallery answers, the monitor behind it does not
    throw new ApiError(response.status, `the monitor is unreachable (${body?.error || `HTTP ${response.status}`})`);
  }
  if (!response.ok) throw new ApiError(response.status, body?.error || `HTTP ${response.status}`);
  return body;
}

/** A colour per version, the same in every chart, table and browser: v1 the first colour, v2 the second... */
function colorOf(version) {
  const n = Number(version);
  const index = Number.isInteger(n) && n > 0 ? n - 1 : traceHue(String(version));
  return PALETTE[index % PALETTE.length];
}

function setStatus(ok, text) {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${ok ? "ok" : "bad"}`;
}

/** The model the address names: /monitoring/<model>, or an old dashboard link's #model=<model>. */
function addressModel() {
  const path = window.location.pathname.slice(PAGE.length).replace(/^\/+|\/+$/g, "");
  if (path) {
    try {
      return decodeURIComponent(path);
    } catch {
      return null;
    }
  }
  const match = /(?:^#|&)model=([^&]*)/.exec(window.location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function showAddress(model, replace) {
  const address = `${PAGE}/${encodeURIComponent(model)}`;
  if (window.location.pathname === address && !window.location.hash) return;
  if (replace) history.replaceState({ model }, "", address);
  else history.pushState({ model }, "", address);
}

function select(model) {
  if (model === state.selected) return;
  state.selected = model;
  state.showAllFeatures = false;
  showAddress(model, false);
  refresh();
}

function chooseModel(models) {
  const names = models.map((m) => m.model);
  const wanted = [state.selected, addressModel()].find((n) => n && names.includes(n));
  state.selected = wanted || names[0] || null;
  if (state.selected) showAddress(state.selected, true);
}

function askForToken(message) {
  state.waitingForToken = true;
  toggle($("auth"), true);
  $("auth-reason").textContent = `The Gallery needs a reader token (${message}).`;
  setStatus(false, "waiting for a token");
  $("auth-token").focus();
}

/** Fetch the selected model's sections together and draw each from its own answer. */
async function refreshModel(model, generation) {
  const name = encodeURIComponent(model.model);
  const [timeline, figures, drift, alerts, slo, quality] = await Promise.allSettled([
    api(`${API}/models/${name}/timeline`),
    api(`${API}/models/${name}/figures?window_s=${state.windowS}`),
    api(`${API}/models/${name}/drift`),
    api(`${API}/alerts?model=${name}`),
    api(`${API}/slos/${name}`),
    api(`${API}/models/${name}/quality?window_s=${state.qualityWindowS}`),
  ]);
  if (generation !== state.generation) return;
  const denied = [timeline, figures, drift, alerts, slo, quality].find((r) => r.status === "rejected" && [401, 403].includes(r.reason.status));
  if (denied) throw denied.reason;

  const sloValue = slo.status === "fulfilled" ? slo.value : null;
  const versionInfo = new Map(model.versions.map((v) => [String(v.version), v]));
  toggle($("no-selection"), false);
  toggle($("model-view"), true);
  renderOverview(model, colorOf);
  if (figures.status === "fulfilled") {
    renderFigures(figures.value, sloValue, colorOf);
    renderCharts(figures.value, sloValue, colorOf, versionInfo);
  } else {
    renderSectionError("figures-empty", ["figures", "cache", "charts", "legend"], figures.reason.message);
  }
  if (quality.status === "fulfilled") renderQuality(quality.value, sloValue, colorOf);
  else renderSectionError("quality-empty", ["quality-table", "chart-accuracy", "chart-rmse"], quality.reason.message);
  if (drift.status === "fulfilled") {
    const drawDrift = () => renderDrift(drift.value, sloValue, state.showAllFeatures, () => {
      state.showAllFeatures = !state.showAllFeatures;
      drawDrift();
    });
    drawDrift();
  } else {
    renderSectionError("drift-empty", ["drift-flag", "drift-summary", "drift-reasons", "drift-features", "drift-more"], drift.reason.message);
  }
  if (alerts.status === "fulfilled") renderAlerts(alerts.value, model.model);
  else renderSectionError("alerts-empty", ["alert-list"], alerts.reason.message);
  if (timeline.status === "fulfilled") renderTimeline(timeline.value);
  else renderSectionError("timeline-empty", ["timeline-list"], timeline.reason.message);
  const failed = [timeline, figures, drift, alerts].filter((r) => r.status === "rejected");
  if (failed.length === 4) throw failed[0].reason;
}

async function refresh() {
  clearTimeout(state.timer);
  if (state.waitingForToken || document.visibilityState === "hidden") return;
  const generation = ++state.generation;
  try {
    const [models, openAlerts] = await Promise.all([api(`${API}/models`), api(`${API}/alerts?open=true`)]);
    if (generation !== state.generation) return;
    chooseModel(models);
    renderModels(models, openAlerts, state.selected, select);
    const model = models.find((m) => m.model === state.selected);
    if (model) {
      await refreshModel(model, generation);
    } else {
      toggle($("model-view"), false);
      toggle($("no-selection"), models.length > 0);
    }
    if (generation !== state.generation) return;
    state.lastUpdate = new Date().toISOString();
    setStatus(true, `live · updated ${clock(state.lastUpdate)}`);
  } catch (err) {
    if (!(err instanceof ApiError)) console.error(err); // a bug in this page, not an answer from the monitor
    if (generation !== state.generation) return;
    if (err.status === 401 || err.status === 403) {
      askForToken(err.message);
      return;
    }
    const since = state.lastUpdate ? ` — showing what it said at ${clock(state.lastUpdate)}` : "";
    setStatus(false, `${err.message}${since}; retrying every ${REFRESH_MS / 1000} s`);
  }
  if (generation === state.generation) state.timer = setTimeout(refresh, REFRESH_MS);
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("auth-token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  state.waitingForToken = false;
  toggle($("auth"), false);
  refresh();
});
$("window").addEventListener("change", () => {
  state.windowS = Number($("window").value);
  refresh();
});
$("quality-window").addEventListener("change", () => {
  state.qualityWindowS = Number($("quality-window").value);
  refresh();
});
function followAddress() {
  const wanted = addressModel();
  if (wanted && wanted !== state.selected) {
    state.selected = wanted;
    state.showAllFeatures = false;
    refresh();
  }
}
window.addEventListener("popstate", followAddress); // the back button goes back to the model shown before
window.addEventListener("hashchange", followAddress);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") refresh();
  else clearTimeout(state.timer);
});

refresh();
