//! Alerts: what `<prefix>.alerts` carries, the WARN line, and the Slack-compatible text of
//! the webhook.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A write path outside the application's footprint.
    NewWritePath,
    /// The application set a non-NULL column to NULL, which it never did before.
    Nulling,
}

impl AlertKind {
    pub fn label(self) -> &'static str {
        match self {
            AlertKind::NewWritePath => "new_write_path",
            AlertKind::Nulling => "nulling",
        }
    }
}

/// One alert (a record of `<prefix>.alerts`, key: the path id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    #[serde(rename = "type")]
    pub kind: AlertKind,
    pub path_id: String,
    pub application: String,
    pub user: String,
    pub database: String,
    pub table: String,
    /// `Write` paths: the operation; `Nulls`: `update`.
    pub operation: String,
    pub columns: Vec<String>,
    pub fingerprint: String,
    /// The statement (redacted like events' statements).
    pub example: String,
    pub tags: BTreeMap<String, String>,
    /// RFC 3339, UTC.
    pub time: String,
    pub ts_ms: i64,
    /// learn, alert or enforce: what hindsight did (`enforce`: the statement was refused).
    pub mode: String,
    /// Nulling: the column's value before (redacted like events), of the first such row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    /// Nulling: that row's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<serde_json::Value>,
    /// Nulling: how many rows this transaction nulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// How to approve it (CLI and admin API).
    pub approve: String,
    /// The replica that saw it.
    pub replica: String,
}

pub use super::event::utc as rfc3339;

impl Alert {
    /// One line for logs and chat.
    pub fn headline(&self) -> String {
        let who = format!(
            "application {:?} (user {:?}, database {:?})",
            self.application, self.user, self.database
        );
        match self.kind {
            AlertKind::NewWritePath => format!(
                "new write path: {who} {} {} ({}) for the first time{}",
                self.operation.to_uppercase(),
                self.table,
                self.columns.join(", "),
                if self.mode == "enforce" {
                    "; refused"
                } else {
                    ""
                }
            ),
            AlertKind::Nulling => format!(
                "{who} set {}.{} to NULL for the first time ({} row(s); before: {})",
                self.table,
                self.columns.join(", "),
                self.rows.unwrap_or(0),
                self.before
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            ),
        }
    }

    /// The webhook body: Slack's incoming-webhook JSON (`text`), with the alert itself under
    /// `hindsight` for receivers that read fields.
    pub fn webhook_body(&self) -> serde_json::Value {
        serde_json::json!({
            "text": format!(
                ":warning: hindsight: {}\nstatement: `{}`\nfingerprint: {} · path {}\napprove: {}",
                self.headline(), self.example, self.fingerprint, self.path_id, self.approve
            ),
            "hindsight": self,
        })
    }
}
