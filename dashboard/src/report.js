// Draws the static HTML report's charts with ECharts and the same options
// as the dashboard (charts.js). The report (coordinator/src/report.rs)
// inlines this bundle and the chart data (a JSON script element), so the
// file works offline; each chart replaces its hand-drawn SVG fallback.
import * as echarts from "echarts/core";
import { BarChart, HeatmapChart, LineChart, ScatterChart } from "echarts/charts";
import { GridComponent, LegendComponent, TitleComponent, TooltipComponent, VisualMapComponent } from "echarts/components";
import { SVGRenderer } from "echarts/renderers";
import { PALETTE, curveOption, disagreementOption, perClassOption } from "./charts.js";

echarts.use([BarChart, HeatmapChart, LineChart, ScatterChart, GridComponent, LegendComponent, TitleComponent, TooltipComponent, VisualMapComponent, SVGRenderer]);

function option(spec) {
  switch (spec.kind) {
    case "curves":
      return curveOption(spec.metric, spec.series.map((s, i) => ({ name: s.name, data: s.points, color: PALETTE[i % PALETTE.length] })));
    case "disagreement":
      return disagreementOption(spec.labels, spec.matrix);
    case "per_class":
      return perClassOption(spec.best, spec.ensemble, spec.support, spec.best_name);
    default:
      return null;
  }
}

const data = JSON.parse(document.getElementById("report-data").textContent);
for (const figure of document.querySelectorAll("figure[data-chart]")) {
  const spec = data.charts[figure.dataset.chart];
  const opt = spec && option(spec);
  if (!opt) continue;
  const el = document.createElement("div");
  el.className = "echart";
  if (spec.kind === "disagreement") el.style.height = `${Math.max(320, 140 + 26 * spec.labels.length)}px`;
  if (spec.kind === "per_class" && spec.best.length > 40) Object.assign(el.style, { height: "520px", maxWidth: "560px" });
  figure.querySelector(".fallback")?.remove();
  if (spec.title) {
    const caption = document.createElement("figcaption");
    caption.className = "caption";
    caption.textContent = spec.title;
    figure.append(caption);
  }
  figure.append(el);
  // Rendered as SVG so that the report prints sharply.
  echarts.init(el, null, { renderer: "svg" }).setOption(opt);
  figure.dataset.drawn = "echarts";
}
document.body.dataset.charts = "drawn";
