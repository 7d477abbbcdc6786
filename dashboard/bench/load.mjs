// Page load of a big sweep in Chromium: from navigation until the
// leaderboard, the job table and the learning curves are drawn. Used by
// bench/dashboard.sh. BASE, SWEEP, ROWS (configurations), JOBS, RUNS.
import { chromium } from "playwright-core";

const { BASE, SWEEP, ROWS = "100", JOBS = "2000", RUNS = "5" } = process.env;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const times = [];
for (let i = 0; i < Number(RUNS); i++) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  const t0 = Date.now();
  await page.goto(`${BASE}/sweeps/${SWEEP}`);
  await page.waitForFunction(([rows, jobs]) =>
    document.querySelectorAll("#leaderboard tbody tr").length === rows &&
    document.querySelectorAll("#jobs tbody tr").length === jobs &&
    Number(document.querySelector("#curves")?.dataset.points) > 0,
  [Number(ROWS), Number(JOBS)], { timeout: 60000, polling: 20 });
  times.push(Date.now() - t0);
  await context.close();
}
await browser.close();
times.sort((a, b) => a - b);
console.log(`page load to a drawn sweep page (${ROWS} configurations, ${JOBS} jobs), ms over ${RUNS} runs: median ${times[Math.floor(times.length / 2)]}, min ${times[0]}, max ${times[times.length - 1]}`);
