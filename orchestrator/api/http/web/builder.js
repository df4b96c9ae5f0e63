// The persona builder (/builder): create, edit and delete a tenant's personas, upload a face and watch it
// prepare, attach documents, and start a test call. It uses only the public REST API (openapi.yaml) with the
// API key the user signs in with, so anything it does a team's backend can do too.

import { request, listAll, ApiError } from "./api.js";

const KEY_STORE = "duet.apiKey";
const FACE_POLL_MS = 500;
const FACE_POLL_LIMIT_MS = 10 * 60 * 1000;
// The resting emotions the face renderer knows (the API takes any string; these are the useful ones).
const EMOTIONS = [
  "neutral", "happiness", "sadness", "anger", "fear", "surprise", "disgust", "contempt",
  "empathy", "amusement", "thoughtful", "reassuring", "interested", "happily_surprised", "confused",
];

const $ = (id) => document.getElementById(id);
const form = $("persona-form");

const app = {
  key: "",
  personas: [],
  faces: [],
  templates: [],
  documents: null, // null: the knowledge base is not on this server
  current: null, // the persona being edited; null for a new one
  dirty: false,
  session: 0, // bumps at sign-out, so late answers and face polls of the old key are dropped
  voices: new Set(),
};

// ---- errors -----------------------------------------------------------------------------------------------

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function clearErrors() {
  showError("");
  for (const p of form.querySelectorAll(".field-error")) p.remove();
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    const ids = (el.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && !x.endsWith("-error"));
    if (ids.length) el.setAttribute("aria-describedby", ids.join(" "));
    else el.removeAttribute("aria-describedby");
  }
}

// The input a JSON path ($.layers.llm.temperature, $.document_ids[2]) points at, if the form has one.
function fieldFor(path) {
  let best = null;
  for (const el of form.querySelectorAll("[data-path]")) {
    const p = el.dataset.path;
    if (path === p || path.startsWith(`${p}.`) || path.startsWith(`${p}[`)) {
      if (!best || p.length > best.dataset.path.length) best = el;
    }
  }
  return best;
}

function showFieldError(el, message) {
  const p = document.createElement("p");
  p.className = "field-error";
  p.id = `${el.id}-error`;
  p.textContent = message;
  const host = el.closest(".field") || el.parentElement;
  host.append(p);
  el.setAttribute("aria-invalid", "true");
  const ids = (el.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
  el.setAttribute("aria-describedby", [...ids, p.id].join(" "));
  el.focus();
}

// Report a failed request: next to its field when the form has it, else at the top.
function report(err, what) {
  if (!(err instanceof ApiError)) {
    showError(`${what}: ${err.message}`);
    return;
  }
  if (err.status === 401) {
    signOut(`The API key was not accepted (${err.message}). Sign in again.`);
    return;
  }
  learnVoices(err.message);
  const el = err.field ? fieldFor(err.field) : null;
  if (el && !el.closest("[hidden]")) showFieldError(el, err.message);
  else showError(`${what}: ${err.message}${err.field ? ` (${err.field})` : ""}`);
}

// A 422 for an unknown voice names the ones the server has: offer them.
function learnVoices(message) {
  const m = /this server has: ([^)]*)\)/.exec(message || "");
  if (!m) return;
  for (const v of m[1].split(",")) addVoice(v.trim());
}

function addVoice(v) {
  if (!v || app.voices.has(v)) return;
  app.voices.add(v);
  const o = document.createElement("option");
  o.value = v;
  $("voices").append(o);
}

// ---- signing in -------------------------------------------------------------------------------------------

$("signin").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("api-key").value.trim();
  if (key) signIn(key);
});
$("sign-out").addEventListener("click", () => signOut(""));

async function signIn(key) {
  clearErrors();
  app.key = key;
  const session = ++app.session;
  $("sign-in").disabled = true;
  try {
    app.personas = await listAll("/v1/personas", key);
  } catch (err) {
    if (session !== app.session) return;
    $("sign-in").disabled = false;
    if (err instanceof ApiError && err.status === 401) signOut(`That API key was not accepted: ${err.message}`);
    else report(err, "Could not list the personas");
    return;
  }
  if (session !== app.session) return;
  $("sign-in").disabled = false;
  sessionStorage.setItem(KEY_STORE, key);
  $("api-key").value = "";
  $("signin").hidden = true;
  $("personas").hidden = false;
  $("editor").hidden = false;
  $("sign-out").hidden = false;
  $("signed-in").hidden = false;
  $("signed-in").textContent = `Signed in with ${key.slice(0, 12)}…`;
  renderList();
  newPersona();
  await Promise.all([loadTemplates(session), loadFaces(session), loadDocuments(session)]);
}

function signOut(message) {
  app.session++;
  app.key = "";
  app.personas = [];
  app.faces = [];
  app.current = null;
  sessionStorage.removeItem(KEY_STORE);
  $("signin").hidden = false;
  $("personas").hidden = true;
  $("editor").hidden = true;
  $("sign-out").hidden = true;
  $("signed-in").hidden = true;
  $("persona-list").replaceChildren();
  form.reset();
  clearErrors();
  showError(message);
  $("api-key").focus();
}

async function loadTemplates(session) {
  try {
    const answer = await request("GET", "/v1/persona-templates", { token: app.key });
    if (session !== app.session) return;
    app.templates = answer.data || [];
  } catch (err) {
    if (session === app.session) report(err, "Could not list the templates");
    return;
  }
  const select = $("template");
  select.replaceChildren(new Option("None: start blank", ""));
  for (const t of app.templates) {
    select.append(new Option(`${t.template}: ${t.name}`, t.template));
    addVoice(t.voice);
  }
}

async function loadFaces(session) {
  try {
    const faces = await listAll("/v1/faces", app.key);
    if (session !== app.session) return;
    app.faces = faces;
  } catch (err) {
    if (session === app.session) report(err, "Could not list the faces");
    return;
  }
  renderFaces($("face-select").value || (app.current && app.current.face_id) || "");
}

async function loadDocuments(session) {
  const status = $("kb-status");
  try {
    const docs = await listAll("/v1/documents", app.key);
    if (session !== app.session) return;
    app.documents = docs;
    status.textContent = docs.length ? "Pick documents, or name ids and tags below." : "No documents yet.";
  } catch (err) {
    if (session !== app.session) return;
    app.documents = null;
    if (err instanceof ApiError && err.status === 404) {
      status.textContent = "The knowledge base is not available on this server yet; document ids and tags are kept as lists.";
    } else {
      status.textContent = `Could not list the documents: ${err.message}`;
    }
  }
  renderDocuments();
}

// ---- the persona list -------------------------------------------------------------------------------------

function renderList() {
  const ul = $("persona-list");
  ul.replaceChildren(
    ...app.personas.map((p) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.id = p.persona_id;
      b.setAttribute("aria-current", String(!!app.current && app.current.persona_id === p.persona_id));
      const name = document.createElement("span");
      name.textContent = p.name || "(unnamed)";
      const id = document.createElement("span");
      id.className = "id";
      id.textContent = p.persona_id;
      b.append(name, id);
      b.addEventListener("click", () => edit(p));
      li.append(b);
      return li;
    }),
  );
  $("persona-count").textContent = app.personas.length
    ? `${app.personas.length} persona${app.personas.length === 1 ? "" : "s"}`
    : "No personas yet: make one.";
}

$("new-persona").addEventListener("click", () => newPersona());

function newPersona() {
  app.current = null;
  $("template").value = "";
  fill({});
  $("name").focus();
}

function edit(p) {
  app.current = p;
  fill(p);
}

// ---- the form ---------------------------------------------------------------------------------------------

$("template").addEventListener("change", () => {
  const t = app.templates.find((x) => x.template === $("template").value);
  fill(t || {}, { keepTemplate: true });
  app.dirty = true;
});

form.addEventListener("input", () => {
  app.dirty = true;
  $("save-status").textContent = app.current ? "Unsaved changes" : "";
});

function setSelect(select, value, label) {
  if (value && ![...select.options].some((o) => o.value === value)) select.append(new Option(label || value, value));
  select.value = value || "";
}

const list = (v) => (Array.isArray(v) ? v.join(", ") : "");
const parseList = (s) =>
  s
    .split(/[,\n]/)
    .map((x) => x.trim())
    .filter(Boolean);

function fill(p, { keepTemplate = false } = {}) {
  clearErrors();
  const isNew = !app.current;
  const layers = p.layers || {};
  const llm = layers.llm || {};
  const flow = layers.conversational_flow || {};
  $("editor-title").textContent = isNew ? "New persona" : p.name || p.persona_id;
  $("template-field").hidden = !isNew;
  if (!keepTemplate && isNew) $("template").value = "";
  $("name").value = p.name || "";
  $("system-prompt").value = p.system_prompt || "";
  $("context").value = p.context || "";
  $("greeting").value = p.greeting || "";
  $("vocabulary").value = list(p.vocabulary);
  $("voice").value = p.voice || "";
  addVoice(p.voice);
  setSelect($("emotion"), p.emotion || "");
  renderFaces(p.face_id || "");
  $("llm-backend").value = llm.backend || "";
  $("llm-model").value = llm.model || "";
  $("llm-base-url").value = llm.base_url || "";
  $("llm-api-key").value = "";
  $("llm-api-key").placeholder = llm.api_key_set ? "A key is stored: type to replace it" : "";
  $("llm-temperature").value = llm.temperature ?? "";
  $("llm-max-tokens").value = llm.max_tokens ?? "";
  $("tts-voice").value = (layers.tts && layers.tts.voice) || "";
  $("perception-enabled").checked = !(layers.perception && layers.perception.enabled === false);
  $("turn-taking-patience").value = flow.turn_taking_patience || "";
  $("replica-interruptibility").value = flow.replica_interruptibility || "";
  $("document-ids").value = list(p.document_ids);
  $("document-tags").value = list(p.document_tags);
  renderDocuments();
  $("delete").hidden = isNew;
  $("test-call").disabled = isNew;
  $("test-call-link").hidden = true;
  $("save-status").textContent = "";
  app.dirty = false;
  renderList();
}

function renderFaces(selected) {
  const select = $("face-select");
  select.replaceChildren(new Option("Server default", ""));
  for (const f of app.faces) {
    const o = new Option(`${f.name} (${f.face_id}${f.status === "ready" ? "" : `, ${f.status}`})`, f.face_id);
    o.disabled = f.status !== "ready";
    select.append(o);
  }
  // a built-in portrait (a template's "astronaut", say) is not one of the tenant's faces
  setSelect(select, selected, selected && !selected.startsWith("face_") ? `${selected} (built-in)` : selected);
}

function renderDocuments() {
  const ul = $("document-picker");
  if (!app.documents || !app.documents.length) {
    ul.hidden = true;
    return;
  }
  const chosen = new Set(parseList($("document-ids").value));
  ul.replaceChildren(
    ...app.documents.map((d) => {
      const li = document.createElement("li");
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = d.document_id;
      box.checked = chosen.has(d.document_id);
      box.addEventListener("change", () => {
        const ids = parseList($("document-ids").value).filter((x) => x !== d.document_id);
        if (box.checked) ids.push(d.document_id);
        $("document-ids").value = ids.join(", ");
      });
      const tags = Array.isArray(d.tags) && d.tags.length ? ` [${d.tags.join(", ")}]` : "";
      label.append(box, ` ${d.name || d.document_id}${d.status && d.status !== "ready" ? ` (${d.status})` : ""}${tags}`);
      li.append(label);
      return li;
    }),
  );
  ul.hidden = false;
}

$("document-ids").addEventListener("input", () => {
  const chosen = new Set(parseList($("document-ids").value));
  for (const box of $("document-picker").querySelectorAll("input[type=checkbox]")) box.checked = chosen.has(box.value);
});

// The request body. A new persona names only what is filled in (a template or the server fills the rest);
// an update names every field the form shows, so clearing one clears it. `layers` merge per field on the
// server, so the LLM's stored api_key is kept unless a new one is typed.
function collect(isNew) {
  const body = {};
  const text = (id) => $(id).value.trim();
  const put = (key, value) => {
    if (!isNew || value) body[key] = value;
  };
  if (isNew && $("template").value) body.template = $("template").value;
  body.name = text("name");
  put("system_prompt", text("system-prompt"));
  put("context", text("context"));
  put("greeting", text("greeting"));
  put("voice", text("voice"));
  put("emotion", $("emotion").value);
  const face = $("face-select").value;
  if (face) body.face_id = face;
  else if (!isNew) body.face_id = null;
  const vocabulary = parseList($("vocabulary").value);
  if (!isNew || vocabulary.length) body.vocabulary = vocabulary;

  const layers = {};
  const llm = {};
  if ($("llm-backend").value) llm.backend = $("llm-backend").value;
  if (text("llm-model")) llm.model = text("llm-model");
  if (text("llm-base-url")) llm.base_url = text("llm-base-url");
  if ($("llm-api-key").value) llm.api_key = $("llm-api-key").value;
  const temperature = $("llm-temperature").value;
  if (temperature !== "") llm.temperature = Number(temperature);
  const maxTokens = $("llm-max-tokens").value;
  if (maxTokens !== "") llm.max_tokens = Number(maxTokens);
  if (Object.keys(llm).length) layers.llm = llm;
  const ttsVoice = text("tts-voice");
  if (ttsVoice || (!isNew && app.current.layers && app.current.layers.tts && app.current.layers.tts.voice)) {
    layers.tts = { voice: ttsVoice };
  }
  layers.perception = { enabled: $("perception-enabled").checked };
  const flow = {};
  if ($("turn-taking-patience").value) flow.turn_taking_patience = $("turn-taking-patience").value;
  if ($("replica-interruptibility").value) flow.replica_interruptibility = $("replica-interruptibility").value;
  if (Object.keys(flow).length) layers.conversational_flow = flow;
  body.layers = layers;

  const ids = parseList($("document-ids").value);
  const tags = parseList($("document-tags").value);
  if (!isNew || ids.length) body.document_ids = ids;
  if (!isNew || tags.length) body.document_tags = tags;
  return body;
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  save();
});

// Saves the form; true when it did.
async function save() {
  clearErrors();
  const isNew = !app.current;
  if (!$("name").value.trim()) {
    showFieldError($("name"), "A persona needs a name.");
    return false;
  }
  const session = app.session;
  const button = $("save");
  button.disabled = true;
  $("save-status").textContent = "Saving…";
  try {
    const body = collect(isNew);
    const saved = isNew
      ? await request("POST", "/v1/personas", { token: app.key, json: body })
      : await request("PATCH", `/v1/personas/${encodeURIComponent(app.current.persona_id)}`, { token: app.key, json: body });
    if (session !== app.session) return false;
    const i = app.personas.findIndex((p) => p.persona_id === saved.persona_id);
    if (i >= 0) app.personas[i] = saved;
    else app.personas.unshift(saved);
    app.current = saved;
    fill(saved);
    $("save-status").textContent = isNew ? `Created ${saved.persona_id}` : "Saved";
    return true;
  } catch (err) {
    if (session !== app.session) return false;
    $("save-status").textContent = "";
    report(err, isNew ? "Could not create the persona" : "Could not save the persona");
    return false;
  } finally {
    button.disabled = false;
  }
}

$("delete").addEventListener("click", async () => {
  const p = app.current;
  if (!p) return;
  if (!window.confirm(`Delete the persona "${p.name}" (${p.persona_id})? This cannot be undone.`)) return;
  clearErrors();
  try {
    await request("DELETE", `/v1/personas/${encodeURIComponent(p.persona_id)}`, { token: app.key });
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) {
      report(err, "Could not delete the persona");
      return;
    }
  }
  app.personas = app.personas.filter((x) => x.persona_id !== p.persona_id);
  newPersona();
  $("save-status").textContent = `Deleted ${p.persona_id}`;
});

// ---- faces ------------------------------------------------------------------------------------------------

let previewUrl = null;

$("face-file").addEventListener("change", () => {
  const file = $("face-file").files[0];
  if (file) uploadFace(file);
});

function faceStatus(status, text) {
  const el = $("face-status");
  el.dataset.status = status;
  el.textContent = text;
}

async function uploadFace(file) {
  clearErrors();
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("face-preview").src = previewUrl;
  $("face-preview").hidden = false;
  const session = app.session;
  const data = new FormData();
  data.append("file", file, file.name);
  const name = $("face-name").value.trim() || file.name.replace(/\.[^.]*$/, "").slice(0, 100) || "portrait";
  data.append("name", name);
  faceStatus("preparing", "Uploading…");
  let face;
  try {
    face = await request("POST", "/v1/faces", { token: app.key, form: data });
  } catch (err) {
    if (session !== app.session) return;
    if (err instanceof ApiError && err.status === 401) return report(err, "Upload");
    faceStatus("failed", `Upload failed: ${err.message}`);
    return;
  }
  if (session !== app.session) return;
  app.faces.unshift(face);
  renderFaces($("face-select").value);
  faceStatus("preparing", `${face.face_id}: preparing…`);
  const started = performance.now();
  while (face.status === "preparing") {
    await new Promise((r) => setTimeout(r, FACE_POLL_MS));
    if (session !== app.session) return;
    if (performance.now() - started > FACE_POLL_LIMIT_MS) {
      faceStatus("failed", `${face.face_id}: still preparing; check back later`);
      return;
    }
    try {
      face = await request("GET", `/v1/faces/${encodeURIComponent(face.face_id)}`, { token: app.key });
    } catch (err) {
      if (session !== app.session) return;
      if (err instanceof ApiError && err.status === 401) return report(err, "Face");
      if (err instanceof ApiError && err.status === 404) {
        faceStatus("failed", `${face.face_id} is gone`);
        return;
      }
      continue; // a passing failure (429, 503, network): poll again
    }
    if (session !== app.session) return;
  }
  app.faces = app.faces.map((f) => (f.face_id === face.face_id ? face : f));
  if (face.status === "ready") {
    renderFaces(face.face_id);
    app.dirty = true;
    faceStatus("ready", `${face.face_id}: ready. Selected as this persona's face; save to keep it.`);
  } else {
    renderFaces($("face-select").value);
    faceStatus("failed", `${face.face_id}: failed: ${face.error || "the portrait could not be prepared"}`);
  }
}

// ---- test call --------------------------------------------------------------------------------------------

$("test-call").addEventListener("click", async () => {
  if (!app.current) return;
  // one click: unsaved changes are saved first, so the call runs what the form shows
  if (app.dirty && !(await save())) return;
  clearErrors();
  const button = $("test-call");
  button.disabled = true;
  try {
    const conv = await request("POST", "/v1/conversations", {
      token: app.key,
      json: { persona_id: app.current.persona_id },
    });
    const link = $("test-call-link");
    link.href = conv.conversation_url;
    link.textContent = `Open the test call (${conv.conversation_id})`;
    link.hidden = false;
    const tab = window.open(conv.conversation_url, "_blank");
    if (tab) tab.opener = null;
  } catch (err) {
    report(err, "Could not start a test call");
  } finally {
    button.disabled = !app.current;
  }
});

// ---- start ------------------------------------------------------------------------------------------------

for (const e of EMOTIONS) $("emotion").append(new Option(e, e));
const stored = sessionStorage.getItem(KEY_STORE);
if (stored) signIn(stored);
else $("api-key").focus();
