// The playground page (see playground.h). Empty setting fields are left out of the request, so
// the server's defaults apply; the output is appended chunk by chunk from the SSE stream.
#include "serve/playground.h"

namespace mambacpp::serve {
namespace {

constexpr std::string_view kPage = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mambacpp playground</title>
<style>
  :root { --ink: #1d2330; --muted: #667085; --line: #d6dae1; --accent: #2f6f4f; --bg: #f6f7f9; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--ink); background: var(--bg); }
  header { padding: 12px 20px; border-bottom: 1px solid var(--line); background: #fff;
           display: flex; align-items: baseline; gap: 12px; }
  header h1 { font-size: 17px; margin: 0; }
  header span { color: var(--muted); }
  main { display: grid; grid-template-columns: 270px 1fr; gap: 20px; padding: 20px; max-width: 1200px; }
  fieldset { border: 1px solid var(--line); border-radius: 6px; background: #fff; margin: 0; padding: 10px 12px; }
  legend { color: var(--muted); padding: 0 4px; }
  label { display: grid; grid-template-columns: 1fr 92px; align-items: center; margin: 5px 0; }
  label.wide { grid-template-columns: 1fr; gap: 3px; }
  input, textarea { font: inherit; padding: 4px 6px; border: 1px solid var(--line); border-radius: 4px; width: 100%; }
  textarea { resize: vertical; }
  #prompt { min-height: 110px; }
  .buttons { display: flex; gap: 8px; margin: 10px 0; align-items: center; }
  button { font: inherit; padding: 6px 18px; border-radius: 4px; border: 1px solid var(--accent); cursor: pointer; }
  #generate { background: var(--accent); color: #fff; }
  #cancel { background: #fff; color: var(--accent); }
  button:disabled { opacity: .45; cursor: default; }
  #status { color: var(--muted); }
  #status[data-state=error] { color: #b42318; }
  #output { white-space: pre-wrap; word-break: break-word; min-height: 180px; padding: 10px 12px;
            font: 13px/1.5 ui-monospace, monospace; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
  .stats { display: flex; gap: 24px; margin-top: 10px; color: var(--muted); }
  .stats b { color: var(--ink); font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<header><h1>mambacpp playground</h1><span>streams from POST /v1/completions</span></header>
<main>
  <form id="settings" onsubmit="return false">
    <fieldset>
      <legend>Sampling</legend>
      <label>max_tokens <input id="max_tokens" type="number" min="0" value="64"></label>
      <label>temperature <input id="temperature" type="number" min="0" step="0.05" value="0.8"></label>
      <label>top_p <input id="top_p" type="number" min="0" max="1" step="0.01" value="0.95"></label>
      <label>top_k <input id="top_k" type="number" min="0" value="40"></label>
      <label>min_p <input id="min_p" type="number" min="0" max="1" step="0.01" value="0.05"></label>
      <label>repetition penalty <input id="repetition_penalty" type="number" min="0" step="0.05" value="1"></label>
      <label>seed <input id="seed" type="number" min="0" placeholder="default"></label>
      <label class="wide">stop strings, one per line <textarea id="stop" rows="2"></textarea></label>
    </fieldset>
    <fieldset style="margin-top: 12px">
      <legend>Server</legend>
      <label class="wide">API key (sent as Bearer) <input id="api_key" type="password" autocomplete="off"></label>
    </fieldset>
  </form>
  <section>
    <textarea id="prompt" placeholder="Prompt (Ctrl+Enter generates)"></textarea>
    <div class="buttons">
      <button id="generate" type="button">Generate</button>
      <button id="cancel" type="button" disabled>Stop</button>
      <span id="status" data-state="idle">idle</span>
    </div>
    <div id="output" data-chunks="0"></div>
    <div class="stats">
      <span>time to first token <b id="ttft">-</b> ms</span>
      <span>decode <b id="tps">-</b> tokens/s</span>
      <span>tokens <b id="tokens">0</b></span>
    </div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let controller = null;

// A setting's value, or undefined (left out of the request) when the field is empty.
function numberField(id, parse) {
  const text = $(id).value.trim();
  return text === "" ? undefined : parse(text);
}

function requestBody() {
  const stops = $("stop").value.split("\n").filter((s) => s.length > 0);
  return {
    prompt: $("prompt").value,
    stream: true,
    return_tokens: true,
    max_tokens: numberField("max_tokens", parseInt),
    temperature: numberField("temperature", parseFloat),
    top_p: numberField("top_p", parseFloat),
    top_k: numberField("top_k", parseInt),
    min_p: numberField("min_p", parseFloat),
    repetition_penalty: numberField("repetition_penalty", parseFloat),
    seed: numberField("seed", parseInt),
    stop: stops.length ? stops : undefined,
  };
}

function setState(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
  const running = state === "running";
  $("generate").disabled = running;
  $("cancel").disabled = !running;
}

async function errorMessage(response) {
  const text = await response.text();
  try { return "HTTP " + response.status + ": " + JSON.parse(text).error.message; }
  catch (e) { return "HTTP " + response.status + ": " + text; }
}

// Yields the data payload of each server-sent event in the response body.
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
                        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data !== "") yield data;
    }
  }
}

async function generate() {
  if (controller) return;
  controller = new AbortController();
  const output = $("output");
  output.textContent = "";
  output.dataset.chunks = "0";
  $("ttft").textContent = "-";
  $("tps").textContent = "-";
  $("tokens").textContent = "0";
  setState("running", "waiting for the first token...");
  const headers = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  const start = performance.now();
  let firstAt = null, firstTokens = 0, tokens = 0, finished = false, reason = "";
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers, body: JSON.stringify(requestBody()), signal: controller.signal });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of serverSentEvents(response)) {
      if (data === "[DONE]") { finished = true; break; }
      const message = JSON.parse(data);
      if (message.error) throw new Error(message.error.message || JSON.stringify(message.error));
      const choice = message.choices && message.choices[0];
      if (!choice) continue;
      const count = choice.tokens ? choice.tokens.length : (choice.text ? 1 : 0);
      if (choice.text) {
        output.textContent += choice.text;
        output.dataset.chunks = String(Number(output.dataset.chunks) + 1);
      }
      if (choice.finish_reason) reason = choice.finish_reason;
      if (count === 0) continue;
      const now = performance.now();
      tokens += count;
      if (firstAt === null) {
        firstAt = now;
        firstTokens = tokens;
        $("ttft").textContent = (now - start).toFixed(0);
        setState("running", "generating...");
      } else if (now > firstAt) {
        $("tps").textContent = ((tokens - firstTokens) / ((now - firstAt) / 1000)).toFixed(1);
      }
      $("tokens").textContent = String(tokens);
    }
    if (!finished) throw new Error("the stream ended without [DONE]");
    setState("done", "done" + (reason ? " (" + reason + ")" : ""));
  } catch (e) {
    if (e.name === "AbortError") setState("stopped", "stopped");
    else setState("error", e.message);
  } finally {
    controller = null;
  }
}

$("generate").addEventListener("click", generate);
$("cancel").addEventListener("click", () => { if (controller) controller.abort(); });
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) generate(); });
</script>
</body>
</html>
)html";

}  // namespace

std::string_view playground_html() { return kPage; }

}  // namespace mambacpp::serve
