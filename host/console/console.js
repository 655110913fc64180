// The console's one script (first-party): confirmation dialogs, opening a
// run from its row, and the live grid over server-sent events. Pages work
// without it; it only adds these.
"use strict";

// Dialogs: a button with data-dialog="ID" opens <dialog id="ID">; a button
// with data-close closes the dialog it is in.
document.addEventListener("click", (event) => {
  const opener = event.target.closest("[data-dialog]");
  if (opener) {
    const dialog = document.getElementById(opener.dataset.dialog);
    if (dialog) {
      dialog.showModal();
    }
    return;
  }
  const closer = event.target.closest("[data-close]");
  if (closer) {
    closer.closest("dialog")?.close();
  }
});

// A run opens from its row, by click or double-click, outside its controls.
document.addEventListener("dblclick", (event) => {
  const row = event.target.closest("tr[data-href]");
  if (row && !event.target.closest("a, button, form, dialog")) {
    window.location.assign(row.dataset.href);
  }
});

// The live grid: the server sends the grid again whenever a run changes.
// The stream closes while the tab is hidden and reopens when it shows; a
// grid that arrives while a dialog is open waits until it closes, and
// focus stays on the control that had it.
(() => {
  const region = document.querySelector("[data-live]");
  if (!region) {
    return;
  }
  let source = null;
  let pending = null;
  const swap = (html) => {
    if (document.querySelector("dialog[open]")) {
      pending = html;
      return;
    }
    const focused = document.activeElement && document.activeElement.id;
    region.innerHTML = html;
    region.dataset.updates = String(Number(region.dataset.updates || 0) + 1);
    if (focused) {
      document.getElementById(focused)?.focus();
    }
  };
  document.addEventListener("close", () => {
    if (pending !== null) {
      const html = pending;
      pending = null;
      swap(html);
    }
  }, true);
  const open = () => {
    if (source) {
      return;
    }
    source = new EventSource(region.dataset.live);
    source.addEventListener("grid", (event) => swap(event.data));
    region.dataset.stream = "open";
  };
  const close = () => {
    if (source) {
      source.close();
      source = null;
    }
    region.dataset.stream = "paused";
  };
  document.addEventListener("visibilitychange", () => (document.hidden ? close() : open()));
  if (!document.hidden) {
    open();
  }
})();

// The task form: the preview of the next fires follows the schedule's
// fields as they change, and picking a plugin brings its parameters.
(() => {
  const form = document.querySelector("form[data-schedule-form]");
  const target = document.getElementById("preview");
  if (!form || !target) {
    return;
  }
  let timer = null;
  const refresh = async () => {
    const body = new URLSearchParams(new FormData(form));
    const response = await fetch(target.dataset.preview, { method: "POST", body, credentials: "same-origin" });
    if (response.ok) {
      target.innerHTML = await response.text();
      target.dataset.updates = String(Number(target.dataset.updates || 0) + 1);
    }
  };
  const later = (event) => {
    if (event.target.name === "plugin") {
      form.querySelector("button[value=plugin]")?.click();
      return;
    }
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  };
  form.addEventListener("input", later);
  form.addEventListener("change", later);
})();
