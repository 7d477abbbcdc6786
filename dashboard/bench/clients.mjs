// N dashboards kept open on a busy coordinator, as the page behaves: each
// holds the event stream (/api/events) and, on every change event, fetches
// the sweeps list and the newest sweep's page again. Used by
// bench/dashboard.sh; runs until SIGTERM, then prints what it did.
const { BASE, CLIENTS = "50" } = process.env;
let requests = 0, bytes = 0, events = 0, errors = 0;
let stop = false;

async function get(path) {
  try {
    const r = await fetch(`${BASE}${path}`);
    const b = await r.arrayBuffer();
    requests++;
    bytes += b.byteLength;
    if (!r.ok) errors++;
    return r.ok && path === "/api/sweeps" ? JSON.parse(Buffer.from(b).toString()) : null;
  } catch {
    errors++;
    return null;
  }
}

async function dashboard() {
  while (!stop) {
    try {
      const r = await fetch(`${BASE}/api/events`);
      const reader = r.body.getReader();
      let buf = "";
      let refreshing = false;
      while (!stop) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += Buffer.from(value).toString();
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const msg = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (!msg.includes("event: change")) continue;
          events++;
          if (refreshing) continue; // the page coalesces too: one refresh at a time
          refreshing = true;
          (async () => {
            const sweeps = await get("/api/sweeps");
            if (sweeps && sweeps.length) await get(`/api/sweeps/${sweeps[0].id}`);
            refreshing = false;
          })();
        }
      }
    } catch {
      errors++;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

process.on("SIGTERM", () => {
  stop = true;
  console.log(`${CLIENTS} dashboards: ${events} change events, ${requests} page fetches (${(bytes / 2 ** 20).toFixed(1)} MiB), ${errors} errors`);
  process.exit(0);
});
// Wait for the server.
for (;;) {
  try { await fetch(`${BASE}/api/session`); break; } catch { await new Promise((r) => setTimeout(r, 100)); }
}
for (let i = 0; i < Number(CLIENTS); i++) dashboard();
