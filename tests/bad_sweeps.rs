//! Every file in `tests/bad-sweeps/` must be rejected with the message
//! fragment on its first line (`# expect: ...`), both by the parser and by
//! the CLI's `submit --dry-run`.

use std::path::PathBuf;

use sweepfold_common::sweep::{Limits, parse_sweep};
use sweepfold_tests::{cli, repo_root};

fn bad_files() -> Vec<(PathBuf, String)> {
    let dir = repo_root().join("tests/bad-sweeps");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} lacks a `# expect: ` first line", p.display()))
                .to_string();
            (p, expect)
        })
        .collect()
}

#[test]
fn parser_rejects_each_bad_file_with_its_message() {
    let files = bad_files();
    assert!(files.len() >= 20, "only {} bad files", files.len());
    let mut failures = Vec::new();
    for (path, expect) in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        match parse_sweep(&text, name, Limits::default()) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(e) if !e.to_string().contains(expect.as_str()) => {
                failures.push(format!("{name}: expected `{expect}`, got `{e}`"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cli_dry_run_rejects_each_bad_file() {
    for (path, expect) in bad_files() {
        // The CLI names the file as given; run from its folder.
        let out = cli(
            "http://127.0.0.1:9",
            &["submit", path.to_str().unwrap(), "--dry-run"],
        );
        assert!(!out.status.success(), "{} accepted", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        let fragment = expect
            .split_once(": ")
            .map_or(expect.as_str(), |(_, rest)| rest);
        assert!(
            err.contains(fragment),
            "{}: expected `{fragment}` in `{err}`",
            path.display()
        );
        assert!(
            err.contains(path.to_str().unwrap()),
            "the file is named: {err}"
        );
    }
}
