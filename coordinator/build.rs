//! Bundles the dashboard (`dashboard/dist/`, built by
//! `scripts/build-dashboard.sh`) and the static report's chart script
//! (`dashboard/dist/report.js`) into the binary. Without a built
//! dashboard the coordinator still builds; its pages then say how to
//! build the dashboard.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") | Some("map") => "application/json",
        _ => "application/octet-stream",
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = manifest.join("../dashboard/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rerun-if-changed={}", dist.join("assets").display());
    let mut code = String::new();
    let index = dist.join("index.html");
    if index.is_file() {
        println!("cargo:rerun-if-changed={}", index.display());
        let _ = writeln!(
            code,
            "static INDEX: Asset = Asset {{ content_type: \"text/html; charset=utf-8\", bytes: include_bytes!({:?}) }};\nconst BUNDLED: bool = true;",
            index.display().to_string()
        );
    } else {
        println!(
            "cargo:warning=dashboard/dist is missing: the dashboard is not bundled (run scripts/build-dashboard.sh, which needs Node.js and npm, then build again)"
        );
        code.push_str(
            "static INDEX: Asset = Asset { content_type: \"text/html; charset=utf-8\", bytes: b\"<!doctype html><title>sweepfold</title><h1>sweepfold</h1><p>This coordinator was built without its dashboard. Run <code>scripts/build-dashboard.sh</code> (it needs Node.js and npm; <code>scripts/setup.sh</code> runs it) and build the coordinator again. <a href=\\\"/metrics\\\">/metrics</a> works without it.</p>\" };\nconst BUNDLED: bool = false;\n",
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dist.join("assets"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    code.push_str("static ASSETS: &[(&str, Asset)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .expect("asset names are UTF-8");
        let _ = writeln!(
            code,
            "    ({name:?}, Asset {{ content_type: {:?}, bytes: include_bytes!({:?}) }}),",
            content_type(f),
            f.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("dashboard_assets.rs"), code).expect("write dashboard_assets.rs");

    // The static report's chart script (dashboard/src/report.js, bundled
    // into dist/report.js); without it reports keep their SVG charts.
    let report = dist.join("report.js");
    println!("cargo:rerun-if-changed={}", report.display());
    let code = if report.is_file() {
        format!(
            "static REPORT_SCRIPT: Option<&str> = Some(include_str!({:?}));\n",
            report.display().to_string()
        )
    } else {
        "static REPORT_SCRIPT: Option<&str> = None;\n".to_string()
    };
    std::fs::write(out.join("report_script.rs"), code).expect("write report_script.rs");
}
