//! Which changes a restore reverts. Every dimension given must match (they combine with AND;
//! several values of one dimension combine with OR).

use super::log::LoggedChange;
use crate::audit::event::Row;

/// A selection of change events.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Selection {
    /// PostgreSQL transaction ids (`source.txId`).
    pub txids: Vec<i64>,
    /// hindsight transaction ids (`transaction.id`, `<session>:<n>`).
    pub transactions: Vec<String>,
    /// Statement time window, milliseconds since the epoch: `since <= ts_ms < until`.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub applications: Vec<String>,
    pub users: Vec<String>,
    /// sqlcommenter tags `key=value`.
    pub tags: Vec<(String, String)>,
    /// `schema.table` (or `table`, any schema).
    pub tables: Vec<String>,
    /// Row keys as JSON objects (`{"bfkey": 7}`): a change matches if its key does.
    pub keys: Vec<Row>,
    /// Event ids (`<transaction id>/<n>`).
    pub events: Vec<String>,
    /// Gate rules in audit (dry-run) mode that flagged the change (`source.dry_run_rule`).
    pub rules: Vec<String>,
}

impl Selection {
    /// Nothing given: a restore must say what it reverts.
    pub fn is_empty(&self) -> bool {
        self.txids.is_empty()
            && self.transactions.is_empty()
            && self.since_ms.is_none()
            && self.until_ms.is_none()
            && self.applications.is_empty()
            && self.users.is_empty()
            && self.tags.is_empty()
            && self.tables.is_empty()
            && self.keys.is_empty()
            && self.events.is_empty()
            && self.rules.is_empty()
    }

    pub fn matches(&self, c: &LoggedChange) -> bool {
        let s = &c.event.source;
        let any = |v: &[String], x: &str| v.is_empty() || v.iter().any(|w| w == x);
        (self.txids.is_empty() || s.tx_id.is_some_and(|t| self.txids.contains(&t)))
            && any(&self.transactions, &c.event.transaction.id)
            && self.since_ms.is_none_or(|t| s.ts_ms >= t)
            && self.until_ms.is_none_or(|t| s.ts_ms < t)
            && any(&self.applications, &s.application_name)
            && any(&self.users, &s.user)
            && self
                .tags
                .iter()
                .all(|(k, v)| s.tags.get(k).is_some_and(|x| x == v))
            && (self.tables.is_empty()
                || self.tables.iter().any(|t| *t == c.table() || *t == s.table))
            && (self.keys.is_empty() || self.keys.iter().any(|k| key_matches(k, &c.key.key)))
            && any(&self.events, &c.id())
            && (self.rules.is_empty()
                || s.dry_run_rule
                    .as_ref()
                    .is_some_and(|r| self.rules.contains(r)))
    }
}

/// `wanted` names some key columns; the change's key must have those values.
fn key_matches(wanted: &Row, key: &Row) -> bool {
    wanted.iter().all(|(col, v)| key.get(col) == Some(v))
}
