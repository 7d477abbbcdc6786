//! Out-of-fold assembly: the stored outputs of finished folds turned into
//! leaderboard rows, ensemble members and submissions. What to read comes
//! from the store ([`plan`], a short critical section); the blobs are
//! immutable, so they are read and combined ([`load`], [`make`]) without
//! holding the coordinator's lock.
//!
//! Architecture invariant: this module knows the store and the blobs, never
//! the coordinator's state or handle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sweepfold_common::npy::{NpyArray, parse};
use sweepfold_common::{JobState, SweepId};

use crate::blobs::{BlobStore, role};
use crate::ensemble::{self, Member, Method, Outcome, Probs};
use crate::error::{Error, Result};
use crate::store::{ConfigStats, DatasetRecord, Store, SweepRecord};

/// The stored outputs of one succeeded fold.
#[derive(Debug, Clone)]
pub struct FoldFiles {
    pub fold: u32,
    /// role -> sha256
    pub roles: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ConfigPlan {
    pub sweep_id: SweepId,
    pub sweep_name: String,
    pub config_index: u32,
    pub params_json: String,
    pub folds: u32,
    pub done: Vec<FoldFiles>,
    pub stats: ConfigStats,
    /// Trained elsewhere and imported (`coordinator import`).
    pub imported: bool,
    /// Early stopping stopped it at this rung epoch.
    pub stopped_at_epoch: Option<u32>,
}

impl ConfigPlan {
    pub fn complete(&self) -> bool {
        self.done.len() as u32 == self.folds
    }

    pub fn label(&self) -> String {
        format!("{}:{}", self.sweep_name, self.config_index)
    }
}

/// What to load for a set of sweeps (or single configurations).
#[derive(Debug, Clone)]
pub struct ResultsPlan {
    pub sweeps: Vec<SweepRecord>,
    pub dataset: DatasetRecord,
    pub configs: Vec<ConfigPlan>,
}

/// A member reference: a whole sweep or one configuration (`SWEEP:INDEX`).
/// `SWEEP:CONFIG` or `SWEEP` split into the sweep and the configuration.
pub fn parse_ref(r: &str) -> (String, Option<u32>) {
    match r.rsplit_once(':') {
        Some((sweep, idx)) if idx.parse::<u32>().is_ok() => (sweep.to_string(), idx.parse().ok()),
        _ => (r.to_string(), None),
    }
}

/// "dataset `d`, sklearn split, 5 folds, seed 42": what members must share.
fn split_label(s: &SweepRecord) -> String {
    format!(
        "dataset `{}`, {} split, {} folds, seed {}",
        s.dataset, s.fold_split, s.folds, s.fold_seed
    )
}

/// Resolves references and collects what the leaderboard or an ensemble
/// of them needs. Sweeps must share dataset and fold split.
pub fn plan(store: &Store, refs: &[String]) -> Result<ResultsPlan> {
    if refs.is_empty() {
        return Err(Error::InvalidArgument("name at least one sweep".into()));
    }
    let mut sweeps: Vec<SweepRecord> = Vec::new();
    let mut wanted: Vec<(SweepId, Option<u32>)> = Vec::new();
    for r in refs {
        let (sweep, config) = parse_ref(r.trim());
        let id = store.resolve_sweep(&sweep)?;
        if !sweeps.iter().any(|s| s.id == id) {
            sweeps.push(
                store
                    .get_sweep(id)?
                    .ok_or_else(|| Error::SweepNotFound(sweep.clone()))?,
            );
        }
        wanted.push((id, config));
    }
    let first = &sweeps[0];
    for s in &sweeps[1..] {
        if s.dataset != first.dataset
            || s.folds != first.folds
            || s.fold_seed != first.fold_seed
            || s.fold_split != first.fold_split
        {
            return Err(Error::InvalidArgument(format!(
                "members must share the dataset and the fold split: {} uses {}, {} uses {}",
                first.name,
                split_label(first),
                s.name,
                split_label(s),
            )));
        }
    }
    let dataset = store.dataset(&first.dataset)?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "dataset `{}` was never registered by an agent, so no job of it ran",
            first.dataset
        ))
    })?;
    let mut configs = Vec::new();
    for s in &sweeps {
        let stats = store.config_stats(s.id)?;
        let jobs = store.list_jobs(s.id, Some(JobState::Succeeded))?;
        let mut files: HashMap<(u32, u32), HashMap<String, String>> = HashMap::new();
        let fold_of: HashMap<i64, (u32, u32)> = jobs
            .iter()
            .map(|j| (j.id.0, (j.config_index, j.fold)))
            .collect();
        for o in store.sweep_outputs(s.id)? {
            if let Some(&key) = fold_of.get(&o.job_id.0) {
                files.entry(key).or_default().insert(o.role, o.sha256);
            }
        }
        for c in store.configurations(s.id)? {
            let selected = wanted
                .iter()
                .any(|&(id, cfg)| id == s.id && cfg.is_none_or(|i| i == c.index));
            if !selected {
                continue;
            }
            let mut done: Vec<FoldFiles> = files
                .iter()
                .filter(|((ci, _), _)| *ci == c.index)
                .map(|(&(_, fold), roles)| FoldFiles {
                    fold,
                    roles: roles.clone(),
                })
                .collect();
            done.sort_by_key(|f| f.fold);
            configs.push(ConfigPlan {
                sweep_id: s.id,
                sweep_name: s.name.clone(),
                config_index: c.index,
                params_json: c.params_json,
                folds: s.folds,
                done,
                stats: stats.get(&c.index).copied().unwrap_or_default(),
                imported: s.kind == "imported",
                stopped_at_epoch: c.stopped_at_epoch,
            });
        }
    }
    for &(id, cfg) in &wanted {
        if let Some(i) = cfg
            && !configs
                .iter()
                .any(|c| c.sweep_id == id && c.config_index == i)
        {
            return Err(Error::InvalidArgument(format!(
                "sweep {id} has no configuration {i}"
            )));
        }
    }
    Ok(ResultsPlan {
        sweeps,
        dataset,
        configs,
    })
}
/// One row of the leaderboard.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    pub sweep_id: i64,
    pub sweep_name: String,
    pub config_index: u32,
    pub params_json: String,
    pub folds: u32,
    pub folds_done: u32,
    pub fold_accuracies: Vec<f64>,
    /// Complete configurations only.
    pub oof_accuracy: Option<f64>,
    /// Mean negative log-likelihood of the true class over every training
    /// row (complete configurations only).
    pub oof_log_loss: Option<f64>,
    pub epochs_mean: f64,
    pub gpu_seconds: f64,
    /// 1-based among complete configurations; 0 for partial ones.
    pub rank: u32,
    /// Trained elsewhere and imported.
    pub imported: bool,
    /// Early stopping stopped it at this rung epoch.
    pub stopped_at_epoch: Option<u32>,
}

impl ConfigResult {
    pub fn fold_mean_std(&self) -> (f64, f64) {
        let n = self.fold_accuracies.len() as f64;
        if n == 0.0 {
            return (0.0, 0.0);
        }
        let mean = self.fold_accuracies.iter().sum::<f64>() / n;
        let var = self
            .fold_accuracies
            .iter()
            .map(|a| (a - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    pub fn label(&self) -> String {
        format!("{}:{}", self.sweep_name, self.config_index)
    }
}

fn read_f32(blobs: &BlobStore, sha: &str, role: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let a = parse(&blobs.read(sha, role)?)
        .map_err(|e| Error::Internal(format!("stored {role} {sha}: {e}")))?;
    let v = a
        .to_f32()
        .ok_or_else(|| Error::Internal(format!("stored {role} {sha} is not float")))?;
    Ok((a.shape, v))
}

fn read_i64(blobs: &BlobStore, sha: &str, role: &str) -> Result<Vec<i64>> {
    let a = parse(&blobs.read(sha, role)?)
        .map_err(|e| Error::Internal(format!("stored {role} {sha}: {e}")))?;
    a.to_i64()
        .ok_or_else(|| Error::Internal(format!("stored {role} {sha} is not an integer array")))
}

fn sha<'a>(f: &'a FoldFiles, r: &str) -> Result<&'a str> {
    f.roles
        .get(r)
        .map(String::as_str)
        .ok_or_else(|| Error::Internal(format!("fold {} has no stored {r}", f.fold)))
}

/// The fold of every train.csv row of a complete configuration (from its
/// stored validation indices); -1 for a row no fold validated.
pub fn fold_of_rows(c: &ConfigPlan, blobs: &BlobStore, n_train: usize) -> Result<Vec<i64>> {
    let mut folds = vec![-1i64; n_train];
    for f in &c.done {
        for row in read_i64(blobs, sha(f, role::VAL_INDICES)?, role::VAL_INDICES)? {
            if let Some(slot) = usize::try_from(row).ok().and_then(|r| folds.get_mut(r)) {
                *slot = i64::from(f.fold);
            }
        }
    }
    Ok(folds)
}

/// Everything loaded for a plan.
pub struct Loaded {
    pub results: Vec<ConfigResult>,
    /// Complete configurations as ensemble members (when asked for).
    pub members: Vec<Member>,
    /// For each member, its index in `results`.
    pub member_results: Vec<usize>,
    /// Class of every training row (rows no complete configuration covers
    /// are u32::MAX).
    pub targets: Vec<u32>,
    /// Fold of every training row in the members' shared split (u32::MAX
    /// where no complete configuration covers it).
    pub folds: Vec<u32>,
    pub classes: usize,
    /// test.csv image paths (when members were loaded).
    pub test_paths: Vec<String>,
}

/// What to load besides fold accuracies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Accuracies only (the leaderboard).
    Scores,
    /// OOF and test probabilities of complete configurations.
    Members,
}

pub fn load(plan: &ResultsPlan, blobs: &BlobStore, want: Want) -> Result<Loaded> {
    let n_train = plan.dataset.train_rows as usize;
    let mut targets = vec![u32::MAX; n_train];
    let mut folds = vec![u32::MAX; n_train];
    let mut classes = 0usize;
    let mut results = Vec::new();
    let mut members = Vec::new();
    let mut member_results = Vec::new();
    let mut test_paths = Vec::new();
    for c in &plan.configs {
        let complete = c.complete();
        let mut fold_accuracies = Vec::new();
        let mut correct = 0usize;
        let mut log_loss_sum = 0.0f64;
        let mut covered = vec![0u8; if complete { n_train } else { 0 }];
        let mut oof = (complete && want == Want::Members).then(|| Probs::zeros(n_train, 0));
        let mut test_parts: Vec<Vec<f32>> = Vec::new();
        let mut test_rows = 0;
        for f in &c.done {
            let (shape, logits) = read_f32(blobs, sha(f, role::VAL_LOGITS)?, role::VAL_LOGITS)?;
            let idx = read_i64(blobs, sha(f, role::VAL_INDICES)?, role::VAL_INDICES)?;
            let tgt = read_i64(blobs, sha(f, role::VAL_TARGETS)?, role::VAL_TARGETS)?;
            let k = shape[1];
            if classes == 0 {
                classes = k;
            } else if classes != k {
                return Err(Error::InvalidArgument(format!(
                    "{} has {k} classes where other members have {classes}",
                    c.label()
                )));
            }
            let mut hits = 0usize;
            for (i, (&row, &t)) in idx.iter().zip(&tgt).enumerate() {
                let logits_row = &logits[i * k..(i + 1) * k];
                let pred = logits_row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (j, &v)| if v > logits_row[b] { j } else { b });
                if pred as i64 == t {
                    hits += 1;
                }
                if let Some(&true_logit) = usize::try_from(t).ok().and_then(|t| logits_row.get(t)) {
                    log_loss_sum += log_sum_exp(logits_row) - f64::from(true_logit);
                }
                let row = row as usize;
                if row >= n_train {
                    return Err(Error::Internal(format!(
                        "{}: row {row} out of range",
                        c.label()
                    )));
                }
                let t = t as u32;
                if targets[row] != u32::MAX && targets[row] != t {
                    return Err(Error::InvalidArgument(format!(
                        "training row {row} has class {} in one member and {t} in {}: the members do not share a dataset",
                        targets[row],
                        c.label()
                    )));
                }
                targets[row] = t;
                if complete {
                    covered[row] += 1;
                    if folds[row] != u32::MAX && folds[row] != f.fold {
                        return Err(Error::InvalidArgument(format!(
                            "training row {row} is in fold {} of one member and fold {} of {}: the members do not share a split",
                            folds[row],
                            f.fold,
                            c.label()
                        )));
                    }
                    folds[row] = f.fold;
                }
                if let Some(o) = &mut oof {
                    if o.classes == 0 {
                        *o = Probs::zeros(n_train, k);
                    }
                    ensemble::softmax_row(logits_row, &mut o.data[row * k..(row + 1) * k]);
                }
            }
            correct += hits;
            fold_accuracies.push(hits as f64 / idx.len().max(1) as f64);
            if complete && want == Want::Members {
                let (tshape, t) = read_f32(blobs, sha(f, role::TEST_LOGITS)?, role::TEST_LOGITS)?;
                test_rows = tshape[0];
                test_parts.push(t);
                if test_paths.is_empty() {
                    let text = blobs.read(sha(f, role::TEST_PATHS)?, role::TEST_PATHS)?;
                    let text = String::from_utf8(text)
                        .map_err(|_| Error::Internal("stored test.csv is not UTF-8".into()))?;
                    test_paths = sweepfold_common::dataset::test_paths_from_csv(&text)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                }
            }
        }
        if complete && let Some(row) = covered.iter().position(|&n| n != 1) {
            return Err(Error::InvalidArgument(format!(
                "the folds of {} cover training row {row} {} times instead of once",
                c.label(),
                covered[row]
            )));
        }
        let index = results.len();
        results.push(ConfigResult {
            sweep_id: c.sweep_id.0,
            sweep_name: c.sweep_name.clone(),
            config_index: c.config_index,
            params_json: c.params_json.clone(),
            folds: c.folds,
            folds_done: c.done.len() as u32,
            fold_accuracies,
            oof_accuracy: complete.then(|| correct as f64 / n_train.max(1) as f64),
            oof_log_loss: complete.then(|| log_loss_sum / n_train.max(1) as f64),
            epochs_mean: c.stats.epochs_mean,
            gpu_seconds: c.stats.gpu_seconds,
            rank: 0,
            imported: c.imported,
            stopped_at_epoch: c.stopped_at_epoch,
        });
        if let Some(oof) = oof {
            let parts: Vec<&[f32]> = test_parts.iter().map(Vec::as_slice).collect();
            members.push(Member {
                name: c.label(),
                oof,
                test: ensemble::mean_softmax(&parts, test_rows, classes),
            });
            member_results.push(index);
        }
    }
    rank(&mut results);
    Ok(Loaded {
        results,
        members,
        member_results,
        targets,
        folds,
        classes,
        test_paths,
    })
}

/// log(sum(exp(row))) without overflow.
fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !m.is_finite() {
        return m;
    }
    m + row
        .iter()
        .map(|&v| (f64::from(v) - m).exp())
        .sum::<f64>()
        .ln()
}

/// Ranks complete configurations by OOF accuracy (1 = best) without moving
/// them (member indices point into the list); partial ones get rank 0.
fn rank(results: &mut [ConfigResult]) {
    let order = display_order(results);
    let mut r = 0;
    for i in order {
        if results[i].oof_accuracy.is_some() {
            r += 1;
            results[i].rank = r;
        }
    }
}

/// Indices of `results` in leaderboard order: complete configurations by
/// OOF accuracy, then partial ones by their mean fold accuracy.
pub fn display_order(results: &[ConfigResult]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&results[a], &results[b]);
        match (a.oof_accuracy, b.oof_accuracy) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => b.fold_mean_std().0.total_cmp(&a.fold_mean_std().0),
        }
    });
    order
}

/// A finished ensemble with its files.
pub struct Made {
    pub outcome: Outcome,
    pub member_labels: Vec<String>,
    pub member_results: Vec<ConfigResult>,
    pub submission_csv: String,
    pub probabilities_npy: Vec<u8>,
}

/// `ID,image_path,target`, one row per test image in test.csv order; paths
/// quoted where CSV needs it (commas, quotes, line breaks).
fn submission_csv(test_paths: &[String], pred: &[u32]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(pred.len() * 24));
    let csv_err = |e: csv::Error| Error::Internal(format!("writing the submission: {e}"));
    w.write_record(["ID", "image_path", "target"])
        .map_err(csv_err)?;
    for (i, (path, p)) in test_paths.iter().zip(pred).enumerate() {
        w.write_record([i.to_string().as_str(), path, p.to_string().as_str()])
            .map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Internal(format!("writing the submission: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::Internal(format!("writing the submission: {e}")))
}

/// Combines the complete configurations of a loaded plan.
pub fn make(loaded: &Loaded, method: Method) -> Result<Made> {
    if loaded.members.is_empty() {
        return Err(Error::FailedPrecondition(
            "no configuration has every fold done yet, so there is nothing to ensemble".into(),
        ));
    }
    let outcome = ensemble::combine(&loaded.members, &loaded.targets, &loaded.folds, method);
    let pred = outcome.test.argmax();
    if pred.len() != loaded.test_paths.len() {
        return Err(Error::Internal(format!(
            "{} test predictions for {} test.csv rows",
            pred.len(),
            loaded.test_paths.len()
        )));
    }
    let csv = submission_csv(&loaded.test_paths, &pred)?;
    let probabilities_npy = NpyArray::from_f32(
        vec![outcome.test.rows, outcome.test.classes],
        &outcome.test.data,
    )
    .to_bytes();
    Ok(Made {
        member_labels: loaded.members.iter().map(|m| m.name.clone()).collect(),
        member_results: loaded
            .member_results
            .iter()
            .map(|&i| loaded.results[i].clone())
            .collect(),
        outcome,
        submission_csv: csv,
        probabilities_npy,
    })
}

/// Writes an ensemble's files under `DATA_DIR/ensembles/<id>/`.
pub fn write_files(data_dir: &Path, id: i64, made: &Made) -> Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("ensembles").join(id.to_string());
    let io = |p: &Path, e| Error::DataDir {
        path: p.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let submission = dir.join("submission.csv");
    let probs = dir.join("test_probabilities.npy");
    sweepfold_common::npy::write_atomic(&submission, made.submission_csv.as_bytes())
        .map_err(|e| io(&submission, e))?;
    sweepfold_common::npy::write_atomic(&probs, &made.probabilities_npy)
        .map_err(|e| io(&probs, e))?;
    let oof = dir.join("oof_probabilities.npy");
    let o = &made.outcome.oof;
    NpyArray::from_f32(vec![o.rows, o.classes], &o.data)
        .write(&oof)
        .map_err(|e| io(&oof, e))?;
    Ok((submission, probs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_quotes_what_csv_needs() {
        let paths = vec![
            "test/1.png".to_string(),
            "test/a,b.png".to_string(),
            "test/say \"hi\".png".to_string(),
            "test/two\nlines.png".to_string(),
        ];
        let csv = submission_csv(&paths, &[3, 1, 4, 1]).unwrap();
        assert_eq!(
            csv,
            "ID,image_path,target\n0,test/1.png,3\n1,\"test/a,b.png\",1\n2,\"test/say \"\"hi\"\".png\",4\n3,\"test/two\nlines.png\",1\n"
        );
        let mut r = csv::Reader::from_reader(csv.as_bytes());
        let back: Vec<String> = r.records().map(|rec| rec.unwrap()[1].to_string()).collect();
        assert_eq!(back, paths);
    }

    #[test]
    fn member_references() {
        assert_eq!(parse_ref("resnet-lr-ls"), ("resnet-lr-ls".into(), None));
        assert_eq!(
            parse_ref("resnet-lr-ls:2"),
            ("resnet-lr-ls".into(), Some(2))
        );
        assert_eq!(parse_ref("7:0"), ("7".into(), Some(0)));
        assert_eq!(parse_ref("a:b"), ("a:b".into(), None));
    }

    #[test]
    fn ranking_puts_complete_configurations_first() {
        let r = |oof: Option<f64>, folds: Vec<f64>| ConfigResult {
            sweep_id: 1,
            sweep_name: "s".into(),
            config_index: 0,
            params_json: "{}".into(),
            folds: 2,
            folds_done: folds.len() as u32,
            fold_accuracies: folds,
            oof_accuracy: oof,
            oof_log_loss: None,
            epochs_mean: 0.0,
            gpu_seconds: 0.0,
            rank: 0,
            imported: false,
            stopped_at_epoch: None,
        };
        let mut v = vec![
            r(None, vec![0.99]),
            r(Some(0.8), vec![0.8, 0.8]),
            r(Some(0.9), vec![0.9, 0.9]),
        ];
        rank(&mut v);
        assert_eq!(
            (v[0].rank, v[1].rank, v[2].rank),
            (0, 2, 1),
            "ranked in place"
        );
        assert_eq!(
            display_order(&v),
            vec![2, 1, 0],
            "a partial one, however good, comes last"
        );
    }
}
