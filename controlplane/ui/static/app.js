// The sluice console: plain JavaScript, no dependencies. Each page polls one bounded summary
// once a second and re-renders its live region only when the answer changed (no 1,000-row DOM
// rebuilt every second: every list is paged on the server). Actions go through the admin API's
// own endpoints, with the token the operator signed in with (kept for this tab only).
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "sluice.token";
const state = { session: null, page: null, timer: null, last: "", params: {} };
const $ = (sel, root = document) => root.querySelector(sel);

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}
function when(at) { return at ? new Date(at * 1000).toLocaleString() : "–"; }
const COLORS = ["var(--b0)", "var(--b1)", "var(--b2)", "var(--b3)", "var(--b4)", "var(--b5)"];
const colorOf = i => COLORS[i % COLORS.length];

// -- the admin API ---------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.status === 401) {
    signIn(data && data.error);
    throw new ApiError(401, (data && data.error) || "sign in needed");
  }
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || response.statusText);
  return data;
}
class ApiError extends Error { constructor(status, message) { super(message); this.status = status; } }

function signIn(message) {
  const dialog = $("#login");
  $("#login-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
}
$("#login-form").addEventListener("submit", async () => {
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  await loadSession();
  route();
});

async function loadSession() {
  try {
    state.session = await api("GET", "/ui/api/session");
  } catch (error) {
    state.session = null;
    return;
  }
  const s = state.session;
  $("#who").innerHTML = s.tokens
    ? `${esc(s.name)} <span class="pill">${esc(s.role)}</span> <a href="#" id="signout">sign out</a>`
    : `<span class="pill" title="no admin API tokens exist: loopback clients may act">open (loopback)</span>`;
  const out = $("#signout");
  if (out) out.addEventListener("click", e => { e.preventDefault(); sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
}
const canAct = () => Boolean(state.session && state.session.can_act);

function confirmAction(title, text) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise(resolve => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

function flash(root, message, ok = true) {
  const el = $(".flash", root);
  if (el) { el.className = "flash " + (ok ? "ok" : "error"); el.textContent = message; }
}

// -- polling ---------------------------------------------------------------------------------

function stopPolling() { if (state.timer) clearTimeout(state.timer); state.timer = null; }

async function poll(page, token) {
  if (token !== state.pollToken) return;
  try {
    const data = await page.load();
    const text = JSON.stringify(data);
    if (text !== state.last) {  // only a changed answer touches the DOM
      state.last = text;
      page.render(data);
    }
    $("#live").classList.remove("stale");
  } catch (error) {
    $("#live").classList.add("stale");
    if (error.status !== 401) {
      const live = $("#live-region");
      if (live && !state.last) live.innerHTML = `<p class="error">${esc(error.message)}</p>`;
    }
  }
  if (token === state.pollToken) state.timer = setTimeout(() => poll(page, token), page.every || POLL_MS);
}

function show(page) {
  stopPolling();
  state.page = page;
  state.last = "";
  state.pollToken = Symbol();
  $("#main").innerHTML = page.frame();
  if (page.bind) page.bind($("#main"));
  poll(page, state.pollToken);
}
const refresh = () => { state.last = ""; stopPolling(); state.pollToken = Symbol(); poll(state.page, state.pollToken); };

function pager(data, key) {
  if (data.pages <= 1) return `<span class="pager">${fmt(data.total)} in all</span>`;
  return `<span class="pager">page ${data.page + 1} of ${data.pages} (${fmt(data.total)} in all)</span>
    <button data-pager="${key}" data-to="${data.page - 1}" ${data.page === 0 ? "disabled" : ""}>‹ previous</button>
    <button data-pager="${key}" data-to="${data.page + 1}" ${data.page + 1 >= data.pages ? "disabled" : ""}>next ›</button>`;
}
function bindPager(root, params) {
  root.addEventListener("click", e => {
    const b = e.target.closest("[data-pager]");
    if (!b) return;
    params[b.dataset.pager] = Number(b.dataset.to);
    refresh();
  });
}
function bindFilter(root, params) {
  const input = $("input[data-filter]", root);
  if (!input) return;
  input.value = params.q || "";
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { params.q = input.value; params.page = 0; refresh(); }, 250);
  });
}
const query = params => Object.entries(params).filter(([, v]) => v !== undefined && v !== "")
  .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join("&");

// -- pictures ----------------------------------------------------------------------------------

function splitBar(split) {
  return `<div class="split" role="img" aria-label="${esc(split.map(w => `${w.backend} ${w.percent}%`).join(", "))}">` +
    split.map((w, i) => w.percent > 0
      ? `<div style="width:${w.percent}%;background:${colorOf(i)}" title="${esc(w.backend)}: weight ${w.weight} (${w.percent}%)">${esc(w.backend)} ${w.percent}%</div>`
      : "").join("") + "</div>";
}

function healthClass(h) {
  if (!h || h.total === null || h.total === undefined) return "muted";
  return h.healthy === h.total ? "ok" : h.healthy === 0 ? "bad" : "warn";
}

function meshPicture(mesh) {
  const rowH = 34, routes = mesh.items, backends = mesh.backends;
  const rows = Math.max(routes.length, backends.length, 1);
  const height = rows * rowH + 30, width = 960;
  const xEdge = 20, xRoute = 300, xBackend = 680;
  const yRoute = i => 25 + i * rowH + (rows - routes.length) * rowH / 2;
  const yBackend = i => 25 + i * rowH + (rows - backends.length) * rowH / 2;
  const yEdge = height / 2 - 12;
  const index = Object.fromEntries(backends.map((b, i) => [b.name, i]));
  const stroke = { ok: "#1a7f37", warn: "#b7791f", bad: "#c62828", muted: "#98a2b3" };
  let svg = `<svg width="${width}" height="${height}" role="img" aria-label="mesh: edge, routes, backends">`;
  routes.forEach((r, i) => {
    svg += `<path d="M${xEdge + 150},${yEdge + 12} C${xEdge + 220},${yEdge + 12} ${xRoute - 70},${yRoute(i) + 12} ${xRoute},${yRoute(i) + 12}" stroke="#b8c0cc" fill="none"/>`;
    const shown = r.split.filter(w => w.backend in index && w.percent > 0);
    shown.forEach((w, k) => {
      const y2 = yBackend(index[w.backend]) + 12;
      svg += `<path d="M${xRoute + 230},${yRoute(i) + 12} C${xRoute + 300},${yRoute(i) + 12} ${xBackend - 70},${y2} ${xBackend},${y2}" stroke="${colorOf(r.split.indexOf(w))}" stroke-opacity=".6" stroke-width="${1 + w.percent / 12}" fill="none"><title>${esc(r.id)} → ${esc(w.backend)}: ${w.percent}%</title></path>`;
      // Each route's weights beside it, one line per backend it sends to (labels never meet mid-air).
      const ly = yRoute(i) + 12 + (k - (shown.length - 1) / 2) * 11 + 4;
      svg += `<text x="${xRoute + 236}" y="${ly}" font-size="10" fill="${colorOf(r.split.indexOf(w))}" class="weight" data-route="${esc(r.id)}" data-backend="${esc(w.backend)}">${w.percent}%</text>`;
    });
  });
  svg += `<rect x="${xEdge}" y="${yEdge - 8}" width="150" height="40" rx="8" fill="#151a26"/><text x="${xEdge + 12}" y="${yEdge + 17}" fill="#fff">edge × ${mesh.edges}</text>`;
  routes.forEach((r, i) => {
    svg += `<rect x="${xRoute}" y="${yRoute(i)}" width="230" height="24" rx="5" fill="#fff" stroke="#b8c0cc"/>`;
    svg += `<text x="${xRoute + 8}" y="${yRoute(i) + 16}">${esc(r.id)}${r.canary ? " ⟳" : ""}</text>`;
  });
  backends.forEach((b, i) => {
    const c = healthClass(b);
    const label = b.total === null || b.total === undefined ? "health unknown" : `${b.healthy}/${b.total} healthy`;
    svg += `<rect x="${xBackend}" y="${yBackend(i)}" width="250" height="24" rx="5" fill="#fff" stroke="${stroke[c]}" stroke-width="2"/>`;
    svg += `<text x="${xBackend + 8}" y="${yBackend(i) + 16}">${esc(b.name)} <tspan fill="${stroke[c]}">${label}</tspan></text>`;
  });
  return svg + "</svg>";
}

function lineChart(points, { width = 640, height = 180, max = 100, label = "" } = {}) {
  if (points.length === 0) return `<p class="muted">no data yet</p>`;
  const t0 = points[0][0], t1 = Math.max(points[points.length - 1][0], t0 + 1);
  const x = t => 40 + (width - 60) * (t - t0) / (t1 - t0);
  const y = v => height - 25 - (height - 45) * v / max;
  let d = "";
  points.forEach(([t, v], i) => { d += i === 0 ? `M${x(t)},${y(v)}` : ` H${x(t)} V${y(v)}`; });
  let svg = `<svg width="${width}" height="${height}" role="img" aria-label="${esc(label)}">`;
  for (const v of [0, 25, 50, 75, 100]) {
    svg += `<line x1="40" x2="${width - 20}" y1="${y(v)}" y2="${y(v)}" stroke="#eef0f4"/><text x="4" y="${y(v) + 4}" fill="#667085">${v}%</text>`;
  }
  svg += `<path d="${d}" stroke="#e07b24" stroke-width="2.5" fill="none"/>`;
  points.forEach(([t, v]) => { svg += `<circle cx="${x(t)}" cy="${y(v)}" r="3" fill="#e07b24"><title>${when(t)}: ${v}%</title></circle>`; });
  svg += `<text x="40" y="${height - 6}" fill="#667085">${esc(new Date(t0 * 1000).toLocaleTimeString())}</text>`;
  svg += `<text x="${width - 20}" y="${height - 6}" fill="#667085" text-anchor="end">${esc(new Date(t1 * 1000).toLocaleTimeString())}</text>`;
  return svg + "</svg>";
}

// -- pages -------------------------------------------------------------------------------------

const pages = {};

pages.overview = () => {
  const params = { page: 0, mesh_page: 0, q: "" };
  return {
    frame: () => `<h1>Overview</h1><div id="live-region"><p class="muted">loading…</p></div>`,
    bind: root => bindPager(root, params),
    load: () => api("GET", "/ui/api/overview?" + query(params)),
    render(data) {
      const p = data.proxies;
      const cards = [["revision", data.revision, ""], ["proxies", p.total, ""], ["on this revision", p.current, "ok"],
        ["behind", p.behind, p.behind ? "warn" : ""], ["NACKed", p.nacked, p.nacked ? "bad" : ""]];
      let html = `<div class="cards">${cards.map(([l, n, c]) => `<div class="card" data-card="${esc(l)}"><div class="n ${c}">${fmt(n)}</div><div class="l">${esc(l)}</div></div>`).join("")}</div>`;
      html += `<h2>Mesh</h2><div class="panel">${meshPicture(data.mesh)}<div class="toolbar">${pager(data.mesh, "mesh_page")}</div></div>`;
      html += `<h2>Proxies</h2><div class="toolbar">${pager(p, "page")}</div>`;
      html += `<table id="proxies"><thead><tr><th>node</th><th>role</th><th>xDS</th><th>revision</th>
        <th>ACKed per type (revision)</th><th>last NACK</th></tr></thead><tbody>`;
      for (const proxy of p.items) {
        const types = Object.entries(proxy.types);
        const nacks = types.filter(([, t]) => t.last_nack && t.last_nack.version !== t.acked_version);
        const cls = proxy.state === "nacked" ? "bad" : proxy.state === "behind" ? "warn" : "ok";
        html += `<tr data-node="${esc(proxy.node_id)}"><td>${esc(proxy.node_id)}</td><td>${esc(proxy.cluster)}</td><td>${esc(proxy.protocol)}</td>
          <td class="${cls}">${proxy.revision ?? "–"} <span class="pill">${esc(proxy.state)}</span></td>
          <td>${types.map(([k, t]) => `${esc(k)} ${t.acked_revision ?? "–"}`).join(" · ")}</td>
          <td>${nacks.map(([k, t]) => `<div class="bad"><b>${esc(k)}</b> ${esc(t.last_nack.message)}</div>`).join("") || "<span class='muted'>none</span>"}</td></tr>`;
      }
      html += `</tbody></table>`;
      $("#live-region").innerHTML = html;
    },
  };
};

pages.routes = () => {
  const params = { page: 0, q: "" };
  return {
    frame: () => `<h1>Routes</h1><div class="toolbar"><input data-filter placeholder="filter: service/route or backend"></div>
      <div id="live-region"><p class="muted">loading…</p></div>`,
    bind: root => { bindPager(root, params); bindFilter(root, params); },
    load: () => api("GET", "/ui/api/routes?" + query(params)),
    render(data) {
      let html = `<div class="toolbar">${pager(data, "page")}<span class="muted">revision ${data.revision}</span></div>`;
      html += `<table id="routes"><thead><tr><th>route</th><th>match</th><th>split</th><th>weights</th><th>canary</th></tr></thead><tbody>`;
      for (const r of data.items) {
        html += `<tr data-route="${esc(r.id)}"><td><b>${esc(r.id)}</b></td><td><code>${esc(JSON.stringify(r.match))}</code></td>
          <td>${splitBar(r.split)}</td>
          <td class="weights">${r.split.map(w => `<span data-backend="${esc(w.backend)}">${esc(w.backend)}: <b>${w.weight}</b></span>`).join("<br>")}</td>
          <td>${r.canary ? `<a href="#/canary/${encodeURIComponent(r.canary)}">${esc(r.canary)}</a>` : ""}</td></tr>`;
      }
      $("#live-region").innerHTML = html + "</tbody></table>";
    },
  };
};

pages.canaries = () => ({
  frame: () => `<h1>Canaries</h1><div id="live-region"><p class="muted">loading…</p></div>`,
  load: () => api("GET", "/ui/api/canaries"),
  render(data) {
    if (!data.items.length) { $("#live-region").innerHTML = `<p class="muted">No canaries in the policy (revision ${data.revision}).</p>`; return; }
    let html = `<table id="canaries"><thead><tr><th>canary</th><th>route</th><th>stable → canary</th><th>state</th><th>stage</th><th>weight</th><th>step</th></tr></thead><tbody>`;
    for (const c of data.items) {
      html += `<tr data-canary="${esc(c.name)}"><td><a href="#/canary/${encodeURIComponent(c.name)}">${esc(c.name)}</a></td><td>${esc(c.service)}/${esc(c.route)}</td>
        <td>${esc(c.stable)} → ${esc(c.canary)}</td><td><span class="pill">${esc(c.state)}</span></td><td class="stage">${esc(c.stage || "–")}</td><td class="num">${c.weight}%</td>
        <td class="num">${c.step + 1} of ${c.steps.length}</td></tr>`;
    }
    $("#live-region").innerHTML = html + "</tbody></table>";
  },
});

const ACTIONS = {
  pause: ["progressing", "promoting", "pending"], resume: ["paused"], promote: ["progressing", "paused", "pending", "promoting"],
  abort: ["progressing", "promoting", "paused", "pending"],
};

function stepResults(events) {
  const out = [];
  for (const e of events) {
    const rate = /success rate ([0-9.]+%)/.exec(e.message);
    const p99 = /p99 (?:≤ |> )?([0-9.]+ ms|n\/a)/.exec(e.message);
    const ttft = /TTFT[^0-9]*([0-9.]+ ms)/.exec(e.message);
    if (rate || p99) out.push({ at: e.at, weight: e.weight, state: e.state, rate: rate && rate[1], p99: p99 && p99[1], ttft: ttft && ttft[1], message: e.message });
  }
  return out;
}

pages.canary = name => ({
  frame: () => `<h1>Canary ${esc(name)}</h1><p class="flash"></p><div id="actions"></div><div id="live-region"><p class="muted">loading…</p></div>`,
  bind(root) {
    root.addEventListener("click", async e => {
      const b = e.target.closest("[data-action]");
      if (!b) return;
      const action = b.dataset.action;
      if ((action === "abort" || action === "promote") &&
          !await confirmAction(`${action} canary ${name}?`, action === "abort"
            ? "All traffic goes back to the stable backend at once." : "All traffic moves to the canary backend.")) return;
      try {
        const result = await api("POST", `/api/v1/canaries/${encodeURIComponent(name)}/${action}`);
        flash(root, `${action}: now ${result.status.state} (revision ${result.revision})`);
        refresh();
      } catch (error) { flash(root, `${action} refused: ${error.message}`, false); }
    });
  },
  load: () => api("GET", `/api/v1/canaries/${encodeURIComponent(name)}/status`),
  render(data) {
    const s = data.status, spec = data.spec;
    $("#actions").innerHTML = canAct() ? `<div class="toolbar">${Object.keys(ACTIONS).map(a =>
      `<button data-action="${a}" ${ACTIONS[a].includes(s.state) ? "" : "disabled"} class="${a === "abort" ? "danger" : ""}">${a}</button>`).join("")}</div>` : "";
    const points = s.events.map(e => [e.at, e.weight]);
    if (points.length) points.push([Date.now() / 1000, s.weight]);
    let html = `<div class="cards">
      <div class="card"><div class="n" id="canary-state">${esc(s.state)}</div><div class="l">state</div></div>
      <div class="card"><div class="n" id="canary-stage">${esc(s.stage || "–")}</div><div class="l">stage (shadow → A/B → weighted)</div></div>
      <div class="card"><div class="n" id="canary-weight">${s.weight}%</div><div class="l">on ${esc(spec.canary)}</div></div>
      <div class="card"><div class="n">${s.step + 1} / ${data.steps.length}</div><div class="l">step (${data.steps.join(", ")}%)</div></div>
      <div class="card"><div class="n">${s.failed_checks}</div><div class="l">failed windows (limit ${spec.failure_limit})</div></div></div>`;
    html += `<h2>Weight on the canary over time</h2><div class="panel">${lineChart(points, { label: "canary weight over time" })}</div>`;
    if (data.window) {
      const w = data.window, row = (label, x) => `<tr><td>${label}</td><td class="num">${fmt(x.requests)}</td><td class="num">${x.success_rate === null ? "–" : fmt(100 * x.success_rate, 2) + "%"}</td><td class="num">${x.p99_ms === null ? "–" : fmt(x.p99_ms) + " ms"}</td></tr>`;
      html += `<h2>This window (decision at ${esc(when(w.next_decision_at))})</h2><table><thead><tr><th></th><th class="num">requests</th><th class="num">success rate</th><th class="num">p99</th></tr></thead>
        <tbody>${row(esc(spec.stable) + " (stable)", w.stable)}${row(esc(spec.canary) + " (canary)", w.canary)}</tbody></table>`;
    }
    const steps = stepResults(s.events);
    html += `<h2>Per step</h2><table><thead><tr><th>at</th><th class="num">weight</th><th class="num">success rate</th><th class="num">p99</th><th class="num">TTFT</th><th>verdict</th></tr></thead><tbody>${
      steps.map(r => `<tr><td>${esc(when(r.at))}</td><td class="num">${r.weight}%</td><td class="num">${esc(r.rate || "–")}</td><td class="num">${esc(r.p99 || "–")}</td><td class="num">${esc(r.ttft || "–")}</td><td>${esc(r.message)}</td></tr>`).join("")
      || `<tr><td colspan="6" class="muted">no step decided yet</td></tr>`}</tbody></table>`;
    const t = spec.thresholds, hooks = Object.entries(spec.webhooks).filter(([k, v]) => v && k !== "timeout_s");
    html += `<h2>Gates</h2><ul><li>success rate ≥ ${fmt(100 * t.min_success_rate, 2)}% per window of ${fmt(spec.interval_s)} s</li>
      <li>p99 ≤ ${t.max_p99_ms === null ? "no check" : fmt(t.max_p99_ms) + " ms"}</li><li>at least ${t.min_requests} canary requests per window</li>
      ${hooks.map(([k, v]) => `<li>webhook ${esc(k)}: <code>${esc(v)}</code></li>`).join("")}</ul>`;
    html += `<h2>Events</h2><table id="events"><thead><tr><th>at</th><th>state</th><th class="num">weight</th><th>message</th></tr></thead><tbody>${
      [...s.events].reverse().map(e => `<tr><td>${esc(when(e.at))}</td><td>${esc(e.state)}</td><td class="num">${e.weight}%</td><td>${esc(e.message)}</td></tr>`).join("")}</tbody></table>`;
    $("#live-region").innerHTML = html;
  },
});

pages.limits = () => {
  let previous = null;
  return {
    frame: () => `<h1>Rate limits</h1><div id="live-region"><p class="muted">loading…</p></div>`,
    load: () => api("GET", "/ui/api/limits"),
    render(data) {
      const rates = {};
      if (previous && data.at > previous.at) {
        const dt = data.at - previous.at;
        for (const item of data.items) {
          const before = (previous.items.find(i => i.name === item.name) || {}).counters || {};
          rates[item.name] = Object.fromEntries(["allowed", "limited", "shadow_limited"].map(k =>
            [k, Math.max(0, ((item.counters[k] || 0) - (before[k] || 0)) / dt)]));
        }
      }
      previous = data;
      let html = `<p class="muted">Counters summed over ${data.edges_read} of ${data.edges} edge Envoys; per second from the last two polls.</p>`;
      if (!data.items.length) html += `<p class="muted">No rate limits in the policy (revision ${data.revision}).</p>`;
      else {
        html += `<table id="limits"><thead><tr><th>limit</th><th>service / routes</th><th>key</th><th class="num">rate/s</th><th class="num">burst</th><th>scope</th>
          <th class="num">requests</th><th class="num">admitted</th><th class="num">limited</th><th class="num">admitted/s</th><th class="num">limited/s</th><th class="num">limited share</th></tr></thead><tbody>`;
        for (const l of data.items) {
          const c = l.counters, r = rates[l.name];
          const limited = (c.limited || 0) + (c.shadow_limited || 0);
          const share = c.requests ? 100 * limited / c.requests : null;
          html += `<tr data-limit="${esc(l.name)}"><td><b>${esc(l.name)}</b>${l.shadow ? ' <span class="pill">shadow</span>' : ""}</td>
            <td>${esc(l.service)}${l.routes.length ? " / " + l.routes.map(esc).join(", ") : " (all routes)"}</td>
            <td>${l.key.map(k => esc(k.type + (k.name ? ":" + k.name : ""))).join(" + ")}</td>
            <td class="num">${fmt(l.rate, 3)}</td><td class="num">${fmt(l.burst)}</td><td>${esc(l.scope)}</td>
            <td class="num">${fmt(c.requests)}</td><td class="num ok">${fmt(c.allowed)}</td><td class="num bad">${fmt(limited)}</td>
            <td class="num">${fmt(r ? r.allowed : null, 1)}</td><td class="num">${fmt(r ? r.limited + r.shadow_limited : null, 1)}</td>
            <td class="num">${share === null ? "–" : fmt(share, 1) + "%"}</td></tr>`;
        }
        html += "</tbody></table>";
      }
      html += `<p class="notice">Per-tenant remaining tokens stay inside each Envoy's filter (they are not exported): a client sees its own in the
        <code>RateLimit</code> response header. Token budgets appear here once the policy has them.</p>`;
      $("#live-region").innerHTML = html;
    },
  };
};

pages.history = () => {
  const chosen = { a: null, b: null };
  return {
    every: 3000,
    frame: () => `<h1>History</h1><p class="flash"></p><div id="diff"></div><div id="live-region"><p class="muted">loading…</p></div>`,
    bind(root) {
      root.addEventListener("change", e => {
        const r = e.target.closest("input[data-pick]");
        if (!r) return;
        chosen[r.dataset.pick] = Number(r.value);
        if (chosen.a !== null && chosen.b !== null) showDiff();
      });
      root.addEventListener("click", async e => {
        const b = e.target.closest("[data-rollback]");
        if (!b) return;
        const n = Number(b.dataset.rollback);
        if (!await confirmAction(`Roll back to revision ${n}?`,
          `The policy of revision ${n} becomes a new revision and every proxy is pushed to it.`)) return;
        try {
          const result = await api("POST", `/api/v1/revisions/${n}/rollback`);
          flash(root, `rolled back to revision ${n}: now revision ${result.revision}`);
          refresh();
        } catch (error) { flash(root, `rollback refused: ${error.message}`, false); }
      });
    },
    load: () => api("GET", "/api/v1/revisions?limit=50"),
    render(data) {
      const revs = data.revisions;
      if (chosen.a === null && revs.length > 1) { chosen.a = revs[1].number; chosen.b = revs[0].number; showDiff(); }
      let html = `<p class="muted">The newest 50 revisions. Pick two to compare.</p><table id="revisions"><thead><tr><th>from</th><th>to</th><th>revision</th><th>when</th><th>who</th><th>what</th><th></th></tr></thead><tbody>`;
      revs.forEach((r, i) => {
        html += `<tr data-revision="${r.number}"><td><input type="radio" name="a" data-pick="a" value="${r.number}" ${chosen.a === r.number ? "checked" : ""}></td>
          <td><input type="radio" name="b" data-pick="b" value="${r.number}" ${chosen.b === r.number ? "checked" : ""}></td>
          <td class="num">${r.number}${i === 0 ? ' <span class="pill ok">current</span>' : ""}</td><td>${esc(when(r.created_at))}</td><td>${esc(r.actor)}</td><td>${esc(r.message)}</td>
          <td>${canAct() && i > 0 && r.number > 0 ? `<button data-rollback="${r.number}">roll back to ${r.number}</button>` : ""}</td></tr>`;
      });
      $("#live-region").innerHTML = html + "</tbody></table>";
    },
  };
  async function showDiff() {
    const el = $("#diff");
    if (!el) return;
    try {
      const d = await api("GET", `/api/v1/revisions/${chosen.a}/diff/${chosen.b}`);
      let html = `<h2>Revision ${d.from} → ${d.to}</h2><div class="panel">`;
      if (!d.objects.length) html += `<span class="muted">no difference</span>`;
      for (const o of d.objects) {
        html += `<div><b>${esc(o.kind)} ${esc(o.name)}</b> <span class="pill">${esc(o.change)}</span>`;
        if (o.fields) html += `<ul>${o.fields.map(f => `<li><code>${esc(f.path)}</code>: <span class="diff-from">${esc(JSON.stringify(f.from))}</span> → <span class="diff-to">${esc(JSON.stringify(f.to))}</span></li>`).join("")}</ul>`;
        else html += `<pre>${esc(JSON.stringify(o.spec, null, 2))}</pre>`;
        html += `</div>`;
      }
      el.innerHTML = html + "</div>";
    } catch (error) { el.innerHTML = `<p class="error">${esc(error.message)}</p>`; }
  }
};

pages.backends = () => {
  const params = { page: 0, q: "" };
  return {
    frame: () => `<h1>Backends and models</h1><div class="toolbar"><input data-filter placeholder="filter backends"></div><div id="live-region"><p class="muted">loading…</p></div>`,
    bind: root => { bindPager(root, params); bindFilter(root, params); },
    load: () => api("GET", "/ui/api/backends?" + query(params)),
    render(data) {
      let html = `<div class="toolbar">${pager(data, "page")}</div><table id="backends"><thead><tr><th>backend</th><th>health (edge's view)</th><th>endpoint</th><th>models</th>
        <th class="num">queue</th><th class="num">running</th><th class="num">waiting</th><th class="num">KV cache</th></tr></thead><tbody>`;
      for (const b of data.items) {
        const h = b.health, eps = b.endpoints.length ? b.endpoints : [{ endpoint: "–" }];
        eps.forEach((e, i) => {
          html += `<tr data-backend="${esc(b.name)}">${i === 0 ? `<td rowspan="${eps.length}"><b>${esc(b.name)}</b><div class="muted">${esc(b.protocol)}, ${esc(b.lb_policy)}</div></td>
            <td rowspan="${eps.length}" class="${healthClass(h)}">${h ? `${h.healthy}/${h.total} healthy` : "unknown"}</td>` : ""}
            <td><code>${esc(e.endpoint)}</code>${e.reachable === false ? ' <span class="bad">unreachable</span>' : ""}</td>
            <td>${esc((e.models || []).join(", "))}</td><td class="num">${fmt(e.queue)}</td><td class="num">${fmt(e.running)}</td>
            <td class="num">${fmt(e.waiting)}</td><td class="num">${e.kv_cache_usage === undefined ? "–" : fmt(100 * e.kv_cache_usage, 1) + "%"}</td></tr>`;
        });
      }
      $("#live-region").innerHTML = html + "</tbody></table>";
    },
  };
};

// -- routing -----------------------------------------------------------------------------------

function route() {
  const [, name, arg] = (location.hash || "#/overview").split("/");
  const make = pages[name] || pages.overview;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === name || (name === "canary" && a.dataset.page === "canaries"));
  }
  show(make(arg ? decodeURIComponent(arg) : undefined));
}

window.addEventListener("hashchange", route);
loadSession().then(route);
