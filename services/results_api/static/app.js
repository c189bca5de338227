// Tessera's page: submit a job to the ingest API, then follow it on this (the results) API.
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
// The page is served by the results API, so its own origin answers /v1/jobs/... without CORS.
const RESULTS_BASE = new URL(".", location.href);
// The page sends its API key only to its own deployment's ingest API, which the server names
// (and the Content-Security-Policy admits); nothing in the page's URL can change it.
const INGEST_BASE = document.querySelector('meta[name="tessera-ingest-url"]').content;
const $ = (id) => document.getElementById(id);

let watching = null;

function init() {
  $("ingest-url").textContent = INGEST_BASE;
  $("submit-form").addEventListener("submit", onSubmit);
  $("watch-form").addEventListener("submit", (event) => {
    event.preventDefault();
    watch($("watch-id").value.trim());
  });
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function problemMessage(response) {
  try {
    const body = await response.json();
    return `${body.code || response.status}: ${body.detail || body.title || response.statusText}`;
  } catch {
    return `HTTP ${response.status} ${response.statusText}`;
  }
}

async function onSubmit(event) {
  event.preventDefault();
  showError("");
  const form = new FormData();
  for (const file of $("files").files) form.append("files", file, file.name);
  form.append("prompt", $("prompt").value);
  form.append("max_new_tokens", $("max-new-tokens").value);
  if ($("model").value.trim()) form.append("model", $("model").value.trim());
  const url = new URL("v1/jobs", INGEST_BASE.replace(/\/*$/, "/"));
  $("submit").disabled = true;
  try {
    const job = await upload(url, form);
    watch(job.id, job);
  } catch (error) {
    showError(error.message);
  } finally {
    $("submit").disabled = false;
  }
}

// XMLHttpRequest rather than fetch: it reports upload progress and can still set Authorization.
function upload(url, form) {
  const bar = $("upload-progress");
  bar.hidden = false;
  bar.value = 0;
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", url);
    for (const [name, value] of Object.entries(authHeaders())) {
      request.setRequestHeader(name, value);
    }
    request.upload.onprogress = (progress) => {
      if (progress.lengthComputable) bar.value = progress.loaded / progress.total;
    };
    request.onload = () => {
      bar.hidden = true;
      let body = null;
      try { body = JSON.parse(request.responseText); } catch { /* not JSON: reported below */ }
      if (request.status === 202 && body) return resolve(body);
      reject(new Error(body && body.code ? `${body.code}: ${body.detail}`
        : `HTTP ${request.status} from the ingest API`));
    };
    request.onerror = () => {
      bar.hidden = true;
      reject(new Error(`Cannot reach the ingest API at ${url.origin} (is it up, and does it `
        + "allow this page's origin in CORS?)"));
    };
    request.send(form);
  });
}

async function watch(jobId, job) {
  if (!jobId) return;
  if (watching) watching.abort();
  const controller = new AbortController();
  watching = controller;
  showError("");
  for (const id of ["output", "events", "result-text", "result-meta", "result-json"]) {
    $(id).textContent = "";
  }
  $("result").hidden = true;
  $("job").hidden = false;
  try {
    renderJob(job || await getJson(`v1/jobs/${encodeURIComponent(jobId)}`, controller.signal));
    await followEvents(jobId, controller.signal);
    const final = await getJson(`v1/jobs/${encodeURIComponent(jobId)}`, controller.signal);
    renderJob(final);
    if (final.status === "succeeded") {
      renderResult(await getJson(`v1/jobs/${encodeURIComponent(jobId)}/result`,
                                 controller.signal));
    } else if (final.error) {
      showError(`${final.error.code}: ${final.error.message}`);
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(error.message);
  }
}

async function getJson(path, signal) {
  const response = await fetch(new URL(path, RESULTS_BASE), { headers: authHeaders(), signal });
  if (!response.ok) throw new Error(await problemMessage(response));
  return response.json();
}

function renderJob(job) {
  $("job-id").textContent = job.id;
  setStatus(job.status);
  $("job-model").textContent = job.model || "";
  $("trace-id").textContent = job.trace_id || "—";
}

function setStatus(status) {
  $("status").textContent = status;
  $("status").className = `badge status-${status}`;
}

function renderResult(result) {
  $("result-text").textContent = result.text;
  const usage = result.usage || {};
  $("result-meta").textContent = [
    `finish: ${result.finish_reason}`,
    usage.prompt_tokens !== undefined ? `prompt tokens: ${usage.prompt_tokens}` : "",
    usage.completion_tokens !== undefined ? `completion tokens: ${usage.completion_tokens}` : "",
    `engine: ${result.engine}`,
  ].filter(Boolean).join(" · ");
  $("result-json").textContent = JSON.stringify(result, null, 2);
  $("result").hidden = false;
}

// EventSource cannot send Authorization, so the stream is read with fetch and parsed here;
// a broken connection is resumed from the last event id, as EventSource would.
async function followEvents(jobId, signal) {
  const url = new URL(`v1/jobs/${encodeURIComponent(jobId)}/events`, RESULTS_BASE);
  let lastEventId = null;
  let delay = 500;
  for (;;) {
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    try {
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const message = await problemMessage(response);
        if (response.status < 500) throw new Error(message);
      } else {
        for await (const event of readEvents(response.body)) {
          lastEventId = event.id ?? lastEventId;
          delay = 500;
          if (onEvent(event)) return;
        }
      }
    } catch (error) {
      if (error.name === "AbortError" || !(error instanceof TypeError)) throw error;
      // TypeError: the network failed; reconnect below.
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

// Returns true when the event ends the job's stream.
function onEvent(event) {
  const data = JSON.parse(event.data);
  const item = document.createElement("li");
  item.textContent = `${event.id}  ${event.type}  ${event.data}`;
  $("events").append(item);
  if (event.type === "output") {
    $("output").textContent += data.delta || "";
    return false;
  }
  if (event.type === "status") {
    setStatus(data.status);
    return TERMINAL.has(data.status);
  }
  return false;
}

async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let match;
    // A trailing "\r" may be half of "\r\n": keep it until the next chunk.
    while ((match = /\r\n|\n|\r(?!$)/.exec(buffer))) {
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === "") {
        if (event.data.length) {
          yield { type: event.type || "message", data: event.data.join("\n"), id: event.id };
        }
        event = { type: "", data: [], id: event.id };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") event.type = text;
      else if (field === "data") event.data.push(text);
      else if (field === "id") event.id = text;
    }
  }
}

init();
