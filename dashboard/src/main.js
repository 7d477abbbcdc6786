// The sweepfold dashboard: one document whose script draws the page the URL
// names (/, /sweeps/NAME, /jobs/ID, /cluster), from the coordinator's JSON
// (/api/...), kept live by its server-sent events (/api/events).
//
// Live updates never reload the page: a change event makes the page fetch
// its data again and update its tables and charts in place, so a table
// keeps its sort, selection and scroll. A page in the background closes its
// event stream (it costs the coordinator nothing) and catches up when shown.

import * as echarts from "echarts/core";
import { BarChart, LineChart, ParallelChart } from "echarts/charts";
import {
  DataZoomComponent,
  GridComponent,
  LegendComponent,
  ParallelComponent,
  TitleComponent,
  TooltipComponent,
} from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";
import { PALETTE, curveOption, emptyTitle } from "./charts.js";

echarts.use([
  BarChart, LineChart, ParallelChart, DataZoomComponent, GridComponent, LegendComponent,
  ParallelComponent, TitleComponent, TooltipComponent, CanvasRenderer,
]);

// ---------------------------------------------------------------- helpers

/** Creates an element: h("td", {class: "num"}, "1.0", child, ...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const pct = (v) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(2)}%`);
const num = (v, d = 4) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
const gib = (b) => `${(b / 2 ** 30).toFixed(1)} GiB`;
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "—");
const ago = (ms) => {
  if (!ms) return "—";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
};
/** A GiB axis from 0 to (at least) a GPU's whole memory in round steps. */
const gibScale = (totalBytes) => {
  const gib = Math.max(1, Math.ceil(totalBytes / 2 ** 30));
  const step = [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 40, 50, 64, 100].find((s) => gib / s <= 5) ?? Math.ceil(gib / 5);
  return { min: 0, max: Math.ceil(gib / step) * step, interval: step };
};
const badge = (s) => h("span", { class: `state ${s}` }, s);
const paramText = (p) =>
  p && typeof p === "object"
    ? Object.entries(p).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ")
    : "";

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Fetches JSON from the coordinator; says clearly when it is unreachable. */
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      credentials: "same-origin",
      ...options,
      headers: { accept: "application/json", ...(options.headers || {}) },
    });
  } catch (e) {
    banner.unreachable();
    throw new HttpError(0, `the coordinator at ${location.host} is unreachable`);
  }
  banner.reachable();
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new HttpError(response.status, body.error || response.statusText);
  return body;
}

/** A state-changing request: carries the header cross-site requests cannot. */
const post = (path, body, method = "POST") =>
  api(path, {
    method,
    headers: { "content-type": "application/json", "x-sweepfold-request": "1" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

const banner = {
  el: () => document.getElementById("banner"),
  down: false,
  unreachable() {
    this.down = true;
    const el = this.el();
    el.hidden = false;
    el.className = "error";
    el.textContent = `The coordinator at ${location.host} is unreachable. Retrying every few seconds; what you see may be out of date.`;
  },
  reachable() {
    if (!this.down) return;
    this.down = false;
    this.el().hidden = true;
  },
};

// ---------------------------------------------------------------- tables

/**
 * A table that is updated in place: rows are keyed, the sort column and
 * direction, the selected row and the scroll position survive updates.
 */
class LiveTable {
  constructor(columns, { id, key, onSelect, sort, desc = false, maxHeight } = {}) {
    this.columns = columns;
    this.key = key;
    this.onSelect = onSelect;
    this.sortBy = sort ?? null;
    this.desc = desc;
    this.selected = null;
    this.filter = null;
    this.rows = [];
    this.tbody = h("tbody");
    this.head = h("tr", {}, columns.map((c, i) =>
      h("th", { class: c.num ? "num" : "", "data-col": c.id, onclick: () => this.sortOn(i) }, c.label)));
    this.el = h("div", { class: "scroll", id, style: maxHeight ? `max-height:${maxHeight}` : null },
      h("table", {}, h("thead", {}, this.head), this.tbody));
  }

  sortOn(i) {
    const id = this.columns[i].id;
    if (this.sortBy === id) this.desc = !this.desc;
    else {
      this.sortBy = id;
      this.desc = !!this.columns[i].num;
    }
    this.render();
  }

  update(rows) {
    this.rows = rows;
    this.render();
  }

  setFilter(keys) {
    this.filter = keys;
    this.render();
  }

  render() {
    let rows = this.filter ? this.rows.filter((r) => this.filter.has(this.key(r))) : this.rows.slice();
    const col = this.columns.find((c) => c.id === this.sortBy);
    if (col) {
      const v = col.sort || col.value;
      rows.sort((a, b) => {
        const x = v(a), y = v(b);
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * (this.desc ? -1 : 1);
      });
    }
    for (const th of this.head.children) {
      th.classList.toggle("sorted", th.dataset.col === this.sortBy);
      th.classList.toggle("desc", th.dataset.col === this.sortBy && this.desc);
    }
    const trs = rows.map((r) => {
      const k = this.key(r);
      return h("tr", {
        "data-key": k,
        class: k === this.selected ? "selected" : "",
        onclick: () => {
          this.selected = this.selected === k ? null : k;
          this.render();
          this.onSelect?.(this.selected, r);
        },
      }, this.columns.map((c) => {
        const cell = c.render ? c.render(r) : c.value(r);
        return h("td", { class: [c.num ? "num" : "", c.wrap ? "wrap" : ""].join(" ").trim() || null }, cell);
      }));
    });
    // Replacing the rows keeps the scroll container, so the scroll stays.
    this.tbody.replaceChildren(...trs);
  }
}

// ---------------------------------------------------------------- charts

const charts = new Set();
function chart(el) {
  const c = echarts.init(el, null, { renderer: "canvas" });
  charts.add(c);
  return c;
}
addEventListener("resize", () => charts.forEach((c) => c.resize()));
function disposeCharts() {
  charts.forEach((c) => c.dispose());
  charts.clear();
}

// ---------------------------------------------------------------- pages

const app = () => document.getElementById("app");

/** The sweeps page: every sweep with its progress and best result. */
function sweepsPage() {
  const table = new LiveTable([
    { id: "name", label: "Sweep", value: (s) => s.name, render: (s) => h("a", { href: `/sweeps/${s.id}` }, s.name) },
    { id: "owner", label: "Owner", value: (s) => s.owner },
    { id: "method", label: "Method", value: (s) => s.method },
    { id: "state", label: "State", value: (s) => s.state, render: (s) => badge(s.state) },
    {
      id: "progress", label: "Progress", value: (s) => s.counts.succeeded / Math.max(1, s.counts.total),
      render: (s) => {
        const done = s.counts.succeeded + s.counts.failed + s.counts.cancelled;
        return h("span", {}, h("span", { class: "progress" }, h("span", { style: `width:${(100 * done) / Math.max(1, s.counts.total)}%` })),
          ` ${done}/${s.counts.total} jobs` + (s.counts.running ? `, ${s.counts.running} running` : "") + (s.counts.failed ? `, ${s.counts.failed} failed` : ""));
      },
    },
    { id: "best", label: "Best OOF acc.", num: true, value: (s) => s.best_oof_accuracy, render: (s) => pct(s.best_oof_accuracy) },
    { id: "ens", label: "Ensemble", value: (s) => s.ensemble?.oof_accuracy ?? null, render: (s) => (s.ensemble ? `${s.ensemble.method} ${pct(s.ensemble.oof_accuracy)}` : "—") },
    { id: "submitted", label: "Submitted", value: (s) => s.submitted_at_ms, render: (s) => ago(s.submitted_at_ms) },
    { id: "waiting", label: "Note", value: (s) => s.waiting || "", wrap: true },
  ], { key: (s) => String(s.id), sort: "submitted", desc: true, maxHeight: "70vh" });
  app().replaceChildren(h("h1", {}, "Sweeps"), table.el);
  const load = async () => {
    const sweeps = await api("/api/sweeps");
    table.update(sweeps);
    if (!sweeps.length) table.tbody.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No sweeps yet: coordinator submit sweep.yaml")));
  };
  return { load, onChange: (c) => c.all || c.sweeps.length > 0 };
}

/** A sweep: leaderboard, curves, parameters, jobs, ensemble, downloads. */
function sweepPage(ref) {
  let page = null;
  let metric = "val_accuracy";
  let folds = null; // per-fold curves of the selected configuration
  const title = h("h1", {}, ref);
  const facts = h("div", { class: "card" });
  const msg = h("div", { class: "msg" });
  const cancelButton = h("button", { class: "danger", id: "cancel", onclick: () => cancel() }, "Cancel sweep");
  const links = h("div", { class: "links" });
  const curveEl = h("div", { class: "chart", id: "curves" });
  const parEl = h("div", { class: "chart", id: "parallel" });
  const metricSelect = h("select", { id: "metric", onchange: (e) => { metric = e.target.value; drawCurves(); } },
    ["val_accuracy", "val_loss", "train_loss"].map((m) => h("option", { value: m }, m)));
  const boardNote = h("span", { class: "legend" });
  const board = new LiveTable([
    { id: "rank", label: "#", num: true, value: (c) => c.rank ?? null, render: (c) => c.rank ?? "" },
    { id: "index", label: "Config", num: true, value: (c) => c.index },
    { id: "status", label: "Status", value: (c) => c.status, render: (c) => badge(c.stopped_at_epoch ? `stopped` : c.status) },
    { id: "oof", label: "OOF acc.", num: true, value: (c) => c.oof_accuracy, render: (c) => pct(c.oof_accuracy) },
    { id: "folds", label: "Folds", num: true, value: (c) => c.folds_done, render: (c) => `${c.folds_done}/${page?.sweep.folds ?? "?"}` },
    { id: "foldacc", label: "Fold acc. (mean)", num: true, value: (c) => mean(c.fold_accuracies), render: (c) => pct(mean(c.fold_accuracies)) },
    { id: "loss", label: "OOF log loss", num: true, value: (c) => c.oof_log_loss, render: (c) => num(c.oof_log_loss) },
    { id: "gpu", label: "GPU time", num: true, value: (c) => c.gpu_seconds, render: (c) => `${(c.gpu_seconds / 60).toFixed(1)} min` },
    { id: "params", label: "Parameters", value: (c) => paramText(c.params), wrap: true },
  ], {
    id: "leaderboard", key: (c) => String(c.index), sort: "oof", desc: true,
    onSelect: async (key) => {
      folds = null;
      if (key !== null) folds = await api(`/api/sweeps/${encodeURIComponent(ref)}/curves?config=${key}`).catch(() => null);
      drawCurves();
    },
  });
  const jobs = new LiveTable([
    { id: "id", label: "Job", num: true, value: (j) => j.id, render: (j) => h("a", { href: `/jobs/${j.id}` }, j.id) },
    { id: "config", label: "Config", num: true, value: (j) => j.config },
    { id: "fold", label: "Fold", num: true, value: (j) => j.fold },
    { id: "state", label: "State", value: (j) => j.state, render: (j) => badge(j.state) },
    { id: "attempt", label: "Attempt", num: true, value: (j) => j.attempt },
    { id: "agent", label: "Agent", value: (j) => j.agent },
    { id: "gpu", label: "GPU", value: (j) => j.gpu_uuid || "" },
    { id: "updated", label: "Updated", value: (j) => j.updated_at_ms, render: (j) => ago(j.updated_at_ms) },
    { id: "error", label: "Last error", value: (j) => j.last_error, wrap: true },
  ], { id: "jobs", key: (j) => String(j.id), sort: "id" });
  const ensembleBox = h("div", { class: "card", id: "ensemble" });
  app().replaceChildren(
    title, facts, h("div", { class: "toolbar" }, cancelButton, links), msg,
    h("h2", {}, "Leaderboard ", boardNote), board.el,
    h("div", { class: "grid2" },
      h("div", {}, h("h2", {}, "Learning curves"), h("div", { class: "toolbar" }, "metric ", metricSelect,
        h("span", { class: "legend" }, "mean over folds; click a configuration to see its folds")), curveEl),
      h("div", {}, h("h2", {}, "Parameters against OOF accuracy"),
        h("div", { class: "toolbar legend" }, "drag along an axis to filter the leaderboard"), parEl)),
    h("h2", {}, "Ensemble"), ensembleBox,
    h("h2", {}, "Jobs"), jobs.el,
  );
  const curves = chart(curveEl);
  const parallel = chart(parEl);
  parallel.on("axisareaselected", () => {
    const series = parallel.getModel().getSeries()[0];
    const active = series.getRawIndicesByActiveState("active");
    const all = page.configs.filter((c) => c.oof_accuracy !== null);
    board.setFilter(active.length === all.length ? null : new Set(active.map((i) => String(all[i].index))));
  });

  async function cancel() {
    if (!confirm(`Cancel every open job of sweep ${page.sweep.name}?`)) return;
    try {
      const r = await post(`/api/sweeps/${page.sweep.id}/cancel`);
      msg.className = "msg ok";
      msg.textContent = `Cancelled ${r.cancelled} job(s).`;
      await load();
    } catch (e) {
      msg.className = "msg error";
      msg.textContent = `Cancel refused: ${e.message}`;
    }
  }

  function drawCurves() {
    if (!page) return;
    const series = [];
    const byConfig = new Map();
    for (const p of page.curves) {
      if (!byConfig.has(p.config)) byConfig.set(p.config, []);
      byConfig.get(p.config).push(p);
    }
    for (const [config, pts] of byConfig) {
      const data = pts.filter((p) => p[metric] !== null).map((p) => [p.epoch, p[metric]]);
      // A metric no fold reported is absent: no series, never zeros.
      if (!data.length) continue;
      series.push({ name: `config ${config}`, data, color: PALETTE[config % PALETTE.length] });
    }
    // How many mean points are drawn (the browser test watches it grow).
    curveEl.dataset.points = String(series.reduce((n, s) => n + s.data.length, 0));
    if (folds) {
      const byFold = new Map();
      for (const p of folds) {
        if (p[metric] === null) continue;
        if (!byFold.has(p.fold)) byFold.set(p.fold, []);
        byFold.get(p.fold).push([p.epoch, p[metric]]);
      }
      for (const [fold, data] of byFold) {
        series.push({ name: `config ${board.selected} fold ${fold}`, data, dashed: true });
      }
    }
    // The same chart as the static report's (charts.js).
    curves.setOption(curveOption(metric, series), { replaceMerge: ["series"] });
  }

  function drawParallel() {
    const axes = page.axes;
    const complete = page.configs.filter((c) => c.oof_accuracy !== null);
    const parallelAxis = axes.map((a, i) => {
      const axis = { dim: i, name: a.name };
      if (a.scale === "log") return { ...axis, type: "log" };
      if (a.scale === "category") return { ...axis, type: "category", data: a.categories.map(String) };
      return { ...axis, type: "value", scale: true };
    });
    parallelAxis.push({ dim: axes.length, name: "OOF accuracy", type: "value", scale: true });
    parallel.setOption({
      animation: false,
      title: emptyTitle(!complete.length, "no complete configuration yet"),
      parallel: { left: 50, right: 80, top: 40, bottom: 30 },
      parallelAxis,
      series: [{
        type: "parallel", lineStyle: { width: 2, opacity: 0.7 }, inactiveOpacity: 0.05, activeOpacity: 1,
        data: complete.map((c) => [...axes.map((a) => {
          const v = c.params?.[a.name];
          return a.scale === "category" ? String(v) : v;
        }), c.oof_accuracy]),
      }],
    }, { notMerge: true });
  }

  function drawEnsemble() {
    const e = page.sweep.ensemble;
    if (!e) {
      ensembleBox.replaceChildren(h("p", { class: "muted" }, "No ensemble yet: it is made when the sweep finishes."));
      return;
    }
    const members = Array.isArray(e.members) ? e.members : [];
    ensembleBox.replaceChildren(
      h("dl", { class: "facts" },
        h("dt", {}, "method"), h("dd", {}, e.method),
        h("dt", {}, "OOF accuracy"), h("dd", {}, `${pct(e.oof_accuracy)} (best member ${e.best_member}: ${pct(e.best_member_accuracy)})`),
        h("dt", {}, "test rows"), h("dd", {}, e.test_rows),
        h("dt", {}, "made"), h("dd", {}, when(e.created_at_ms))),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Member"), h("th", { class: "num" }, "Weight"), h("th", { class: "num" }, "OOF acc."), h("th", {}, "Parameters"))),
        h("tbody", {}, members.map((m) => h("tr", {},
          h("td", {}, `${m.sweep_name}:${m.config_index}`), h("td", { class: "num" }, num(m.weight, 3)),
          h("td", { class: "num" }, pct(m.oof_accuracy)), h("td", { class: "wrap" }, paramText(m.params)))))),
    );
  }

  async function load() {
    page = await api(`/api/sweeps/${encodeURIComponent(ref)}`);
    const s = page.sweep;
    title.textContent = `Sweep ${s.name}`;
    document.title = `${s.name} · sweepfold`;
    const done = s.counts.succeeded + s.counts.failed + s.counts.cancelled;
    facts.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "owner"), h("dd", {}, s.owner),
      h("dt", {}, "state"), h("dd", {}, badge(s.state)),
      h("dt", {}, "method"), h("dd", {}, s.method + (s.planned_configurations ? ` (${s.configurations}/${s.planned_configurations} configurations proposed)` : ` (${s.configurations} configurations)`)),
      h("dt", {}, "progress"), h("dd", { id: "progress" }, `${done}/${s.counts.total} jobs done, ${s.counts.running} running, ${s.counts.queued} queued, ${s.counts.failed} failed`),
      h("dt", {}, "data set"), h("dd", {}, `${s.dataset}, ${s.folds} folds`),
      h("dt", {}, "best OOF accuracy"), h("dd", { id: "best" }, s.best_oof_accuracy === null ? "—" : `${pct(s.best_oof_accuracy)} (config ${s.best_config})`),
      s.waiting ? [h("dt", {}, "waiting"), h("dd", {}, s.waiting)] : null));
    cancelButton.disabled = s.state !== "active";
    links.replaceChildren(...[
      s.ensemble && h("a", { href: `/api/sweeps/${s.id}/submission.csv` }, "submission.csv"),
      s.ensemble && h("a", { href: `/api/sweeps/${s.id}/probabilities.npy` }, "probabilities.npy"),
      s.counts.succeeded > 0 && h("a", { href: `/api/sweeps/${s.id}/report.html`, target: "_blank" }, "HTML report"),
    ].filter(Boolean));
    boardNote.textContent = page.leaderboard_error ? `(out-of-fold figures unavailable: ${page.leaderboard_error})` : "";
    board.update(page.configs);
    jobs.update(page.jobs);
    if (board.selected !== null) folds = await api(`/api/sweeps/${encodeURIComponent(ref)}/curves?config=${board.selected}`).catch(() => folds);
    drawCurves();
    drawParallel();
    drawEnsemble();
  }
  return { load, onChange: (c) => c.all || (page && c.sweeps.includes(page.sweep.id)) };
}

function mean(v) {
  return v && v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
}

/** A job: its history, epoch metrics and log tail. */
function jobPage(id) {
  let page = null;
  const title = h("h1", {}, `Job ${id}`);
  const facts = h("div", { class: "card" });
  const chartEl = h("div", { class: "chart", id: "job-chart" });
  const history = h("div", { class: "scroll" });
  const epochs = new LiveTable([
    { id: "attempt", label: "Attempt", num: true, value: (e) => e.attempt },
    { id: "epoch", label: "Epoch", num: true, value: (e) => e.epoch },
    { id: "train_loss", label: "Train loss", num: true, value: (e) => e.train_loss, render: (e) => num(e.train_loss) },
    { id: "val_loss", label: "Val loss", num: true, value: (e) => e.val_loss, render: (e) => num(e.val_loss) },
    { id: "val_accuracy", label: "Val acc.", num: true, value: (e) => e.val_accuracy, render: (e) => pct(e.val_accuracy) },
    { id: "lr", label: "LR", num: true, value: (e) => e.learning_rate, render: (e) => (e.learning_rate === null ? "—" : Number(e.learning_rate).toExponential(2)) },
    { id: "ips", label: "img/s", num: true, value: (e) => e.images_per_second, render: (e) => num(e.images_per_second, 0) },
    { id: "peak", label: "Peak memory", num: true, value: (e) => e.peak_memory_bytes, render: (e) => (e.peak_memory_bytes ? gib(e.peak_memory_bytes) : "—") },
    { id: "elapsed", label: "Elapsed", num: true, value: (e) => e.elapsed_seconds, render: (e) => (e.elapsed_seconds === null ? "—" : `${e.elapsed_seconds.toFixed(0)} s`) },
  ], { key: (e) => `${e.attempt}:${e.epoch}`, sort: "epoch" });
  const log = h("pre", { class: "log", id: "log" });
  app().replaceChildren(title, facts, h("div", { class: "grid2" },
    h("div", {}, h("h2", {}, "Epoch metrics"), chartEl),
    h("div", {}, h("h2", {}, "State history"), history)),
  h("h2", {}, "Epochs"), epochs.el, h("h2", {}, "Log tail"), log);
  const c = chart(chartEl);

  async function load() {
    page = await api(`/api/jobs/${encodeURIComponent(id)}`);
    const j = page.job;
    document.title = `job ${j.id} · sweepfold`;
    title.textContent = `Job ${j.id}: ${page.sweep_name} config ${j.config} fold ${j.fold}`;
    facts.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "sweep"), h("dd", {}, h("a", { href: `/sweeps/${page.sweep_id}` }, page.sweep_name), ` (owner ${page.owner})`),
      h("dt", {}, "state"), h("dd", {}, badge(j.state), ` attempt ${j.attempt}`, j.failures ? `, ${j.failures} failure(s)` : ""),
      h("dt", {}, "agent"), h("dd", {}, j.agent ? `${j.agent} ${j.gpu_uuid}` : "—"),
      h("dt", {}, "parameters"), h("dd", {}, paramText(page.params) || "—"),
      j.last_error ? [h("dt", {}, "last error"), h("dd", { class: "msg error" }, j.last_error)] : null));
    const t = h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "From"), h("th", {}, "To"), h("th", { class: "num" }, "Attempt"), h("th", {}, "Reason"))),
      h("tbody", {}, page.history.map((e) => h("tr", {}, h("td", {}, when(e.at_ms)), h("td", {}, e.from || "—"), h("td", {}, badge(e.to)), h("td", { class: "num" }, e.attempt), h("td", { class: "wrap" }, e.reason)))));
    history.replaceChildren(t);
    epochs.update(page.epochs);
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    const live = ["queued", "assigned", "running"].includes(j.state);
    log.textContent = page.log_tail || (live ? "(no output yet)" : "(the job wrote no output)");
    if (atBottom) log.scrollTop = log.scrollHeight;
    const current = page.epochs.filter((e) => e.attempt === j.attempt);
    const line = (key, axis) => {
      const data = current.filter((e) => e[key] !== null).map((e) => [e.epoch, e[key]]);
      return data.length ? { name: key, type: "line", yAxisIndex: axis, data } : null;
    };
    const series = [line("train_loss", 0), line("val_loss", 0), line("val_accuracy", 1)].filter(Boolean);
    // A metric the job did not report has no line, and no axis either.
    const hasLoss = series.some((s) => s.yAxisIndex === 0);
    c.setOption({
      animation: false,
      tooltip: { trigger: "axis" },
      legend: { top: 0 },
      grid: { left: 60, right: 60, top: 40, bottom: 40 },
      xAxis: { type: "value", name: "epoch", nameLocation: "middle", nameGap: 25, minInterval: 1 },
      yAxis: [{ type: "value", name: "loss", scale: true, show: hasLoss }, { type: "value", name: "accuracy", scale: true }],
      series,
    }, { replaceMerge: ["series"] });
  }
  return { load, onChange: (c) => c.all || (page && c.jobs.includes(page.job.id)) };
}

/** The cluster: live GPU memory by owner, and the usage history. */
function clusterPage() {
  const hoursSelect = h("select", { id: "hours", onchange: () => loadHistory() },
    [[6, "6 hours"], [24, "1 day"], [72, "3 days"], [168, "7 days"]].map(([v, t]) => h("option", { value: v, selected: v === 24 }, t)));
  const cards = h("div", { id: "agents" });
  const historyBox = h("div", { id: "history" });
  app().replaceChildren(h("h1", {}, "Cluster"), cards,
    h("h2", {}, "GPU usage history ", hoursSelect), h("p", { class: "legend" }, "Peak memory per minute (per 15 minutes after two days), by owner of the sweepfold jobs and by other processes."), historyBox);
  const liveCharts = new Map();
  let lastHistory = 0;

  function ownersOf(gpu) {
    return Object.keys(gpu.owners);
  }

  async function load() {
    const agents = await api("/api/cluster");
    const alive = new Set();
    if (!agents.length) cards.replaceChildren(h("p", { class: "muted" }, "No agent has connected yet: start one with `agent run --coordinator URL`."));
    else if (cards.querySelector("p.muted")) cards.replaceChildren();
    for (const a of agents) {
      alive.add(a.name);
      let card = cards.querySelector(`[data-agent="${CSS.escape(a.name)}"]`);
      if (!card) {
        card = h("div", { class: "card", "data-agent": a.name }, h("div", { class: "head" }), h("div", { class: "chart small" }));
        cards.append(card);
        liveCharts.set(a.name, chart(card.querySelector(".chart")));
      }
      card.querySelector(".head").replaceChildren(...[h("strong", {}, a.name), ` ${a.hostname} `,
        badge(a.connected ? "connected" : "disconnected"), ` seen ${ago(a.last_seen_ms)} · ${a.running_jobs} job(s)`,
        a.unhealthy_reason && h("span", { class: "msg error" }, ` ${a.unhealthy_reason}`),
        a.cpu_only && h("span", { class: "muted" }, " (CPU only: no GPU memory to show)"),
      ].filter(Boolean));
      const c = liveCharts.get(a.name);
      const gpus = a.gpus;
      // A CPU-only agent has no memory bars: its card is the line above.
      card.querySelector(".chart").hidden = !gpus.length;
      if (!gpus.length) continue;
      const owners = [...new Set(gpus.flatMap(ownersOf))].sort();
      const labels = gpus.map((g) => `GPU ${g.index} ${g.model}`);
      const series = owners.map((o, i) => ({
        name: o, type: "bar", stack: "mem", color: PALETTE[i % PALETTE.length],
        data: gpus.map((g) => (g.owners[o] || 0) / 2 ** 30),
      }));
      series.push({ name: "other processes", type: "bar", stack: "mem", color: "#f59e0b", data: gpus.map((g) => g.foreign_bytes / 2 ** 30) });
      series.push({ name: "unattributed", type: "bar", stack: "mem", color: "#9ca3af",
        data: gpus.map((g) => Math.max(0, g.used_bytes - g.foreign_bytes - Object.values(g.owners).reduce((x, y) => x + y, 0)) / 2 ** 30) });
      series.push({ name: "free", type: "bar", stack: "mem", color: "#e5e7eb", data: gpus.map((g) => g.free_bytes / 2 ** 30) });
      card.querySelector(".chart").style.height = `${Math.max(110, 60 + 38 * gpus.length)}px`;
      c.resize();
      c.setOption({
        animation: false,
        tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v) => `${Number(v).toFixed(2)} GiB` },
        legend: { top: 0 },
        grid: { left: 170, right: 30, top: 30, bottom: 25 },
        xAxis: { type: "value", name: "GiB", ...gibScale(Math.max(...gpus.map((g) => g.total_bytes))) },
        yAxis: { type: "category", data: labels },
        series,
      }, { notMerge: true });
    }
    for (const card of [...cards.querySelectorAll("[data-agent]")]) {
      if (!alive.has(card.dataset.agent)) card.remove();
    }
    if (Date.now() - lastHistory > 30000) await loadHistory();
  }

  async function loadHistory() {
    lastHistory = Date.now();
    const rows = await api(`/api/usage?hours=${hoursSelect.value}`);
    const byGpu = new Map();
    for (const r of rows) {
      const k = `${r.agent} GPU ${r.gpu}`;
      if (!byGpu.has(k)) byGpu.set(k, []);
      byGpu.get(k).push(r);
    }
    if (!byGpu.size) {
      historyBox.replaceChildren(h("p", { class: "muted" }, "No readings in this window yet."));
      return;
    }
    historyBox.replaceChildren();
    for (const [k, rs] of byGpu) {
      const el = h("div", { class: "chart small" });
      historyBox.append(h("div", { class: "card" }, h("strong", {}, `${k}`), ` ${rs[rs.length - 1].model}, ${gib(rs[rs.length - 1].total_bytes)}`, el));
      const c = chart(el);
      const owners = [...new Set(rs.flatMap((r) => Object.keys(r.owners)))].sort();
      const point = (r, v) => [r.start_ms, v / 2 ** 30];
      const series = owners.map((o, i) => ({
        name: o, type: "line", stack: "mem", areaStyle: {}, showSymbol: false, step: "start", color: PALETTE[i % PALETTE.length],
        data: rs.map((r) => point(r, r.owners[o] || 0)),
      }));
      series.push({ name: "other processes", type: "line", stack: "mem", areaStyle: {}, showSymbol: false, step: "start", color: "#f59e0b", data: rs.map((r) => point(r, r.foreign_bytes)) });
      series.push({ name: "used (all)", type: "line", showSymbol: false, step: "start", color: "#111827", lineStyle: { width: 1 }, data: rs.map((r) => point(r, r.used_bytes)) });
      c.setOption({
        animation: false,
        tooltip: { trigger: "axis", valueFormatter: (v) => `${Number(v).toFixed(2)} GiB` },
        legend: { top: 0 },
        grid: { left: 50, right: 20, top: 30, bottom: 30 },
        xAxis: { type: "time" },
        yAxis: { type: "value", name: "GiB", ...gibScale(Math.max(...rs.map((r) => r.total_bytes))) },
        series,
      });
    }
  }
  return { load, onChange: (c) => c.all || c.cluster };
}

/** Sign in with a user token (the coordinator sets a session cookie). */
function signInPage(next) {
  const input = h("input", { type: "password", id: "token", placeholder: "sfu_…", autocomplete: "off" });
  const msg = h("div", { class: "msg" });
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        await post("/api/session", { token: input.value });
        await showWho();
        navigate(next || "/");
      } catch (err) {
        msg.className = "msg error";
        msg.textContent = `Sign-in failed: ${err.message}`;
      }
    },
  }, h("p", {}, "Paste your user token (from `coordinator token create NAME`)."), input, " ", h("button", { type: "submit", id: "sign-in" }, "Sign in"), msg);
  app().replaceChildren(h("h1", {}, "Sign in"), h("div", { class: "card" }, form));
  return { load: async () => {}, onChange: () => false };
}

// ---------------------------------------------------------------- shell

let current = null;
let session = null;

async function showWho() {
  const who = document.getElementById("who");
  try {
    session = await api("/api/session");
  } catch {
    return;
  }
  if (session.user) {
    who.replaceChildren(`signed in as ${session.user}${session.admin ? " (admin)" : ""}`,
      h("button", { id: "sign-out", onclick: async () => { await post("/api/session", undefined, "DELETE"); await showWho(); route(); } }, "Sign out"));
  } else if (session.tokens_required) {
    who.replaceChildren(h("a", { href: `/sign-in?next=${encodeURIComponent(location.pathname)}` }, "Sign in"));
  } else {
    who.replaceChildren("");
  }
}

function pageFor(path) {
  let m;
  if (path === "/" || path === "/sweeps") return ["sweeps", sweepsPage()];
  if ((m = path.match(/^\/sweeps\/([^/]+)$/))) return ["sweeps", sweepPage(decodeURIComponent(m[1]))];
  if ((m = path.match(/^\/jobs\/(\d+)$/))) return ["sweeps", jobPage(m[1])];
  if (path === "/cluster") return ["cluster", clusterPage()];
  if (path === "/sign-in") return ["", signInPage(new URLSearchParams(location.search).get("next"))];
  app().replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "/" }, "All sweeps")));
  return ["", null];
}

async function refresh() {
  if (!current) return;
  try {
    await current.load();
  } catch (e) {
    if (e.status === 401) {
      app().replaceChildren(h("h1", {}, "Sign in needed"), h("p", {}, e.message, " ",
        h("a", { href: `/sign-in?next=${encodeURIComponent(location.pathname)}` }, "Sign in")));
    } else if (e.status === 0) {
      // The banner says so; the next event or retry catches up.
    } else {
      const el = document.getElementById("app");
      el.prepend(h("p", { class: "msg error" }, e.message));
    }
  }
}

function route() {
  disposeCharts();
  const [nav, page] = pageFor(location.pathname);
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
  current = page;
  refresh();
}

function navigate(path) {
  history.pushState(null, "", path);
  route();
}

// Links inside the app change the page without a reload.
document.addEventListener("click", (e) => {
  const a = e.target.closest("a");
  if (!a || a.target || e.ctrlKey || e.metaKey || e.shiftKey || !a.href.startsWith(location.origin)) return;
  const path = new URL(a.href).pathname;
  if (path.startsWith("/api/") || path === "/metrics") return;
  e.preventDefault();
  navigate(path + new URL(a.href).search);
});
addEventListener("popstate", route);

// ---------------------------------------------------------------- live

let events = null;
let pending = null;

function connect() {
  if (events || document.hidden) return;
  events = new EventSource("/api/events");
  const dot = document.getElementById("live");
  events.onopen = () => {
    dot.classList.add("on");
    banner.reachable();
  };
  events.addEventListener("change", (e) => {
    const change = JSON.parse(e.data);
    if (current?.onChange(change)) {
      // One refetch at a time; changes during it trigger one more.
      if (pending) pending.again = true;
      else run();
    }
  });
  events.onerror = () => {
    dot.classList.remove("on");
    // EventSource reconnects by itself; check whether the coordinator is up.
    fetch("/api/session", { credentials: "same-origin" }).then(() => banner.reachable(), () => banner.unreachable());
  };
}

async function run() {
  pending = { again: false };
  await refresh();
  const again = pending.again;
  pending = null;
  if (again) run();
}

function disconnect() {
  events?.close();
  events = null;
  document.getElementById("live").classList.remove("on");
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) disconnect();
  else {
    connect();
    refresh();
  }
});

// While the coordinator is unreachable, try again every few seconds.
setInterval(() => {
  if (banner.down && !document.hidden) refresh();
}, 4000);

showWho().then(() => {
  route();
  connect();
});
