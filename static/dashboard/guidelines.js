// The guidelines editor: the preview follows the markdown as you type. The server renders it
// (annotation.rendering: markdown-it, then nh3), so the preview is exactly what labellers see;
// requests are debounced and only the newest answer is shown.
import { request } from "./common.js";

const DEBOUNCE_MS = 300;

const form = document.getElementById("guidelines-form");
const textarea = form.querySelector("textarea[name=text]");
const preview = document.getElementById("preview");
const status = document.getElementById("preview-status");

let timer = null;
let latest = 0;

async function refresh() {
  const ticket = ++latest;
  const body = new URLSearchParams({ text: textarea.value });
  try {
    const answer = await request(form.dataset.previewUrl, { method: "POST", body });
    if (ticket !== latest) return; // a newer request is on its way
    if (!answer.ok || !answer.body || typeof answer.body.html !== "string") {
      status.textContent = `preview failed (${answer.status})`;
      return;
    }
    preview.innerHTML = answer.body.html; // sanitised by the server (nh3)
    preview.classList.remove("is-stale");
    status.textContent = "";
  } catch {
    if (ticket === latest) status.textContent = "preview unavailable (offline?)";
  }
}

function schedule() {
  preview.classList.add("is-stale");
  status.textContent = "updating…";
  clearTimeout(timer);
  timer = setTimeout(refresh, DEBOUNCE_MS);
}

textarea.addEventListener("input", schedule);
// Text typed before this module ran, or restored by the browser (back button): preview it too.
if (textarea.value !== textarea.defaultValue) schedule();
