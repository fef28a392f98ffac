// taskbuffer dashboard: renders the snapshot and the live updates of /api/events.
// Plain DOM, no inline handlers and no HTML strings built from data (a strict CSP applies).
"use strict";

(() => {
  const TERMINAL = new Set(["completed", "failed", "cancelled", "skipped"]);
  const MAX_EVENTS = 200;
  const EVENT_STATES = { started: "running", step: "running", retrying: "waiting", missed: "waiting" };
  const JOBS_PAGE = 20;
  const RUNS_SHOWN = 200; // rows of the runs panel (the snapshot lists as many)
  const RUNS_KEPT = 1000; // active runs the page holds from the live updates
  const BARS_PER_TASK = 5; // progress bars on a task's card
  const token = new URLSearchParams(location.search).get("token");

  const state = {
    features: {},
    statistics: {},
    tasks: new Map(),
    runs: new Map(),
    groups: [],
    schedules: [],
    services: [],
    events: [],
    paused: false,
    held: [],
    skipped: 0,
    jobs: { items: [], status: "", offset: 0, selected: null, loading: false },
  };

  // ----------------------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, String(value));
      else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function url(path, params) {
    const target = new URL(path, document.baseURI);
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== "" && value !== null && value !== undefined) target.searchParams.set(key, value);
    }
    return target;
  }

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  async function getJSON(path, params) {
    const response = await fetch(url(path, params), { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status + " " + (await response.text()).slice(0, 500));
    return response.json();
  }

  async function post(path, body) {
    const headers = Object.assign({ "Content-Type": "application/json" }, authHeaders());
    const response = await fetch(url(path), { method: "POST", headers, body: JSON.stringify(body || {}) });
    if (!response.ok) console.warn(path + ": HTTP " + response.status);
  }

  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
  const exact = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "long" });
  const UNITS = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];

  function relativeText(date) {
    const seconds = (date.getTime() - Date.now()) / 1000;
    for (const [unit, size] of UNITS) {
      if (Math.abs(seconds) >= size || unit === "second") {
        return relative.format(Math.round(seconds / size), unit);
      }
    }
    return "";
  }

  // A <time> showing "in 3 s" / "2 min ago", the exact instant in the browser's zone on hover.
  function timeEl(value) {
    if (value === null || value === undefined) return el("span", { className: "muted", text: "–" });
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    const node = el("time", { dateTime: date.toISOString(), title: exact.format(date) });
    node.dataset.at = String(date.getTime());
    node.textContent = relativeText(date);
    return node;
  }

  function refreshTimes() {
    for (const node of document.querySelectorAll("time[data-at]")) {
      node.textContent = relativeText(new Date(Number(node.dataset.at)));
    }
  }

  function badge(status) {
    return el("span", { className: "badge", "data-state": status, text: status });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 120) return seconds.toFixed(1) + " s";
    return (seconds / 60).toFixed(1) + " min";
  }

  // ----------------------------------------------------------------------------- filters

  // An option's value is the JSON of [key, value]: a key or a value may hold "=".
  function labelFilter() {
    const value = $("label-filter").value;
    return value ? JSON.parse(value) : null;
  }

  function labelText(key, value) {
    return (key.includes("=") ? JSON.stringify(key) : key) + "=" + value;
  }

  function labelsMatch(labels) {
    const filter = labelFilter();
    return filter === null || (labels || {})[filter[0]] === filter[1];
  }

  function taskVisible(name) {
    const task = state.tasks.get(name);
    return labelsMatch(task ? task.labels : {});
  }

  function updateLabelOptions() {
    const select = $("label-filter");
    const pairs = new Set();
    for (const task of state.tasks.values()) {
      for (const pair of Object.entries(task.labels || {})) pairs.add(JSON.stringify(pair));
    }
    const current = select.value;
    const wanted = ["", ...[...pairs].sort()];
    const have = [...select.options].map((option) => option.value);
    if (JSON.stringify(wanted) === JSON.stringify(have)) return;
    select.replaceChildren(...wanted.map((value) => el("option", {
      value, text: value ? labelText(...JSON.parse(value)) : "all",
    })));
    select.value = wanted.includes(current) ? current : "";
  }

  // ----------------------------------------------------------------------------- rendering

  function progressBar(steps, progress, attrs) {
    const fill = el("div", { className: "fill" });
    fill.style.width = Math.max(0, Math.min(100, progress)) + "%";
    const bar = el("div", { className: "bar", role: "progressbar", ariaValueNow: String(progress) }, fill);
    let at = 0;
    for (const step of (steps || []).slice(0, -1)) {
      at += step.percentage;
      const marker = el("span", { className: "marker", title: step.name });
      marker.style.left = Math.min(100, at) + "%";
      bar.append(marker);
    }
    return el("div", Object.assign({ className: "run", "data-progress": progress }, attrs), bar);
  }

  function activeStep(steps) {
    const step = (steps || []).find((s) => s.status === "active");
    return step ? step.name : null;
  }

  // A run that has not started has no steps yet: its bar shows the task's step markers.
  function runBar(run, taskSteps) {
    const parts = [run.state, activeStep(run.steps), run.progress + "%"];
    if (run.attempt > 1) parts.push("attempt " + run.attempt);
    if (run.blocked_by) parts.push("waits for " + run.blocked_by.join(" / "));
    const steps = run.steps.length ? run.steps : taskSteps;
    const node = progressBar(steps, run.progress, { "data-run-id": run.run_id, "data-state": run.state });
    node.append(el("span", { className: "run-label", text: parts.filter(Boolean).join(" · ") }));
    return node;
  }

  // Running runs first, then waiting ones in the order they would start (priority, then arrival).
  function runOrder(a, b) {
    if ((a.state === "running") !== (b.state === "running")) return a.state === "running" ? -1 : 1;
    if (a.state !== "running" && a.priority !== b.priority) return b.priority - a.priority;
    const at = (run) => run.started_at || run.queued_at || "";
    return at(a) < at(b) ? -1 : at(a) > at(b) ? 1 : 0;
  }

  function taskRuns(task) {
    const runs = [...state.runs.values()].filter((run) => run.task_name === task.name).sort(runOrder);
    const bars = runs.slice(0, BARS_PER_TASK).map((run) => runBar(run, task.steps));
    if (runs.length > BARS_PER_TASK) {
      bars.push(el("div", { className: "muted more-runs", text: "+ " + (runs.length - BARS_PER_TASK) + " more runs" }));
    }
    return bars;
  }

  function taskCard(task) {
    const head = el("header", null, el("span", { className: "name", text: task.name }), badge(task.status));
    for (const [key, value] of Object.entries(task.labels || {})) {
      head.append(el("span", { className: "chip", text: key + "=" + value }));
    }
    if (state.features.actions) {
      const run = el("button", { type: "button", text: "Run", title: "Trigger " + task.name });
      run.addEventListener("click", () => post("api/tasks/" + encodeURIComponent(task.name) + "/trigger", {}));
      head.append(run);
    }
    const facts = el("div", { className: "facts" },
      el("span", { text: "runs " + task.run_count }),
      el("span", { text: "errors " + task.error_count }),
      el("span", { text: "avg " + duration(task.average_duration) }),
      el("span", null, "last ", timeEl(task.last_run)),
      task.next_run ? el("span", null, "next ", timeEl(task.next_run)) : null,
      task.cron_schedule ? el("span", { text: "cron " + task.cron_schedule }) : null,
      task.version ? el("span", { text: "v" + task.version }) : null,
    );
    const card = el("article", { className: "task", "data-task": task.name, "data-status": task.status }, head, facts);
    if (task.last_error) card.append(el("div", { className: "error", text: task.last_error }));
    card.append(...taskRuns(task));
    return card;
  }

  function renderTasks() {
    const status = $("status-filter").value;
    const tasks = [...state.tasks.values()]
      .filter((task) => labelsMatch(task.labels) && (!status || task.status === status))
      .sort((a, b) => a.name.localeCompare(b.name));
    $("tasks").replaceChildren(...tasks.map(taskCard));
    $("tasks-count").textContent = tasks.length + " of " + state.tasks.size;
    $("tasks-empty").hidden = tasks.length > 0;
  }

  function renderRuns() {
    $("runs-panel").hidden = !state.features.runs;
    if (!state.features.runs) return;
    const runs = [...state.runs.values()].filter((run) => taskVisible(run.task_name)).sort(runOrder);
    $("runs").replaceChildren(...runs.slice(0, RUNS_SHOWN).map((run) => el("tr", { "data-run-id": run.run_id },
      el("td", { text: run.task_name }),
      el("td", null, badge(run.state)),
      el("td", { text: run.blocked_by ? run.blocked_by.join(" / ") : "" }),
      el("td", { className: "mini" }, progressBar(run.steps, run.progress, {})),
      el("td", { className: "num", text: run.attempt }),
      el("td", { className: "num", text: run.priority }),
      el("td", null, timeEl(run.started_at || run.queued_at)),
      el("td", { text: run.input === null ? "" : run.input }),
    )));
    // The statistics count every active run; the page holds at most RUNS_KEPT of them.
    const active = (state.statistics.running || 0) + (state.statistics.waiting || 0);
    const shown = Math.min(runs.length, RUNS_SHOWN);
    $("runs-count").textContent = shown === active ? String(shown) : shown + " of " + active;
    $("runs-empty").hidden = runs.length > 0;
  }

  function renderGroups() {
    $("groups").replaceChildren(...state.groups.map((group) => {
      const limits = [];
      if (group.max_concurrent !== null) limits.push("max " + group.max_concurrent + " per key");
      if (group.cooldown) limits.push("cooldown " + duration(group.cooldown));
      if (group.rate_limit) limits.push(group.rate_limit.max_per_window + " per " + duration(group.rate_limit.window));
      if (group.result_sharing !== "none") limits.push(group.result_sharing);
      const rows = group.keys.map((key) => el("tr", { "data-key": key.key },
        el("td", { text: key.key }),
        el("td", { className: "num", text: key.running }),
        el("td", { className: "num", text: key.waiting }),
      ));
      if (group.more_keys) rows.push(el("tr", null, el("td", { colSpan: 3, className: "muted", text: "+ " + group.more_keys + " quieter keys" })));
      return el("div", { className: "group", "data-group": group.name },
        el("h3", { text: group.name + " " }, el("span", { className: "muted", text: limits.join(", ") })),
        el("div", { className: "muted", text: group.running + " running, " + group.waiting + " waiting, " + group.tracked_keys + (group.tracked_keys === 1 ? " key" : " keys") }),
        rows.length ? el("table", null,
          el("thead", null, el("tr", null, el("th", { text: "Key" }), el("th", { className: "num", text: "Running" }), el("th", { className: "num", text: "Waiting" }))),
          el("tbody", null, ...rows)) : null,
      );
    }));
    $("groups-empty").hidden = state.groups.length > 0;
  }

  function renderSchedules() {
    const rows = state.schedules.filter((entry) => taskVisible(entry.task_name)).map((entry) => {
      const cell = el("td");
      if (state.features.actions && entry.schedule !== "once") {
        const button = el("button", { type: "button", text: "Deschedule" });
        button.addEventListener("click", () => post("api/tasks/" + encodeURIComponent(entry.task_name) + "/deschedule", {}));
        cell.append(button);
      }
      return el("tr", { "data-task": entry.task_name },
        el("td", { text: entry.task_name }), el("td", null, el("code", { text: entry.schedule })),
        el("td", null, timeEl(entry.next_run)), cell);
    });
    $("schedules").replaceChildren(...rows);
    $("schedules-empty").hidden = rows.length > 0;
  }

  function renderServices() {
    $("services-panel").hidden = !state.features.services;
    $("services").replaceChildren(...state.services.map((service) => el("tr", { "data-service": service.name },
      el("td", { text: service.name }),
      el("td", null, badge(service.state)),
      el("td", { className: "num", text: service.restart_count }),
      el("td", null, timeEl(service.last_health_check)),
      el("td", { className: "error", text: service.last_error || "" }),
    )));
  }

  function eventItem(event) {
    return el("li", { "data-type": event.type, "data-task": event.task },
      timeEl(event.timestamp),
      el("span", { className: "what", text: event.task }),
      el("span", { className: "badge", "data-state": EVENT_STATES[event.type] || event.type, text: event.type }),
      event.step_name ? el("span", { text: event.step_name }) : null,
      event.error ? el("span", { className: "error", text: event.error }) : null,
    );
  }

  function renderEvents() {
    const shown = state.events.filter((event) => labelsMatch(event.labels));
    $("events").replaceChildren(...shown.slice().reverse().map(eventItem));
    const notes = [];
    if (state.paused) notes.push("paused, " + state.held.length + " new");
    if (state.skipped) notes.push(state.skipped + " not shown (too fast)");
    $("events-note").textContent = notes.join("; ");
    $("pause").textContent = state.paused ? "Resume" : "Pause";
  }

  function renderStatistics() {
    const s = state.statistics;
    $("statistics").textContent = [s.tasks + " tasks", s.running + " running", s.waiting + " waiting", s.scheduled + " scheduled"].join(" · ");
  }

  let pending = false;
  function render() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      updateLabelOptions();
      renderStatistics();
      renderTasks();
      renderRuns();
      renderGroups();
      renderSchedules();
      renderServices();
      renderEvents();
      $("jobs-panel").hidden = !state.features.jobs;
    });
  }

  // ----------------------------------------------------------------------------- jobs

  function jobRow(job) {
    const open = el("button", { type: "button", className: "link", text: job.id.slice(0, 12), title: job.id });
    open.addEventListener("click", () => showJob(job.id));
    return el("tr", { "data-job-id": job.id, "data-status": job.status },
      el("td", null, open), el("td", { text: job.task_name }), el("td", null, badge(job.status)),
      el("td", { className: "num", text: job.attempts + "/" + job.max_attempts }),
      el("td", null, timeEl(job.created_at)), el("td", null, timeEl(job.finished_at)),
      el("td", { className: "error", text: job.error ? job.error.type + ": " + job.error.message : "" }));
  }

  function renderJobs() {
    const jobs = state.jobs.items.filter((job) => taskVisible(job.task_name));
    $("jobs").replaceChildren(...jobs.map(jobRow));
    const first = state.jobs.offset + 1;
    $("jobs-page").textContent = state.jobs.items.length ? first + "–" + (first + state.jobs.items.length - 1) : "none";
    $("jobs-prev").disabled = state.jobs.offset === 0;
    $("jobs-next").disabled = state.jobs.items.length < JOBS_PAGE;
  }

  async function loadJobs() {
    if (!state.features.jobs || state.jobs.loading) return;
    state.jobs.loading = true;
    try {
      const page = await getJSON("api/jobs", { status: state.jobs.status, offset: state.jobs.offset, limit: JOBS_PAGE });
      state.jobs.items = page.jobs;
      $("jobs-error").textContent = "";
      renderJobs();
    } catch (error) {
      $("jobs-error").textContent = error.message;
    } finally {
      state.jobs.loading = false;
    }
  }

  function jobActions(job) {
    const box = el("div", { className: "toolbar" });
    if (!state.features.actions) return box;
    const act = (verb) => {
      const button = el("button", { type: "button", text: verb[0].toUpperCase() + verb.slice(1) });
      button.addEventListener("click", async () => { await post("api/jobs/" + encodeURIComponent(job.id) + "/" + verb, {}); showJob(job.id); loadJobs(); });
      box.append(button);
    };
    if (job.status === "queued" || job.status === "running") act("cancel");
    if (job.status === "failed" || job.status === "cancelled") act("retry");
    return box;
  }

  async function showJob(id) {
    state.jobs.selected = id;
    let job;
    try {
      job = await getJSON("api/jobs/" + encodeURIComponent(id));
    } catch (error) {
      console.warn("job:", error.message);
      return;
    }
    const trail = el("table", null,
      el("thead", null, el("tr", null, ...["Worker", "Started", "Finished", "Outcome", "Error"].map((h) => el("th", { text: h })))),
      el("tbody", null, ...job.attempts_trail.map((a) => el("tr", null,
        el("td", { text: a.worker_id }), el("td", null, timeEl(a.started_at)), el("td", null, timeEl(a.finished_at)),
        el("td", null, badge(a.outcome || "running")), el("td", { className: "error", text: a.error || "" })))));
    const detail = $("job-detail");
    detail.replaceChildren(
      el("h3", { text: "Job " + job.id + " " }, badge(job.status)),
      el("div", { className: "muted", text: "task " + job.task_name + " · input " + job.input + (job.result !== null ? " · result " + job.result : "") }),
      jobActions(job),
      el("h4", { text: "Attempts" }), el("div", { className: "scroll" }, trail),
    );
    if (job.error) {
      detail.append(el("p", { className: "error", text: job.error.type + ": " + job.error.message }));
      if (job.error.traceback) {
        detail.append(el("details", { id: "job-traceback" }, el("summary", { text: "Traceback" }), el("pre", { text: job.error.traceback })));
      }
    }
    detail.hidden = false;
  }

  // ----------------------------------------------------------------------------- live data

  // A finished run leaves; a new one is kept while the page holds fewer than RUNS_KEPT (the
  // others show up with the next full snapshot).
  function applyRun(run) {
    if (TERMINAL.has(run.state)) state.runs.delete(run.run_id);
    else if (state.runs.has(run.run_id) || state.runs.size < RUNS_KEPT) state.runs.set(run.run_id, run);
  }

  function addEvents(events) {
    if (state.paused) {
      state.held.push(...events);
      if (state.held.length > MAX_EVENTS) state.held.splice(0, state.held.length - MAX_EVENTS);
      return;
    }
    state.events.push(...events);
    if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
  }

  function applySnapshot(data) {
    const jobsWereOn = state.features.jobs;
    state.features = data.features;
    state.statistics = data.statistics;
    state.tasks = new Map(data.tasks.map((task) => [task.name, task]));
    state.runs = new Map();
    data.runs.forEach(applyRun);
    state.groups = data.groups;
    state.schedules = data.schedules;
    state.services = data.services;
    state.events = [];
    state.skipped = 0;
    addEvents(data.events);
    $("jobs-error").textContent = data.jobs_error || "";
    if (state.features.jobs && !jobsWereOn) {
      state.jobs.items = data.jobs.slice(0, JOBS_PAGE);
      renderJobs();
    }
    render();
  }

  function applyUpdate(data) {
    state.statistics = data.statistics;
    for (const task of data.tasks) state.tasks.set(task.name, task);
    data.runs.forEach(applyRun);
    state.groups = data.groups;
    state.schedules = data.schedules;
    if (data.services) state.services = data.services;
    state.skipped += data.skipped;
    addEvents(data.events);
    render();
  }

  function setConnection(text) {
    const node = $("connection");
    node.dataset.state = text;
    node.textContent = text;
  }

  function connect() {
    const source = new EventSource(url("api/events", { token }));
    source.addEventListener("open", () => setConnection("open"));
    source.addEventListener("error", () => setConnection(source.readyState === EventSource.CLOSED ? "closed" : "connecting"));
    source.addEventListener("snapshot", (message) => applySnapshot(JSON.parse(message.data)));
    source.addEventListener("update", (message) => applyUpdate(JSON.parse(message.data)));
  }

  function applyTheme(theme) {
    if (theme) document.documentElement.dataset.theme = theme;
    else delete document.documentElement.dataset.theme;
  }

  function start() {
    const saved = localStorage.getItem("taskbuffer-theme") || "";
    $("theme").value = saved;
    applyTheme(saved);
    $("theme").addEventListener("change", (e) => {
      localStorage.setItem("taskbuffer-theme", e.target.value);
      applyTheme(e.target.value);
    });
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    $("label-filter").addEventListener("change", () => { render(); renderJobs(); });
    $("status-filter").addEventListener("change", render);
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      if (!state.paused) {
        const held = state.held;
        state.held = [];
        addEvents(held);
      }
      render();
    });
    $("job-status").addEventListener("change", (e) => { state.jobs.status = e.target.value; state.jobs.offset = 0; loadJobs(); });
    $("jobs-prev").addEventListener("click", () => { state.jobs.offset = Math.max(0, state.jobs.offset - JOBS_PAGE); loadJobs(); });
    $("jobs-next").addEventListener("click", () => { state.jobs.offset += JOBS_PAGE; loadJobs(); });
    setInterval(refreshTimes, 1000);
    setInterval(loadJobs, 2000);
    connect();
  }

  start();
})();
