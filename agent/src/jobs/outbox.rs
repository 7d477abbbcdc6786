//! The agent's outbox: at-least-once delivery of job updates to the
//! coordinator across reconnections.
//!
//! Updates wait in order until a session takes them. A `finished` update
//! stays after it was sent, until the coordinator acknowledges it; it is
//! sent again in the next `hello` and, if still unacknowledged after a
//! while, on the open session (the coordinator may have failed to record
//! it, say with a full disk). Other updates (`started`, `epoch`) are sent
//! once: a lost one is harmless. Pure bookkeeping: no I/O, and the clock is
//! passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sweepfold_common::{Attempt, JobId};
use sweepfold_proto::v1 as pb;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Updates not yet handed to a session, in order.
    queue: VecDeque<pb::JobUpdate>,
    /// `finished` updates handed to a session but not yet acknowledged, with
    /// when they were last sent.
    unacked: Vec<(pb::JobUpdate, Instant)>,
}

/// The attempt a `finished` update ends, if it is one.
pub fn finished_attempt(u: &pb::JobUpdate) -> Option<(JobId, Attempt)> {
    matches!(u.update, Some(pb::job_update::Update::Finished(_)))
        .then_some((JobId(u.job_id), Attempt(u.attempt)))
}

/// A live log update (see `JobLog` in the protocol).
fn is_log(u: &pb::JobUpdate) -> bool {
    matches!(u.update, Some(pb::job_update::Update::Log(_)))
}

/// Beyond this many waiting updates, live log lines are not queued.
const MAX_QUEUED_FOR_LOGS: usize = 256;

impl Outbox {
    /// Queues an update behind the others. Live log lines are dropped
    /// while many updates wait (the coordinator is away): they only feed a
    /// live view, and the queue must not grow with a chatty job's output.
    pub fn push(&mut self, u: pb::JobUpdate) {
        if is_log(&u) && self.queue.len() >= MAX_QUEUED_FOR_LOGS {
            return;
        }
        self.queue.push_back(u);
    }

    /// The next update to hand to a session.
    pub fn pop(&mut self) -> Option<pb::JobUpdate> {
        self.queue.pop_front()
    }

    /// A session could not take `u`: it goes back to the front.
    pub fn unsent(&mut self, u: pb::JobUpdate) {
        self.queue.push_front(u);
    }

    /// `u` was handed to a session at `now`. Returns the attempt it ends,
    /// if it is a `finished` update (kept until acknowledged).
    pub fn handed(&mut self, u: pb::JobUpdate, now: Instant) -> Option<(JobId, Attempt)> {
        let ended = finished_attempt(&u);
        if ended.is_some() {
            self.unacked.push((u, now));
        }
        ended
    }

    /// Everything the coordinator has not acknowledged, in order, for a new
    /// `hello` at `now`: unacknowledged `finished` updates first, then the
    /// other queued ones. Also returns the attempts those updates end.
    pub fn take_for_hello(&mut self, now: Instant) -> (Vec<pb::JobUpdate>, Vec<(JobId, Attempt)>) {
        let queued: Vec<pb::JobUpdate> = self.queue.drain(..).collect();
        let mut ended = Vec::new();
        for u in &queued {
            if let Some(a) = finished_attempt(u) {
                ended.push(a);
                self.unacked.push((u.clone(), now));
            }
        }
        let mut all: Vec<pb::JobUpdate> = self
            .unacked
            .iter_mut()
            .map(|(u, sent)| {
                *sent = now;
                u.clone()
            })
            .collect();
        all.extend(
            queued
                .into_iter()
                .filter(|u| finished_attempt(u).is_none() && !is_log(u)),
        );
        (all, ended)
    }

    /// `finished` updates sent `age` or longer before `now` and still not
    /// acknowledged: to send again (their clock restarts).
    pub fn resend_due(&mut self, age: Duration, now: Instant) -> Vec<pb::JobUpdate> {
        self.unacked
            .iter_mut()
            .filter(|(_, sent)| now.duration_since(*sent) >= age)
            .map(|(u, sent)| {
                *sent = now;
                u.clone()
            })
            .collect()
    }

    /// Attempts whose `finished` update waits or is unacknowledged: they
    /// have ended here, but the coordinator has not recorded it yet.
    pub fn pending_finished(&self) -> Vec<(JobId, Attempt)> {
        self.queue
            .iter()
            .chain(self.unacked.iter().map(|(u, _)| u))
            .filter_map(finished_attempt)
            .collect()
    }

    /// The coordinator recorded the end of this attempt: forget it.
    /// Forgets the acknowledged update; returns it (if it was held).
    pub fn ack(&mut self, job: JobId, attempt: Attempt) -> Option<pb::JobUpdate> {
        let i = self
            .unacked
            .iter()
            .position(|(u, _)| u.job_id == job.0 && u.attempt == attempt.0)?;
        let (u, _) = self.unacked.remove(i);
        self.unacked
            .retain(|(u, _)| !(u.job_id == job.0 && u.attempt == attempt.0));
        Some(u)
    }

    /// Updates waiting or unacknowledged.
    pub fn len(&self) -> usize {
        self.queue.len() + self.unacked.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(job: i64) -> pb::JobUpdate {
        pb::JobUpdate {
            job_id: job,
            attempt: 1,
            update: Some(pb::job_update::Update::Started(pb::JobStarted { pid: 7 })),
        }
    }

    fn finished(job: i64) -> pb::JobUpdate {
        pb::JobUpdate {
            job_id: job,
            attempt: 1,
            update: Some(pb::job_update::Update::Finished(pb::JobFinished::default())),
        }
    }

    #[test]
    fn updates_leave_in_order_and_an_unsent_one_goes_first_again() {
        let mut o = Outbox::default();
        o.push(started(1));
        o.push(finished(1));
        let first = o.pop().unwrap();
        o.unsent(first);
        assert_eq!(o.pop(), Some(started(1)));
        assert_eq!(o.pop(), Some(finished(1)));
        assert_eq!(o.pop(), None);
    }

    fn log(job: i64) -> pb::JobUpdate {
        pb::JobUpdate {
            job_id: job,
            attempt: 1,
            update: Some(pb::job_update::Update::Log(pb::JobLog {
                text: "epoch 1".into(),
            })),
        }
    }

    #[test]
    fn live_log_lines_are_dropped_while_the_coordinator_is_away() {
        let mut o = Outbox::default();
        o.push(log(1));
        o.push(started(1));
        let (hello, _) = o.take_for_hello(Instant::now());
        assert_eq!(
            hello,
            vec![started(1)],
            "a reconnection does not replay log lines"
        );
        for _ in 0..MAX_QUEUED_FOR_LOGS {
            o.push(started(2));
        }
        o.push(log(2));
        o.push(finished(2));
        assert_eq!(
            o.len(),
            MAX_QUEUED_FOR_LOGS + 1,
            "the log line was not queued"
        );
    }

    #[test]
    fn a_finished_update_stays_until_acknowledged() {
        let t0 = Instant::now();
        let mut o = Outbox::default();
        assert_eq!(o.handed(started(1), t0), None, "started is sent once");
        assert!(o.is_empty());
        assert_eq!(o.handed(finished(1), t0), Some((JobId(1), Attempt(1))));
        assert_eq!(o.len(), 1);
        o.ack(JobId(1), Attempt(2));
        assert_eq!(o.len(), 1, "an ack of another attempt changes nothing");
        o.ack(JobId(1), Attempt(1));
        assert!(o.is_empty());
    }

    #[test]
    fn a_new_hello_carries_the_unacknowledged_then_the_queued() {
        let t0 = Instant::now();
        let mut o = Outbox::default();
        o.handed(finished(1), t0);
        o.push(started(2));
        o.push(finished(3));
        let (hello, ended) = o.take_for_hello(t0);
        assert_eq!(hello, vec![finished(1), finished(3), started(2)]);
        assert_eq!(ended, vec![(JobId(3), Attempt(1))]);
        // Nothing is left to send on the session; both finished updates wait
        // for their acks.
        assert_eq!(o.pop(), None);
        assert_eq!(o.len(), 2);
        let (again, _) = o.take_for_hello(t0);
        assert_eq!(
            again,
            vec![finished(1), finished(3)],
            "sent again until acked"
        );
    }

    #[test]
    fn unacknowledged_updates_are_resent_after_their_age() {
        let t0 = Instant::now();
        let mut o = Outbox::default();
        o.handed(finished(1), t0);
        let age = Duration::from_secs(30);
        assert!(o.resend_due(age, t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(o.resend_due(age, t0 + age), vec![finished(1)]);
        // Its clock restarted.
        assert!(
            o.resend_due(age, t0 + age + Duration::from_secs(1))
                .is_empty()
        );
        assert_eq!(o.resend_due(age, t0 + age * 2), vec![finished(1)]);
    }
}
