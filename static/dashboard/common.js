// Helpers shared by the dashboard's page modules (each page loads one module, which imports
// this one). No inline handlers anywhere: pages wire their elements with addEventListener.

/** Django's CSRF token, from the {% csrf_token %} field the page renders. */
export function csrfToken() {
  const field = document.querySelector("input[name=csrfmiddlewaretoken]");
  return field ? field.value : "";
}

/** An element with a class and text (text goes in as textContent, never as HTML). */
export function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Forms with data-confirm="question" ask before they submit. */
export function confirmForms(root = document) {
  for (const form of root.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

/** fetch() with the session cookie and CSRF header; resolves to {ok, status, body}. */
export async function request(url, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const options = { method, headers, credentials: "same-origin" };
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  if (body instanceof FormData || body instanceof URLSearchParams) options.body = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  let data = null;
  if (response.status !== 204) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  return { ok: response.ok, status: response.status, body: data };
}

/** A number for people: fixed digits, no trailing noise. */
export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return String(Number(value.toFixed(digits)));
}

export const PALETTE = ["#2457d6", "#18794e", "#b42318", "#8a5a00", "#6b2fb3", "#0e7490", "#be185d"];
