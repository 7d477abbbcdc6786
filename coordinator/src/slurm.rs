//! The Slurm executor (`[executors.slurm]`): pilot agents submitted into a
//! Slurm cluster when queued jobs fit no connected agent, cancelled when
//! idle. After HyperQueue's automatic allocation: the need for pilots is a
//! what-if question to the planner ("how many more pilots would get
//! work?"), failed submissions back off from 1 minute to 1 hour, and the
//! pilots themselves are ordinary agents (`agent run --pilot`) that drain
//! before their allocation ends.
//!
//! The service owns its timers; each tick (1) reads Slurm's queue and ends
//! the pilots that left it, (2) asks the planner how many pilots would get
//! work and which pending or idle ones would not, (3) runs `sbatch` and
//! `scancel`. Every pilot is a row in the store before anything else knows
//! of it, so a restarted coordinator knows what it left in Slurm's queue.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use sweepfold_common::{Bytes, JobId};
use tokio::io::AsyncWriteExt;

use crate::config::{CoordinatorConfig, SlurmConfig};
use crate::error::{Error, Result};
use crate::scheduler::plan::{Device, DeviceKind, plan};
use crate::state::{CoordinatorHandle, Core, now_ms};
use crate::store::{PilotState, pilot_agent_name};

/// The job name of every pilot (`squeue -n`).
pub const PILOT_JOB_NAME: &str = "sweepfold-pilot";

/// What the planner says about pilots now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PilotNeed {
    /// New pilots that would get work (before `max_pilots`).
    pub new: u32,
    /// Pending pilots (Slurm job ids) no queued job would go to.
    pub surplus_pending: Vec<String>,
}

impl Core {
    /// How many more pilots would get work: a what-if plan with the pending
    /// pilots and `room` new ones added as devices, after the connected
    /// agents took what fits them.
    pub fn pilots_needed(
        &self,
        slurm: &SlurmConfig,
        cfg: &CoordinatorConfig,
        room: u32,
    ) -> Result<PilotNeed> {
        let mut s = self.snapshot(cfg)?;
        let placed: HashSet<JobId> = plan(&s).iter().map(|a| a.job).collect();
        s.pending.retain(|p| !placed.contains(&p.id));
        let pending: Vec<String> = self
            .store
            .pilots()?
            .into_iter()
            .filter(|p| {
                p.state == PilotState::Pending && !self.agents.contains_key(&p.agent_name())
            })
            .map(|p| p.slurm_job_id)
            .collect();
        if s.pending.is_empty() {
            return Ok(PilotNeed {
                new: 0,
                surplus_pending: pending,
            });
        }
        // The connected agents had their chance in this pass.
        for d in &mut s.devices {
            d.jobs = d.jobs.max(d.max_jobs);
        }
        let base = s.devices.len();
        let per_pilot = if slurm.cpu {
            1
        } else {
            slurm.gpus_per_pilot.max(1) as usize
        };
        let time_limit = slurm.time_limit_secs().unwrap_or(u64::MAX) as f64;
        let datasets: BTreeSet<String> = slurm.datasets().into_iter().collect();
        let pilots = pending.len() + room as usize;
        for k in 0..pilots {
            for g in 0..per_pilot {
                let agent = match pending.get(k) {
                    Some(id) => pilot_agent_name(id),
                    None => format!("(new pilot {})", k - pending.len()),
                };
                s.devices.push(Device {
                    agent,
                    kind: if slurm.cpu {
                        DeviceKind::Cpu
                    } else {
                        DeviceKind::Gpu {
                            uuid: format!("pilot-{k}-gpu-{g}"),
                        }
                    },
                    total: slurm.gpu_memory,
                    free: slurm.gpu_memory,
                    jobs: 0,
                    max_jobs: if slurm.cpu {
                        slurm.cpu_slots
                    } else {
                        cfg.scheduler.max_jobs_per_gpu
                    },
                    exclusive: false,
                    idle: true,
                    datasets: datasets.clone(),
                    healthy: true,
                    spec_version: sweepfold_common::contract::SPEC_VERSION,
                    gpu_model: String::new(),
                    time_left: Some(time_limit),
                    ours: Bytes(0),
                });
            }
        }
        let used: BTreeSet<usize> = plan(&s)
            .iter()
            .filter(|a| a.device >= base)
            .map(|a| (a.device - base) / per_pilot)
            .collect();
        let new = used.iter().filter(|k| **k >= pending.len()).count() as u32;
        let surplus_pending = pending
            .iter()
            .enumerate()
            .filter(|(k, _)| !used.contains(k))
            .map(|(_, id)| id.clone())
            .collect();
        Ok(PilotNeed {
            new,
            surplus_pending,
        })
    }
}

/// Failed `sbatch` calls wait 1 min, 2, 4, ... up to 1 h before the next.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    fn ready(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now >= u)
    }

    fn failed(&mut self, now: Instant) -> Duration {
        self.failures += 1;
        let wait = Duration::from_secs(60 * (1u64 << (self.failures - 1).min(6)))
            .min(Duration::from_secs(3600));
        self.until = Some(now + wait);
        wait
    }

    fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

/// Runs a Slurm command (30 s at most) and returns its stdout.
async fn slurm_command(program: &str, args: &[String], stdin: Option<&str>) -> Result<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Slurm(format!("cannot run `{program}`: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| Error::Slurm(format!("`{program}`: cannot write its input: {e}")))?;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| Error::Slurm(format!("`{program}` did not answer within 30 s")))?
        .map_err(|e| Error::Slurm(format!("`{program}`: {e}")))?;
    if !out.status.success() {
        return Err(Error::Slurm(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `'...'` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script of a pilot (read by `sbatch` from stdin).
pub fn pilot_script(slurm: &SlurmConfig) -> String {
    let mut argv = slurm.agent_command.clone();
    if !argv.iter().any(|a| a == "--pilot") {
        // `agent run --pilot ...`: after the subcommand when there is one.
        let at = argv
            .iter()
            .position(|a| a == "run")
            .map_or(argv.len(), |i| i + 1);
        argv.insert(at, "--pilot".into());
    }
    if slurm.cpu && !argv.iter().any(|a| a == "--cpu") {
        argv.push("--cpu".into());
        argv.push("--cpu-slots".into());
        argv.push(slurm.cpu_slots.to_string());
    }
    let line: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    format!(
        "#!/bin/sh\n# A sweepfold pilot agent, submitted by the coordinator.\nexec {}\n",
        line.join(" ")
    )
}

/// The `sbatch` arguments of a pilot.
pub fn sbatch_args(slurm: &SlurmConfig) -> Vec<String> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={PILOT_JOB_NAME}"),
        format!("--time={}", slurm.time_limit),
        // Node-local: a pilot needs no shared filesystem.
        "--output=/tmp/sweepfold-pilot-%j.out".to_string(),
        "--nodes=1".to_string(),
        "--ntasks=1".to_string(),
    ];
    if !slurm.partition.is_empty() {
        args.push(format!("--partition={}", slurm.partition));
    }
    if !slurm.account.is_empty() {
        args.push(format!("--account={}", slurm.account));
    }
    if !slurm.cpu {
        args.push(format!("--gres=gpu:{}", slurm.gpus_per_pilot));
    }
    if slurm.cpus_per_pilot > 0 {
        args.push(format!("--cpus-per-task={}", slurm.cpus_per_pilot));
    }
    args.extend(slurm.sbatch_args.iter().cloned());
    args
}

/// `squeue -h -o "%i %T" -n sweepfold-pilot`: job id -> state.
fn parse_squeue(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

struct Executor {
    handle: CoordinatorHandle,
    slurm: SlurmConfig,
    backoff: Backoff,
    /// Running pilots' agents without a job, since when.
    idle_since: HashMap<String, Instant>,
}

impl Executor {
    async fn tick(&mut self) -> Result<()> {
        // 1. What Slurm says.
        let open: Vec<String> = self
            .handle
            .with_core(|core| {
                Ok(core
                    .store
                    .pilots()?
                    .into_iter()
                    .filter(|p| p.state != PilotState::Ended)
                    .map(|p| p.slurm_job_id)
                    .collect())
            })
            .await?;
        if !open.is_empty() {
            let args: Vec<String> = ["-h", "-o", "%i %T", "-n", PILOT_JOB_NAME]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let queue = parse_squeue(&slurm_command(&self.slurm.squeue, &args, None).await?);
            self.handle
                .with_core(move |core| {
                    for id in &open {
                        match queue.get(id) {
                            Some(state) => core.store.set_pilot_slurm_state(id, state)?,
                            None => {
                                if core.store.end_pilot(
                                    id,
                                    "left Slurm's queue (ended, cancelled or timed out)",
                                    now_ms(),
                                )? {
                                    tracing::info!(slurm_job = %id, "pilot left Slurm's queue");
                                }
                            }
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        // 2. What the planner says.
        let slurm = self.slurm.clone();
        let cfg = self.handle.config_arc();
        let (need, active, running) = self
            .handle
            .with_core(move |core| {
                let pilots = core.store.pilots()?;
                let active = pilots
                    .iter()
                    .filter(|p| p.state != PilotState::Ended)
                    .count() as u32;
                let room = slurm.max_pilots.saturating_sub(active);
                let need = core.pilots_needed(&slurm, &cfg, room)?;
                let busy: HashSet<String> = core
                    .store
                    .active_jobs()?
                    .into_iter()
                    .map(|j| j.agent)
                    .collect();
                // Running pilots: (job id, agent name, has work).
                let running: Vec<(String, String, bool)> = pilots
                    .iter()
                    .filter(|p| p.state == PilotState::Running)
                    .map(|p| {
                        let name = p.agent_name();
                        let working = busy.contains(&name);
                        (p.slurm_job_id.clone(), name, working)
                    })
                    .collect();
                Ok((need, active, running))
            })
            .await?;
        // 3. Act.
        let room = self.slurm.max_pilots.saturating_sub(active);
        let submit = need.new.min(room);
        for _ in 0..submit {
            let now = Instant::now();
            if !self.backoff.ready(now) {
                break;
            }
            match slurm_command(
                &self.slurm.sbatch,
                &sbatch_args(&self.slurm),
                Some(&pilot_script(&self.slurm)),
            )
            .await
            {
                Ok(out) => {
                    let id = out
                        .trim()
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        let wait = self.backoff.failed(now);
                        tracing::error!(output = %out.trim(), retry_in_secs = wait.as_secs(), "sbatch answered without a job id");
                        break;
                    }
                    self.backoff.succeeded();
                    let stored = id.clone();
                    self.handle
                        .with_core(move |core| core.store.insert_pilot(&stored, now_ms()))
                        .await?;
                    tracing::info!(slurm_job = %id, "pilot submitted to Slurm");
                }
                Err(e) => {
                    let wait = self.backoff.failed(now);
                    tracing::error!(
                        error = %e,
                        failures = self.backoff.failures,
                        retry_in_secs = wait.as_secs(),
                        "could not submit a pilot; submissions wait before the next try"
                    );
                    break;
                }
            }
        }
        let mut cancel: Vec<(String, &'static str)> = need
            .surplus_pending
            .iter()
            .map(|id| (id.clone(), "no queued job needs it"))
            .collect();
        let now = Instant::now();
        let idle_limit = Duration::from_millis(self.slurm.idle_cancel_ms);
        let running_names: HashSet<&String> = running.iter().map(|(_, n, _)| n).collect();
        self.idle_since
            .retain(|name, _| running_names.contains(name));
        for (id, name, working) in &running {
            if *working {
                self.idle_since.remove(name);
                continue;
            }
            let since = *self.idle_since.entry(name.clone()).or_insert(now);
            if now - since >= idle_limit {
                cancel.push((id.clone(), "its agent has been idle"));
            }
        }
        for (id, why) in cancel {
            match slurm_command(&self.slurm.scancel, std::slice::from_ref(&id), None).await {
                Ok(_) => {
                    let reason = format!("cancelled by the coordinator: {why}");
                    let stored = id.clone();
                    self.handle
                        .with_core(move |core| core.store.end_pilot(&stored, &reason, now_ms()))
                        .await?;
                    tracing::info!(slurm_job = %id, why, "pilot cancelled");
                }
                Err(e) => tracing::warn!(slurm_job = %id, error = %e, "could not cancel a pilot"),
            }
        }
        Ok(())
    }
}

impl CoordinatorHandle {
    /// Starts the Slurm executor when `[executors.slurm]` is configured; it
    /// stops on shutdown.
    pub fn start_slurm_executor(&self) {
        let Some(slurm) = self.config().executors.slurm.clone() else {
            return;
        };
        let mut ex = Executor {
            handle: self.clone(),
            backoff: Backoff::default(),
            idle_since: HashMap::new(),
            slurm,
        };
        let shutdown = self.shutdown_token();
        tracing::info!(
            partition = %ex.slurm.partition,
            max_pilots = ex.slurm.max_pilots,
            time_limit = %ex.slurm.time_limit,
            "slurm executor started"
        );
        tokio::spawn(async move {
            let tick = Duration::from_millis(ex.slurm.poll_ms);
            loop {
                if let Err(e) = ex.tick().await {
                    tracing::warn!(error = %e, "slurm executor: this round failed; it tries again");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(tick) => {},
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slurm() -> SlurmConfig {
        SlurmConfig {
            partition: "gpu".into(),
            account: "lab".into(),
            agent_command: vec![
                "/opt/sweepfold/agent".into(),
                "run".into(),
                "--coordinator".into(),
                "https://head:7070".into(),
                "--dataset".into(),
                "sketch=/scratch/it's here".into(),
            ],
            sbatch_args: vec!["--qos=short".into()],
            ..SlurmConfig::default()
        }
    }

    #[test]
    fn the_pilot_script_quotes_every_argument_and_adds_pilot() {
        let s = pilot_script(&slurm());
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(
            s.contains("exec '/opt/sweepfold/agent' 'run' '--pilot' '--coordinator' 'https://head:7070' '--dataset' 'sketch=/scratch/it'\\''s here'"),
            "{s}"
        );
        let mut cpu = slurm();
        cpu.cpu = true;
        cpu.cpu_slots = 2;
        assert!(
            pilot_script(&cpu)
                .trim_end()
                .ends_with("'--cpu' '--cpu-slots' '2'")
        );
    }

    #[test]
    fn sbatch_gets_the_configured_resources() {
        let a = sbatch_args(&slurm());
        for want in [
            "--parsable",
            "--job-name=sweepfold-pilot",
            "--time=04:00:00",
            "--partition=gpu",
            "--account=lab",
            "--gres=gpu:1",
            "--qos=short",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour() {
        let mut b = Backoff::default();
        let t = Instant::now();
        let waits: Vec<u64> = (0..9).map(|_| b.failed(t).as_secs()).collect();
        assert_eq!(waits, vec![60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert!(!b.ready(t));
        b.succeeded();
        assert!(b.ready(t));
    }

    #[test]
    fn squeue_lines_become_states() {
        let q = parse_squeue("12 PENDING\n13 RUNNING\n\n");
        assert_eq!(q["12"], "PENDING");
        assert_eq!(q["13"], "RUNNING");
        assert_eq!(q.len(), 2);
    }
}
