// The balancer dashboard: plain JavaScript, no build step. Polls the API every 2 s.
// The token is kept in localStorage ("balancer.token"); without one the page works only when
// the service allows anonymous viewers (api.anonymous_viewer: true).
"use strict";

const KEY = "balancer.token";
const API = "/api/v1";
let role = null;

function token() { return localStorage.getItem(KEY) || ""; }

async function api(path, opts = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, opts.headers || {});
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const r = await fetch(API + path, Object.assign({}, opts, { headers }));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = new Error((body && body.error) || r.statusText);
    err.status = r.status;
    throw err;
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "text") e.textContent = v;
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function pct(x) { return x == null ? "-" : Math.round(100 * x) + "%"; }

function bar(kind, value, label) {
  const w = Math.max(0, Math.min(100, 100 * (value || 0)));
  return el("div", { class: "bar " + kind, title: label },
    el("span", { style: `width:${w}%` }), el("i", { text: label }));
}

// Predictive balancing: the host's expected CPU peak within the horizon and when it comes.
function forecastBar(h) {
  const f = h.forecast;
  if (!f) return [];
  const at = new Date(f.peak_at).toISOString().slice(11, 16) + "Z";
  return [el("div", { class: "bar forecast", "data-peak": f.peak_load,
    title: `expected peak (q${Math.round(100 * f.quantile)}) within ${f.horizon_minutes} min` },
    el("span", { style: `width:${Math.max(0, Math.min(100, 100 * f.peak_load))}%` }),
    el("i", { text: `forecast ${pct(f.peak_load)} at ${at}` }))];
}

// Host health: each signal raised now (which, since when, the figures).
function healthSignals(h) {
  return (h.health || []).map(sig => el("div", { class: "health-signal", "data-signal": sig.signal,
    title: sig.detail, text: `⚠ ${sig.signal.replace(/_/g, " ")} since ${hhmm(sig.since)}: ${sig.detail}` }));
}

// Operators: quarantine a failing host (its VMs move off) or release it.
function hostActions(h) {
  if (role !== "operator" && role !== "admin") return [];
  if (h.state === "quarantined") {
    return [el("button", { class: "release", "data-host": h.name, text: "Release", onclick: () => hostAction(h.name, "release") })];
  }
  if (h.state !== "active") return [];
  return [el("button", { class: "quarantine", "data-host": h.name, text: "Quarantine", onclick: () => {
    const reason = prompt(`Quarantine ${h.name}: its VMs move off. Why?`, "");
    if (reason !== null) hostAction(h.name, "quarantine", reason);
  } })];
}

async function hostAction(host, what, reason) {
  try {
    await api(`/hosts/${encodeURIComponent(host)}/${what}`, { method: "POST", body: JSON.stringify(what === "quarantine" ? { reason } : {}) });
    banner(`${host} ${what === "quarantine" ? "quarantined: its VMs move off" : "released"}`, false);
  } catch (e) {
    banner(`${what} ${host}: ${e.message}`, true);
  }
  refresh();
}

function banner(text, bad) {
  const b = document.getElementById("banner");
  if (!text) { b.hidden = true; return; }
  b.hidden = false;
  b.textContent = text;
  b.className = "banner" + (bad ? " bad" : "");
}

function renderStatus(s) {
  const sum = document.getElementById("summary");
  sum.replaceChildren(
    el("span", {}, "backend ", el("b", { text: s.backend }), " · imbalance ",
      el("b", { id: "imbalance", text: s.imbalance == null ? "-" : s.imbalance.toFixed(4) }),
      " · automation ", el("b", { id: "automation", text: s.automation || "-" }),
      " · policy ", el("b", { text: (s.policy.digest || "-").slice(0, 12) }),
      " · ", el("b", { id: "paused", text: s.paused ? "paused" : "running" })));
  const msgs = [];
  if (s.paused) msgs.push("Automation paused: " + s.pause_reasons.map(b => b.detail).join("; "));
  if (s.policy.last_error) msgs.push("Policy refused (last good kept): " + s.policy.last_error);
  if (s.window) msgs.push("Balancing held: " + s.window + " (mandatory moves continue)");
  banner(msgs.join(" — "), !!s.policy.last_error);
  document.getElementById("imbalance-now").textContent =
    s.imbalance == null ? "" : "now " + s.imbalance.toFixed(4);
  const hosts = document.getElementById("hosts");
  hosts.replaceChildren(...s.hosts.map(h =>
    el("div", { class: "host", "data-host": h.name, "data-state": h.state },
      el("div", {}, el("span", { class: "name", text: h.name }),
        el("span", { class: "state " + h.state, text: h.state.replace("_", " ") }),
        el("span", { class: "muted", text: `  ${h.vm_count} VMs` })),
      bar("cpu", h.cpu_load, "CPU " + pct(h.cpu_load)),
      ...forecastBar(h),
      bar("mem", h.memory_load, "memory " + pct(h.memory_load)),
      ...healthSignals(h),
      ...hostActions(h))));
  renderViolations(s);
}

// The last plan's status; a partial plan lists each hard rule it leaves violated and why.
function renderViolations(s) {
  document.getElementById("plan-status").textContent = s.last_plan_status || "";
  const box = document.getElementById("violations");
  const vs = s.violations || [];
  if (!vs.length) {
    box.replaceChildren(el("div", { class: "muted", text: s.last_plan_status ? "no hard rule left violated" : "no plan yet" }));
    return;
  }
  box.replaceChildren(...vs.map(v => el("div", { class: "violation", "data-rule": v.rule, "data-cause": v.cause },
    el("b", { text: v.rule }), ` ${v.kind} · `, el("span", { class: "cause", text: v.label }),
    ` · ${v.vms.join(", ")} on ${v.hosts.join(", ")}`,
    v.message ? el("div", { class: "muted", text: v.message }) : "")));
}

function renderMigrations(ms) {
  const tb = document.querySelector("#migrations tbody");
  if (!ms.length) { tb.replaceChildren(el("tr", {}, el("td", { colSpan: 6, class: "muted", text: "none" }))); return; }
  const order = { running: 0, starting: 0, aborting: 0, queued: 1 };
  const sorted = ms.slice().sort((a, b) => (order[a.state] ?? 2) - (order[b.state] ?? 2) || a.id - b.id);
  const shown = sorted.slice(0, 20);
  const rows = shown.map(m => el("tr", { "data-id": m.id, "data-state": m.state },
    el("td", { text: m.vm }), el("td", { class: "nowrap", text: `${m.source} → ${m.target}` }),
    el("td", { text: m.state }),
    el("td", {}, bar("progress", m.fraction, pct(m.fraction))),
    el("td", { text: m.priority }), el("td", { class: "detail", title: m.who, text: m.who })));
  if (sorted.length > shown.length) {
    rows.push(el("tr", {}, el("td", { colSpan: 6, class: "muted", text: `and ${sorted.length - shown.length} more queued` })));
  }
  tb.replaceChildren(...rows);
}

function renderRecommendations(rs) {
  const tb = document.querySelector("#recommendations tbody");
  const may = role === "operator" || role === "admin";
  if (!rs.length) { tb.replaceChildren(el("tr", {}, el("td", { colSpan: 5, class: "muted", text: "none pending" }))); return; }
  tb.replaceChildren(...rs.map(r => {
    const actions = el("td");
    if (may) {
      actions.append(
        el("button", { class: "approve", "data-id": r.id, text: "Approve", onclick: () => decide(r.id, "approve") }),
        " ",
        el("button", { class: "reject", "data-id": r.id, text: "Reject", onclick: () => decide(r.id, "reject") }));
    }
    return el("tr", { "data-id": r.id, class: "recommendation" },
      el("td", { text: r.vm }), el("td", { text: `${r.source} → ${r.target}` }),
      el("td", { text: r.reason }), el("td", { text: r.gain.toFixed(4) }), actions);
  }));
}

function renderMaintenance(ms) {
  const box = document.getElementById("maintenance");
  const live = ms.filter(m => m.state !== "exited");
  if (!live.length) { box.replaceChildren(el("div", { class: "muted", text: "no host in maintenance" })); return; }
  box.replaceChildren(...live.map(m => el("div", { class: "maint", "data-host": m.host },
    el("b", { text: m.host }), ` ${m.state} · ${m.done_vms}/${m.total_vms} VMs · ${m.percent.toFixed(0)}%`,
    m.eta_s != null ? ` · about ${Math.round(m.eta_s)} s left` : "",
    bar("progress", m.percent / 100, m.percent.toFixed(0) + "%"),
    m.message ? el("div", { class: m.stuck ? "stuck" : "muted", text: m.message }) : "",
    ...m.blockers.slice(0, 8).map(b => el("div", { class: "muted", text: `blocked: ${b.vm} ${b.reason} ${b.detail}` })))));
}

function renderAudit(rs) {
  const tb = document.querySelector("#audit tbody");
  tb.replaceChildren(...rs.map(r => el("tr", {},
    el("td", { text: r.seq }), el("td", { text: new Date(r.at).toLocaleTimeString() }),
    el("td", { text: r.who }), el("td", { text: r.kind + (r.reason ? " " + r.reason : "") }),
    el("td", { text: r.vm || "" }),
    el("td", { text: r.source || r.target ? `${r.source || ""} → ${r.target || ""}` : "" }),
    el("td", { text: r.result || "" }),
    el("td", { class: "detail", title: r.error || r.detail || "", text: r.error || r.detail || "" }))));
}

function renderChart(points) {
  const svg = document.getElementById("chart");
  const axis = document.getElementById("chart-axis");
  if (points.length < 2) { svg.innerHTML = ""; axis.textContent = "collecting…"; return; }
  const t0 = Date.parse(points[0].at), t1 = Date.parse(points[points.length - 1].at);
  const ymax = Math.max(0.01, ...points.map(p => p.imbalance)) * 1.1;
  const xy = points.map(p => [
    600 * (Date.parse(p.at) - t0) / Math.max(1, t1 - t0),
    160 - 160 * p.imbalance / ymax]);
  const path = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  svg.innerHTML = `<polyline fill="none" stroke="#3d7be0" stroke-width="2" points="${path}"/>`;
  axis.replaceChildren(el("span", { text: new Date(t0).toLocaleTimeString() }),
    el("span", { text: "max " + ymax.toFixed(3) }),
    el("span", { text: new Date(t1).toLocaleTimeString() }));
}

// The migration assistant (GET /vms/{vm}/targets): the hosts the chosen VM could move to now,
// best first, with the loads each would have and, under a predictive policy, its forecast
// peak; every other host with the reason it is ruled out. Operators get "Migrate here".
function renderAssistVMs(s) {
  const sel = document.getElementById("assist-vm");
  const chosen = sel.value;
  const names = s.vms.map(v => v.name).sort();
  if (sel.options.length - 1 !== names.length || names.some((n, i) => sel.options[i + 1].value !== n)) {
    sel.replaceChildren(el("option", { value: "", text: "choose a VM…" }),
      ...names.map(n => el("option", { value: n, text: n })));
    sel.value = names.includes(chosen) ? chosen : "";
  }
}

function hhmm(at) { return at ? new Date(at).toISOString().slice(11, 16) + "Z" : ""; }

async function renderAssist() {
  const box = document.getElementById("assist");
  const vm = document.getElementById("assist-vm").value;
  if (!vm) { box.replaceChildren(); return; }
  let t;
  try {
    t = await api(`/vms/${encodeURIComponent(vm)}/targets`);
  } catch (e) {
    box.replaceChildren(el("div", { class: "stuck", text: `${vm}: ${e.message}` }));
    return;
  }
  if (document.getElementById("assist-vm").value !== vm) return;  // chosen again meanwhile
  const may = role === "operator" || role === "admin";
  const forecast = t.candidates.some(c => c.forecast_peak_load != null);
  const head = ["host", "CPU", "memory", "imbalance"].concat(forecast ? ["forecast peak"] : [], ["soft rules", ""]);
  const rows = t.candidates.map(c => {
    const soft = [].concat(c.soft_breaks.length ? ["breaks " + c.soft_breaks.join(", ")] : [],
      c.soft_repairs.length ? ["repairs " + c.soft_repairs.join(", ")] : []).join("; ");
    const action = el("td");
    if (may) action.append(el("button", { class: "migrate", "data-host": c.host, text: "Migrate here",
      onclick: () => migrateHere(t.vm, c.host) }));
    return el("tr", { class: "candidate", "data-host": c.host },
      el("td", { text: c.host }), el("td", { text: pct(c.cpu_load) }), el("td", { text: pct(c.memory_load) }),
      el("td", { text: c.imbalance.toFixed(4) }),
      ...(forecast ? [el("td", { class: "forecast", text: c.forecast_peak_load == null ? "-" : `${pct(c.forecast_peak_load)} at ${hhmm(c.forecast_peak_at)}` })] : []),
      el("td", { text: soft }), action);
  });
  const here = t.current_forecast;
  box.replaceChildren(
    el("div", { class: "muted", text: `${t.vm} on ${t.current} · imbalance if it stays ${t.imbalance.toFixed(4)}` +
      (here ? ` · ${t.current} peaks at ${pct(here.peak_load)} at ${hhmm(here.peak_at)}` : "") }),
    t.blocked_reason ? el("div", { class: "stuck", text: `blocked: ${t.blocked_reason} ${t.blocked_detail || ""}` }) : "",
    el("table", { id: "targets" }, el("thead", {}, el("tr", {}, ...head.map(h => el("th", { text: h })))),
      el("tbody", {}, ...(rows.length ? rows : [el("tr", {}, el("td", { colSpan: head.length, class: "muted", text: "no host can take it now" }))]))),
    ...t.ruled_out.map(r => el("div", { class: "out", "data-host": r.host, text: `${r.host}: ${r.reason}${r.detail ? " · " + r.detail : ""}` })));
}

async function migrateHere(vm, host) {
  try {
    const m = await api("/migrations", { method: "POST", body: JSON.stringify({ vm, target: host }) });
    banner(`migration ${m.id} of ${vm} to ${host} queued`, false);
  } catch (e) {
    banner(`migrate ${vm} to ${host}: ${e.message}`, true);
  }
  refresh();
}

async function decide(id, what) {
  try {
    await api(`/recommendations/${id}/${what}`, { method: "POST", body: "{}" });
    banner(`recommendation ${id} ${what === "approve" ? "approved" : "rejected"}`, false);
  } catch (e) {
    banner(`${what} ${id}: ${e.message}`, true);
  }
  refresh();
}

async function refresh() {
  try {
    const me = await api("/whoami");
    role = me.role;
    document.getElementById("whoami").textContent = `${me.user} (${me.role})`;
  } catch (e) {
    role = null;
    document.getElementById("whoami").textContent = "";
    if (e.status === 401) {
      document.getElementById("summary").textContent = "Sign in with an API token to see the cluster.";
      return;
    }
  }
  try {
    const [s, ms, rs, mt, au, hi] = await Promise.all([
      api("/status"), api("/migrations?active=true&limit=50"), api("/recommendations?state=pending"),
      api("/maintenance?active=true"), api("/audit?limit=15"), api("/history?hours=6")]);
    renderStatus(s); renderMigrations(ms); renderRecommendations(rs);
    renderMaintenance(mt); renderAudit(au); renderChart(hi); renderAssistVMs(s);
    await renderAssist();
    document.body.dataset.loaded = "true";
  } catch (e) {
    banner("cannot load: " + e.message, true);
  }
}

document.getElementById("login").addEventListener("submit", ev => {
  ev.preventDefault();
  const v = document.getElementById("token").value.trim();
  if (v) localStorage.setItem(KEY, v);
  document.getElementById("token").value = "";
  refresh();
});
document.getElementById("assist-vm").addEventListener("change", renderAssist);
document.getElementById("logout").addEventListener("click", () => {
  localStorage.removeItem(KEY);
  refresh();
});

refresh();
setInterval(refresh, 2000);
