//! The architecture invariant "only `api/` names protocol types", checked
//! over the source: no module of the coordinator outside `src/api/` mentions
//! `sweepfold_proto` (the generated protobuf types). The module cycle check
//! itself is `tools/layers`, run by CI over every crate.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn only_the_api_layer_names_protocol_types() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found the sources: {files:?}");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("api")))
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .any(|l| !l.trim_start().starts_with("//") && l.contains("sweepfold_proto"))
        })
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "outside src/api/ these name protocol types: {offenders:?}; convert in api/convert.rs instead"
    );
}
