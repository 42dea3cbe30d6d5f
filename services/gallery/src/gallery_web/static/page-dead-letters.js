// Dead letters: the events a consumer gave up on, with why (the registry's /admin/dead-letters: the latest
// of the projects the caller is an admin of). Once the cause is fixed, "Put back" asks the service that
// publishes the event to send it again for that consumer only, which takes the letter out.

import { ApiError, api } from "./api.js";
import { errorCard } from "./app.js";
import { ago, empty, h, table } from "./dom.js";

const LIST = "/api/registry/admin/dead-letters?limit=200";
const putBackPath = (letter) => `/api/${letter.publisher}/admin/dead-letters/${letter.seq}/redeliver`;

function putBackButton(letter, row, status) {
  if (!letter.publisher) return h("span", { class: "note", title: "not a lifecycle event: no service sends it" }, "–");
  if (letter.event_seq === null) return h("span", { class: "note", title: "the letter names no stored event, and a letter's copy alone is not sent" }, "–");
  const button = h("button", { type: "button", class: "put-back", title: `the ${letter.publisher} sends it again` }, "Put back");
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = `asking the ${letter.publisher}…`;
    try {
      await api(putBackPath(letter), { method: "POST" });
    } catch (err) {
      button.disabled = false;
      const why = err instanceof ApiError ? err.message : String(err?.message || err);
      status.textContent = `dead letter ${letter.seq} not put back: ${why}`;
      status.className = "note bad";
      return;
    }
    row.remove();
    status.textContent = `dead letter ${letter.seq} put back for ${letter.consumer}`;
    status.className = "note ok";
  });
  return button;
}

function letterRow(letter, status) {
  const row = h("tr", { dataset: { seq: String(letter.seq) } });
  const cells = [
    String(letter.seq),
    letter.time ? ago(letter.time) : "–",
    h("code", {}, letter.subject),
    letter.consumer || "–",
    letter.deliveries === null || letter.deliveries === undefined ? "–" : String(letter.deliveries),
    h("span", { class: "reason" }, letter.reason || "–"),
    putBackButton(letter, row, status),
  ];
  cells.forEach((cell, i) => row.append(h("td", { class: i === 0 || i === 4 ? "num" : null }, cell)));
  return row;
}

export async function render(view, route) {
  route.title("Dead letters");
  let letters;
  try {
    letters = await api(LIST);
  } catch (err) {
    view.append(errorCard(err));
    return;
  }
  const status = h("p", { class: "note", id: "dead-letters-status", role: "status" });
  const head = h(
    "div",
    { class: "page-head" },
    h("h1", {}, "Dead letters"),
    h("p", { class: "note" }, `${letters.length} ${letters.length === 1 ? "letter" : "letters"} of the projects you administer, newest first`),
  );
  if (!letters.length) {
    view.append(head, empty("No dead letters: every consumer handled every event."));
    return;
  }
  const grid = table(["#seq", "when", "subject", "consumer", "#deliveries", "reason", ""], [], { id: "dead-letters" });
  const body = grid.querySelector("tbody");
  letters.forEach((letter) => body.append(letterRow(letter, status)));
  view.append(
    head,
    h("p", { class: "note" }, "Fix the cause first (a project created, a service upgraded): a letter put back goes to its consumer only, and a new one says why if it gives up again."),
    status,
    grid,
  );
}
