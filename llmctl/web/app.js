// llmctl's page: chat with the stack's models and watch it work. No build step, nothing
// fetched from anywhere but the proxy; every call carries the key as a Bearer header.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "llmctl.key", CONVS = "llmctl.conversations", CURRENT = "llmctl.current";
let key = localStorage.getItem(KEY) || "";
let convs = JSON.parse(localStorage.getItem(CONVS) || "[]");
let current = localStorage.getItem(CURRENT) || null;
let controller = null;   // the answer being streamed, to stop it
let statusTimer = null;

// ── calls ─────────────────────────────────────────────────────────────────
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${key}` };
  const r = await fetch(path, { ...options, headers });
  if (r.status === 401) { showGate("That key was refused (401): check `llmctl config key`."); throw new Error("401"); }
  return r;
}

async function errorText(r) {
  try { const j = await r.json(); return j.error?.message || JSON.stringify(j); }
  catch { return `${r.status} ${r.statusText}`; }
}

// ── the key ───────────────────────────────────────────────────────────────
function showGate(message) {
  $("app").hidden = true; $("gate").hidden = false;
  $("key-error").textContent = message || "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  key = $("key-input").value.trim();
  try {
    const r = await api("/v1/models");
    if (!r.ok) { showGate(`The proxy answered ${r.status}: ${await errorText(r)}`); return; }
    localStorage.setItem(KEY, key);
    $("key-input").value = "";
    await start();
  } catch (err) {
    if (err.message !== "401") showGate(`Cannot reach the proxy: ${err.message}`);
  }
});

$("forget-key").addEventListener("click", () => { localStorage.removeItem(KEY); key = ""; showGate(""); });

// ── conversations (kept in this browser) ──────────────────────────────────
function save() { localStorage.setItem(CONVS, JSON.stringify(convs)); localStorage.setItem(CURRENT, current || ""); }
function conv() { return convs.find((c) => c.id === current); }

function newConversation() {
  const c = { id: crypto.randomUUID(), title: "New chat", messages: [], created: Date.now() };
  convs.unshift(c); current = c.id; save(); renderList(); renderMessages();
  $("prompt").focus();
}

function renderList() {
  const q = $("search").value.toLowerCase();
  const ul = $("conversations"); ul.replaceChildren();
  for (const c of convs) {
    const text = (c.title + " " + c.messages.map((m) => m.content).join(" ")).toLowerCase();
    if (q && !text.includes(q)) continue;
    const li = document.createElement("li");
    li.className = c.id === current ? "active" : "";
    const open = document.createElement("button");
    open.className = "title"; open.textContent = c.title;
    open.addEventListener("click", () => { current = c.id; save(); renderList(); renderMessages(); });
    const rename = document.createElement("button");
    rename.className = "icon"; rename.title = "Rename"; rename.textContent = "✎";
    rename.addEventListener("click", () => {
      const t = prompt("Rename the conversation", c.title);
      if (t) { c.title = t.trim() || c.title; save(); renderList(); }
    });
    const del = document.createElement("button");
    del.className = "icon"; del.title = "Delete"; del.textContent = "✕";
    del.addEventListener("click", () => {
      if (!confirm(`Delete "${c.title}"?`)) return;
      convs = convs.filter((x) => x.id !== c.id);
      if (current === c.id) current = convs[0]?.id || null;
      save(); renderList(); renderMessages();
    });
    li.append(open, rename, del); ul.append(li);
  }
}

$("search").addEventListener("input", renderList);
$("new-chat").addEventListener("click", newConversation);

function exportMarkdown() {
  const c = conv(); if (!c) return;
  const lines = [`# ${c.title}`, ""];
  for (const m of c.messages) lines.push(m.role === "user" ? "## You" : `## ${m.model || "assistant"}`, "", m.content, "");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([lines.join("\n")], { type: "text/markdown" }));
  a.download = `${c.title.replace(/[^\w.-]+/g, "_") || "chat"}.md`;
  a.click(); URL.revokeObjectURL(a.href);
}
$("export").addEventListener("click", exportMarkdown);

// ── Markdown, small and safe: everything is escaped before any tag is made ──
const esc = (s) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const KEYWORDS = new Set(("def class return if elif else for while in import from as with try except finally raise " +
  "lambda yield async await pass break continue and or not is None True False function const let var new " +
  "this typeof instanceof switch case default throw catch fn pub impl struct enum match use mod static " +
  "public private protected void int float double bool string char package func go defer select type interface").split(" "));

function highlight(code) {
  const re = /(#[^\n]*|\/\/[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`(?:\\.|[^`\\])*`|\b\d+(?:\.\d+)?\b|\b[A-Za-z_]\w*\b)/g;
  let out = "", last = 0;
  for (const m of code.matchAll(re)) {
    out += esc(code.slice(last, m.index));
    const t = m[0];
    const cls = t[0] === "#" || t.startsWith("//") ? "c" : /^["'`]/.test(t) ? "s" : /^\d/.test(t) ? "n" : KEYWORDS.has(t) ? "k" : "";
    out += cls ? `<span class="${cls}">${esc(t)}</span>` : esc(t);
    last = m.index + t.length;
  }
  return out + esc(code.slice(last));
}

function inline(s) {
  return esc(s)
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>");
}

function markdown(text) {
  const out = []; const lines = text.split("\n"); let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+-]*)/);
    if (fence) {
      const body = []; i++;
      while (i < lines.length && !/^\s*```/.test(lines[i])) body.push(lines[i++]);
      i++;
      out.push(`<pre><code data-lang="${esc(fence[1])}">${highlight(body.join("\n"))}</code></pre>`);
    } else if (/^#{1,6}\s/.test(line)) {
      const n = line.match(/^#+/)[0].length; out.push(`<h${n + 2}>${inline(line.slice(n + 1))}</h${n + 2}>`); i++;
    } else if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
      const ordered = /^\s*\d+\./.test(line); const items = [];
      while (i < lines.length && /^\s*([-*]|\d+\.)\s+/.test(lines[i])) items.push(`<li>${inline(lines[i++].replace(/^\s*([-*]|\d+\.)\s+/, ""))}</li>`);
      out.push(ordered ? `<ol>${items.join("")}</ol>` : `<ul>${items.join("")}</ul>`);
    } else if (!line.trim()) { i++; }
    else {
      const para = [];
      while (i < lines.length && lines[i].trim() && !/^\s*```|^#{1,6}\s|^\s*([-*]|\d+\.)\s+/.test(lines[i])) para.push(lines[i++]);
      out.push(`<p>${inline(para.join("\n")).replace(/\n/g, "<br>")}</p>`);
    }
  }
  return out.join("");
}

// ── chat ──────────────────────────────────────────────────────────────────
function messageNode(m) {
  const div = document.createElement("div");
  div.className = `msg ${m.role}`;
  const body = document.createElement("div"); body.className = "body";
  if (m.role === "user") body.textContent = m.content; else body.innerHTML = markdown(m.content);
  div.append(body);
  if (m.stats) { const s = document.createElement("div"); s.className = "stats"; s.textContent = m.stats; div.append(s); }
  return div;
}

function renderMessages() {
  const box = $("messages"); box.replaceChildren();
  for (const m of conv()?.messages || []) box.append(messageNode(m));
  box.scrollTop = box.scrollHeight;
}

async function ask(text) {
  if (!conv()) newConversation();
  const c = conv();
  if (text) {
    c.messages.push({ role: "user", content: text });
    if (c.title === "New chat") c.title = text.slice(0, 40);
  }
  const model = $("model").value;
  const answer = { role: "assistant", content: "", model };
  c.messages.push(answer); save(); renderList(); renderMessages();
  const node = $("messages").lastElementChild.querySelector(".body");
  const messages = c.messages.slice(0, -1).map(({ role, content }) => ({ role, content }));
  const system = $("system").value.trim();
  if (system) messages.unshift({ role: "system", content: system });
  $("chat-error").textContent = "";
  controller = new AbortController(); $("stop").disabled = false; $("send").disabled = true;
  const t0 = performance.now(); let first = null, tokens = null, chunks = 0, pending = false;
  try {
    const r = await api("/v1/chat/completions", {
      method: "POST", signal: controller.signal, headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true },
        temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value) }),
    });
    if (!r.ok) throw new Error(await errorText(r));
    const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      const events = buf.split("\n\n"); buf = events.pop();
      for (const ev of events) {
        const data = ev.replace(/^data:\s?/, "").trim();
        if (!data || data === "[DONE]") continue;
        const msg = JSON.parse(data);
        const delta = msg.choices?.[0]?.delta?.content;
        if (delta) { first ??= performance.now() - t0; chunks++; answer.content += delta; }
        if (msg.usage) tokens = msg.usage.completion_tokens;
      }
      if (!pending) { pending = true; requestAnimationFrame(() => { node.innerHTML = markdown(answer.content); pending = false; $("messages").scrollTop = $("messages").scrollHeight; }); }
    }
  } catch (err) {
    if (err.name === "AbortError") answer.stopped = true;
    else if (err.message !== "401") $("chat-error").textContent = err.message;
  } finally {
    controller = null; $("stop").disabled = true; $("send").disabled = false;
    const secs = (performance.now() - t0) / 1000, n = tokens ?? chunks;
    const rate = first !== null && n > 1 && secs > first / 1000 ? (n - 1) / (secs - first / 1000) : null;
    answer.stats = [first !== null ? `first token ${(first / 1000).toFixed(2)} s` : "no token",
      `${n} tokens`, rate ? `${rate.toFixed(1)} tokens/s` : null, answer.stopped ? "stopped" : null].filter(Boolean).join(" · ");
    if (!answer.content && !answer.stopped) c.messages.pop();
    save(); renderMessages();
  }
}

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = ""; ask(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").requestSubmit(); }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && controller) controller.abort();
  if (e.altKey && e.key.toLowerCase() === "n") newConversation();
});
$("stop").addEventListener("click", () => controller?.abort());
$("regenerate").addEventListener("click", () => {
  const c = conv(); if (!c || controller) return;
  while (c.messages.length && c.messages.at(-1).role === "assistant") c.messages.pop();
  if (c.messages.length) ask(null);
});

// ── status ────────────────────────────────────────────────────────────────
// The figures `llmctl top` shows, drawn over the last minutes the proxy keeps
// (GET /api/history: a point every couple of seconds); the page asks once for all of
// them when the view opens, then for the points after its last one.
const fmtBytes = (n) => !n ? "-" : n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
const fmtAge = (s) => s == null ? "-" : s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m` : `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
const fmtNum = (v) => v == null ? "-" : String(Number(v.toFixed(Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2)));
const seen = { points: [], now: null, span: 600, interval: 2 };  // the history as last read

const per = (f) => (p) => Object.entries(p.models).map(([k, m]) => [k, f(m)]);
const CHARTS = [
  { id: "req", title: "Requests", unit: "req/s", series: per((m) => m.req_s) },
  { id: "tok", title: "Generated tokens", unit: "tokens/s", series: per((m) => m.tok_s) },
  { id: "ttft", title: "Time to first token, p50", unit: "ms", series: per((m) => m.ttft_s == null ? null : m.ttft_s * 1000) },
  { id: "kv", title: "KV cache use", unit: "%", max: 100, series: per((m) => m.kv == null ? null : m.kv * 100) },
  { id: "mem", title: "Memory", unit: "GiB", series: per((m) => m.mem_bytes == null ? null : m.mem_bytes / 2 ** 30) },
  { id: "load", title: "In flight, and queued (dashed)", unit: "requests", series: (p) => Object.entries(p.models).flatMap(([k, m]) => [[k, m.in_flight ?? null], [`${k} queued`, m.queued ?? null]]) },
  { id: "gpu", title: "GPU busy", unit: "%", max: 100, machine: true, series: (p) => (p.gpus || []).map((g) => [`GPU ${g.gpu}`, g.util == null ? null : g.util * 100]) },
  { id: "cpu", title: "CPU, per model", unit: "cores", machine: true, series: (p) => Object.entries(p.cpus || {}).map(([k, c]) => [k, c.cpu ?? null]) },
];

const SVG = "http://www.w3.org/2000/svg";
function svg(name, attrs = {}, text = null) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text != null) e.textContent = text;
  return e;
}

function niceMax(v) {  // 1, 2, 2.5 or 5 times a power of ten, at least v
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((x) => x >= v * 1.0001) || 10 * p;
}

const dur = (s) => s < 60 ? `${Math.round(s)} s` : `${Number((s / 60).toFixed(1))} min`;
const ago = (s) => s < 1 ? "now" : `−${dur(s)}`;

// One chart: a line per series (model, card), time on x (seconds before the proxy's
// "now"), the figure on y with its unit; a gap where a point has no figure.
function drawChart(fig, c, lines, now, span) {
  const W = 380, H = 160, L = 46, R = 10, T = 10, B = 30;
  const x = (t) => L + (W - L - R) * (1 - (now - t) / span), y0 = H - B;
  const all = lines.flatMap((l) => l.values.map((p) => p[1])).filter((v) => v != null);
  const top = c.max ?? niceMax(Math.max(0, ...all));
  const y = (v) => y0 - (y0 - T) * Math.min(v, top) / top;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": `${c.title} (${c.unit}) over the last ${dur(span)}` });
  for (const v of [0, top / 2, top]) {
    g.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    g.append(svg("text", { class: "tick y", x: L - 4, y: y(v) + 4, "text-anchor": "end" }, fmtNum(v)));
  }
  const step = [10, 30, 60, 120, 300, 600].find((s) => span / s <= 5) || 600;
  for (let s = 0; s <= span + 0.001; s += step) {
    g.append(svg("line", { class: "tickmark", x1: x(now - s), x2: x(now - s), y1: y0, y2: y0 + 4 }));
    g.append(svg("text", { class: "tick x", x: x(now - s), y: y0 + 16, "text-anchor": s === 0 ? "end" : "middle" }, ago(s)));
  }
  g.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: y0 }));
  g.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y0, y2: y0 }));
  g.append(svg("text", { class: "unit", x: 12, y: (T + y0) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(T + y0) / 2})` }, c.unit));
  g.append(svg("text", { class: "unit x", x: W - R, y: H - 2, "text-anchor": "end" }, "time before now"));
  lines.forEach((l) => {
    let d = "", prev = null;
    for (const [t, v] of l.values) {
      // A missing figure, or a hole in the history (the proxy restarted), breaks the line.
      if (v == null || t < now - span) { prev = null; continue; }
      const gap = prev != null && t - prev > 3 * seen.interval;
      d += `${d && !gap && prev != null ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)} `;
      prev = t;
    }
    if (d) g.append(svg("path", { class: `line s${l.color % 6}${l.dashed ? " dashed" : ""}`, d: d.trim(), "data-series": l.name }));
  });
  const legend = document.createElement("div"); legend.className = "legend";
  for (const l of lines) {
    const last = l.values.at(-1)?.[1];
    const item = document.createElement("span"); item.className = `key s${l.color % 6}${l.dashed ? " dashed" : ""}`;
    item.textContent = `${l.name} ${last == null ? "-" : fmtNum(last)} ${c.unit}`;
    legend.append(item);
  }
  fig.querySelector("svg")?.remove(); fig.querySelector(".legend")?.remove();
  fig.append(g, legend);
}

function drawCharts() {
  const box = $("charts"), pts = seen.points;
  const now = seen.now ?? (pts.at(-1)?.t || 0);
  // From the oldest point kept (at least a minute), up to the span the proxy keeps.
  const span = Math.min(seen.span, Math.max(60, pts.length ? now - pts[0].t : 0));
  const colors = {};
  for (const c of CHARTS) {
    const byName = new Map();
    for (const p of pts) for (const [name, v] of c.series(p)) {
      if (!byName.has(name)) byName.set(name, []);
      byName.get(name).push([p.t, v]);
    }
    let fig = $(`chart-${c.id}`);
    const shown = byName.size > 0 && !(c.machine && [...byName.values()].every((vs) => vs.every(([, v]) => v == null)));
    if (!shown) { if (fig) fig.hidden = true; continue; }
    if (!fig) {
      fig = document.createElement("figure"); fig.id = `chart-${c.id}`; fig.className = "chart";
      const cap = document.createElement("figcaption"); cap.textContent = `${c.title} (${c.unit})`;
      fig.append(cap); box.append(fig);
    }
    fig.hidden = false;
    const lines = [...byName].map(([name, values]) => {
      const base = name.replace(/ queued$/, "");
      colors[base] ??= Object.keys(colors).length;
      return { name, values, color: colors[base], dashed: name !== base };
    });
    drawChart(fig, c, lines, now, span);
  }
  const p = pts.at(-1);
  $("history-note").textContent = pts.length
    ? `the last ${dur(now - pts[0].t)}, a point every ${seen.interval} s (kept by the proxy for ${seen.span / 60} min)`
    : "no history yet: the proxy adds a point every few seconds";
  drawMachine(p);
}

function cells(tr, values, tag = "td") {
  for (const v of values) { const td = document.createElement(tag); td.textContent = String(v); tr.append(td); }
  return tr;
}

// The hardware now: each GPU (NVML), or each model's processes on a CPU machine.
function drawMachine(p) {
  const gpus = p?.gpus || [], cpus = Object.entries(p?.cpus || {});
  const t = $("machine"), head = t.querySelector("thead"), body = t.querySelector("tbody");
  head.replaceChildren(); body.replaceChildren();
  $("machine-wrap").hidden = !gpus.length && !cpus.length;
  if (gpus.length) {
    head.append(cells(document.createElement("tr"), ["GPU", "Memory", "Busy", "Temperature", "Power"], "th"));
    for (const g of gpus) body.append(cells(document.createElement("tr"), [g.gpu,
      g.total_bytes ? `${fmtBytes(g.used_bytes)} of ${fmtBytes(g.total_bytes)}` : fmtBytes(g.used_bytes),
      g.util == null ? "-" : `${Math.round(g.util * 100)} %`, g.temp_c == null ? "-" : `${Math.round(g.temp_c)} °C`,
      g.power_w == null ? "-" : `${Math.round(g.power_w)} W`]));
  } else if (cpus.length) {
    head.append(cells(document.createElement("tr"), ["Model", "Memory (its processes)", "CPU (cores busy)"], "th"));
    for (const [k, c] of cpus) body.append(cells(document.createElement("tr"), [k, fmtBytes(c.rss_bytes), c.cpu == null ? "-" : fmtNum(c.cpu)]));
  }
}

async function refreshHistory() {
  const last = seen.points.at(-1)?.t;
  let r;
  try { r = await api(`/api/history${last != null ? `?since=${last}` : ""}`); } catch { return; }
  if (!r.ok) { $("history-note").textContent = await errorText(r); return; }
  const h = await r.json();
  if (last != null && h.now != null && h.now < last) seen.points = [];  // the proxy's clock went back
  seen.points.push(...h.points);
  seen.now = h.now; seen.span = h.span_s || seen.span; seen.interval = h.interval_s || seen.interval;
  while (seen.points.length && seen.points[0].t < seen.now - seen.span) seen.points.shift();
  drawCharts();
}

async function refreshStatus() {
  let r;
  try { r = await api("/api/status"); } catch { return; }
  if (!r.ok) { $("status-head").textContent = await errorText(r); return; }
  const s = await r.json();
  const d = s.daemon;
  // A named key's view has no proxy_url (admin keys see the daemon's details).
  const where = s.proxy_url ? ` · proxy ${s.proxy_url}` : "";
  $("status-head").textContent = d.running ? `daemon up ${fmtAge(d.uptime_s)}${where} · device ${s.device}` : "daemon not running";
  const tbody = $("backends").querySelector("tbody"); tbody.replaceChildren();
  for (const [k, b] of Object.entries(s.backends)) {
    const tr = document.createElement("tr");
    const kv = b.kv_tokens_planned ? `${b.kv_tokens_planned.toLocaleString()} / ${b.kv_tokens_reported?.toLocaleString() ?? "-"}` : "-";
    const state = b.resting && b.state === "STOPPED" ? "STOPPED (on demand)" : b.state;
    for (const v of [k, b.name, state, fmtAge(b.uptime_s), b.restarts ?? 0, b.in_flight ?? 0, b.queued ?? 0, fmtBytes(b.rss_bytes), fmtBytes(b.planned_bytes), kv, fmtBytes(b.gpu_bytes)]) {
      const td = document.createElement("td"); td.textContent = String(v); if (v === state) td.className = `state ${b.state}`; tr.append(td);
    }
    tbody.append(tr);
  }
  // Each key: its last minute (from the history's newest point), today and in all.
  const minute = seen.points.at(-1)?.keys || {};
  const names = [...new Set([...Object.keys(s.usage || {}), ...Object.keys(minute)])];
  $("keys-wrap").hidden = names.length === 0;
  const kbody = $("keys").querySelector("tbody"); kbody.replaceChildren();
  const zero = { requests: 0, prompt_tokens: 0, completion_tokens: 0, errors: 0 };
  for (const name of names) {
    const u = s.usage?.[name] || { today: zero, total: zero, last_used: null }, m = minute[name];
    const tok = (x) => (x.prompt_tokens + x.completion_tokens).toLocaleString();
    const last = u.last_used ? new Date(u.last_used * 1000).toLocaleString() : "-";
    kbody.append(cells(document.createElement("tr"), [name, m ? m.requests.toLocaleString() : "0", m ? m.tokens.toLocaleString() : "0",
      u.today.requests.toLocaleString(), tok(u.today), u.total.requests.toLocaleString(), tok(u.total), u.total.errors.toLocaleString(), last]));
  }
}

let refreshing = false;  // a slow answer must not let two asks append the same points
async function refreshAll() {
  if (refreshing) return;
  refreshing = true;
  try { await refreshHistory(); await refreshStatus(); } finally { refreshing = false; }
}

function showTab(name) {
  $("chat-view").hidden = name !== "chat"; $("status-view").hidden = name !== "status";
  $("tab-chat").setAttribute("aria-selected", String(name === "chat"));
  $("tab-status").setAttribute("aria-selected", String(name === "status"));
  clearInterval(statusTimer);
  if (name === "status") { refreshAll(); statusTimer = setInterval(refreshAll, 2000); }
}
$("tab-chat").addEventListener("click", () => showTab("chat"));
$("tab-status").addEventListener("click", () => showTab("status"));

// ── start ─────────────────────────────────────────────────────────────────
async function start() {
  const r = await api("/v1/models");
  if (!r.ok) { showGate(`The proxy answered ${r.status}: ${await errorText(r)}`); return; }
  const models = (await r.json()).data;
  const select = $("model"); select.replaceChildren();
  for (const m of models) {
    const o = document.createElement("option"); o.value = m.id; const note = m.start === "on-demand" && ["STOPPED", "SLEEPING"].includes(m.state) ? "on demand, starts when asked" : (m.state || "").toLowerCase(); o.textContent = `${m.id}${m.state && m.state !== "RUNNING" ? ` (${note})` : ""}`;
    select.append(o);
  }
  const general = models.find((m) => (m.aliases || []).includes("general"));
  if (general) select.value = general.id;
  $("gate").hidden = true; $("app").hidden = false;
  if (!conv()) current = convs[0]?.id || null;
  renderList(); renderMessages(); $("prompt").focus();
}

if (key) start().catch((err) => { if (err.message !== "401") showGate(`Cannot reach the proxy: ${err.message}`); });
else showGate("");
