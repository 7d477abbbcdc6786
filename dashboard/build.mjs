// Bundles src/ into dist/ (index.html and content-hashed files under
// dist/assets/, plus report.js for the static report) for the
// coordinator's build.rs to embed. No CDN: everything the page needs is in
// the bundle.
import { build } from "esbuild";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename } from "node:path";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist/assets", { recursive: true });
const result = await build({
  entryPoints: ["src/main.js", "src/style.css"],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox110", "safari16"],
  outdir: "dist/assets",
  entryNames: "[name]-[hash]",
  metafile: true,
  legalComments: "linked",
  logLevel: "warning",
});
const outputs = Object.entries(result.metafile.outputs);
const find = (entry) => basename(outputs.find(([, o]) => o.entryPoint === entry)[0]);
const html = readFileSync("src/index.html", "utf8")
  .replace("%APP_JS%", `/assets/${find("src/main.js")}`)
  .replace("%APP_CSS%", `/assets/${find("src/style.css")}`);
writeFileSync("dist/index.html", html);
// The static HTML report's script: one self-contained file that the
// coordinator inlines into every report (coordinator/build.rs).
await build({
  entryPoints: ["src/report.js"],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["chrome110", "firefox110", "safari16"],
  outfile: "dist/report.js",
  legalComments: "eof",
  logLevel: "warning",
});
console.log(`dashboard: built ${outputs.length} files and report.js into dist/`);
