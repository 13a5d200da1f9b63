// claude-hooks dashboard: live sections over server-sent events, actions, the followed log.
"use strict";
(() => {
  const liveState = document.getElementById("live-state");
  const setLive = (state, text) => {
    if (liveState) { liveState.dataset.state = state; liveState.textContent = text; }
  };

  const duration = (seconds) => {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} m`;
  };

  // Times are sent as Unix seconds and shown in the browser's zone; elapsed times tick here,
  // so the server never resends a section just because a second passed.
  const refreshTimes = (root) => {
    const now = Date.now() / 1000;
    root.querySelectorAll("[data-since]").forEach((el) => {
      el.textContent = duration(now - Number(el.dataset.since));
    });
    root.querySelectorAll("time[data-ts]:not([data-done])").forEach((el) => {
      const at = new Date(Number(el.dataset.ts) * 1000);
      // Always the date and the zone: a time alone is ambiguous once a page is shared. ISO
      // order (2026-12-07 14:05:09 UTC), as the server writes its banners, in every locale.
      const pad = (n) => String(n).padStart(2, "0");
      const zone = new Intl.DateTimeFormat([], { timeZoneName: "short" })
        .formatToParts(at).find((part) => part.type === "timeZoneName");
      el.textContent = `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ` +
        `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}` +
        (zone ? ` ${zone.value}` : "");
      el.title = at.toISOString();
      el.dataset.done = "1";
    });
  };
  refreshTimes(document);
  setInterval(() => refreshTimes(document), 1000);

  // Bring `from` in line with `to`, keeping the nodes that did not change (and their focus).
  const morph = (from, to) => {
    if (from.nodeType !== to.nodeType || from.nodeName !== to.nodeName) {
      from.replaceWith(to.cloneNode(true));
      return;
    }
    if (from.nodeType !== Node.ELEMENT_NODE) {
      if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
      return;
    }
    if (from.dataset.done) {
      if (from.dataset.ts === to.dataset.ts) return; // already shown in the browser's zone
      delete from.dataset.done;
    }
    for (const { name } of [...from.attributes]) {
      if (!to.hasAttribute(name)) from.removeAttribute(name);
    }
    for (const { name, value } of [...to.attributes]) {
      if (from.getAttribute(name) !== value) from.setAttribute(name, value);
    }
    morphChildren(from, to);
  };
  const morphChildren = (from, to) => {
    const old = [...from.childNodes];
    const fresh = [...to.childNodes];
    fresh.forEach((node, i) => (i < old.length ? morph(old[i], node) : from.appendChild(node.cloneNode(true))));
    old.slice(fresh.length).forEach((node) => node.remove());
  };
  const update = (el, html) => {
    const template = document.createElement("template");
    template.innerHTML = html;
    const wrapper = el.cloneNode(false);
    wrapper.append(template.content);
    morphChildren(el, wrapper);
    refreshTimes(el);
  };

  const toast = (text, kind) => {
    const box = document.getElementById("toasts");
    if (!box) return;
    const note = document.createElement("div");
    note.className = `toast ${kind}`;
    note.setAttribute("role", kind === "error" ? "alert" : "status");
    note.textContent = text;
    box.append(note);
    setTimeout(() => note.remove(), kind === "error" ? 9000 : 5000);
  };

  const url = document.body.dataset.live;
  if (url && window.EventSource) {
    const source = new EventSource(url);
    source.onopen = () => setLive("on", "live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setLive("off", "offline: reload the page");
      else setLive("connecting", "reconnecting…");
    };
    source.addEventListener("section", (event) => {
      const { id, html } = JSON.parse(event.data);
      const el = document.getElementById(id);
      if (el) update(el, html);
    });
    source.addEventListener("gone", (event) => {
      toast(JSON.parse(event.data).error, "error");
      source.close();
      setLive("off", "gone");
    });
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    event.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.action, {
        method: "POST",
        headers: { "X-Requested-With": "claude-hooks", Accept: "application/json" },
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({}));
      if (response.ok) {
        const detail = body.reason ? `: ${body.status} (${body.reason})` : "";
        toast(`${button.dataset.done || "Done"}${detail}`, "ok");
      } else {
        toast(body.error || `Failed (HTTP ${response.status})`, "error");
        if (response.status === 401) window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
      }
    } catch (error) {
      toast(`The service did not answer: ${error}`, "error");
    } finally {
      button.disabled = false;
    }
  });

  // The task page follows its log while the task runs (the answer streams until it ends).
  const log = document.getElementById("log");
  const logState = document.getElementById("log-state");
  const follow = async () => {
    const response = await fetch(log.dataset.src, { credentials: "same-origin" });
    if (!response.ok || !response.body) {
      log.textContent = `cannot read the log (HTTP ${response.status})`;
      return;
    }
    if (logState) logState.textContent = "following the log live…";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let first = true;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
      if (first) { log.textContent = ""; first = false; }
      log.append(decoder.decode(value, { stream: true }));
      if (atBottom) log.scrollTop = log.scrollHeight;
    }
    if (first) log.textContent = "(the task wrote no output)";
    if (logState) logState.textContent = "end of log: the task has finished.";
  };
  if (log && log.dataset.src) follow().catch((error) => { if (logState) logState.textContent = `log stream stopped: ${error}`; });
})();
