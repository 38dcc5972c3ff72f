//! Pure: which BEGINs without END are due, and the END each one gets.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::audit::event::{CommitStatus, Resolution, ResolvedBy, TransactionRecord, TxStatus};

/// A BEGIN read from the transaction topic whose END has not been seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    pub begin: TransactionRecord,
    /// Where it was read: offsets to commit stay at or before it until it is closed.
    pub partition: i32,
    pub offset: i64,
    /// The id of a later BEGIN with the same txid: the server handed the txid out again after
    /// a crash, so this transaction never committed (see [`Tracker::on_record`]).
    pub reissued_to: Option<String>,
}

/// The open BEGINs of the partitions this replica reads, by transaction id.
#[derive(Debug, Default)]
pub struct Tracker {
    open: HashMap<String, Open>,
}

/// What to do with one due BEGIN.
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    /// Ask `txid_status(txid)` first.
    Ask(Open, i64),
    /// Close it as unknown without asking (no txid).
    Unknown(Open),
    /// Close it as aborted without asking: its txid was handed out again
    /// ([`Open::reissued_to`]), and `txid_status()` would describe the other transaction.
    Reissued(Open),
}

/// When a BEGIN is due, and whose are whose.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Age before a BEGIN is resolved, in ms.
    pub after_ms: i64,
    /// Age before another process's BEGIN without txid is closed as unknown, in ms.
    pub unknown_after_ms: i64,
    /// This process's transaction ids start with this (`<instance>-`).
    pub own_prefix: String,
}

impl Tracker {
    /// Take in one record of the transaction topic. Records that are not transaction records
    /// are ignored.
    pub fn on_record(&mut self, partition: i32, offset: i64, record: TransactionRecord) {
        match record.status {
            TxStatus::Begin => {
                let reissued_to = self.reissue(&record);
                self.open.entry(record.id.clone()).or_insert(Open {
                    begin: record,
                    partition,
                    offset,
                    reissued_to,
                });
            }
            TxStatus::End => {
                self.open.remove(&record.id);
            }
        }
    }

    /// A txid belongs to one transaction of the server; two BEGINs with the same one (and
    /// different ids) mean the server crashed, lost the earlier transaction before it was
    /// durable and handed its txid out again. The earlier of the two (by BEGIN time) is marked
    /// with the later's id; returns the mark for `record` itself when it is the earlier one.
    /// (Seen only when both BEGINs reach this replica while the earlier one is open; otherwise
    /// `check` and the server's incarnation decide, as before.)
    fn reissue(&mut self, record: &TransactionRecord) -> Option<String> {
        let txid = record.tx_id?;
        let mut own = None;
        for o in self.open.values_mut() {
            if o.begin.tx_id != Some(txid) || o.begin.id == record.id {
                continue;
            }
            if o.begin.ts_ms <= record.ts_ms {
                o.reissued_to.get_or_insert_with(|| record.id.clone());
            } else {
                own = Some(o.begin.id.clone());
            }
        }
        own
    }

    /// Forget a transaction (its END was just published by this replica).
    pub fn close(&mut self, id: &str) {
        self.open.remove(id);
    }

    /// Keep only the partitions this replica still reads.
    pub fn retain_partitions(&mut self, assigned: &HashSet<i32>) {
        self.open.retain(|_, o| assigned.contains(&o.partition));
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The offset to commit per partition: the oldest open BEGIN's, else the position read to,
    /// so a restart reads every open BEGIN again.
    pub fn commit_offsets(&self, positions: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        let mut out = positions.clone();
        for o in self.open.values() {
            if let Some(at) = out.get_mut(&o.partition) {
                *at = (*at).min(o.offset);
            }
        }
        out
    }

    /// BEGINs due now, oldest first. `live(id)`: this process still runs that transaction.
    /// `caught_up(p)`: partition `p` was read to its end (else a later END may be unread).
    pub fn due(
        &self,
        now_ms: i64,
        policy: &Policy,
        live: impl Fn(&str) -> bool,
        caught_up: impl Fn(i32) -> bool,
    ) -> Vec<Due> {
        let mut due: Vec<Due> = self
            .open
            .values()
            .filter(|o| caught_up(o.partition))
            .filter_map(|o| {
                let age = now_ms - o.begin.ts_ms;
                let own = o.begin.id.starts_with(&policy.own_prefix);
                if age < policy.after_ms || (own && live(&o.begin.id)) {
                    return None;
                }
                if o.reissued_to.is_some() {
                    return Some(Due::Reissued(o.clone()));
                }
                match o.begin.tx_id {
                    Some(txid) => Some(Due::Ask(o.clone(), txid)),
                    None if own || age >= policy.unknown_after_ms => Some(Due::Unknown(o.clone())),
                    None => None,
                }
            })
            .collect();
        due.sort_by_key(|d| match d {
            Due::Ask(o, _) | Due::Unknown(o) | Due::Reissued(o) => (o.begin.ts_ms, o.offset),
        });
        due
    }
}

/// The END for `begin`, given what `txid_status()` answered (`None`: NULL, the server no
/// longer knows the txid; not asked for [`Due::Unknown`]). `Ok(None)`: still in progress,
/// ask again later.
pub fn end_for(
    begin: &TransactionRecord,
    asked: Asked,
    resolver: &str,
    now_ms: i64,
) -> Option<TransactionRecord> {
    let (commit_status, by, txid_status) = match asked {
        Asked::NotAsked => (CommitStatus::Unknown, ResolvedBy::NoTxid, None),
        Asked::InFuture => (CommitStatus::Aborted, ResolvedBy::TxidInFuture, None),
        Asked::LostInCrash => (CommitStatus::Aborted, ResolvedBy::LostInCrash, None),
        Asked::Reissued => (CommitStatus::Aborted, ResolvedBy::TxidReissued, None),
        Asked::Unverifiable(s) => (CommitStatus::Unknown, ResolvedBy::ServerRestarted, Some(s)),
        Asked::Answer(None) => (CommitStatus::Unknown, ResolvedBy::TxidUnknownToServer, None),
        Asked::Answer(Some(s)) => match s.as_str() {
            "committed" => (CommitStatus::Committed, ResolvedBy::TxidStatus, Some(s)),
            "aborted" => (CommitStatus::Aborted, ResolvedBy::TxidStatus, Some(s)),
            // "in progress" (a COMMIT still waiting, e.g. on a lock or a synchronous
            // replica), or anything newer servers may say: decide later.
            _ => return None,
        },
    };
    Some(TransactionRecord {
        status: TxStatus::End,
        commit_status: Some(commit_status),
        resolution: Some(Resolution {
            by,
            txid_status,
            resolver: resolver.to_string(),
            begin_ts_ms: begin.ts_ms,
        }),
        ts_ms: now_ms,
        ..begin.clone()
    })
}

/// What was learnt about a due BEGIN.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    /// The BEGIN had no txid.
    NotAsked,
    /// `txid_status()`'s answer: `None` is SQL NULL.
    Answer(Option<String>),
    /// `txid_status()` refused: the txid is in the future.
    InFuture,
    /// Not asked: see [`Check::LostInCrash`].
    LostInCrash,
    /// Not asked: see [`Due::Reissued`].
    Reissued,
    /// `txid_status()` said this (`committed`), but see [`Check::DistrustCommitted`].
    Unverifiable(String),
}

/// How the server last started, as far as the healer can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Its latest checkpoint predates its start: a clean shutdown's; no txid was lost.
    Clean,
    /// A checkpoint right after the start: crash recovery's end-of-recovery checkpoint, whose
    /// next txid is the first one after recovery; txids at or past it may have been lost.
    Crash { next_txid: i64 },
    /// Neither could be told (the first checkpoint after the start was not seen).
    Unknown,
}

/// The server's current incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incarnation {
    /// `pg_postmaster_start_time()`, ms.
    pub started_ms: i64,
    pub recovery: Recovery,
}

/// How far after the start a checkpoint is taken for the end-of-recovery one.
pub const END_OF_RECOVERY_WINDOW_MS: i64 = 60_000;

impl Incarnation {
    /// From `pg_postmaster_start_time()`, and the latest checkpoint's time and next txid
    /// (`pg_control_checkpoint()`).
    /// A checkpoint's time has whole seconds only: one in the second of the start may be a
    /// clean shutdown's just before it or recovery's just after; taking it for recovery's is
    /// safe either way (a clean shutdown's next txid is past every txid before it).
    pub fn observe(started_ms: i64, checkpoint_ms: i64, next_txid: i64) -> Incarnation {
        let start_second_ms = started_ms.div_euclid(1000) * 1000;
        let recovery = if checkpoint_ms < start_second_ms {
            Recovery::Clean
        } else if checkpoint_ms <= started_ms + END_OF_RECOVERY_WINDOW_MS {
            Recovery::Crash { next_txid }
        } else {
            Recovery::Unknown
        };
        Incarnation {
            started_ms,
            recovery,
        }
    }

    /// What an earlier observation of the same incarnation knew stays known (a later
    /// checkpoint must not turn `Crash` into `Unknown`).
    pub fn merge(self, earlier: Option<Incarnation>) -> Incarnation {
        match earlier {
            Some(e) if e.started_ms == self.started_ms && e.recovery != Recovery::Unknown => e,
            _ => self,
        }
    }
}

/// Whether `txid_status()` can be trusted for a BEGIN published at `begin_ts_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Ask and believe it.
    Ask,
    /// Do not ask: the transaction never committed.
    LostInCrash,
    /// Ask, but a `committed` may be another transaction's (the txid reused after a crash).
    DistrustCommitted,
}

/// Txids of transactions that were not durable when the server crashed are handed out again
/// after recovery: `txid_status()` then describes another transaction. A BEGIN from before
/// the current start is only judged by `txid_status()` when that start followed a clean
/// shutdown, or its txid is below the first txid after crash recovery.
pub fn check(begin_ts_ms: i64, txid: i64, now: &Incarnation) -> Check {
    if begin_ts_ms >= now.started_ms {
        return Check::Ask;
    }
    match now.recovery {
        Recovery::Clean => Check::Ask,
        Recovery::Crash { next_txid } if txid >= next_txid => Check::LostInCrash,
        Recovery::Crash { .. } => Check::Ask,
        Recovery::Unknown => Check::DistrustCommitted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(id: &str, txid: Option<i64>, ts_ms: i64) -> TransactionRecord {
        TransactionRecord {
            status: TxStatus::Begin,
            id: id.into(),
            tx_id: txid,
            event_count: 1,
            data_collections: vec![],
            ts_ms,
            commit_status: None,
            resolution: None,
        }
    }

    fn policy() -> Policy {
        Policy {
            after_ms: 1_000,
            unknown_after_ms: 60_000,
            own_prefix: "me-".into(),
        }
    }

    fn ids(d: &[Due]) -> Vec<String> {
        d.iter()
            .map(|d| match d {
                Due::Ask(o, _) | Due::Unknown(o) | Due::Reissued(o) => o.begin.id.clone(),
            })
            .collect()
    }

    #[test]
    fn an_end_closes_its_begin_and_offsets_stay_before_open_ones() {
        let mut t = Tracker::default();
        t.on_record(0, 5, begin("a-1:1", Some(10), 0));
        t.on_record(0, 6, begin("a-1:2", Some(11), 0));
        let mut end = begin("a-1:1", Some(10), 0);
        end.status = TxStatus::End;
        t.on_record(0, 7, end);
        assert_eq!(t.len(), 1);
        let positions = BTreeMap::from([(0, 8), (1, 3)]);
        assert_eq!(
            t.commit_offsets(&positions),
            BTreeMap::from([(0, 6), (1, 3)])
        );
    }

    #[test]
    fn young_live_and_unread_partitions_wait() {
        let mut t = Tracker::default();
        t.on_record(0, 1, begin("other-1:1", Some(10), 0));
        t.on_record(0, 2, begin("me-3:1", Some(11), 0));
        t.on_record(0, 3, begin("other-2:1", Some(12), 9_500));
        t.on_record(1, 1, begin("other-4:1", Some(13), 0));
        let due = t.due(10_000, &policy(), |id| id == "me-3:1", |p| p == 0);
        assert_eq!(ids(&due), vec!["other-1:1"]);
        let due = t.due(10_000, &policy(), |_| false, |_| true);
        assert_eq!(ids(&due).len(), 3);
    }

    #[test]
    fn no_txid_is_unknown_at_once_when_own_else_after_unknown_after() {
        let mut t = Tracker::default();
        t.on_record(0, 1, begin("me-1:1", None, 0));
        t.on_record(0, 2, begin("other-1:1", None, 0));
        let due = t.due(10_000, &policy(), |_| false, |_| true);
        assert_eq!(due, vec![Due::Unknown(t.open["me-1:1"].clone())]);
        let due = t.due(60_000, &policy(), |_| false, |_| true);
        assert_eq!(ids(&due), vec!["me-1:1", "other-1:1"]);
    }

    #[test]
    fn txids_are_not_trusted_across_a_crash_that_may_have_reused_them() {
        let crash = Incarnation::observe(1_000, 1_500, 50);
        assert_eq!(crash.recovery, Recovery::Crash { next_txid: 50 });
        assert_eq!(
            check(2_000, 60, &crash),
            Check::Ask,
            "BEGIN after the start"
        );
        assert_eq!(check(900, 50, &crash), Check::LostInCrash);
        assert_eq!(
            check(900, 49, &crash),
            Check::Ask,
            "durable before the crash"
        );
        // Regression (chaos suite): checkpoint times are whole seconds; a recovery checkpoint
        // 0.2 s after a start at x.7 s read as before the start, so as a clean shutdown's.
        let same_second = Incarnation::observe(12_700, 12_000, 50);
        assert_eq!(same_second.recovery, Recovery::Crash { next_txid: 50 });
        let clean = Incarnation::observe(1_000, 990, 50);
        assert_eq!(check(900, 70, &clean), Check::Ask);
        let unknown = Incarnation::observe(1_000, 1_000 + END_OF_RECOVERY_WINDOW_MS + 1, 90);
        assert_eq!(unknown.recovery, Recovery::Unknown);
        assert_eq!(check(900, 70, &unknown), Check::DistrustCommitted);
        assert_eq!(
            unknown.merge(Some(crash)),
            crash,
            "what was seen stays known"
        );
        let restarted = Incarnation::observe(5_000, 4_000, 99);
        assert_eq!(
            restarted.merge(Some(crash)),
            restarted,
            "a new start replaces it"
        );
    }

    /// Regression (chaos suite, "txid reuse after a crash and a later clean restart"): the
    /// server crashed after a BEGIN, handed its txid to a later transaction that committed,
    /// then restarted cleanly; `check` saw only the clean start and `txid_status()` answered
    /// for the later transaction, so the lost one was closed as committed.
    #[test]
    fn a_txid_handed_out_again_marks_the_earlier_begin_aborted_without_asking() {
        let mut t = Tracker::default();
        t.on_record(0, 1, begin("a-1:1", Some(10), 100));
        t.on_record(0, 2, begin("b-1:1", Some(10), 200));
        let mut end = begin("b-1:1", Some(10), 200);
        end.status = TxStatus::End;
        t.on_record(0, 3, end);
        // A BEGIN published again for the same transaction is not a reuse.
        t.on_record(0, 4, begin("a-1:2", Some(11), 300));
        t.on_record(0, 5, begin("a-1:2", Some(11), 300));
        let due = t.due(10_000, &policy(), |_| false, |_| true);
        assert_eq!(due.len(), 2, "{due:?}");
        assert!(
            matches!(&due[0], Due::Reissued(o) if o.begin.id == "a-1:1" && o.reissued_to.as_deref() == Some("b-1:1")),
            "{due:?}"
        );
        assert!(
            matches!(&due[1], Due::Ask(o, 11) if o.begin.id == "a-1:2"),
            "{due:?}"
        );
        // Read in the other order (another partition first): the earlier one is still marked.
        let mut t = Tracker::default();
        t.on_record(1, 1, begin("b-1:1", Some(10), 200));
        t.on_record(0, 1, begin("a-1:1", Some(10), 100));
        let due = t.due(10_000, &policy(), |_| false, |_| true);
        assert!(
            matches!(&due[0], Due::Reissued(o) if o.begin.id == "a-1:1"),
            "{due:?}"
        );
        assert!(
            matches!(&due[1], Due::Ask(o, 10) if o.begin.id == "b-1:1"),
            "{due:?}"
        );
        let e = end_for(&begin("a-1:1", Some(10), 100), Asked::Reissued, "r", 1).unwrap();
        assert_eq!(e.commit_status, Some(CommitStatus::Aborted));
    }

    #[test]
    fn ends_say_what_the_server_said() {
        let b = begin("x:1", Some(10), 5);
        let end = |a| end_for(&b, a, "r1", 99);
        let committed = end(Asked::Answer(Some("committed".into()))).unwrap();
        assert_eq!(committed.commit_status, Some(CommitStatus::Committed));
        assert_eq!(committed.status, TxStatus::End);
        assert_eq!(committed.ts_ms, 99);
        let r = committed.resolution.unwrap();
        assert_eq!(
            (r.by, r.begin_ts_ms, r.resolver.as_str()),
            (ResolvedBy::TxidStatus, 5, "r1")
        );
        assert_eq!(
            end(Asked::Answer(Some("aborted".into())))
                .unwrap()
                .commit_status,
            Some(CommitStatus::Aborted)
        );
        assert_eq!(end(Asked::Answer(Some("in progress".into()))), None);
        let gone = end(Asked::Answer(None)).unwrap();
        assert_eq!(gone.commit_status, Some(CommitStatus::Unknown));
        assert_eq!(gone.resolution.unwrap().by, ResolvedBy::TxidUnknownToServer);
        assert_eq!(
            end(Asked::NotAsked).unwrap().resolution.unwrap().by,
            ResolvedBy::NoTxid
        );
        for (asked, status, by) in [
            (
                Asked::InFuture,
                CommitStatus::Aborted,
                ResolvedBy::TxidInFuture,
            ),
            (
                Asked::LostInCrash,
                CommitStatus::Aborted,
                ResolvedBy::LostInCrash,
            ),
            (
                Asked::Reissued,
                CommitStatus::Aborted,
                ResolvedBy::TxidReissued,
            ),
            (
                Asked::Unverifiable("committed".into()),
                CommitStatus::Unknown,
                ResolvedBy::ServerRestarted,
            ),
        ] {
            let e = end(asked).unwrap();
            assert_eq!(
                (e.commit_status, e.resolution.unwrap().by),
                (Some(status), by)
            );
        }
    }
}
