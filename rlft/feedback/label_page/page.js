// The labelling page: one group at a time; a draft label per group, sent to /api/labels on submit.
"use strict";

const state = {
  batch: null,      // /api/batch: groups, manifest_sha256
  saved: {},        // group -> this annotator's stored label
  drafts: {},       // group -> label being edited
  current: 0,       // index of the group shown
  selected: 0,      // index of the image the keys act on
  labelled: 0,
};

const $ = (id) => document.getElementById(id);

function emptyLabel() {
  return { best: null, worst: null, deformed: [], unsafe: [] };
}

function copyLabel(label) {
  return { best: label.best, worst: label.worst, deformed: [...label.deformed], unsafe: [...label.unsafe] };
}

function draft() {
  const g = state.current;
  if (!state.drafts[g]) state.drafts[g] = state.saved[g] ? copyLabel(state.saved[g]) : emptyLabel();
  return state.drafts[g];
}

function annotator() {
  return $("annotator").value.trim();
}

function say(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "";
}

function showProgress() {
  $("progress").textContent = `${state.labelled} / ${state.batch.groups.length} labelled`;
}

function sameLabel(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function tag(name, className, text) {
  const node = document.createElement(name);
  node.className = className;
  node.textContent = text;
  return node;
}

function render() {
  const group = state.batch.groups[state.current];
  const label = draft();
  const saved = state.saved[state.current];
  const title = $("group-title");
  title.replaceChildren(`Group ${state.current + 1} of ${state.batch.groups.length}`);
  if (saved && sameLabel(copyLabel(saved), label)) title.append(tag("span", "done", "labelled \u2713"));
  else if (saved) title.append(tag("span", "unsaved", "changed, not submitted"));
  $("prompt").textContent = group.prompt;
  const images = $("images");
  images.replaceChildren();
  group.images.forEach((image, i) => {
    const card = document.createElement("figure");
    card.className = "card";
    card.dataset.image = image.id;
    card.classList.toggle("selected", i === state.selected);
    card.classList.toggle("is-best", label.best === image.id);
    card.classList.toggle("is-worst", label.worst === image.id);
    card.classList.toggle("is-deformed", label.deformed.includes(image.id));
    card.classList.toggle("is-unsafe", label.unsafe.includes(image.id));
    // Built node by node: nothing from the manifest is ever parsed as HTML.
    const img = document.createElement("img");
    img.alt = `image ${i + 1}`;
    img.src = image.url;
    img.onclick = () => select(i);
    const tags = tag("div", "tags", "");
    for (const action of ["best", "worst", "deformed", "unsafe"]) {
      const button = tag("button", action, action);
      button.onclick = () => { select(i); act(action); };
      tags.append(button);
    }
    card.append(tag("span", "number", String(i + 1)), img, tags);
    images.appendChild(card);
  });
}

function select(i) {
  if (i < state.batch.groups[state.current].images.length) state.selected = i;
  render();
}

function act(action) {
  const label = draft();
  const id = state.batch.groups[state.current].images[state.selected].id;
  if (action === "best" || action === "worst") {
    const other = action === "best" ? "worst" : "best";
    label[action] = label[action] === id ? null : id;
    if (label[other] === id) label[other] = null;
  } else {
    const flags = label[action];
    const at = flags.indexOf(id);
    if (at >= 0) flags.splice(at, 1); else flags.push(id);
  }
  render();
}

function go(step) {
  const count = state.batch.groups.length;
  state.current = (state.current + step + count) % count;
  state.selected = 0;
  say("");
  render();
}

async function submit() {
  if (!annotator()) { say("Enter your name (Annotator) before submitting.", "error"); $("annotator").focus(); return; }
  const group = state.current;
  const body = { annotator: annotator(), group, manifest_sha256: state.batch.manifest_sha256, ...draft() };
  const answer = await fetch("/api/labels", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const reply = await answer.json();
  if (!answer.ok) { say(`Not saved: ${reply.error}`, "error"); return; }
  state.saved[group] = copyLabel(body);
  state.labelled = reply.labelled;
  showProgress();
  // Move on to the next unlabelled group, unless the person already moved while this was in flight.
  const next = state.batch.groups.findIndex((g, i) => i > group && !state.saved[i]);
  if (next >= 0 && state.current === group) { state.current = next; state.selected = 0; }
  say(`Group ${group + 1} saved.`, "ok");
  render();
}

async function loadLabels() {
  state.saved = {};
  state.drafts = {};
  state.labelled = 0;
  if (annotator()) {
    const reply = await (await fetch(`/api/labels?annotator=${encodeURIComponent(annotator())}`)).json();
    for (const label of reply.labels) state.saved[label.group] = label;
    state.labelled = reply.labelled;
  }
  showProgress();
  render();
}

document.addEventListener("keydown", (event) => {
  if (event.target === $("annotator")) {
    if (event.key === "Enter") $("annotator").blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key >= "1" && key <= "8") select(Number(key) - 1);
  else if (key === "b") act("best");
  else if (key === "w") act("worst");
  else if (key === "d") act("deformed");
  else if (key === "u") act("unsafe");
  else if (key === "Enter") submit();
  else if (key === "ArrowRight") go(1);
  else if (key === "ArrowLeft") go(-1);
  else return;
  event.preventDefault();
});

async function start() {
  state.batch = await (await fetch("/api/batch")).json();
  $("annotator").value = localStorage.getItem("rlft-annotator") || "";
  $("annotator").addEventListener("change", () => {
    localStorage.setItem("rlft-annotator", annotator());
    loadLabels();
  });
  $("prev").onclick = () => go(-1);
  $("next").onclick = () => go(1);
  $("submit").onclick = submit;
  await loadLabels();
  document.body.dataset.ready = "true";
}

start();
