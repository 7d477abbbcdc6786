//! The live log tails of running jobs: the lines agents send while a job
//! runs (`JobLog`), kept in memory only, bounded per job, and dropped when
//! the attempt ends (the store then has the agent's `log_tail`). After a
//! restart of the coordinator a running job's tail starts empty and fills
//! with its next lines.

use std::collections::HashMap;

use sweepfold_common::JobId;

use crate::validate::MAX_LOG_TAIL;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct LiveLogs {
    tails: HashMap<JobId, String>,
}

impl LiveLogs {
    /// Adds `text` (one or more lines) to `job`'s tail, keeping its last
    /// [`MAX_LOG_TAIL`] bytes, cut at a line start where there is one.
    pub fn append(&mut self, job: JobId, text: &str) {
        let tail = self.tails.entry(job).or_default();
        if !tail.is_empty() {
            tail.push('\n');
        }
        tail.push_str(text);
        if tail.len() > MAX_LOG_TAIL {
            let mut start = tail.len() - MAX_LOG_TAIL;
            while !tail.is_char_boundary(start) {
                start += 1;
            }
            if let Some(nl) = tail[start..].find('\n') {
                start += nl + 1;
            }
            tail.drain(..start);
        }
    }

    /// The job's live tail, if it is running and sent lines.
    pub fn get(&self, job: JobId) -> Option<&str> {
        self.tails.get(&job).map(String::as_str)
    }

    /// The attempt ended: the stored tail takes over.
    pub fn remove(&mut self, job: JobId) {
        self.tails.remove(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_grows_by_lines_stays_bounded_and_goes_at_the_end() {
        let mut logs = LiveLogs::default();
        let job = JobId(7);
        assert_eq!(logs.get(job), None);
        logs.append(job, "epoch 1");
        logs.append(job, "epoch 2\nepoch 3");
        assert_eq!(logs.get(job), Some("epoch 1\nepoch 2\nepoch 3"));
        let line = "é".repeat(1000);
        for _ in 0..100 {
            logs.append(job, &line);
        }
        let tail = logs.get(job).unwrap();
        assert!(tail.len() <= MAX_LOG_TAIL);
        assert!(tail.starts_with('é') && tail.split('\n').all(|l| l == line));
        logs.remove(job);
        assert_eq!(logs.get(job), None);
    }
}
