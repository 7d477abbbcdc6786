//! `check-layers [--print] [WORKSPACE_DIR]`: checks every crate of the
//! workspace (each directory with a `Cargo.toml` and a `src/`) for import
//! cycles between its modules. Exits 1 and names each cycle if it finds one;
//! `--print` also lists each crate's layers, lowest first.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn crates(root: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if root.join("Cargo.toml").exists() && root.join("src").is_dir() {
        out.push(root.to_path_buf());
    }
    let mut entries: Vec<_> = std::fs::read_dir(root)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir()
            && !name.starts_with('.')
            && !matches!(name.as_str(), "target" | "node_modules" | "src")
        {
            crates(&p, out)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut print = false;
    let mut root = PathBuf::from(".");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--print" => print = true,
            "-h" | "--help" => {
                println!("usage: check-layers [--print] [WORKSPACE_DIR]");
                return ExitCode::SUCCESS;
            }
            dir => root = PathBuf::from(dir),
        }
    }
    let mut found = Vec::new();
    if let Err(e) = crates(&root, &mut found) {
        eprintln!("error: cannot read {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let mut failed = false;
    for krate in &found {
        let name = krate
            .strip_prefix(&root)
            .unwrap_or(krate)
            .display()
            .to_string();
        let name = if name.is_empty() {
            ".".to_string()
        } else {
            name
        };
        let g = match layers::graph(&krate.join("src")) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", krate.display());
                return ExitCode::FAILURE;
            }
        };
        let cycles = layers::cycles(&g);
        for c in &cycles {
            failed = true;
            let shown: Vec<String> = c.iter().map(|m| layers::show(m)).collect();
            let members: Vec<String> = layers::component(&g, &c[0])
                .iter()
                .map(|m| layers::show(m))
                .collect();
            eprintln!(
                "{name}: {} modules import each other in a circle ({}), e.g. {}",
                members.len(),
                members.join(", "),
                shown.join(" -> ")
            );
        }
        if print && cycles.is_empty() {
            println!("{name} ({} modules)", g.len());
            for (i, layer) in layers::layers(&g).iter().enumerate() {
                let shown: Vec<String> = layer.iter().map(|m| layers::show(m)).collect();
                println!("  {i}: {}", shown.join(", "));
            }
        }
    }
    if failed {
        eprintln!("module cycles found: make dependencies point one way (see ARCHITECTURE.md)");
        return ExitCode::FAILURE;
    }
    println!("no module cycles in {} crates", found.len());
    ExitCode::SUCCESS
}
