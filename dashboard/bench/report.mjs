// The static report in Chromium: from opening the file until its charts
// are drawn by the dashboard's script (body[data-charts="drawn"]). Used by
// bench/dashboard.sh with the 500-class report of
// coordinator/benches/report_500.rs. REPORT (a path), RUNS, SHOT (optional
// screenshot path).
import { chromium } from "playwright-core";
import { resolve } from "node:path";

const { REPORT, RUNS = "5", SHOT } = process.env;
if (!REPORT) throw new Error("REPORT is not set");
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const times = [];
let charts = 0;
for (let i = 0; i < Number(RUNS); i++) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const t0 = Date.now();
  await page.goto(`file://${resolve(REPORT)}`);
  await page.waitForFunction(() => document.body.dataset.charts === "drawn", null, { timeout: 60000, polling: 10 });
  times.push(Date.now() - t0);
  if (errors.length) throw new Error(`script errors in the report: ${errors.join("; ")}`);
  charts = await page.locator('figure[data-drawn="echarts"]').count();
  if (SHOT && i === 0) await page.screenshot({ path: SHOT, fullPage: true });
  await context.close();
}
await browser.close();
times.sort((a, b) => a - b);
console.log(`report opened to ${charts} drawn charts, ms over ${RUNS} runs: median ${times[Math.floor(times.length / 2)]}, min ${times[0]}, max ${times[times.length - 1]}`);
