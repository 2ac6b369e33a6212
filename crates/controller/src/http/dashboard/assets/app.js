// fleet's dashboard. Plain JavaScript, no build step, no dependency. Everything that
// came from a host (names, log lines, errors) is put in the page as text nodes, never
// as HTML. The overview is kept from one snapshot plus deltas over Server-Sent Events.
"use strict";

const LOG_MAX_LINES = 1000; // lines the live log view holds, shown or buffered
const REFRESH_MS = 2000; // host and app pages poll this often

const state = {
  me: null, // {name, role, csrf, can_act}
  hosts: new Map(), // name -> card
  stages: [],
  history: { t: [], hosts: {} },
  seq: 0,
  events: null, // EventSource of /api/events
  connected: false,
  page: null, // cleanup of the current page
};

// ---- helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const main = () => document.getElementById("main");

// Replaces `node`'s children, skipping the empty ones (null, false) as `el` does.
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function show(...nodes) {
  if (state.page) state.page();
  state.page = null;
  fill(main(), ...nodes);
}

function ago(ms) {
  if (!ms) return "never";
  let s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + "s";
  const s = Math.round(ms / 1000);
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
}

// A moment as "3m ago", kept current by the clock below (`data-ts`).
function when(ms) {
  return ms ? el("span", { title: new Date(ms).toISOString(), "data-ts": ms }, ago(ms)) : "";
}

setInterval(() => {
  for (const node of document.querySelectorAll("[data-ts]")) node.textContent = ago(Number(node.dataset.ts));
}, 5000);

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function mib(n) {
  return n === null || n === undefined ? "" : n >= 1024 ? (n / 1024).toFixed(1) + " GiB" : n + " MiB";
}

const statusClass = (status) => "st-" + String(status).replace(/ /g, "-");

// A sparkline of the last hour: `values` may hold nulls (no sample).
function spark(values, kind) {
  const w = 72, h = 18;
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("class", "spark " + (kind || ""));
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const points = (values || []).slice(-60);
  const numbers = points.filter((v) => v !== null);
  if (numbers.length === 0) return svg;
  const max = Math.max(1, ...numbers);
  const step = points.length > 1 ? w / (points.length - 1) : 0;
  let run = [];
  const flush = () => {
    if (run.length === 1) run.push(run[0].replace(/^([\d.]+)/, (x) => String(Number(x) + 1)));
    if (run.length) {
      const line = document.createElementNS(svgNs, "polyline");
      line.setAttribute("points", run.join(" "));
      svg.append(line);
    }
    run = [];
  };
  points.forEach((v, i) => {
    if (v === null) return flush();
    run.push(`${(i * step).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`);
  });
  flush();
  return svg;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) {
    signedOut();
    throw new Error("signed out");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : {};
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ---- sign in -----------------------------------------------------------------------

function signedOut() {
  state.me = null;
  if (state.events) state.events.close();
  state.events = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("live").hidden = true;
  document.getElementById("me").textContent = "";
  loginPage();
}

function loginPage(message) {
  const input = el("input", { type: "password", id: "token", name: "token", autocomplete: "off", placeholder: "fct_…", required: true });
  const note = el("p", { class: "error", id: "login-error" }, message || "");
  const form = el("form", { class: "login", id: "login" },
    el("h1", {}, "Sign in to fleet"),
    el("label", { for: "token" }, "API token (read, operate, deploy or admin)"),
    input, el("button", { class: "primary", type: "submit" }, "Sign in"), note);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    note.textContent = "";
    try {
      const response = await fetch("/api/login", {
        method: "POST", credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: input.value }),
      });
      const body = response.headers.get("content-type")?.includes("json") ? await response.json() : {};
      if (!response.ok) throw new Error(body.error || (await response.text()) || response.statusText);
      input.value = "";
      signedIn(body);
    } catch (error) {
      note.textContent = "Sign-in refused: " + error.message;
    }
  });
  show(form);
  input.focus();
}

function signedIn(me) {
  state.me = me;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("me").textContent = `${me.name} (${me.role})`;
  connect();
  route();
}

async function logout() {
  try {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin", headers: { "x-csrf-token": state.me?.csrf || "" } });
  } finally {
    signedOut();
  }
}

// ---- live overview state -------------------------------------------------------------

function connect() {
  if (state.events) state.events.close();
  const live = document.getElementById("live");
  live.hidden = false;
  const events = new EventSource("/api/events");
  state.events = events;
  events.addEventListener("me", (e) => Object.assign(state.me, JSON.parse(e.data)));
  events.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    state.seq = snap.seq;
    state.stages = snap.stages;
    state.hosts = new Map(snap.hosts.map((h) => [h.name, h]));
    state.history = snap.history || { t: [], hosts: {} };
    setLive(true);
    refresh(null);
  });
  events.addEventListener("delta", (e) => {
    const delta = JSON.parse(e.data);
    if (delta.seq <= state.seq) return;
    state.seq = delta.seq;
    state.stages = delta.stages;
    for (const card of delta.hosts) state.hosts.set(card.name, card);
    for (const name of delta.gone || []) state.hosts.delete(name);
    if (delta.spark) addSpark(delta.spark);
    refresh(delta.hosts.map((h) => h.name).concat(delta.gone || []));
  });
  events.addEventListener("end", () => { events.close(); signedOut(); });
  events.onerror = () => setLive(false);
  events.onopen = () => setLive(true);
}

function setLive(up) {
  state.connected = up;
  const live = document.getElementById("live");
  live.textContent = up ? "● live" : "● reconnecting";
  live.className = up ? "live" : "live down";
}

function addSpark(spark) {
  const h = state.history;
  h.t.push(spark.t);
  const len = h.t.length;
  for (const [name, series] of Object.entries(h.hosts)) {
    const point = spark.hosts[name];
    series.cpu.push(point ? point[0] : null);
    series.mem.push(point ? point[1] : null);
  }
  for (const [name, point] of Object.entries(spark.hosts)) {
    if (!h.hosts[name]) {
      const pad = Array(len - 1).fill(null);
      h.hosts[name] = { cpu: pad.concat([point[0]]), mem: pad.concat([point[1]]) };
    }
  }
  if (h.t.length > 60) {
    h.t.shift();
    for (const s of Object.values(h.hosts)) { s.cpu.shift(); s.mem.shift(); }
  }
}

// The current page redraws itself on each snapshot or delta, if it wants to.
let onLive = null;
function refresh(changed) {
  if (onLive) onLive(changed);
}

// ---- overview ----------------------------------------------------------------------------

function stageRows() {
  const groups = state.stages.map((s) => ({ name: s.name, hosts: s.hosts }));
  const staged = new Set(state.stages.flatMap((s) => s.hosts));
  const loose = [...state.hosts.keys()].filter((h) => !staged.has(h)).sort();
  if (loose.length) groups.push({ name: null, hosts: loose });
  return groups;
}

function hostRow(card, stage) {
  const hist = state.history.hosts[card.name] || { cpu: [], mem: [] };
  // The last hour's points, then the value now.
  const cpuLine = hist.cpu.concat([card.cpu ?? null]), memLine = hist.mem.concat([card.mem_used_mib ?? null]);
  const status = card.reachable ? "reachable" : "unreachable";
  const apps = el("div", { class: "chips" }, card.apps.map((app) =>
    el("a", {
      class: "chip " + statusClass(app.status), "data-app": app.name, "data-status": app.status,
      href: stage ? `#/app/${encodeURIComponent(stage)}/${encodeURIComponent(app.name)}` : `#/host/${encodeURIComponent(card.name)}`,
      title: `${app.status}: ${app.online}/${app.instances} online, ${app.cpu}% CPU, ${app.mem_mib} MiB, ${app.restarts} restarts`,
    }, `${app.name} ${app.online}/${app.instances} · ${app.cpu}% · ${mib(app.mem_mib)}`)));
  return el("tr", { class: status, "data-host": card.name, "data-reachable": String(card.reachable) },
    el("td", {}, el("span", { class: "dot " + (card.reachable ? "ok" : "bad") }),
      el("a", { href: `#/host/${encodeURIComponent(card.name)}` }, card.name)),
    el("td", { title: card.error || "" }, `${status} since `, when(card.since)),
    el("td", {}, card.release || ""),
    el("td", {}, card.cpu === null ? "" : `${card.cpu}%`, spark(cpuLine)),
    el("td", {}, card.mem_used_mib === null ? "" : `${mib(card.mem_used_mib)} / ${mib(card.mem_total_mib)}`, spark(memLine, "mem")),
    el("td", {}, card.load1 ?? ""),
    el("td", {}, card.disk_pct === null ? "" : `${card.disk_pct}%`),
    el("td", { class: "wrap" }, apps));
}

function overview() {
  const summary = el("div", { class: "summary", id: "summary" });
  const body = el("div", { id: "stages" });
  const rows = new Map(); // "stage\0host" -> tr
  const draw = () => {
    const cards = [...state.hosts.values()];
    const apps = cards.flatMap((c) => c.apps);
    summary.replaceChildren(
      el("div", { class: "tile" }, el("b", { id: "count-hosts" }, cards.length), "hosts"),
      el("div", { class: "tile" }, el("b", { id: "count-unreachable" }, cards.filter((c) => !c.reachable).length), "unreachable"),
      el("div", { class: "tile" }, el("b", { id: "count-apps" }, apps.length), "apps on hosts"),
      el("div", { class: "tile" }, el("b", { id: "count-errored" }, apps.filter((a) => a.status === "errored").length), "errored"));
  };
  const build = () => {
    rows.clear();
    const sections = stageRows().map((group) => {
      const tbody = el("tbody");
      for (const name of group.hosts) {
        const card = state.hosts.get(name) || { name, reachable: false, apps: [], error: "never connected" };
        const row = hostRow(card, group.name);
        rows.set(group.name + "\0" + name, row);
        tbody.append(row);
      }
      return el("section", { "data-stage": group.name || "" },
        el("h2", {}, group.name ? `Stage ${group.name}` : "Hosts in no stage", el("span", { class: "muted" }, ` · ${group.hosts.length} hosts`)),
        el("table", {}, el("thead", {}, el("tr", {}, ["Host", "Reachable", "Release", "CPU", "Memory", "Load", "Disk", "Apps"].map((h) => el("th", {}, h)))), tbody));
    });
    body.replaceChildren(...sections);
    draw();
    // When the overview first showed the fleet, after the paint (read by bench/fleet).
    if (state.hosts.size && window.fleetFirstRender === undefined) {
      window.fleetFirstRender = null;
      requestAnimationFrame(() => setTimeout(() => { window.fleetFirstRender = performance.now(); }));
    }
  };
  let layout = "";
  onLive = (changed) => {
    const now = JSON.stringify(stageRows());
    if (changed === null || now !== layout) {
      layout = now;
      return build();
    }
    for (const group of stageRows()) {
      for (const name of group.hosts) {
        if (!changed.includes(name)) continue;
        const key = group.name + "\0" + name;
        const old = rows.get(key);
        const card = state.hosts.get(name);
        if (!old || !card) continue;
        const row = hostRow(card, group.name);
        old.replaceWith(row);
        rows.set(key, row);
      }
    }
    draw();
  };
  show(el("h1", {}, "Fleet overview"), summary, body);
  state.page = () => { onLive = null; };
  onLive(null);
}

// ---- host and app pages -------------------------------------------------------------------

function exitText(exit) {
  if (!exit) return "";
  const what = exit.code !== null && exit.code !== undefined ? `code ${exit.code}`
    : exit.signal ? `signal ${exit.signal}` : exit.spawn_error ? `spawn failed: ${exit.spawn_error}` : "unknown (not our child)";
  return el("span", {}, what + " ", when(exit.at));
}

function instanceTable(instances, withHost) {
  const head = (withHost ? ["Host"] : []).concat(["App", "Id", "Pid", "Status", "Uptime", "Restarts", "Cause", "Last exit", "CPU", "Memory", "Limit", "Mode"]);
  return el("table", { class: "instances" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, instances.map((p) => el("tr", { "data-instance": `${p.host}/${p.name}/${p.id}`, "data-restarts": p.restarts, "data-status": p.status },
      withHost ? el("td", {}, el("a", { href: `#/host/${encodeURIComponent(p.host)}` }, p.host)) : null,
      el("td", {}, p.name + (p.instance ? ` #${p.instance}` : "")),
      el("td", {}, p.id),
      el("td", {}, p.pid ?? ""),
      el("td", {}, el("span", { class: "chip " + statusClass(p.status) }, p.status)),
      el("td", {}, duration(p.uptime_ms)),
      el("td", { class: "restarts" }, `${p.restarts}` + (p.unstable_restarts ? ` (${p.unstable_restarts} unstable)` : "")),
      el("td", { class: "wrap" }, p.restart_cause || "", p.restart_cause_at ? " " : "", when(p.restart_cause_at)),
      el("td", { class: "wrap" }, exitText(p.last_exit)),
      el("td", {}, `${p.cpu.toFixed(1)}%`),
      el("td", {}, bytes(p.memory)),
      el("td", {}, p.max_memory ? bytes(p.max_memory) : "none"),
      el("td", {}, p.exec_mode)))));
}

// CPU (whole percents) and memory (MiB) now, summed per app, as the history keeps them.
function sums(instances) {
  const out = {};
  for (const p of instances) {
    const s = out[p.name] || (out[p.name] = { cpu: 0, mem: 0 });
    s.cpu += p.cpu;
    s.mem += p.memory / 1048576;
  }
  for (const s of Object.values(out)) { s.cpu = Math.round(s.cpu); s.mem = Math.round(s.mem); }
  return out;
}

function poll(load) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try { await load(); } catch (error) { if (!stopped) main().append(el("p", { class: "error" }, error.message)); }
    if (!stopped) timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
  state.page = () => { stopped = true; clearTimeout(timer); };
}

function hostPage(name) {
  const root = el("div");
  show(root);
  poll(async () => {
    const data = await api(`/api/host/${encodeURIComponent(name)}`);
    const c = data.card, m = data.metrics;
    const hist = data.history;
    const now = sums(data.instances);
    const apps = [...new Set(Object.keys(hist.apps || {}).concat(Object.keys(now)))].sort().map((app) => {
      const s = hist.apps?.[app] || { cpu: [], mem: [] }, n = now[app] || { cpu: null, mem: null };
      return el("tr", {}, el("td", {}, app), el("td", {}, n.cpu === null ? "" : `${n.cpu}%`, spark(s.cpu.concat([n.cpu]))),
        el("td", {}, n.mem === null ? "" : mib(n.mem), spark(s.mem.concat([n.mem]), "mem")));
    });
    const hostCpu = (hist.host?.cpu || []).concat(m ? [Math.round(m.cpu)] : []);
    const hostMem = (hist.host?.mem || []).concat(m ? [Math.round((m.memory_total - m.memory_available) / 1048576)] : []);
    fill(root,
      el("h1", {}, el("span", { class: "dot " + (c.reachable ? "ok" : "bad") }), `Host ${c.name}`),
      el("dl", { class: "kv", id: "host-facts" },
        el("dt", {}, "Reachable"), el("dd", {}, c.reachable ? "yes, since " : `no (${c.error}), since `, when(c.since)),
        el("dt", {}, "Stages"), el("dd", {}, c.stages.join(", ") || "none"),
        el("dt", {}, "Release"), el("dd", {}, c.release || "unknown"),
        el("dt", {}, "Agent"), el("dd", {}, c.agent || ""),
        m && [el("dt", {}, "CPU"), el("dd", {}, `${m.cpu.toFixed(1)}% of ${m.cpus} CPUs`, spark(hostCpu)),
          el("dt", {}, "Load"), el("dd", {}, m.load.map((l) => l.toFixed(2)).join(" ")),
          el("dt", {}, "Memory"), el("dd", {}, `${bytes(m.memory_total - m.memory_available)} used of ${bytes(m.memory_total)}`, spark(hostMem, "mem")),
          el("dt", {}, "Swap"), el("dd", {}, `${bytes(m.swap_total - m.swap_free)} used of ${bytes(m.swap_total)}`),
          el("dt", {}, "Up"), el("dd", {}, duration(m.uptime_ms)),
          m.disks.map((d) => [el("dt", {}, `Disk ${d.mount}`), el("dd", {}, `${bytes(d.used)} used of ${bytes(d.total)} (${d.fs}; ${d.paths.join(", ")})`)])]),
      el("h2", {}, "Instances"),
      data.instances.length ? instanceTable(data.instances, false) : el("p", { class: "muted" }, c.reachable ? "No apps." : "Not reachable: no current list."),
      apps.length ? [el("h2", {}, "Apps over the last hour"), el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "App"), el("th", {}, "CPU"), el("th", {}, "Memory"))), el("tbody", {}, apps))] : null);
  });
}

function actionBar(stage, app, flash) {
  if (!state.me?.can_act) return null;
  const count = el("input", { type: "text", id: "scale-count", placeholder: "4 or +1", "aria-label": "instances" });
  const act = (action) => async () => {
    const what = action === "scale" ? `scale ${app} to ${count.value} on every host of ${stage}` : `${action} ${app} on every host of ${stage}`;
    if (!(await confirmDialog(`Really ${what}?`))) return;
    flash.replaceChildren(el("div", { class: "flash" }, `${what}…`));
    try {
      const result = await api("/api/action", {
        method: "POST",
        headers: { "content-type": "application/json", "x-csrf-token": state.me.csrf },
        body: JSON.stringify({ stage, app, action, count: action === "scale" ? count.value : "" }),
      });
      const failed = result.hosts.filter((h) => !h.ok);
      fill(flash, el("div", { class: "flash" + (failed.length ? " bad" : ""), id: "action-result", "data-ok": String(result.ok) },
        failed.length ? `${action} failed on ${failed.map((h) => `${h.host}: ${h.error}`).join("; ")}` : `${action} done on ${result.hosts.length} hosts in ${result.took_ms} ms`));
    } catch (error) {
      flash.replaceChildren(el("div", { class: "flash bad", id: "action-result", "data-ok": "false" }, `${action} refused: ${error.message}`));
    }
  };
  return el("div", { class: "actions", id: "actions" },
    ["restart", "reload", "stop"].map((a) => el("button", { type: "button", id: `action-${a}`, onclick: act(a) }, a[0].toUpperCase() + a.slice(1))),
    count, el("button", { type: "button", id: "action-scale", onclick: act("scale") }, "Scale"));
}

function confirmDialog(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function appPage(stage, app) {
  const flash = el("div", { id: "flash" });
  const body = el("div");
  show(el("h1", {}, `App ${app} on stage ${stage}`), actionBar(stage, app, flash), flash, body);
  poll(async () => {
    const data = await api(`/api/app/${encodeURIComponent(stage)}/${encodeURIComponent(app)}`);
    const rows = data.hosts.map((host) => {
      const s = data.history[host]?.apps?.[app] || { cpu: [], mem: [] };
      const n = sums(data.instances.filter((p) => p.host === host))[app] || { cpu: null, mem: null };
      return el("tr", {}, el("td", {}, host), el("td", {}, n.cpu === null ? "" : `${n.cpu}%`, spark(s.cpu.concat([n.cpu]))),
        el("td", {}, n.mem === null ? "" : mib(n.mem), spark(s.mem.concat([n.mem]), "mem")));
    });
    fill(body,
      data.unreachable.length ? el("p", { class: "error" }, `Unreachable: ${data.unreachable.map((u) => `${u.host} (${u.error})`).join(", ")}`) : null,
      data.instances.length ? instanceTable(data.instances, true) : el("p", { class: "muted" }, "No instance of this app on the stage's reachable hosts."),
      el("h2", {}, "Over the last hour"),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Host"), el("th", {}, "CPU"), el("th", {}, "Memory"))), el("tbody", {}, rows)));
  });
}

// ---- live logs ----------------------------------------------------------------------------

function logsPage(params) {
  const field = (id, placeholder) => el("input", { id, placeholder, value: params.get(id) || "" });
  const stage = el("select", { id: "stage" }, el("option", { value: "" }, "all hosts"),
    state.stages.map((s) => el("option", { value: s.name, selected: params.get("stage") === s.name }, `stage ${s.name}`)));
  const host = field("host", "host"), app = field("app", "app"), q = field("q", "search text");
  const stream = el("select", { id: "stream" }, ["all", "out", "err"].map((s) => el("option", { value: s, selected: params.get("stream") === s }, s)));
  const pause = el("button", { type: "button", id: "pause" }, "Pause");
  const clear = el("button", { type: "button", id: "clear" }, "Clear");
  const status = el("span", { class: "muted", id: "log-status" });
  const log = el("div", { id: "log", "aria-live": "off" });
  let paused = false, held = [], skipped = 0, source = null;
  const trim = () => { while (log.childElementCount > LOG_MAX_LINES) log.firstElementChild.remove(); };
  const lineNode = (l) => l.notice
    ? el("div", { class: "ln note" }, el("span", { class: "src" }, l.host || "fleet"), l.notice)
    : el("div", { class: "ln " + l.stream, "data-host": l.host, "data-app": l.app },
        el("span", { class: "src" }, `${l.host} ${l.app}[${l.id}]`), el("span", { class: "txt" }, l.line));
  const append = (nodes) => {
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(...nodes);
    trim();
    if (stick) log.scrollTop = log.scrollHeight;
  };
  const receive = (lines) => {
    if (paused) {
      held.push(...lines);
      if (held.length > LOG_MAX_LINES) { skipped += held.length - LOG_MAX_LINES; held = held.slice(-LOG_MAX_LINES); }
      status.textContent = `paused: ${held.length} new lines held` + (skipped ? `, ${skipped} older ones let go` : "");
      return;
    }
    append(lines.map(lineNode));
  };
  const start = () => {
    if (source) source.close();
    const query = new URLSearchParams();
    for (const [k, v] of [["stage", stage.value], ["host", host.value], ["app", app.value], ["stream", stream.value], ["q", q.value]]) if (v && v !== "all") query.set(k, v);
    history.replaceState(null, "", "#/logs?" + query.toString());
    log.replaceChildren();
    status.textContent = "following";
    source = new EventSource("/api/logs?" + query.toString());
    source.addEventListener("lines", (e) => receive(JSON.parse(e.data)));
    source.addEventListener("missed", (e) => append([el("div", { class: "ln note" }, el("span", { class: "src" }, "fleet"), `${e.data} lines not shown: this page fell behind`)]));
    source.addEventListener("end", (e) => { status.textContent = e.data; source.close(); });
    // A reconnected stream starts again with each host's last lines: start the view
    // again too, rather than show them twice.
    let dropped = false;
    source.onerror = () => { dropped = true; status.textContent = "reconnecting…"; };
    source.onopen = () => {
      if (!dropped) return;
      dropped = false;
      log.replaceChildren(el("div", { class: "ln note" }, el("span", { class: "src" }, "fleet"), "reconnected: the view starts again"));
      status.textContent = "following";
    };
  };
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      if (skipped) append([el("div", { class: "ln note" }, el("span", { class: "src" }, "fleet"), `${skipped} lines let go while paused`)]);
      append(held.map(lineNode));
      held = []; skipped = 0;
      status.textContent = "following";
    } else status.textContent = "paused";
  });
  clear.addEventListener("click", () => log.replaceChildren());
  const form = el("form", { class: "filters", id: "log-filters" }, stage, host, app, stream, q, el("button", { type: "submit", class: "primary" }, "Apply"), pause, clear, status);
  form.addEventListener("submit", (e) => { e.preventDefault(); start(); });
  show(el("h1", {}, "Live logs"), form, log);
  start();
  state.page = () => { if (source) source.close(); };
}

// ---- deploys ------------------------------------------------------------------------------

function deploysPage() {
  const root = el("div");
  show(el("h1", {}, "Deploys"), root);
  api("/api/deploys?limit=200").then((data) => {
    if (!data.deploys.length) return root.replaceChildren(el("p", { class: "muted" }, "No deploy recorded yet."));
    root.replaceChildren(el("table", { id: "deploys" },
      el("thead", {}, el("tr", {}, ["When", "Stage", "Action", "Who", "Ref", "Commit", "Release", "Result", "Took", "Hosts"].map((h) => el("th", {}, h)))),
      el("tbody", {}, data.deploys.map((d) => el("tr", { "data-deploy": d.id, "data-result": d.result },
        el("td", {}, when(d.at_ms)), el("td", {}, d.stage), el("td", {}, d.action), el("td", { class: "wrap" }, d.who),
        el("td", {}, d.ref), el("td", {}, (d.commit || "").slice(0, 12)), el("td", {}, d.release),
        el("td", { class: "wrap " + (d.result === "ok" ? "" : "error") }, d.result + (d.rolled_back ? " (rolled back)" : "")),
        el("td", {}, duration(d.duration_ms)),
        el("td", { class: "wrap" }, el("details", {}, el("summary", {}, `${(d.hosts || []).length} hosts`),
          (d.hosts || []).map((h) => el("div", {}, el("b", {}, h.host), ` ${h.result} at ${h.step} in ${duration(h.duration_ms)}`,
            h.error ? el("div", { class: "error" }, h.error) : null,
            h.steps ? el("div", { class: "muted" }, h.steps.map((s) => `${s.step} ${s.ms} ms`).join(" · ")) : null)))))))));
  }).catch((error) => root.replaceChildren(el("p", { class: "error" }, error.message)));
}

// ---- routing ------------------------------------------------------------------------------

function route() {
  if (!state.me) return;
  onLive = null;
  const [path, query] = location.hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "#/" + (parts[0] || ""));
  if (parts[0] === "host" && parts[1]) hostPage(parts[1]);
  else if (parts[0] === "app" && parts[2]) appPage(parts[1], parts[2]);
  else if (parts[0] === "logs") logsPage(new URLSearchParams(query || ""));
  else if (parts[0] === "deploys") deploysPage();
  else overview();
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("logout").addEventListener("click", logout);
  try {
    const response = await fetch("/api/session", { credentials: "same-origin" });
    if (!response.ok) return loginPage();
    signedIn(await response.json());
  } catch (error) {
    loginPage(error.message);
  }
});
