//! The footprints in memory: every known path of every actor with its statistics, merged
//! from the records of every replica (`<prefix>.footprints`) and the operators' decisions
//! (`<prefix>.control`). Pure data and merging; `live` owns it behind a lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::decide::Known;
use super::path::{Actor, ActorRef, Path, PathId};

/// Where a path stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Seen outside learning, not approved: alerted (alert mode) or refused (enforce).
    Unapproved,
    /// Seen while the application was learning.
    Learned,
    /// An operator approved it.
    Approved,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Unapproved => "unapproved",
            Status::Learned => "learned",
            Status::Approved => "approved",
        }
    }
}

/// One path of one actor: the record of `<prefix>.footprints` (key: the path id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    pub actor: Actor,
    pub path: Path,
    pub status: Status,
    /// When `status` was decided (the sighting that learned or alerted it, the approval).
    /// A forget outranks every status decided before it: a replica that had not read the
    /// forget yet keeps publishing the old status, and that must not bring the path back.
    /// 0 in records written before this field existed.
    #[serde(default)]
    pub status_ms: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Sightings per replica: each replica publishes its own count (a counter no two
    /// replicas write), the total is their sum.
    pub counts: BTreeMap<String, u64>,
    /// One statement that took this path (redacted like events' statements).
    pub example: String,
    /// The latest sqlcommenter `controller` / `action` tags seen with it.
    #[serde(default)]
    pub controller: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
}

impl Entry {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Fold another replica's (or an older) record of the same path into this one.
    pub fn merge(&mut self, other: &Entry) {
        match other.status.cmp(&self.status) {
            std::cmp::Ordering::Greater => {
                self.status = other.status;
                self.status_ms = other.status_ms;
            }
            std::cmp::Ordering::Equal => self.status_ms = self.status_ms.min(other.status_ms),
            std::cmp::Ordering::Less => {}
        }
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        if other.last_seen_ms > self.last_seen_ms {
            self.last_seen_ms = other.last_seen_ms;
            if other.controller.is_some() {
                self.controller.clone_from(&other.controller);
            }
            if other.action.is_some() {
                self.action.clone_from(&other.action);
            }
        }
        for (replica, n) in &other.counts {
            let mine = self.counts.entry(replica.clone()).or_default();
            *mine = (*mine).max(*n);
        }
        if self.example.is_empty() {
            self.example.clone_from(&other.example);
        }
    }
}

/// An entry plus what this replica saw since its last flush (atomics: the hot path only
/// reads the book).
#[derive(Debug)]
pub struct Slot {
    pub entry: Entry,
    pub(super) hits: AtomicU64,
    pub(super) last_ms: AtomicI64,
}

impl Slot {
    fn new(entry: Entry) -> Self {
        Slot {
            entry,
            hits: AtomicU64::new(0),
            last_ms: AtomicI64::new(0),
        }
    }

    /// Count one sighting at `now_ms`.
    pub fn hit(&self, now_ms: i64) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.last_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    fn matches(&self, a: ActorRef, table: &str) -> bool {
        let e = &self.entry.actor;
        e.application == a.application
            && e.user == a.user
            && e.database == a.database
            && self.entry.path.table() == table
    }
}

/// An operator's decision about one path, from the control topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "lowercase", deny_unknown_fields)]
pub enum Decision {
    /// Approved: known from now on (also before it is ever seen).
    Approved {
        actor: Actor,
        path: Path,
        by: String,
        at_ms: i64,
    },
    /// Forgotten: removed; records whose status was decided before `at_ms` do not bring it
    /// back (only a sighting judged after the forget, or a later approval, does).
    Forgotten { at_ms: i64 },
}

/// Every actor's paths.
#[derive(Debug, Default)]
pub struct Book {
    slots: HashMap<PathId, Slot>,
    /// Paths forgotten, and when: a replica's older record read later must not revive them.
    forgotten: HashMap<PathId, i64>,
    /// The earliest first sighting per application (for `learn_for`).
    app_first_seen: HashMap<String, i64>,
}

impl Book {
    /// Where the path `id` stands for `actor` writing `table`.
    pub fn known(&self, id: PathId, actor: ActorRef, table: &str) -> (Known, Option<&Slot>) {
        match self.slots.get(&id) {
            Some(s) if s.matches(actor, table) => match s.entry.status {
                Status::Unapproved => (Known::Unapproved, Some(s)),
                Status::Learned | Status::Approved => (Known::Known, Some(s)),
            },
            _ => (Known::New, None),
        }
    }

    pub fn get(&self, id: PathId) -> Option<&Slot> {
        self.slots.get(&id)
    }

    pub fn app_first_seen(&self, application: &str) -> Option<i64> {
        self.app_first_seen.get(application).copied()
    }

    /// Merge a record of the footprints topic; `false` if it was ignored (its status was
    /// decided before the path was forgotten).
    pub fn merge(&mut self, id: PathId, entry: Entry) -> bool {
        if self
            .forgotten
            .get(&id)
            .is_some_and(|at| entry.status_ms <= *at)
        {
            return false;
        }
        let first = self
            .app_first_seen
            .entry(entry.actor.application.clone())
            .or_insert(entry.first_seen_ms);
        *first = (*first).min(entry.first_seen_ms);
        match self.slots.get_mut(&id) {
            Some(s) => s.entry.merge(&entry),
            None => {
                self.slots.insert(id, Slot::new(entry));
            }
        }
        true
    }

    /// Apply an operator's decision.
    pub fn decide(&mut self, id: PathId, decision: Decision) {
        match decision {
            Decision::Approved {
                actor, path, at_ms, ..
            } => {
                self.forgotten.remove(&id);
                match self.slots.get_mut(&id) {
                    Some(s) => {
                        s.entry.status = Status::Approved;
                        s.entry.status_ms = at_ms;
                    }
                    None => {
                        let entry = Entry {
                            id: id.to_string(),
                            actor,
                            path,
                            status: Status::Approved,
                            status_ms: at_ms,
                            first_seen_ms: at_ms,
                            last_seen_ms: at_ms,
                            counts: BTreeMap::new(),
                            example: String::new(),
                            controller: None,
                            action: None,
                        };
                        self.slots.insert(id, Slot::new(entry));
                    }
                }
            }
            Decision::Forgotten { at_ms } => {
                // A status judged after the forget (read here before it) stays.
                if self
                    .slots
                    .get(&id)
                    .is_some_and(|s| s.entry.status_ms <= at_ms)
                {
                    self.slots.remove(&id);
                }
                self.forgotten.insert(id, at_ms);
            }
        }
    }

    /// Fold this replica's sightings since the last flush into the entries; returns the
    /// entries that changed (to publish).
    pub fn fold(&mut self, replica: &str) -> Vec<Entry> {
        let mut changed = Vec::new();
        for s in self.slots.values_mut() {
            let hits = s.hits.swap(0, Ordering::Relaxed);
            if hits == 0 {
                continue;
            }
            *s.entry.counts.entry(replica.to_string()).or_default() += hits;
            let last = s.last_ms.load(Ordering::Relaxed);
            s.entry.last_seen_ms = s.entry.last_seen_ms.max(last);
            changed.push(s.entry.clone());
        }
        changed
    }

    /// Every entry, sorted by actor, then first sighting.
    pub fn entries(&self) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = self.slots.values().map(|s| &s.entry).collect();
        all.sort_by(|a, b| {
            (&a.actor, a.first_seen_ms, &a.id).cmp(&(&b.actor, b.first_seen_ms, &b.id))
        });
        all
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(replica: &str, n: u64, first: i64, last: i64, status: Status) -> Entry {
        Entry {
            id: "x".into(),
            actor: Actor {
                application: "a".into(),
                user: "u".into(),
                database: "d".into(),
            },
            path: Path::Nulls {
                table: "public.t".into(),
                column: "c".into(),
            },
            status,
            status_ms: first,
            first_seen_ms: first,
            last_seen_ms: last,
            counts: [(replica.to_string(), n)].into(),
            example: String::new(),
            controller: None,
            action: None,
        }
    }

    #[test]
    fn merging_replicas_counts_each_once_and_keeps_the_widest_span() {
        let mut b = Book::default();
        let id = PathId(1);
        assert!(b.merge(id, entry("a", 3, 10, 20, Status::Unapproved)));
        assert!(b.merge(id, entry("b", 2, 5, 15, Status::Learned)));
        // A replica's older record of itself never lowers its count.
        assert!(b.merge(id, entry("a", 1, 10, 12, Status::Unapproved)));
        let e = &b.get(id).unwrap().entry;
        assert_eq!((e.total(), e.first_seen_ms, e.last_seen_ms), (5, 5, 20));
        assert_eq!(e.status, Status::Learned);
        assert_eq!(b.app_first_seen("a"), Some(5));
        b.get(id).unwrap().hit(30);
        b.get(id).unwrap().hit(25);
        let changed = b.fold("b");
        assert_eq!(changed.len(), 1);
        assert_eq!((changed[0].counts["b"], changed[0].last_seen_ms), (4, 30));
        assert!(b.fold("b").is_empty());
    }

    #[test]
    fn forgetting_is_not_undone_by_older_records() {
        let mut b = Book::default();
        let id = PathId(7);
        b.merge(id, entry("a", 1, 10, 20, Status::Learned));
        b.decide(id, Decision::Forgotten { at_ms: 25 });
        assert!(b.get(id).is_none());
        assert!(!b.merge(id, entry("b", 4, 10, 24, Status::Learned)));
        assert!(b.merge(id, entry("b", 5, 26, 26, Status::Unapproved)));
        let e = entry("b", 0, 0, 0, Status::Unapproved);
        b.decide(
            id,
            Decision::Approved {
                actor: e.actor,
                path: e.path,
                by: "op".into(),
                at_ms: 30,
            },
        );
        assert_eq!(b.get(id).unwrap().entry.status, Status::Approved);
    }

    /// The CI failure of `footprint_cli_lists_diffs_and_approves`: a replica that had not read
    /// the forget yet saw the approved path again and published its record (sighting after
    /// the forget, status still `approved`), which brought the approval back everywhere.
    #[test]
    fn a_replica_that_had_not_read_the_forget_does_not_revive_the_approval() {
        let mut b = Book::default();
        let id = PathId(9);
        let seen = entry("a", 1, 10, 10, Status::Unapproved);
        b.merge(id, seen.clone());
        let approval = Decision::Approved {
            actor: seen.actor.clone(),
            path: seen.path.clone(),
            by: "op".into(),
            at_ms: 20,
        };
        b.decide(id, approval);
        // The stale replica's view: approved at 20, then seen at 40.
        let mut stale = b.get(id).unwrap().entry.clone();
        stale.last_seen_ms = 40;
        *stale.counts.get_mut("a").unwrap() += 1;
        b.decide(id, Decision::Forgotten { at_ms: 30 });
        assert!(!b.merge(id, stale), "a status decided before the forget");
        assert!(b.get(id).is_none());
        // Seen again after the forget by a replica that knew: new again, judged afresh.
        assert!(b.merge(id, entry("b", 1, 50, 50, Status::Unapproved)));
        assert_eq!(b.get(id).unwrap().entry.status, Status::Unapproved);
    }

    /// Topics are read in no set order: a sighting judged after the forget, read before the
    /// forget itself, survives it.
    #[test]
    fn a_sighting_judged_after_the_forget_survives_reading_the_forget_late() {
        let mut b = Book::default();
        let id = PathId(11);
        b.merge(id, entry("a", 1, 50, 50, Status::Learned));
        b.decide(id, Decision::Forgotten { at_ms: 30 });
        assert_eq!(b.get(id).unwrap().entry.status, Status::Learned);
        b.decide(id, Decision::Forgotten { at_ms: 60 });
        assert!(b.get(id).is_none());
    }
}
