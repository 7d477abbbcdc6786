//! `import` and `export`: predictions made outside sweepfold join its
//! leaderboard and ensembles, and a configuration's predictions go back out
//! in the layouts a notebook reads (`.npy` and the baseline's CSV).

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use sweepfold_common::predictions;
use sweepfold_proto::v1 as pb;

use crate::outln;
use crate::output::*;
use crate::transport::{Client, status_error};

/// Files go to the coordinator in pieces of this size.
const CHUNK_BYTES: usize = 1 << 20;

/// What `coordinator import` was given.
#[derive(Debug, Clone)]
pub struct ImportArgs {
    pub name: String,
    pub dataset: String,
    /// The dataset's directory (train.csv and test.csv), as on the agents.
    pub data: PathBuf,
    pub folds: u32,
    pub seed: u64,
    pub split: String,
    pub oof: Vec<String>,
    pub test: Vec<String>,
    pub params: Vec<String>,
    pub json: bool,
}

/// `k=v` pairs as a JSON object; values that parse as JSON (numbers,
/// booleans) keep their type, the rest are strings.
pub fn params_json(pairs: &[String]) -> anyhow::Result<String> {
    let mut map = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("--params {p}: expected KEY=VALUE"))?;
        let value = serde_json::from_str::<Value>(v)
            .ok()
            .filter(|v| !v.is_object() && !v.is_array())
            .unwrap_or_else(|| Value::String(v.to_string()));
        map.insert(k.trim().to_string(), value);
    }
    Ok(Value::Object(map).to_string())
}

/// `--oof A` (every row), `--oof A --oof B ...` (one per fold, in fold
/// order) or `--oof 'oof_fold{fold}.npy'` (one per fold by pattern).
fn files_of(flag: &str, values: &[String], folds: u32) -> anyhow::Result<Vec<(i32, PathBuf)>> {
    match values {
        [] => bail!("{flag}: give a file (every row) or one per fold"),
        [one] if one.contains("{fold}") => Ok((0..folds)
            .map(|f| {
                (
                    f as i32,
                    PathBuf::from(one.replace("{fold}", &f.to_string())),
                )
            })
            .collect()),
        [one] => Ok(vec![(-1, PathBuf::from(one))]),
        many if many.len() == folds as usize => Ok(many
            .iter()
            .enumerate()
            .map(|(f, p)| (f as i32, PathBuf::from(p)))
            .collect()),
        many => bail!(
            "{flag} was given {} times: give one file for every row, or one per fold ({folds})",
            many.len()
        ),
    }
}

fn file_chunks(role: &str, fold: i32, path: &Path) -> anyhow::Result<Vec<pb::ImportChunk>> {
    use pb::import_chunk::Chunk;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut chunks = vec![pb::ImportChunk {
        chunk: Some(Chunk::File(pb::FileStart {
            role: role.into(),
            fold,
            file_name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            size_bytes: bytes.len() as u64,
        })),
    }];
    for piece in bytes.chunks(CHUNK_BYTES) {
        chunks.push(pb::ImportChunk {
            chunk: Some(Chunk::Data(piece.to_vec())),
        });
    }
    Ok(chunks)
}

pub async fn import(client: &mut Client, a: ImportArgs) -> anyhow::Result<()> {
    use pb::import_chunk::Chunk;
    let mut chunks = vec![pb::ImportChunk {
        chunk: Some(Chunk::Header(pb::ImportHeader {
            name: a.name.clone(),
            dataset: a.dataset.clone(),
            folds: a.folds,
            fold_seed: a.seed,
            fold_split: a.split.clone(),
            params_json: params_json(&a.params)?,
            default_owner: os_user(),
        })),
    }];
    for (role, csv) in [("train_csv", "train.csv"), ("test_csv", "test.csv")] {
        chunks.extend(file_chunks(role, -1, &a.data.join(csv))?);
    }
    for (fold, path) in files_of("--oof", &a.oof, a.folds)? {
        chunks.extend(file_chunks("oof", fold, &path)?);
    }
    for (fold, path) in files_of("--test", &a.test, a.folds)? {
        chunks.extend(file_chunks("test", fold, &path)?);
    }
    let r = client
        .import_predictions(tokio_stream::iter(chunks))
        .await
        .map_err(status_error)?
        .into_inner();
    let sweep = r.sweep.unwrap_or_default();
    if a.json {
        return print_json(&serde_json::json!({
            "sweep_id": sweep.id, "name": sweep.name, "owner": sweep.owner,
            "dataset": sweep.dataset, "folds": sweep.folds, "fold_seed": sweep.fold_seed,
            "fold_split": sweep.fold_split, "oof_accuracy": r.oof_accuracy, "values": r.values,
        }));
    }
    outln!(
        "imported {} as sweep {} ({}:0): out-of-fold accuracy {:.4} over {} folds of the {} split (seed {}), read as {}",
        sweep.name,
        sweep.id,
        sweep.name,
        r.oof_accuracy,
        sweep.folds,
        sweep.fold_split,
        sweep.fold_seed,
        r.values
    );
    Ok(())
}

/// Writes `oof.npy`, `oof.csv`, `test.npy`, `test.csv`, `folds.npy` and
/// `meta.json` under `out`.
pub async fn export(
    client: &mut Client,
    configuration: String,
    out: &Path,
    json: bool,
) -> anyhow::Result<()> {
    use pb::export_chunk::Chunk;
    let mut stream = client
        .export_predictions(pb::ExportPredictionsRequest { configuration })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut header = None;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        match msg.chunk {
            Some(Chunk::Header(h)) => header = Some(h),
            Some(Chunk::File(f)) => files.push((f.role, Vec::with_capacity(f.size_bytes as usize))),
            Some(Chunk::Data(d)) => files
                .last_mut()
                .ok_or_else(|| anyhow!("the coordinator sent bytes before a file"))?
                .1
                .extend_from_slice(&d),
            None => {}
        }
    }
    let h = header.ok_or_else(|| anyhow!("the coordinator sent no export header"))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    for (role, bytes) in &files {
        let npy = out.join(format!("{role}.npy"));
        std::fs::write(&npy, bytes).with_context(|| format!("cannot write {}", npy.display()))?;
        written.push(npy);
        if role == "oof" || role == "test" {
            let a = sweepfold_common::npy::parse(bytes)
                .map_err(|e| anyhow!("the coordinator sent a bad {role}.npy: {e}"))?;
            let values = a
                .to_f32()
                .ok_or_else(|| anyhow!("{role}.npy is not float"))?;
            let csv = out.join(format!("{role}.csv"));
            std::fs::write(
                &csv,
                predictions::write_csv(&values, h.classes as usize, None),
            )
            .with_context(|| format!("cannot write {}", csv.display()))?;
            written.push(csv);
        }
    }
    let meta = serde_json::json!({
        "configuration": h.label, "params": params_value(&h.params_json), "dataset": h.dataset,
        "folds": h.folds, "fold_seed": h.fold_seed, "fold_split": h.fold_split,
        "classes": h.classes, "train_rows": h.train_rows, "test_rows": h.test_rows,
        "oof_accuracy": h.oof_accuracy, "imported": h.imported,
        "values": "probabilities",
    });
    let meta_path = out.join("meta.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)? + "\n")
        .with_context(|| format!("cannot write {}", meta_path.display()))?;
    written.push(meta_path);
    if json {
        return print_json(&serde_json::json!({
            "configuration": h.label, "files": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        }));
    }
    outln!(
        "{}: out-of-fold accuracy {:.4}; wrote {} ({} train rows and {} test rows x {} classes, probabilities)",
        h.label,
        h.oof_accuracy,
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        h.train_rows,
        h.test_rows,
        h.classes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_keep_numbers_and_strings() {
        let p = params_json(&[
            "lr=0.001".into(),
            "model=convnext".into(),
            "tta=true".into(),
        ])
        .unwrap();
        assert_eq!(p, r#"{"lr":0.001,"model":"convnext","tta":true}"#);
        assert!(
            params_json(&["lr".into()])
                .unwrap_err()
                .to_string()
                .contains("KEY=VALUE")
        );
    }

    #[test]
    fn files_one_per_fold_or_for_every_row() {
        let one = files_of("--oof", &["a.npy".into()], 5).unwrap();
        assert_eq!(one, vec![(-1, PathBuf::from("a.npy"))]);
        let pattern = files_of("--oof", &["f{fold}.csv".into()], 3).unwrap();
        assert_eq!(pattern[2], (2, PathBuf::from("f2.csv")));
        let e = files_of("--test", &["a".into(), "b".into()], 5).unwrap_err();
        assert!(e.to_string().contains("given 2 times"), "{e}");
    }
}
