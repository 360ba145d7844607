// The review app's only script: keyboard review, alert buttons, logout. Every action is a
// call to the record's JSON API with the session's CSRF token; the server enforces roles.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const statusBar = document.getElementById("status");

function say(message, isError) {
  statusBar.textContent = message;
  statusBar.className = isError ? "error" : "";
}

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let detail = "";
    try { detail = (await response.json()).detail || ""; } catch (e) { /* no JSON body */ }
    throw new Error(`${response.status} ${detail}`);
  }
  return response;
}

const queue = document.getElementById("queue");
if (queue) {
  const parts = () => Array.from(queue.querySelectorAll("li.part"));
  let current = 0;
  const select = (i) => {
    const all = parts();
    if (!all.length) return;
    current = Math.max(0, Math.min(i, all.length - 1));
    all.forEach((el, k) => el.classList.toggle("selected", k === current));
    all[current].scrollIntoView({ block: "nearest" });
  };
  const nextOpen = () => {
    const all = parts();
    const after = all.findIndex((el, k) => k > current && !el.classList.contains("done"));
    select(after >= 0 ? after : current);
  };
  async function review(decision, withLabel) {
    const el = parts()[current];
    if (!el) return;
    const body = { decision };
    if (withLabel) body.label = el.querySelector("select.label").value;
    try {
      await api("POST", `/v1/inspections/${el.dataset.id}/reviews`, body);
      el.classList.add("done");
      el.querySelector(".review-state").textContent = decision + (withLabel ? ` (${body.label})` : "");
      say(`part ${el.dataset.id}: ${decision}`);
      nextOpen();
    } catch (err) {
      say(`not saved: ${err.message}`, true);
    }
  }
  // Boxes drawn with the mouse, in the image's own pixels (the overlay is the stored image).
  const drawn = new Map();
  queue.querySelectorAll(".shot").forEach((shot) => {
    let start = null;
    let box = null;
    const point = (event) => {
      const r = shot.getBoundingClientRect();
      return [Math.max(0, Math.min(event.clientX - r.left, r.width)), Math.max(0, Math.min(event.clientY - r.top, r.height))];
    };
    shot.addEventListener("mousedown", (event) => {
      event.preventDefault();
      start = point(event);
      box = document.createElement("div");
      box.className = "drawn";
      shot.appendChild(box);
      select(parts().indexOf(shot.closest("li.part")));
    });
    shot.addEventListener("mousemove", (event) => {
      if (!start) return;
      const [x, y] = point(event);
      Object.assign(box.style, {
        left: `${Math.min(x, start[0])}px`, top: `${Math.min(y, start[1])}px`,
        width: `${Math.abs(x - start[0])}px`, height: `${Math.abs(y - start[1])}px`,
      });
    });
    shot.addEventListener("mouseup", (event) => {
      if (!start) return;
      const [x, y] = point(event);
      const img = shot.querySelector("img");
      if (!img || !img.naturalWidth) { box.remove(); say("the image has not loaded yet; draw again", true); return; }
      const sx = img.naturalWidth / shot.clientWidth;
      const sy = img.naturalHeight / shot.clientHeight;
      const xyxy = [Math.min(x, start[0]) * sx, Math.min(y, start[1]) * sy, Math.max(x, start[0]) * sx, Math.max(y, start[1]) * sy];
      start = null;
      if (xyxy[2] - xyxy[0] < 1 || xyxy[3] - xyxy[1] < 1) { box.remove(); return; }
      const id = shot.closest("li.part").dataset.id;
      drawn.set(id, [...(drawn.get(id) || []), xyxy.map((v) => Math.round(v * 10) / 10)]);
      say(`part ${id}: ${drawn.get(id).length} box(es) drawn; b saves, x clears`);
    });
  });
  // An anomaly part's overlay with or without its heatmap: the same image, so boxes drawn on
  // either are in the image's own pixels.
  function showHeatmap(el, on) {
    const img = el.querySelector("img[data-heatmap]");
    const toggle = el.querySelector("input.heat-toggle");
    if (!img || !toggle) return;
    toggle.checked = on;
    img.src = on ? img.dataset.heatmap : img.dataset.plain;
  }
  queue.addEventListener("change", (event) => {
    if (!event.target.matches("input.heat-toggle")) return;
    showHeatmap(event.target.closest("li.part"), event.target.checked);
    event.target.blur();
  });
  function toggleHeatmap() {
    const el = parts()[current];
    const toggle = el && el.querySelector("input.heat-toggle");
    if (toggle) showHeatmap(el, !toggle.checked);
  }
  function clearBoxes() {
    const el = parts()[current];
    if (!el) return;
    drawn.delete(el.dataset.id);
    el.querySelectorAll(".drawn").forEach((b) => b.remove());
  }
  async function saveBoxes() {
    const el = parts()[current];
    const boxes = el && drawn.get(el.dataset.id);
    if (!boxes) { say("draw a box on the image first", true); return; }
    const label = el.querySelector("select.label").value;
    const decision = queue.dataset.queue === "audit" ? "escape" : "confirmed";
    try {
      await api("POST", `/v1/inspections/${el.dataset.id}/reviews`, {
        decision, label, boxes: boxes.map((box) => ({ class_name: label, score: 1, box })),
      });
      el.classList.add("done");
      el.querySelector(".review-state").textContent = `${decision} (${label}, ${boxes.length} box(es))`;
      say(`part ${el.dataset.id}: ${decision} with ${boxes.length} box(es)`);
      nextOpen();
    } catch (err) {
      say(`not saved: ${err.message}`, true);
    }
  }
  const audit = queue.dataset.queue === "audit";
  document.addEventListener("keydown", (event) => {
    if (["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) || event.altKey || event.ctrlKey || event.metaKey) return;
    const keys = audit
      ? { g: () => review("good"), e: () => review("escape", true) }
      : { c: () => review("confirmed"), f: () => review("false_reject"), r: () => review("confirmed", true) };
    keys.b = saveBoxes;
    keys.x = clearBoxes;
    keys.h = toggleHeatmap;
    keys.j = keys.ArrowDown = () => select(current + 1);
    keys.k = keys.ArrowUp = () => select(current - 1);
    if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
  });
  // A chosen class hands the keys back to the queue.
  queue.addEventListener("change", (event) => {
    if (event.target.matches("select.label")) event.target.blur();
  });
  // Touching a part (its class list, its image) makes it the one the keys act on.
  queue.addEventListener("focusin", (event) => {
    const el = event.target.closest("li.part");
    if (el) select(parts().indexOf(el));
  });
  queue.addEventListener("click", (event) => {
    const el = event.target.closest("li.part");
    if (el) select(parts().indexOf(el));
  });
  const firstOpen = parts().findIndex((el) => !el.classList.contains("done"));
  select(firstOpen >= 0 ? firstOpen : 0);
}

document.querySelectorAll("tr.alert button").forEach((button) => {
  button.addEventListener("click", async () => {
    const row = button.closest("tr");
    const action = button.classList.contains("ack") ? "acknowledge" : "resolve";
    try {
      const answer = await (await api("POST", `/v1/alerts/${row.dataset.id}/${action}`)).json();
      row.className = `alert ${answer.state}`;
      row.querySelector(".state").textContent = answer.state + (answer.acknowledged_by ? ` by ${answer.acknowledged_by}` : "");
      if (action === "resolve") row.querySelectorAll("button").forEach((b) => b.remove());
      else button.remove();
      say(`alert ${row.dataset.id}: ${answer.state}`);
    } catch (err) {
      say(`not saved: ${err.message}`, true);
    }
  });
});

const logoutButton = document.getElementById("logout");
if (logoutButton) {
  logoutButton.addEventListener("click", async () => {
    try { await api("POST", "/v1/logout"); } finally { window.location = "/login"; }
  });
}
