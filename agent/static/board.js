// The venue board: renders the snapshots the server pushes over Server-Sent Events.
// No MQTT here: the server subscribes to the broker and sends event "state" on /events.
"use strict";
(function () {
  const mode = document.body.dataset.mode || "board";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function minutes(s) {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    if (s < 60) return "< 1 min";
    return Math.round(s / 60) + " min";
  }

  function count(x) {
    return typeof x === "number" && isFinite(x) ? String(Math.round(x)) : "–";
  }

  function localTime(at) {
    if (!at) return "";
    const d = new Date(at);
    return isNaN(d) ? "" : d.toLocaleTimeString();
  }

  function banner(state) {
    const b = document.getElementById("banner");
    if (state.broker && !state.broker.connected) {
      b.textContent = "Live data unavailable (broker unreachable" +
        (state.broker.error ? ": " + state.broker.error : "") + ") – showing the last known values";
      b.hidden = false;
    } else {
      b.hidden = true;
    }
  }

  function renderBoard(state) {
    document.getElementById("venue").textContent = state.venue || "";
    document.getElementById("updated").textContent = "updated " + localTime(state.at);
    const body = document.querySelector("#zones tbody");
    body.replaceChildren();
    for (const z of state.zones) {
      const tr = el("tr");
      tr.dataset.zone = z.zone;
      tr.appendChild(el("td", z.name || z.zone));
      tr.appendChild(el("td", minutes(z.posted_wait_s), "wait"));
      tr.appendChild(el("td", z.kind === "area" ? count(z.occupancy) : count(z.queue_length)));
      tr.appendChild(el("td", minutes(z.wait_forecast_s)));
      tr.appendChild(el("td", z.trend, "trend trend-" + ({"↑": "up", "↓": "down"}[z.trend] || "flat")));
      tr.appendChild(el("td", minutes(z.wait_s), "muted"));
      body.appendChild(tr);
    }
    const ms = document.getElementById("moments");
    ms.replaceChildren();
    for (const m of state.moments) {
      const li = el("li", localTime(m.opened_at) + "  " + (m.kind || "") + " at " +
        (m.zone_name || m.zone || "") + (m.taken_by ? " – taken by " + m.taken_by : ""));
      li.dataset.kind = m.kind || "";
      ms.appendChild(li);
    }
    if (!state.moments.length) ms.appendChild(el("li", "none", "muted"));
    const ns = document.getElementById("nudges");
    ns.replaceChildren();
    for (const n of state.nudges) ns.appendChild(el("li", n.message, "nudge"));
    if (!state.nudges.length) ns.appendChild(el("li", "none", "muted"));
  }

  function renderSignage(state) {
    const signs = document.getElementById("signs");
    signs.replaceChildren();
    for (const z of state.zones) {
      if (z.kind !== "queue") continue;
      const card = el("div", null, "sign");
      card.dataset.zone = z.zone;
      card.appendChild(el("div", z.name || z.zone, "sign-name"));
      card.appendChild(el("div", minutes(z.posted_wait_s), "sign-wait"));
      signs.appendChild(card);
    }
  }

  function render(state) {
    banner(state);
    if (mode === "signage") renderSignage(state); else renderBoard(state);
    window.boardState = state; // for debugging and browser tests
  }

  const source = new EventSource("events");
  source.addEventListener("state", function (ev) { render(JSON.parse(ev.data)); });
  source.onerror = function () {
    const b = document.getElementById("banner");
    b.textContent = "Reconnecting to the board server…";
    b.hidden = false;
  };
})();
