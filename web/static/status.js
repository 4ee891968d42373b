// The status page's live parts: swap in fresh values every few seconds, and
// stream a model pull into the progress bar. No framework, no build step.
"use strict";
(() => {
  const page = document.getElementById("page");
  const live = document.getElementById("live");
  const every = Number(page.dataset.refresh || "2") * 1000;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    try {
      const resp = await fetch("/status/live", { cache: "no-store", credentials: "same-origin" });
      if (resp.redirected || resp.status === 401) {
        location.assign("/signin"); // the session ended
        return;
      }
      if (!resp.ok) throw new Error(String(resp.status));
      live.innerHTML = await resp.text();
      page.classList.remove("stale");
    } catch (err) {
      page.classList.add("stale");
    }
    timer = setTimeout(refresh, every);
  }
  timer = setTimeout(refresh, every);

  const form = document.getElementById("pull-form");
  const box = document.getElementById("pull");
  const bar = document.getElementById("pull-bar");
  const words = document.getElementById("pull-status");
  const button = document.getElementById("pull-button");

  function show(update) {
    if (update.error) {
      box.classList.add("failed");
      words.textContent = update.error;
      return;
    }
    bar.value = update.percent;
    words.textContent = update.text;
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      return body.error.message || String(resp.status);
    } catch (err) {
      return `The node answered ${resp.status}.`;
    }
  }

  // A node without Ollama offers no pull (the page says why instead).
  if (form) form.addEventListener("submit", async (event) => {
    event.preventDefault();
    box.hidden = false;
    box.classList.remove("failed");
    bar.value = 0;
    words.textContent = "Starting…";
    button.disabled = true;
    try {
      const resp = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
      if (!resp.ok) {
        show({ error: await errorText(resp) });
        return;
      }
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += value;
        let end;
        while ((end = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, end).trim();
          pending = pending.slice(end + 1);
          if (line) show(JSON.parse(line));
        }
      }
    } catch (err) {
      show({ error: `The pull was interrupted: ${err.message}` });
    } finally {
      button.disabled = false;
      refresh(); // the new model shows at once
    }
  });
})();
