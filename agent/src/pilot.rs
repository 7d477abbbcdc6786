//! `agent run --pilot`: an agent started inside a Slurm allocation.
//!
//! It reads what Slurm gave it from the job's environment: the job id (the
//! agent is named `slurm-<id>`), when the allocation ends
//! (`SLURM_JOB_END_TIME`, else `squeue`'s time left), and the GPUs
//! (`CUDA_VISIBLE_DEVICES`: the agent reads and offers only those). It tells
//! the coordinator its end, so it gets only jobs whose learned duration says
//! they finish before it; it exits once idle for `pilot_idle_exit_secs`,
//! and a Slurm kill (scancel, time limit, preemption: SIGTERM) stops its
//! jobs, which the coordinator requeues. Nothing needs a shared filesystem:
//! the work dir is node-local and results travel over gRPC.

use std::time::{SystemTime, UNIX_EPOCH};

/// What Slurm told the pilot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PilotEnv {
    pub slurm_job_id: String,
    /// When the allocation ends (ms since the Unix epoch), if known.
    pub ends_at_ms: Option<i64>,
    /// The entries of `CUDA_VISIBLE_DEVICES` (indices or UUIDs); `None`
    /// when unset (every GPU of the node is the pilot's).
    pub visible_gpus: Option<Vec<String>>,
}

impl PilotEnv {
    /// Reads the pilot's environment through `var`; `time_left` answers
    /// "seconds left for job ID" when `SLURM_JOB_END_TIME` is absent.
    pub fn read(
        var: impl Fn(&str) -> Option<String>,
        time_left: impl Fn(&str) -> Option<i64>,
        now_ms: i64,
    ) -> Result<PilotEnv, String> {
        let id = var("SLURM_JOB_ID")
            .filter(|s| !s.trim().is_empty())
            .ok_or("--pilot runs inside a Slurm job, but SLURM_JOB_ID is not set (start it with sbatch or srun)")?;
        let id = id.trim().to_string();
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("SLURM_JOB_ID `{id}` is not a Slurm job id"));
        }
        let ends_at_ms = match var("SLURM_JOB_END_TIME").filter(|s| !s.trim().is_empty()) {
            Some(v) => Some(
                v.trim().parse::<i64>().map_err(|_| {
                    format!("SLURM_JOB_END_TIME `{v}` is not seconds since the epoch")
                })? * 1000,
            ),
            None => time_left(&id).map(|secs| now_ms + secs * 1000),
        };
        let visible_gpus = var("CUDA_VISIBLE_DEVICES").map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        });
        Ok(PilotEnv {
            slurm_job_id: id,
            ends_at_ms,
            visible_gpus,
        })
    }

    /// The environment of this process; `squeue` for the time left.
    pub fn from_process() -> Result<PilotEnv, String> {
        PilotEnv::read(|k| std::env::var(k).ok(), squeue_time_left, now_ms())
    }

    /// The agent name of the pilot.
    pub fn agent_name(&self) -> String {
        format!("slurm-{}", self.slurm_job_id)
    }

    /// Is the GPU (NVML `index`, `uuid`) one Slurm gave this pilot?
    pub fn gpu_visible(&self, index: u32, uuid: &str) -> bool {
        match &self.visible_gpus {
            None => true,
            Some(list) => list.iter().any(|v| {
                *v == index.to_string() || (v.starts_with("GPU-") && uuid.starts_with(v.as_str()))
            }),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `squeue -h -j ID -o %L`: the time left as `[D-]HH:MM:SS`, `MM:SS`, or
/// `UNLIMITED`/`NOT_SET` (then `None`).
fn squeue_time_left(id: &str) -> Option<i64> {
    let out = std::process::Command::new("squeue")
        .args(["-h", "-j", id, "-o", "%L"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_slurm_duration(String::from_utf8_lossy(&out.stdout).trim())
}

/// Parses Slurm's `[D-]HH:MM:SS`, `HH:MM:SS`, `MM:SS` or `SS` into seconds.
pub fn parse_slurm_duration(s: &str) -> Option<i64> {
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<i64>().ok()?, r),
        None => (0, s),
    };
    let parts: Vec<i64> = rest
        .split(':')
        .map(|p| p.parse::<i64>().ok())
        .collect::<Option<_>>()?;
    let (h, m, sec) = match parts.as_slice() {
        [h, m, s] => (*h, *m, *s),
        [m, s] => (0, *m, *s),
        [s] => (0, 0, *s),
        _ => return None,
    };
    Some(((days * 24 + h) * 60 + m) * 60 + sec)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn reads_the_job_id_end_time_and_gpus() {
        let p = PilotEnv::read(
            env(&[
                ("SLURM_JOB_ID", "4242"),
                ("SLURM_JOB_END_TIME", "1700003600"),
                ("CUDA_VISIBLE_DEVICES", "1,GPU-abcd"),
            ]),
            |_| panic!("no squeue needed"),
            0,
        )
        .unwrap();
        assert_eq!(p.agent_name(), "slurm-4242");
        assert_eq!(p.ends_at_ms, Some(1_700_003_600_000));
        assert!(p.gpu_visible(1, "GPU-ffff"));
        assert!(p.gpu_visible(3, "GPU-abcd-1234"));
        assert!(!p.gpu_visible(0, "GPU-0000"));
    }

    #[test]
    fn falls_back_to_squeue_and_says_what_is_missing() {
        let p = PilotEnv::read(
            env(&[("SLURM_JOB_ID", "7")]),
            |id| {
                assert_eq!(id, "7");
                Some(600)
            },
            1_000,
        )
        .unwrap();
        assert_eq!(p.ends_at_ms, Some(601_000));
        assert!(
            p.gpu_visible(5, "GPU-x"),
            "no CUDA_VISIBLE_DEVICES: every GPU"
        );
        let e = PilotEnv::read(env(&[]), |_| None, 0).unwrap_err();
        assert!(e.contains("SLURM_JOB_ID"), "{e}");
        let e = PilotEnv::read(env(&[("SLURM_JOB_ID", "1; rm -rf /")]), |_| None, 0).unwrap_err();
        assert!(e.contains("not a Slurm job id"), "{e}");
        let e = PilotEnv::read(
            env(&[("SLURM_JOB_ID", "1"), ("SLURM_JOB_END_TIME", "soon")]),
            |_| None,
            0,
        )
        .unwrap_err();
        assert!(e.contains("SLURM_JOB_END_TIME"), "{e}");
    }

    #[test]
    fn parses_slurm_durations() {
        assert_eq!(parse_slurm_duration("1-02:03:04"), Some(93_784));
        assert_eq!(parse_slurm_duration("02:03:04"), Some(7_384));
        assert_eq!(parse_slurm_duration("03:04"), Some(184));
        assert_eq!(parse_slurm_duration("59"), Some(59));
        assert_eq!(parse_slurm_duration("UNLIMITED"), None);
        assert_eq!(parse_slurm_duration("NOT_SET"), None);
    }
}
