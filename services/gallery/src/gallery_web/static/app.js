// The Gallery's shell: a router on the History API, the top navigation and the token prompt.
//
// Every page is an ES module loaded on first use, exporting `render(view, route)`. A link inside the app
// changes the URL with pushState and renders the page without a reload, so deep links can be shared and the
// back button goes back; /monitoring, /api and /static are ordinary page loads.

import { ApiError, api, registry, setToken, token } from "./api.js";
import { loadSession, session, signIn, signOut } from "./sign-in.js";
import { empty, h, put } from "./dom.js";

const ROUTES = [
  { re: /^\/(?:models\/?)?$/, page: "catalogue", nav: "catalogue", keys: [] },
  { re: /^\/models\/([^/]+)\/?$/, page: "model", nav: "catalogue", keys: ["name"] },
  { re: /^\/models\/([^/]+)\/versions\/([^/]+)\/?$/, page: "model", nav: "catalogue", keys: ["name", "version"] },
  { re: /^\/models\/([^/]+)\/lineage\/?$/, page: "lineage", nav: "catalogue", keys: ["name"] },
  { re: /^\/models\/([^/]+)\/try\/?$/, page: "try", nav: "catalogue", keys: ["name"] },
  { re: /^\/models\/([^/]+)\/experiments\/([^/]+)\/?$/, page: "experiment", nav: "catalogue", keys: ["name", "id"] },
  { re: /^\/runs\/?$/, page: "runs", nav: "experiments", keys: [] },
  { re: /^\/runs\/([^/]+)\/?$/, page: "run", nav: "experiments", keys: ["id"] },
  { re: /^\/compare\/?$/, page: "compare", nav: "experiments", keys: [] },
  { re: /^\/usage\/?$/, page: "usage", nav: "usage", keys: [] },
  { re: /^\/projects\/?$/, page: "projects", nav: "projects", keys: [] },
  { re: /^\/dead-letters\/?$/, page: "dead-letters", nav: "dead-letters", keys: [] },
];

// Paths the browser loads itself: the Monitoring view is its own page, the API and files are not pages.
const FULL_LOAD = /^\/(monitoring|api|static|docs|openapi\.json|healthz|readyz|metrics)(\/|$)/;

const $ = (id) => document.getElementById(id);
const view = $("view");
let generation = 0;
let pendingRetry = null;

/** The route for a location: {page, nav, params, query, path}. */
export function match(location) {
  const url = new URL(location, window.location.origin);
  for (const route of ROUTES) {
    const found = route.re.exec(url.pathname);
    if (!found) continue;
    const params = {};
    route.keys.forEach((key, i) => {
      params[key] = decodeURIComponent(found[i + 1]);
    });
    return { page: route.page, nav: route.nav, params, query: url.searchParams, path: url.pathname };
  }
  return { page: null, nav: null, params: {}, query: url.searchParams, path: url.pathname };
}

/** Go to `url` inside the app: a new history entry (or the current one replaced) and the page drawn. */
export function navigate(url, { replace = false } = {}) {
  const target = new URL(url, window.location.origin);
  const here = window.location.pathname + window.location.search;
  const there = target.pathname + target.search;
  if (replace || there === here) history.replaceState(null, "", there + target.hash);
  else history.pushState(null, "", there + target.hash);
  render(!replace);
}

/** Change the query string of the current page without a new history entry or a redraw (filters as they change). */
export function setQuery(params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (Array.isArray(value)) value.filter(Boolean).forEach((v) => query.append(key, v));
    else if (value !== null && value !== undefined && value !== "") query.set(key, value);
  }
  const text = query.toString();
  history.replaceState(null, "", window.location.pathname + (text ? `?${text}` : ""));
}

function setNav(nav) {
  for (const a of document.querySelectorAll(".mainnav a")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function showTokenState() {
  const has = Boolean(token());
  const { sso, signed_in: signedIn, name } = session();
  $("sign-in").hidden = !sso || signedIn || has;
  $("sign-out").hidden = !sso || !signedIn;
  if (sso && signedIn && !has) {
    $("token-state").textContent = `signed in as ${name}`;
    $("token-state").className = "status ok";
    $("token-forget").hidden = true;
    $("token-set").textContent = "use a token";
    return;
  }
  $("token-state").textContent = has ? "token in use" : "no token";
  $("token-state").className = `status ${has ? "ok" : ""}`.trim();
  $("token-forget").hidden = !has;
  $("token-set").textContent = has ? "use another token" : "use a token";
}

/** The Dead letters link shows only to an admin of some project (the registry's project list says where the
 * caller is one). Without a token, or without a registry, it stays hidden; the page itself still says why. */
async function showAdminLinks() {
  let admin = false;
  try {
    admin = (await api(registry("/projects"), { quiet: true })).some((p) => p.your_role === "admin");
  } catch {
    // no token yet, or no registry: the link stays hidden
  }
  document.querySelector('.mainnav a[data-nav="dead-letters"]').hidden = !admin;
}

/** Show the token prompt, saying why; `retry` runs once a token is given. */
export function askForToken(reason, retry) {
  $("auth-reason").textContent = reason || "The Gallery needs a token to show this.";
  $("auth").hidden = false;
  pendingRetry = retry || null;
  $("auth-token").value = "";
  $("auth-token").focus();
}

/** An error from a page as a card: what failed and what to do about it. */
export function errorCard(err) {
  if (err instanceof ApiError) {
    if (err.unauthorized) {
      return h(
        "section",
        { class: "card problem", dataset: { status: "401" } },
        h("h2", {}, "A token is needed"),
        h("p", {}, `The Gallery answered: ${err.message}. Enter a token with at least the reader role above.`),
      );
    }
    if (err.forbidden) {
      return h(
        "section",
        { class: "card problem", dataset: { status: "403" } },
        h("h2", {}, "Not allowed"),
        h("p", {}, `${err.message}. Your token does not hold the role this needs.`),
      );
    }
    if (err.status === 404) {
      return h("section", { class: "card problem", dataset: { status: "404" } }, h("h2", {}, "Not found"), h("p", {}, err.message));
    }
    return h(
      "section",
      { class: "card problem", dataset: { status: String(err.status) } },
      h("h2", {}, err.status ? `The Gallery answered ${err.status}` : "No answer"),
      h("p", {}, err.message),
    );
  }
  console.error(err); // a bug in this page, not an answer from a service
  return h("section", { class: "card problem" }, h("h2", {}, "This page failed"), h("p", {}, String(err?.message || err)));
}

function notFound(path) {
  return h(
    "section",
    { class: "card problem", dataset: { status: "404" } },
    h("h2", {}, "No such page"),
    h("p", {}, `Nothing lives at ${path}. `, h("a", { href: "/" }, "Back to the catalogue")),
  );
}

/** Draw the page for the current location. */
async function render(scrollTop = false) {
  const current = ++generation;
  const route = match(window.location.href);
  setNav(route.nav);
  delete view.dataset.ready; // set again once this page is drawn: what tests and screenshots wait for
  const container = h("div", { class: "page", dataset: { page: route.page || "none" } });
  put(view, container);
  if (scrollTop) window.scrollTo(0, 0);
  if (!route.page) {
    document.title = "Not found · Model Gallery";
    put(container, notFound(route.path));
    view.dataset.ready = "none";
    return;
  }
  container.append(empty("Loading…"));
  try {
    const module = await import(`./page-${route.page}.js`);
    if (current !== generation) return;
    container.replaceChildren();
    const context = {
      ...route,
      isCurrent: () => current === generation,
      title: (text) => {
        document.title = text ? `${text} · Model Gallery` : "Model Gallery";
      },
    };
    await module.render(container, context);
    if (current !== generation) return;
    view.dataset.ready = route.page;
    performance.mark(`gallery:ready:${route.page}`); // bench/catalogue.py times the first render by it
    const anchor = window.location.hash && document.getElementById(decodeURIComponent(window.location.hash.slice(1)));
    if (anchor) anchor.scrollIntoView();
  } catch (err) {
    if (current !== generation) return;
    container.replaceChildren(errorCard(err));
    view.dataset.ready = "error";
  }
}

function onClick(event) {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const a = event.target.closest("a");
  if (!a) return;
  const href = a.getAttribute("href");
  if (!href || href.startsWith("#") || a.hasAttribute("download") || a.hasAttribute("data-external") || a.hasAttribute("data-reload")) return;
  if (a.getAttribute("target")) return;
  const url = new URL(href, window.location.href);
  if (url.origin !== window.location.origin || FULL_LOAD.test(url.pathname)) return;
  event.preventDefault();
  navigate(url.pathname + url.search + url.hash);
}

document.addEventListener("click", onClick);
window.addEventListener("popstate", () => render(false));
window.addEventListener("gallery:unauthorized", (event) => {
  const message = event.detail?.message || "a token is needed";
  const ask = () => askForToken(`The Gallery needs a token with the reader role (${message}).`, () => render(false));
  if (!session().sso || token()) {
    ask();
    return;
  }
  // signed out, or the session ended with its token: the identity provider's login, back to this page after it
  loadSession().then((current) => (current.signed_in ? ask() : signIn()));
});
$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("auth-token").value.trim();
  if (!value) return;
  setToken(value);
  $("auth").hidden = true;
  showTokenState();
  showAdminLinks();
  const retry = pendingRetry || (() => render(false));
  pendingRetry = null;
  retry();
});
$("auth-cancel").addEventListener("click", () => {
  $("auth").hidden = true;
  pendingRetry = null;
});
$("token-set").addEventListener("click", () => askForToken("Enter a bearer token for the Gallery.", () => render(false)));
$("token-forget").addEventListener("click", () => {
  setToken(null);
  showTokenState();
  showAdminLinks();
  render(false);
});

$("sign-in").addEventListener("click", signIn);
$("sign-out").addEventListener("click", signOut);

loadSession().then(() => {
  showTokenState();
  showAdminLinks();
  render(false);
});
