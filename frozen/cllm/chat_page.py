"""The chat page served at / : one self-contained HTML document (inline CSS and JS, nothing fetched
from elsewhere). It keeps the conversation, streams each reply from /v1/chat/completions (SSE read
with fetch), shows the server's errors, stops a reply with Stop, and sends the API key from its field
(kept in the browser's localStorage) as a Bearer token. Query settings: /?temperature=0&max_tokens=16.
A frozen bytes constant: it stays in the kernel image, not on the heap."""

PAGE = rb"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>cllm chat</title>
<style>
*{box-sizing:border-box}
body{margin:0;height:100vh;display:flex;flex-direction:column;font:15px/1.45 system-ui,sans-serif;background:#eef0f4;color:#1d2330}
header{display:flex;gap:14px;align-items:center;flex-wrap:wrap;padding:8px 14px;background:#1f2a44;color:#fff;font-size:13px}
header b{font-size:17px}
#model{font-weight:600}#speed{opacity:.75}
header label{display:flex;gap:5px;align-items:center}
#settings{margin-left:auto;display:flex;gap:12px;flex-wrap:wrap}
header input{font:inherit;width:5.5em;padding:2px 5px;border:0;border-radius:4px}
#key{width:10em}
#log{flex:1;overflow-y:auto;padding:14px;display:flex;flex-direction:column;gap:10px}
.msg{max-width:75%;padding:8px 12px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere}
.user{align-self:flex-end;background:#2f6fd6;color:#fff}
.assistant{align-self:flex-start;background:#fff;border:1px solid #d5d9e2}
.error{align-self:center;background:#fde7e7;color:#a31515;border:1px solid #f0b4b4}
.busy::after{content:"\25ae";animation:blink 1s steps(1) infinite}
@keyframes blink{50%{opacity:0}}
form{display:flex;gap:8px;padding:10px 14px;background:#fff;border-top:1px solid #d5d9e2}
textarea{flex:1;resize:none;font:inherit;padding:8px;border:1px solid #c3c8d4;border-radius:8px}
button{font:inherit;padding:0 18px;border:0;border-radius:8px;background:#2f6fd6;color:#fff;cursor:pointer}
button:disabled{opacity:.4;cursor:default}
#stop{background:#6b7280}
</style></head>
<body data-state="idle">
<header><b>cllm</b><span id="model"></span><span id="speed"></span>
<div id="settings"><label>temperature <input id="temp" type="number" min="0" step="0.1"></label>
<label>max tokens <input id="max" type="number" min="1"></label>
<label>API key <input id="key" type="password" autocomplete="off"></label></div></header>
<div id="log"></div>
<form id="form"><textarea id="input" rows="2" placeholder="Message (Enter sends, Shift+Enter: new line)"></textarea>
<button id="send">Send</button><button id="stop" type="button" disabled>Stop</button></form>
<script>
"use strict";
const $ = id => document.getElementById(id);
const query = new URLSearchParams(location.search);
const messages = [];
let controller = null;
$("temp").value = query.get("temperature") ?? 0.8;
$("max").value = query.get("max_tokens") ?? 256;
$("key").value = localStorage.getItem("cllm-api-key") || "";

function headers() {
  const h = {"Content-Type": "application/json"}, key = $("key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}
function bubble(kind, text) {
  const div = document.createElement("div");
  div.className = "msg " + kind;
  div.textContent = text;
  $("log").append(div);
  div.scrollIntoView();
  return div;
}
async function failure(r) {
  try { return (await r.json()).error.message; } catch (e) { return r.status + " " + r.statusText; }
}
async function showModel() {
  try {
    const r = await fetch("/v1/models", {headers: headers()});
    $("model").textContent = r.ok ? (await r.json()).data[0].id : await failure(r);
  } catch (e) { $("model").textContent = e.message; }
}
function busy(on) {
  document.body.dataset.state = on ? "streaming" : "idle";
  $("send").disabled = on;
  $("stop").disabled = !on;
}
async function* events(response) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    const blocks = buffer.split(/\r?\n\r?\n/);
    buffer = blocks.pop();
    for (const block of blocks)
      for (const line of block.split(/\r?\n/))
        if (line.startsWith("data:")) yield line.slice(5).trim();
  }
}
async function send(ev) {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  messages.push({role: "user", content: text});
  bubble("user", text);
  const out = bubble("assistant busy", "");
  let reply = "";
  controller = new AbortController();
  busy(true);
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({messages, stream: true, temperature: +$("temp").value, max_tokens: +$("max").value})});
    if (!r.ok) throw new Error(await failure(r));
    for await (const data of events(r)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
      if (delta) { reply += delta; out.textContent = reply; out.scrollIntoView(); }
      if (chunk.timings) $("speed").textContent = chunk.timings.predicted_per_second.toFixed(1) + " tokens/s";
    }
  } catch (e) {
    if (e.name !== "AbortError") bubble("error", e.message);
  }
  out.classList.remove("busy");
  if (reply) messages.push({role: "assistant", content: reply});
  else { out.remove(); messages.pop(); }
  controller = null;
  busy(false);
}
$("form").addEventListener("submit", send);
$("input").addEventListener("keydown", e => { if (e.key === "Enter" && !e.shiftKey) send(e); });
$("stop").addEventListener("click", () => controller && controller.abort());
$("key").addEventListener("change", () => { localStorage.setItem("cllm-api-key", $("key").value.trim()); showModel(); });
showModel();
</script></body></html>
"""
