// Chart options shared by the dashboard (main.js) and the static HTML
// report (report.js), so the two draw the same charts. Pure functions:
// data in, an ECharts option out. A value that is null (a metric no job
// reported) is left out, never drawn as zero.

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];

const MUTED = { color: "#6b7280", fontSize: 13, fontWeight: "normal" };
const fixed = (d) => (v) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));

/** A title in the middle of an empty chart, or none. */
export function emptyTitle(empty, text) {
  return empty ? { show: true, text, left: "center", top: "middle", textStyle: MUTED } : { show: false };
}

/**
 * Learning curves: one line per series of [epoch, value] points. Points
 * whose value is null are dropped, and a series left empty is not drawn.
 * series: [{ name, data, color?, dashed? }]
 */
export function curveOption(metric, series) {
  const lines = series
    .map((s) => ({ ...s, data: s.data.filter(([, y]) => y !== null && y !== undefined && Number.isFinite(y)) }))
    .filter((s) => s.data.length)
    .map((s) => ({
      name: s.name, type: "line", data: s.data, color: s.color,
      showSymbol: s.data.length < 40, symbolSize: s.dashed ? 3 : 4,
      lineStyle: s.dashed ? { type: "dashed", width: 1 } : undefined,
    }));
  return {
    animation: false,
    tooltip: { trigger: "axis", valueFormatter: fixed(4) },
    legend: { type: "scroll", top: 0 },
    grid: { left: 60, right: 20, top: 40, bottom: 40 },
    xAxis: { type: "value", name: "epoch", nameLocation: "middle", nameGap: 25, minInterval: 1 },
    yAxis: { type: "value", name: metric, scale: true },
    graphic: [],
    title: emptyTitle(!lines.length, `no ${metric} reported`),
    series: lines,
  };
}

/** How often members disagree: a labelled square matrix of shares in [0, 1]. */
export function disagreementOption(labels, matrix) {
  const data = [];
  matrix.forEach((row, i) => row.forEach((v, j) => data.push([j, i, v === null ? null : Math.round(v * 1000) / 10])));
  const max = Math.max(1, ...data.map((d) => d[2] ?? 0));
  return {
    animation: false,
    tooltip: { formatter: (p) => `${labels[p.value[1]]} vs ${labels[p.value[0]]}: ${p.value[2]}% of rows` },
    grid: { left: 150, right: 20, top: 10, bottom: 110 },
    xAxis: { type: "category", data: labels, axisLabel: { rotate: 45, interval: 0 }, splitArea: { show: true } },
    yAxis: { type: "category", data: labels, inverse: true, axisLabel: { interval: 0 }, splitArea: { show: true } },
    visualMap: { min: 0, max, calculable: false, orient: "horizontal", left: "center", bottom: 0, itemHeight: 120, text: [`${max.toFixed(1)}%`, "0%"], inRange: { color: ["#f8fafc", "#1d4ed8"] } },
    series: [{ type: "heatmap", data, label: { show: labels.length <= 12, formatter: (p) => `${p.value[2]}` } }],
  };
}

/**
 * Per-class accuracy of the best member and of the ensemble: grouped bars
 * for up to 40 classes, else a scatter (member across, ensemble up, the
 * diagonal where they agree) that stays readable with 500 classes.
 * Classes without training rows are left out.
 */
export function perClassOption(best, ens, support, bestName) {
  const n = best.length;
  const pctAxis = (name) => ({ type: "value", name, nameLocation: "middle", nameGap: 32, min: 0, max: 1, interval: 0.2, axisLabel: { formatter: (v) => v.toFixed(1) } });
  if (n <= 40) {
    const classes = [...Array(n).keys()].filter((c) => support[c] > 0);
    return {
      animation: false,
      tooltip: { trigger: "axis", valueFormatter: fixed(3) },
      legend: { top: 0 },
      grid: { left: 60, right: 20, top: 40, bottom: 50 },
      xAxis: { type: "category", name: "class", nameLocation: "middle", nameGap: 30, data: classes.map(String) },
      yAxis: pctAxis("accuracy"),
      series: [
        { name: `best member (${bestName})`, type: "bar", color: PALETTE[0], data: classes.map((c) => best[c]) },
        { name: "ensemble", type: "bar", color: PALETTE[1], data: classes.map((c) => ens[c]) },
      ],
    };
  }
  const better = [];
  const worse = [];
  for (let c = 0; c < n; c++) if (support[c] > 0) (ens[c] >= best[c] ? better : worse).push([best[c], ens[c], c, support[c]]);
  const dots = (name, color, data) => ({ name, type: "scatter", symbolSize: 5, color, itemStyle: { opacity: 0.6 }, data });
  return {
    animation: false,
    tooltip: { formatter: (p) => (p.seriesType === "scatter" ? `class ${p.value[2]} (${p.value[3]} rows): member ${p.value[0].toFixed(3)}, ensemble ${p.value[1].toFixed(3)}` : "") },
    legend: { top: 0 },
    grid: { left: 70, right: 30, top: 40, bottom: 60 },
    xAxis: pctAxis(`best member's accuracy (${bestName})`),
    yAxis: pctAxis("ensemble's accuracy"),
    series: [
      dots(`ensemble at least as good (${better.length})`, PALETTE[2], better),
      dots(`ensemble worse (${worse.length})`, PALETTE[1], worse),
      { name: "no change", type: "line", silent: true, showSymbol: false, color: "#9ca3af", lineStyle: { type: "dashed", width: 1 }, data: [[0, 0], [1, 1]] },
    ],
  };
}
