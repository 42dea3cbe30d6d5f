// A small, safe Markdown renderer for model-card text written by people.
//
// Safety: the text never reaches innerHTML. Every piece becomes a DOM text node or an element this module
// creates itself, so `<script>` or `<img onerror=...>` in a description shows up as literal text. Links get
// an href only when it is http(s) (no javascript:, data:, or relative tricks); others stay plain text.
//
// Supported: ATX headings (#..######), paragraphs, "-", "*", "+" and "1." lists (one level), fenced code
// blocks (```), block quotes (>), horizontal rules, and inline `code`, **bold**, *em* / _em_ and
// [text](https://...) links.

const INLINE = [
  { kind: "code", re: /`([^`\n]+)`/ },
  { kind: "link", re: /\[([^\]\n]+)\]\(([^)\s]+)\)/ },
  { kind: "strong", re: /\*\*([^*\n](?:[^\n]*?[^*\n])?)\*\*|__([^_\n](?:[^\n]*?[^_\n])?)__/ },
  { kind: "em", re: /\*([^*\n]+)\*|(?<![A-Za-z0-9])_([^_\n]+)_(?![A-Za-z0-9])/ },
];

/** An http(s) URL as a string, or null for anything else. */
export function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** Inline Markdown in `text` as a list of DOM nodes. */
export function inline(text) {
  const nodes = [];
  let rest = text;
  while (rest) {
    let best = null;
    for (const rule of INLINE) {
      const match = rule.re.exec(rest);
      if (match && (best === null || match.index < best.match.index)) best = { rule, match };
    }
    if (best === null) {
      nodes.push(document.createTextNode(rest));
      break;
    }
    const { rule, match } = best;
    if (match.index > 0) nodes.push(document.createTextNode(rest.slice(0, match.index)));
    if (rule.kind === "code") {
      const code = document.createElement("code");
      code.textContent = match[1];
      nodes.push(code);
    } else if (rule.kind === "link") {
      const href = safeUrl(match[2]);
      if (href) {
        const a = document.createElement("a");
        a.href = href;
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        a.dataset.external = "";
        a.append(...inline(match[1]));
        nodes.push(a);
      } else {
        nodes.push(document.createTextNode(match[0]));
      }
    } else {
      const el = document.createElement(rule.kind);
      el.append(...inline(match[1] ?? match[2]));
      nodes.push(el);
    }
    rest = rest.slice(match.index + match[0].length);
  }
  return nodes;
}

function element(tag, children) {
  const el = document.createElement(tag);
  el.append(...children);
  return el;
}

const LIST_ITEM = /^\s{0,3}([-*+]|\d{1,9}[.)])\s+(.*)$/;

/** Markdown `source` rendered into a DocumentFragment of safe elements. */
export function renderMarkdown(source) {
  const out = document.createDocumentFragment();
  const lines = String(source ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = /^\s{0,3}(```|~~~)/.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence
      const code = document.createElement("code");
      code.textContent = body.join("\n");
      out.append(element("pre", [code]));
      continue;
    }
    const heading = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      // a card's "#" is a section inside the page: shift so it never outranks the page's own headings
      const level = Math.min(6, heading[1].length + 3);
      out.append(element(`h${level}`, inline(heading[2])));
      i += 1;
      continue;
    }
    if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
      out.append(document.createElement("hr"));
      i += 1;
      continue;
    }
    if (/^\s{0,3}>/.test(line)) {
      const quoted = [];
      while (i < lines.length && /^\s{0,3}>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s{0,3}>\s?/, ""));
      out.append(element("blockquote", [renderMarkdown(quoted.join("\n"))]));
      continue;
    }
    const item = LIST_ITEM.exec(line);
    if (item) {
      const ordered = /\d/.test(item[1]);
      const list = document.createElement(ordered ? "ol" : "ul");
      if (ordered && parseInt(item[1], 10) !== 1) list.start = parseInt(item[1], 10);
      while (i < lines.length) {
        const next = LIST_ITEM.exec(lines[i]);
        if (next && /\d/.test(next[1]) === ordered) {
          list.append(element("li", inline(next[2])));
          i += 1;
        } else if (lines[i].trim() && /^\s{2,}/.test(lines[i]) && list.lastChild) {
          list.lastChild.append(" ", ...inline(lines[i].trim())); // a wrapped item continues
          i += 1;
        } else {
          break;
        }
      }
      out.append(list);
      continue;
    }
    const paragraph = [];
    while (
      i < lines.length &&
      lines[i].trim() &&
      !/^\s{0,3}(#{1,6}\s|```|~~~|>)/.test(lines[i]) &&
      !LIST_ITEM.exec(lines[i])
    ) {
      paragraph.push(lines[i].trim());
      i += 1;
    }
    out.append(element("p", inline(paragraph.join(" "))));
  }
  return out;
}

/** A <div class="markdown"> holding `source` rendered, or a note when there is no text. */
export function markdownBlock(source, emptyText = "Nothing written yet.") {
  const div = document.createElement("div");
  div.className = "markdown";
  if (source && String(source).trim()) {
    div.append(renderMarkdown(source));
  } else {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = emptyText;
    div.append(p);
  }
  return div;
}
