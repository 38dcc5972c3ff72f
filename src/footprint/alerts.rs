//! Building alert records (`audit::alert::Alert`) from what the footprints saw.

use std::collections::BTreeMap;

use super::path::{Actor, Path, PathId};
use crate::audit::alert::{rfc3339, Alert, AlertKind};

/// The facts an alert is built from.
pub struct AlertFacts<'a> {
    pub kind: AlertKind,
    pub id: PathId,
    pub actor: &'a Actor,
    pub path: &'a Path,
    pub example: &'a str,
    pub tags: &'a BTreeMap<String, String>,
    pub ts_ms: i64,
    pub mode: &'a str,
    pub replica: &'a str,
}

/// Build an alert.
pub fn build(f: AlertFacts) -> Alert {
    let (operation, columns, fingerprint) = match f.path {
        Path::Write {
            operation,
            columns,
            fingerprint,
            ..
        } => (operation.clone(), columns.clone(), fingerprint.clone()),
        Path::Nulls { column, .. } => ("update".into(), vec![column.clone()], String::new()),
    };
    Alert {
        kind: f.kind,
        path_id: f.id.to_string(),
        application: f.actor.application.clone(),
        user: f.actor.user.clone(),
        database: f.actor.database.clone(),
        table: f.path.table().to_string(),
        operation,
        columns,
        fingerprint,
        example: f.example.to_string(),
        tags: f.tags.clone(),
        time: rfc3339(f.ts_ms),
        ts_ms: f.ts_ms,
        mode: f.mode.to_string(),
        before: None,
        key: None,
        rows: None,
        approve: format!(
            "hindsight footprint approve {} (or POST /footprints/{}/approve on the admin endpoint)",
            f.id, f.id
        ),
        replica: f.replica.to_string(),
    }
}
