//! The dashboard's files, bundled into the binary by `build.rs` from
//! `dashboard/dist/` (built with npm by `scripts/build-dashboard.sh`):
//! nothing is fetched at run time.

/// One bundled file.
pub struct Asset {
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

// `static INDEX: Asset`, `static ASSETS: &[(&str, Asset)]` (the files
// under `dist/assets/`, by name) and `const BUNDLED: bool`.
include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// A file under `/assets/` by name.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}

/// The page every dashboard URL serves (when the dashboard was not built,
/// a page that says how to build it).
pub fn index() -> &'static Asset {
    &INDEX
}

/// Whether the dashboard was built into this binary.
#[allow(dead_code)]
pub fn bundled() -> bool {
    BUNDLED
}
