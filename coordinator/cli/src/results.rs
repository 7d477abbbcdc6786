//! `leaderboard`, `ensemble`, `report`: what the sweeps produced.

use std::path::Path;

use anyhow::{Context, anyhow};
use serde_json::Value;
use sweepfold_proto::v1 as pb;

use crate::output::*;
use crate::transport::{Client, status_error};
use crate::{out, outln};

pub async fn leaderboard(
    client: &mut Client,
    sweeps: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    let r = client
        .leaderboard(pb::LeaderboardRequest { sweeps })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let rows: Vec<Value> = r
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "rank": e.rank, "sweep_id": e.sweep_id, "sweep": e.sweep_name,
                    "config_index": e.config_index, "params": params_value(&e.params_json),
                    "complete": e.complete, "folds_done": e.folds_done, "folds": e.folds,
                    "oof_accuracy": if e.complete { Value::from(e.oof_accuracy) } else { Value::Null },
                    "fold_accuracy_mean": e.fold_accuracy_mean, "fold_accuracy_std": e.fold_accuracy_std,
                    "epochs_mean": e.epochs_mean, "gpu_seconds": e.gpu_seconds,
                    "imported": e.imported,
                    "stopped_at_epoch": (e.stopped_at_epoch > 0).then_some(e.stopped_at_epoch),
                })
            })
            .collect();
        return print_json(
            &serde_json::json!({"dataset": r.dataset, "train_rows": r.train_rows, "entries": rows}),
        );
    }
    outln!(
        "out-of-fold accuracy on dataset {} ({} training rows, each predicted once by a model that did not train on it)",
        r.dataset,
        r.train_rows
    );
    let mut t = Table::new(vec![
        "RANK",
        "CONFIG",
        "OOF ACC",
        "FOLD ACC",
        "FOLDS",
        "EPOCHS",
        "GPU TIME",
        "PARAMETERS",
    ]);
    for e in &r.entries {
        t.row(vec![
            if e.complete {
                e.rank.to_string()
            } else {
                "partial".into()
            },
            if e.imported {
                format!("{}:{} (imported)", e.sweep_name, e.config_index)
            } else if e.stopped_at_epoch > 0 {
                format!(
                    "{}:{} (stopped at epoch {})",
                    e.sweep_name, e.config_index, e.stopped_at_epoch
                )
            } else {
                format!("{}:{}", e.sweep_name, e.config_index)
            },
            if e.complete {
                format!("{:.4}", e.oof_accuracy)
            } else {
                "-".into()
            },
            format!("{:.4} ± {:.4}", e.fold_accuracy_mean, e.fold_accuracy_std),
            format!("{}/{}", e.folds_done, e.folds),
            if e.imported {
                "-".into()
            } else {
                format!("{:.1}", e.epochs_mean)
            },
            if e.imported {
                "-".into()
            } else {
                format_duration(e.gpu_seconds)
            },
            params_inline(&e.params_json),
        ]);
    }
    out!("{}", t.render());
    Ok(())
}

fn format_duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.0}s")
    } else if seconds < 3600.0 {
        format!("{:.1}m", seconds / 60.0)
    } else {
        format!("{:.2}h", seconds / 3600.0)
    }
}

/// Prints an ensemble's result: its members, weights and OOF accuracy
/// next to the best single member.
pub fn print_ensemble(e: &pb::EnsembleResult) {
    outln!(
        "{} of {} members: OOF accuracy {:.4} (best single member {} {:.4}, {:+.4})",
        if e.method == "stacking" {
            "stacking".to_string()
        } else {
            format!("{} voting", e.method)
        },
        e.members.len(),
        e.oof_accuracy,
        e.best_member,
        e.best_member_oof_accuracy,
        e.oof_accuracy - e.best_member_oof_accuracy
    );
    if e.method == "stacking" {
        let greedy = e.greedy_oof_accuracy;
        if e.oof_accuracy > greedy {
            outln!(
                "stacking beats greedy selection on OOF: {:.4} against {greedy:.4} (its OOF rows were scored by models fitted on the other folds)",
                e.oof_accuracy
            );
        } else {
            outln!(
                "stacking does not beat greedy selection on OOF ({:.4} against {greedy:.4}): submit greedy",
                e.oof_accuracy
            );
        }
    }
    let mut t = Table::new(vec!["MEMBER", "OOF ACC", "WEIGHT", "PARAMETERS"]);
    for m in &e.members {
        t.row(vec![
            format!("{}:{}", m.sweep_name, m.config_index),
            format!("{:.4}", m.oof_accuracy),
            format!("{:.3}", m.weight),
            params_inline(&m.params_json),
        ]);
    }
    out!("{}", t.render());
}

pub async fn ensemble(
    client: &mut Client,
    members: Vec<String>,
    method: String,
    out: &Path,
    probs: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let r = client
        .ensemble(pb::EnsembleRequest { members, method })
        .await
        .map_err(status_error)?
        .into_inner();
    let e = r
        .result
        .ok_or_else(|| anyhow!("the coordinator answered without a result"))?;
    let probs = probs.map(Path::to_path_buf).unwrap_or_else(|| {
        let stem = out
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("submission");
        out.with_file_name(format!("{stem}_probabilities.npy"))
    });
    std::fs::write(out, &r.submission_csv)
        .with_context(|| format!("cannot write {}", out.display()))?;
    std::fs::write(&probs, &r.test_probabilities_npy)
        .with_context(|| format!("cannot write {}", probs.display()))?;
    if json {
        return print_json(&serde_json::json!({
            "id": e.id, "method": e.method, "oof_accuracy": e.oof_accuracy,
            "best_member": e.best_member, "best_member_oof_accuracy": e.best_member_oof_accuracy,
            "greedy_oof_accuracy": (e.method == "stacking").then_some(e.greedy_oof_accuracy),
            "members": e.members.iter().map(|m| serde_json::json!({
                "sweep": m.sweep_name, "config_index": m.config_index, "weight": m.weight,
                "oof_accuracy": m.oof_accuracy, "params": params_value(&m.params_json),
            })).collect::<Vec<_>>(),
            "submission": out.display().to_string(), "probabilities": probs.display().to_string(),
            "stored_submission": e.submission_path, "test_rows": e.test_rows,
        }));
    }
    print_ensemble(&e);
    outln!(
        "wrote {} ({} test rows) and {}; the coordinator keeps a copy as {}",
        out.display(),
        e.test_rows,
        probs.display(),
        e.submission_path
    );
    Ok(())
}

pub async fn report(
    client: &mut Client,
    sweeps: Vec<String>,
    method: String,
    out: &Path,
) -> anyhow::Result<()> {
    let r = client
        .report(pb::ReportRequest { sweeps, method })
        .await
        .map_err(status_error)?
        .into_inner();
    std::fs::write(out, &r.html).with_context(|| format!("cannot write {}", out.display()))?;
    outln!("wrote {} ({} KiB)", out.display(), r.html.len() / 1024);
    Ok(())
}
