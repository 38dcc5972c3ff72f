//! Kill switches: put an application, a user, a table or a whole database into read-only mode.
//! Reads keep working; writes (rows, DDL, opaque statements) are refused.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::rules::TablePattern;
use crate::statement::Write;

/// What a kill switch applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Application,
    User,
    /// `schema.table` (patterns with `*` allowed).
    Table,
    Database,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "application" => Some(Scope::Application),
            "user" => Some(Scope::User),
            "table" => Some(Scope::Table),
            "database" => Some(Scope::Database),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Scope::Application => "application",
            Scope::User => "user",
            Scope::Table => "table",
            Scope::Database => "database",
        }
    }
}

/// The switches that are on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitches {
    pub on: BTreeSet<(Scope, String)>,
}

impl KillSwitches {
    /// The first switch that covers this write, as `(scope, value)`.
    pub fn hit(
        &self,
        database: &str,
        application: &str,
        user: &str,
        writes: &[Write],
    ) -> Option<(&'static str, String)> {
        self.on.iter().find_map(|(scope, value)| {
            let hit = match scope {
                Scope::Database => value == database,
                Scope::Application => value == application,
                Scope::User => value == user,
                Scope::Table => {
                    let p = match value.split_once('.') {
                        Some((s, n)) => TablePattern {
                            schema: s.into(),
                            name: n.into(),
                        },
                        None => TablePattern {
                            schema: "*".into(),
                            name: value.clone(),
                        },
                    };
                    writes
                        .iter()
                        .any(|w| p.matches(&w.table.schema, &w.table.name))
                }
            };
            hit.then(|| (scope.label(), value.clone()))
        })
    }
}
