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
const history = [];      // [time, requests, tokens] samples of the proxy's own counters

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
const fmtBytes = (n) => !n ? "-" : n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
const fmtAge = (s) => s == null ? "-" : s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m` : `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;

function chart(canvas, values) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...values);
  g.strokeStyle = getComputedStyle(canvas).color; g.lineWidth = 2; g.beginPath();
  values.forEach((v, i) => { const x = (i / Math.max(1, values.length - 1)) * w, y = h - (v / max) * (h - 14) - 2; i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke(); g.fillStyle = g.strokeStyle; g.font = "12px sans-serif"; g.fillText(`max ${max.toFixed(1)}`, 4, 12);
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
    for (const v of [k, b.name, state, fmtAge(b.uptime_s), b.restarts ?? 0, b.in_flight ?? 0, fmtBytes(b.rss_bytes), fmtBytes(b.planned_bytes), kv, fmtBytes(b.gpu_bytes)]) {
      const td = document.createElement("td"); td.textContent = String(v); if (v === state) td.className = `state ${b.state}`; tr.append(td);
    }
    tbody.append(tr);
  }
  const keys = Object.entries(s.usage || {});
  $("keys-wrap").hidden = keys.length === 0;
  const kbody = $("keys").querySelector("tbody"); kbody.replaceChildren();
  for (const [name, u] of keys) {
    const tr = document.createElement("tr");
    const tok = (x) => (x.prompt_tokens + x.completion_tokens).toLocaleString();
    const last = u.last_used ? new Date(u.last_used * 1000).toLocaleString() : "-";
    for (const v of [name, u.today.requests.toLocaleString(), tok(u.today), u.total.requests.toLocaleString(), tok(u.total), u.total.errors.toLocaleString(), last]) {
      const td = document.createElement("td"); td.textContent = v; tr.append(td);
    }
    kbody.append(tr);
  }
  const p = s.proxy_counters || { requests: 0, tokens: 0 };
  history.push([performance.now() / 1000, p.requests, p.tokens]);
  while (history.length > 151) history.shift();  // five minutes at one sample every two seconds
  const rate = (i) => history.slice(1).map((x, j) => (x[i] - history[j][i]) / Math.max(0.001, x[0] - history[j][0]));
  chart($("chart-requests"), rate(1)); chart($("chart-tokens"), rate(2));
}

function showTab(name) {
  $("chat-view").hidden = name !== "chat"; $("status-view").hidden = name !== "status";
  $("tab-chat").setAttribute("aria-selected", String(name === "chat"));
  $("tab-status").setAttribute("aria-selected", String(name === "status"));
  clearInterval(statusTimer);
  if (name === "status") { refreshStatus(); statusTimer = setInterval(refreshStatus, 2000); }
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
