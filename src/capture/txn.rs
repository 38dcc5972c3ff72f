//! The changes captured in the current transaction, waiting for COMMIT.
//!
//! Nothing is published for work that is rolled back: a ROLLBACK empties the buffer, a
//! ROLLBACK TO SAVEPOINT drops what was captured since the savepoint, and a failed statement's
//! rows never enter it (they are held per statement until its CommandComplete).

use std::sync::Arc;

use crate::audit::event::Image;

use super::rewrite::Shape;

/// Who ran a statement and what it was: the attribution every event of it carries.
#[derive(Debug, Clone)]
pub struct StatementCtx {
    /// Statement text as the client sent it (sqlcommenter comment removed).
    pub text: String,
    pub fingerprint: String,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Number of the statement in its session (1-based).
    pub seq: u64,
    /// Milliseconds since the epoch when hindsight forwarded it.
    pub ts_ms: i64,
    /// `application_name` at the time.
    pub application_name: String,
    pub shape: Arc<Shape>,
    /// The capture columns come back in binary format (Bind asked for binary results).
    pub binary: bool,
    /// What gates need at COMMIT, and what they decided before the statement ran.
    pub gate: GateInfo,
}

#[cfg(test)]
impl StatementCtx {
    /// Statement 1 of a session, of `shape`, with nothing else set (unit tests).
    pub fn for_test(shape: Arc<Shape>) -> Self {
        StatementCtx {
            text: String::new(),
            fingerprint: String::new(),
            tags: Default::default(),
            seq: 1,
            ts_ms: 0,
            application_name: String::new(),
            shape,
            binary: false,
            gate: GateInfo::default(),
        }
    }
}

/// A statement's facts for the gates' row phase, and the statement phase's outcome.
#[derive(Debug, Clone, Default)]
pub struct GateInfo {
    /// The statement's own kind (COPY is `copy` although it is captured as an INSERT).
    pub op: Option<crate::statement::Kind>,
    pub writes: Vec<crate::statement::Write>,
    /// An `allow` rule decided: row rules do not apply.
    pub exempt: bool,
    /// Set on every change of the statement.
    pub mark: Option<GateMark>,
}

/// What a gate decided about a change, as the event records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateMark {
    /// Refused by this rule: published with op `blocked`, never committed.
    Blocked(String),
    /// This rule, in audit (dry-run) mode, would have refused it.
    WouldBlock(String),
}

/// One changed row as captured.
#[derive(Debug, Clone)]
pub struct Change {
    pub before: Option<Image>,
    pub after: Option<Image>,
    pub table_oid: u32,
    pub stmt: Arc<StatementCtx>,
    /// A row rule's decision about this change (overrides the statement's).
    pub gate: Option<GateMark>,
    /// The foreign key whose cascade changed this row (`None`: the statement changed it).
    pub cascade: Option<Box<super::cascade::Origin>>,
}

impl Change {
    /// The statement-level change of a DDL or opaque statement (no row images).
    pub fn statement(stmt: Arc<StatementCtx>) -> Self {
        Change {
            before: None,
            after: None,
            table_oid: 0,
            stmt,
            gate: None,
            cascade: None,
        }
    }

    pub fn is_statement(&self) -> bool {
        self.before.is_none() && self.after.is_none()
    }
}

/// Captured changes of the open transaction, with savepoint marks.
#[derive(Debug, Default)]
pub struct TxnBuffer {
    changes: Vec<Change>,
    /// `(savepoint name, number of changes when it was set)`, innermost last.
    savepoints: Vec<(String, usize)>,
    /// capture.max_transaction_bytes (0: none).
    pub byte_limit: u64,
    /// Bytes of captured rows the server sent in this transaction (savepoints rolled back
    /// included: the bound is on what passed through memory).
    captured_bytes: u64,
    /// Over `byte_limit`: the transaction cannot commit, and nothing more is kept.
    over_limit: bool,
    /// The transaction's id, as a captured row brought it (`Shape::txid_at`).
    txid: Option<i64>,
}

impl TxnBuffer {
    pub fn push(&mut self, changes: impl IntoIterator<Item = Change>) {
        if !self.over_limit {
            self.changes.extend(changes);
        }
    }

    /// Count `bytes` of captured rows; `true` when this passes the limit (once per
    /// transaction). The changes kept so far are dropped then: they can never be published.
    pub fn count(&mut self, bytes: usize) -> bool {
        self.captured_bytes += bytes as u64;
        if self.over_limit || self.byte_limit == 0 || self.captured_bytes <= self.byte_limit {
            return false;
        }
        self.over_limit = true;
        self.changes = Vec::new();
        true
    }

    /// The transaction captured more than `byte_limit`: it must not commit.
    pub fn over_limit(&self) -> bool {
        self.over_limit
    }

    /// Nothing to publish or refuse at COMMIT (a transaction over the limit is not empty:
    /// its COMMIT must fail).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.over_limit
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The transaction's id, once a captured row brought it.
    pub fn txid(&self) -> Option<i64> {
        self.txid
    }

    pub fn note_txid(&mut self, txid: i64) {
        self.txid = Some(txid);
    }

    /// Everything, for publishing at COMMIT; leaves the buffer empty.
    pub fn take(&mut self) -> Vec<Change> {
        self.txid = None;
        self.savepoints.clear();
        self.captured_bytes = 0;
        self.over_limit = false;
        std::mem::take(&mut self.changes)
    }

    /// The transaction ended without commit (or after publishing).
    pub fn clear(&mut self) {
        self.txid = None;
        self.changes.clear();
        self.savepoints.clear();
        self.captured_bytes = 0;
        self.over_limit = false;
    }

    pub fn savepoint(&mut self, name: &str) {
        self.savepoints.push((name.to_string(), self.changes.len()));
    }

    /// `ROLLBACK TO name`: drop changes since the newest savepoint of that name; the
    /// savepoint itself stays (as in PostgreSQL), later ones are gone.
    pub fn rollback_to(&mut self, name: &str) {
        if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
            let mark = self.savepoints[i].1;
            self.changes.truncate(mark);
            self.savepoints.truncate(i + 1);
        }
    }

    /// `RELEASE name`: forget that savepoint and the ones after it; the changes stay.
    pub fn release(&mut self, name: &str) {
        if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
            self.savepoints.truncate(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::{Kind, TableName};

    fn change(n: i64) -> Change {
        Change {
            before: None,
            after: Some(Image::from_row(&crate::audit::event::Row::from_iter([(
                "n".to_string(),
                n.into(),
            )]))),
            table_oid: 1,
            gate: None,
            cascade: None,
            stmt: Arc::new(StatementCtx::for_test(Arc::new(Shape {
                kind: Kind::Insert,
                table: TableName {
                    schema: String::new(),
                    name: "t".into(),
                },
                extra: 2,
                old_at: None,
                new_at: Some(0),
                oid_at: 1,
                updated_at: None,
                wrapper: None,
                client_returning: false,
                pre_read: false,
                read_after: None,
                cascade: None,
                txid_at: None,
            }))),
        }
    }

    #[test]
    fn savepoints_drop_exactly_the_rolled_back_work() {
        let mut b = TxnBuffer::default();
        b.push([change(1)]);
        b.savepoint("a");
        b.push([change(2)]);
        b.savepoint("b");
        b.push([change(3)]);
        b.rollback_to("a");
        assert_eq!(b.len(), 1);
        b.push([change(4)]);
        b.rollback_to("a");
        assert_eq!(b.len(), 1, "savepoint a survives its own rollback");
        b.push([change(5)]);
        b.release("a");
        b.rollback_to("a");
        assert_eq!(b.len(), 2, "released savepoints are gone");
        assert_eq!(b.take().len(), 2);
        assert!(b.is_empty());
    }
}
