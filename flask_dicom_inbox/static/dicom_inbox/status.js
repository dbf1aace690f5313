// The DICOM inbox status page: keeps the server-rendered list fresh while imports run.
//
// Polls the rows URL (the page's newest rows as JSON, same origin, with the page's
// credentials) about once a second while any request is unfinished, and stops when all are
// finished. Every value from the records (folder names, labels, messages, error texts) reaches
// the page through textContent or a checked attribute, never as markup: the inbox's content is
// written by whoever filled the folder.
(function () {
  "use strict";

  const FINISHED = new Set(["Completed", "Failed"]);
  const root = document.getElementById("inbox");
  if (!root) {
    return;
  }
  const rowsUrl = root.dataset.rowsUrl;
  const base = root.dataset.base || "";
  const pollMs = Number(root.dataset.pollMs) || 1000;
  const maxRows = Number(root.dataset.maxRows) || 100;
  const maxErrors = Number(root.dataset.maxErrors) || 20;
  const list = document.getElementById("requests");
  const empty = document.getElementById("empty");
  const more = document.getElementById("more");
  const live = document.getElementById("live");
  const refresh = document.getElementById("refresh");
  let timer = null;
  let busy = false;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function int(value) {
    const n = Number(value);
    return Number.isFinite(n) ? Math.trunc(n) : 0;
  }

  function isoSeconds(ms) {
    const date = new Date(int(ms));
    return Number.isNaN(date.getTime()) ? "" : date.toISOString().slice(0, 19) + "+00:00";
  }

  // Same rule as api_ui.session_href: only the importer's two URL shapes become links.
  function sessionHref(url) {
    if (typeof url === "string" && (url.startsWith("/prearchive/") || url.startsWith("/archive/"))) {
      return base + "/data" + url;
    }
    return null;
  }

  function statusClass(status) {
    return "status status-" + String(status).toLowerCase().replace(/[^a-z]/g, "");
  }

  function renderRow(r) {
    const id = int(r.id);
    const status = String(r.status || "");
    const finished = FINISHED.has(status);
    const progress = r.progress || {};
    const found = int(progress.filesFound);
    const done = int(progress.filesDone);
    const href = base + "/xapi/dicom/" + id;

    const li = el("li", "request");
    li.dataset.requestId = String(id);
    li.dataset.status = status;
    li.dataset.finished = finished ? "true" : "false";

    const head = el("div", "head");
    const link = el("a", "id", "#" + id);
    link.href = href;
    const created = el("time", "created", isoSeconds(r.created));
    created.dateTime = isoSeconds(r.created);
    head.append(
      link,
      el("span", statusClass(status), status),
      el("span", "project", r.project || ""),
      el("span", "handler", r.handler || ""),
      created
    );
    li.append(head, el("div", "path", r.sessionPath || ""));

    const bar = el("progress");
    if (finished && found === 0) {
      bar.max = 1;
      bar.value = 1;
    } else if (found > 0) {
      bar.max = found;
      bar.value = Math.min(done, found);
    } // else: no value, an indeterminate bar (the folder is still being counted)
    const row = el("div", "progress");
    row.append(bar, el("span", "count", done + " of " + found + " files"));
    li.append(row);

    if (r.message) {
      li.append(el("p", "message", r.message));
    }

    const sessions = Array.isArray(r.sessions) ? r.sessions : [];
    if (sessions.length) {
      const ul = el("ul", "sessions");
      for (const s of sessions) {
        const item = el("li");
        const target = sessionHref(s.url);
        const name = el(target ? "a" : "span", null, s.label || "");
        if (target) {
          name.href = target;
        }
        const detail =
          "subject " + (s.subject || "") + " · " + int(s.scans) + " scan(s) · " +
          int(s.files) + " file(s) · " + (s.destination || "");
        item.append(name, " ", el("span", "detail", detail));
        ul.append(item);
      }
      li.append(ul);
    }

    // The rows carry a request's first errors only, and how many it has in errorCount.
    const errors = (Array.isArray(r.errors) ? r.errors : []).slice(0, maxErrors);
    const errorCount = Math.max(int(r.errorCount), errors.length);
    if (errorCount) {
      const details = el("details", "errors");
      details.append(el("summary", null, errorCount + " file(s) skipped or failed"));
      const ul = el("ul");
      for (const e of errors) {
        const item = el("li");
        item.append(el("code", null, e.path || ""), ": " + String(e.reason || ""));
        ul.append(item);
      }
      if (errorCount > errors.length) {
        const item = el("li", "more", "… and " + (errorCount - errors.length) + " more in ");
        const json = el("a", null, "the status JSON");
        json.href = href;
        item.append(json);
        ul.append(item);
      }
      details.append(ul);
      li.append(details);
    }
    return li;
  }

  function render(requests, total) {
    // Keep open the error lists the reader opened.
    const open = new Set();
    for (const d of list.querySelectorAll("li.request details[open]")) {
      open.add(d.closest("li.request").dataset.requestId);
    }
    const rows = requests.slice(0, maxRows).map(renderRow);
    for (const row of rows) {
      const details = row.querySelector("details");
      if (details && open.has(row.dataset.requestId)) {
        details.open = true;
      }
    }
    list.replaceChildren(...rows);
    empty.hidden = requests.length > 0;
    more.hidden = total <= maxRows;
    if (!more.hidden) {
      more.firstChild.textContent =
        "Showing the newest " + maxRows + " of " + total + " requests; ";
    }
  }

  function anyRunning() {
    return list.querySelector('li.request[data-finished="false"]') !== null;
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }

  async function poll() {
    if (busy) {
      return;
    }
    busy = true;
    try {
      const response = await fetch(rowsUrl, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401 || response.status === 403) {
        live.textContent = "Not logged in any more: reload the page to log in again.";
        refresh.hidden = false;
        return;
      }
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const data = await response.json();
      const rows = data && Array.isArray(data.requests) ? data.requests : [];
      render(rows, Math.max(int(data && data.total), rows.length));
      live.textContent = anyRunning() ? "updating…" : "";
      refresh.hidden = anyRunning();
      if (anyRunning()) {
        schedule(pollMs);
      }
    } catch (err) {
      live.textContent = "Could not refresh (" + String(err.message || err) + "); retrying.";
      schedule(5 * pollMs);
    } finally {
      busy = false;
    }
  }

  refresh.addEventListener("click", function () {
    refresh.hidden = true;
    poll();
  });

  if (anyRunning()) {
    live.textContent = "updating…";
    schedule(pollMs);
  } else {
    refresh.hidden = false;
  }
})();
