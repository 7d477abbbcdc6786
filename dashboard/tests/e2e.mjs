// The dashboard in a real browser: Debian's Chromium, headless, driven by
// Playwright. Run by tests/dashboard.rs, which starts a coordinator with
// tokens required, a CPU agent and a sweep, and passes:
//   BASE      the dashboard's URL (http://127.0.0.1:PORT)
//   OWNER     the sweep owner's user token      OTHER  another user's token
//   SWEEP     the sweep's id                    SHOTS  where screenshots go
//   CHROMIUM  the browser (default /usr/bin/chromium)
// Exits non-zero with a message naming the step that failed.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const { BASE, OWNER, OTHER, SWEEP, SHOTS = "screenshots" } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
for (const [k, v] of Object.entries({ BASE, OWNER, OTHER, SWEEP })) {
  if (!v) throw new Error(`${k} is not set`);
}
mkdirSync(SHOTS, { recursive: true });

let step = "start";
const log = (s) => {
  step = s;
  console.log(`e2e: ${s}`);
};
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
try {
  // A laptop's screen.
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  log("reads need a token: the sweeps page asks to sign in");
  await page.goto(`${BASE}/`);
  await page.getByText("Sign in needed").waitFor();

  log("a wrong token is refused with a clear message");
  await page.goto(`${BASE}/sign-in`);
  await page.fill("#token", "sfu_not-a-token");
  await page.click("#sign-in");
  await page.getByText(/Sign-in failed: .*unknown or revoked token/).waitFor();

  log("sign in as the other user");
  await page.fill("#token", OTHER);
  await page.click("#sign-in");
  await page.getByText("signed in as ben").waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "sweepfold_session");
  if (!session || !session.httpOnly || session.sameSite !== "Strict") {
    throw new Error(`the session cookie is not HttpOnly and SameSite=Strict: ${JSON.stringify(session)}`);
  }

  log("the sweeps page lists the sweep");
  await page.goto(`${BASE}/`);
  await page.locator(`a[href="/sweeps/${SWEEP}"]`).waitFor();
  await page.screenshot({ path: `${SHOTS}/sweeps.png`, fullPage: true });

  log("the sweep page: progress and a learning curve advance without a reload");
  await page.click(`a[href="/sweeps/${SWEEP}"]`);
  await page.locator("#progress").waitFor();
  await page.evaluate(() => { window.__notReloaded = true; });
  const progress0 = await page.locator("#progress").textContent();
  const points = () => page.locator("#curves").getAttribute("data-points").then(Number);
  const points0 = await points();
  await page.waitForFunction(
    ([p0, n0]) => document.querySelector("#progress").textContent !== p0 &&
      Number(document.querySelector("#curves").dataset.points) > n0,
    [progress0, points0], { timeout: 90000 });
  if (!(await page.evaluate(() => window.__notReloaded))) throw new Error("the page reloaded");
  console.log(`e2e: progress "${progress0}" -> "${await page.locator("#progress").textContent()}", curve points ${points0} -> ${await points()}`);

  log("the leaderboard keeps its sort and selection across live updates");
  await page.click('th[data-col="index"]');
  await page.click('#leaderboard tr[data-key="1"]');
  const before = await page.locator('th[data-col="index"]').getAttribute("class");
  const n1 = await points();
  await page.waitForFunction((n) => Number(document.querySelector("#curves").dataset.points) > n, n1, { timeout: 60000 });
  if ((await page.locator('th[data-col="index"]').getAttribute("class")) !== before) throw new Error("the sort was lost");
  if (!(await page.locator('#leaderboard tr[data-key="1"]').getAttribute("class"))?.includes("selected")) {
    throw new Error("the selection was lost");
  }
  if (await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1)) {
    throw new Error("the sweep page is wider than a laptop's screen");
  }
  await page.screenshot({ path: `${SHOTS}/sweep.png`, fullPage: true });

  log("a cross-site request (no request header) is refused");
  const forged = await page.evaluate(async (id) => {
    const r = await fetch(`/api/sweeps/${id}/cancel`, { method: "POST" });
    return [r.status, await r.text()];
  }, SWEEP);
  if (forged[0] !== 403 || !forged[1].includes("cross-site request refused")) {
    throw new Error(`a forged cancel got ${forged}`);
  }

  log("a non-owner's cancel is refused");
  page.once("dialog", (d) => d.accept());
  await page.click("#cancel");
  await page.getByText("Cancel refused:").waitFor();
  const refusal = await page.locator(".msg.error").first().textContent();
  if (!refusal.includes("only `ana` or an admin may cancel it")) throw new Error(`unexpected refusal: ${refusal}`);

  log("a running job's page: history, epochs and a live log tail");
  const running = page.locator("#jobs tr", { has: page.locator(".state.running") }).locator('a[href^="/jobs/"]').first();
  await running.click();
  await page.locator("#log").waitFor();
  await page.getByText("State history").waitFor();
  const epochLines = () => page.locator("#log").textContent().then((t) => (t.match(/^epoch \d+/gm) || []).length);
  await page.waitForFunction(() => /^epoch \d+/m.test(document.querySelector("#log").textContent), null, { timeout: 30000 });
  const lines0 = await epochLines();
  await page.waitForFunction((n) => (document.querySelector("#log").textContent.match(/^epoch \d+/gm) || []).length > n, lines0, { timeout: 30000 });
  console.log(`e2e: log tail ${lines0} -> ${await epochLines()} epoch lines without a reload`);
  await page.screenshot({ path: `${SHOTS}/job.png`, fullPage: true });

  log("the cluster page: the agent's memory and the usage history");
  await page.click('a[data-nav="cluster"]');
  await page.locator('[data-agent="box1"]').waitFor();
  await page.locator("#history .card canvas").first().waitFor();
  await page.screenshot({ path: `${SHOTS}/cluster.png`, fullPage: true });

  log("an unreachable coordinator gets a clear message");
  await page.route("**/api/**", (route) => route.abort("connectionrefused"));
  await page.goto(`${BASE}/sweeps/${SWEEP}`).catch(() => {});
  await page.getByText("is unreachable").waitFor();
  await page.screenshot({ path: `${SHOTS}/unreachable.png` });
  await page.unroute("**/api/**");

  log("the owner signs in and cancels");
  await page.goto(`${BASE}/sign-in`);
  await page.fill("#token", OWNER);
  await page.click("#sign-in");
  await page.getByText("signed in as ana").waitFor();
  await page.goto(`${BASE}/sweeps/${SWEEP}`);
  await page.locator("#progress").waitFor();
  page.once("dialog", (d) => d.accept());
  await page.click("#cancel");
  await page.getByText(/Cancelled \d+ job\(s\)\./).waitFor();
  await page.locator("#cancel:disabled").waitFor();

  log("the sweep's HTML report draws the dashboard's charts");
  await page.goto(`${BASE}/api/sweeps/${SWEEP}/report.html`);
  await page.waitForFunction(() => document.body.dataset.charts === "drawn");
  const drawn = await page.locator('figure[data-drawn="echarts"] svg').count();
  if (drawn < 1) throw new Error("the report drew no chart");
  if (await page.locator("figure .fallback").count()) throw new Error("a report chart kept its SVG fallback");
  await page.screenshot({ path: `${SHOTS}/report.png`, fullPage: true });

  if (errors.length) throw new Error(`script errors in the page: ${errors.join("; ")}`);
  log("done");
} catch (e) {
  console.error(`e2e: FAILED at "${step}": ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
