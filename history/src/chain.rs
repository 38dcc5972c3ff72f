//! Tamper evidence: a hash chain over the store's commits.
//!
//! After every commit to a table (appends, OPTIMIZE), one chain entry is written to
//! `<store>/_hindsight_chain/<table>/<version>.json`: the SHA-256 of the commit's Delta log
//! file, the SHA-256 of every data file it adds, and the hash of the previous entry; the
//! entry's own hash covers all of it. `verify` recomputes everything and names each log file
//! or data file that was altered, removed or reordered, and each commit missing from the
//! chain. A data file may be missing only if a later chained commit removed it (compaction,
//! expiry, then VACUUM). Deleting the newest commits together with their entries leaves a
//! consistent but shorter chain: the published head (`checkpoint`, `<prefix>.history-checkpoints`)
//! catches that.
//!
//! Local stores only (the chain is read and written with the file system).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{schema, HistoryError};

/// The chain directory under the store.
const DIR: &str = "_hindsight_chain";
/// The `prev` of a table's first entry.
const GENESIS: &str = "genesis";

/// One chained commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub table: String,
    pub version: u64,
    /// SHA-256 of `_delta_log/<version>.json`.
    pub log_sha256: String,
    /// Data files the commit adds (paths as in the log, decoded) → SHA-256.
    pub files: BTreeMap<String, String>,
    pub prev: String,
    pub hash: String,
}

/// The head of both tables' chains: what an auditor keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// table → (version, hash) of its newest entry.
    pub tables: BTreeMap<String, (u64, String)>,
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(h.finalize()))
}

fn entry_hash(
    table: &str,
    version: u64,
    log: &str,
    files: &BTreeMap<String, String>,
    prev: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [table, &version.to_string(), log] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (p, s) in files {
        h.update(p.as_bytes());
        h.update([b'=']);
        h.update(s.as_bytes());
        h.update([0]);
    }
    h.update(prev.as_bytes());
    hex(h.finalize())
}

/// The store's local directory.
pub fn local_dir(location: &str) -> Result<PathBuf, HistoryError> {
    if let Some(p) = location.strip_prefix("file://") {
        return Ok(PathBuf::from(p));
    }
    if location.contains("://") {
        return Err(HistoryError::Usage(format!(
            "the chain is kept for local stores only, not {location}"
        )));
    }
    Ok(PathBuf::from(location))
}

/// `%XX` sequences of a Delta log path decoded.
fn decode(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn log_path(table_dir: &Path, version: u64) -> PathBuf {
    table_dir
        .join("_delta_log")
        .join(format!("{version:020}.json"))
}

/// The versions present in a table's Delta log.
fn log_versions(table_dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(table_dir.join("_delta_log"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// (added, removed) data file paths of one log file.
fn actions(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(p) = v.pointer("/add/path").and_then(|p| p.as_str()) {
            add.push(decode(p));
        }
        if let Some(p) = v.pointer("/remove/path").and_then(|p| p.as_str()) {
            remove.push(decode(p));
        }
    }
    (add, remove)
}

fn read_entries(dir: &Path) -> Vec<Entry> {
    let mut all: Vec<Entry> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    all.sort_by_key(|e: &Entry| e.version);
    all
}

fn io(p: &Path) -> impl Fn(std::io::Error) -> HistoryError + '_ {
    move |e| HistoryError::Usage(format!("chain: {}: {e}", p.display()))
}

/// Chain every commit of `table` not chained yet.
pub fn extend(location: &str, table: &str) -> Result<(), HistoryError> {
    let root = local_dir(location)?;
    let table_dir = root.join(table);
    let chain_dir = root.join(DIR).join(table);
    std::fs::create_dir_all(&chain_dir).map_err(io(&chain_dir))?;
    let entries = read_entries(&chain_dir);
    let (mut prev, next) = match entries.last() {
        Some(e) => (e.hash.clone(), e.version + 1),
        None => (GENESIS.to_string(), 0),
    };
    for version in log_versions(&table_dir).into_iter().filter(|v| *v >= next) {
        let log = log_path(&table_dir, version);
        let text = std::fs::read_to_string(&log).map_err(io(&log))?;
        let mut files = BTreeMap::new();
        for p in actions(&text).0 {
            let f = table_dir.join(&p);
            files.insert(p, sha256_file(&f).map_err(io(&f))?);
        }
        let log_sha256 = hex(Sha256::digest(text.as_bytes()));
        let hash = entry_hash(table, version, &log_sha256, &files, &prev);
        let e = Entry {
            table: table.to_string(),
            version,
            log_sha256,
            files,
            prev,
            hash: hash.clone(),
        };
        let out = chain_dir.join(format!("{version:020}.json"));
        std::fs::write(
            &out,
            serde_json::to_vec_pretty(&e).expect("entries serialise"),
        )
        .map_err(io(&out))?;
        prev = hash;
    }
    Ok(())
}

/// Chain both tables.
pub fn extend_all(location: &str) -> Result<(), HistoryError> {
    for t in [schema::EVENTS, schema::TRANSACTIONS] {
        extend(location, t)?;
    }
    Ok(())
}

/// The current head of both chains.
pub fn head(location: &str) -> Result<Head, HistoryError> {
    let root = local_dir(location)?;
    let mut tables = BTreeMap::new();
    for t in [schema::EVENTS, schema::TRANSACTIONS] {
        if let Some(e) = read_entries(&root.join(DIR).join(t)).last() {
            tables.insert(t.to_string(), (e.version, e.hash.clone()));
        }
    }
    Ok(Head { tables })
}

/// What `verify` found: one line per problem (empty: intact), and what it checked.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub commits: u64,
    pub files: u64,
}

/// Recompute the chain of both tables; compare with `checkpoint` when given.
pub fn verify(location: &str, checkpoint: Option<&Head>) -> Result<Report, HistoryError> {
    let root = local_dir(location)?;
    let mut r = Report::default();
    for t in [schema::EVENTS, schema::TRANSACTIONS] {
        verify_table(&root, t, &mut r);
    }
    if let Some(cp) = checkpoint {
        let now = head(location)?;
        for (t, (version, hash)) in &cp.tables {
            let entries = read_entries(&root.join(DIR).join(t));
            match entries.iter().find(|e| e.version == *version) {
                Some(e) if &e.hash == hash => {}
                Some(e) => r.problems.push(format!(
                    "{t}: commit {version} has hash {} but the checkpoint says {hash}: the history was rewritten since the checkpoint",
                    e.hash
                )),
                None => r.problems.push(format!(
                    "{t}: the checkpoint names commit {version} ({hash}) but the chain ends at {}: the newest commits were removed",
                    now.tables.get(t).map_or("nothing".to_string(), |(v, _)| format!("commit {v}"))
                )),
            }
        }
    }
    Ok(r)
}

fn verify_table(root: &Path, table: &str, r: &mut Report) {
    let table_dir = root.join(table);
    let entries = read_entries(&root.join(DIR).join(table));
    let mut prev = GENESIS.to_string();
    let mut expected = 0;
    let mut live: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    for e in &entries {
        r.commits += 1;
        if e.version != expected {
            r.problems.push(format!(
                "{table}: chain entries {expected}..{} are missing (commits removed or reordered)",
                e.version.saturating_sub(1)
            ));
        }
        expected = e.version + 1;
        if e.prev != prev {
            r.problems.push(format!("{table}: commit {} does not follow the previous entry (the chain was cut or reordered)", e.version));
        }
        if entry_hash(table, e.version, &e.log_sha256, &e.files, &e.prev) != e.hash {
            r.problems
                .push(format!("{table}: chain entry {} was altered", e.version));
        }
        prev = e.hash.clone();
        let log = log_path(&table_dir, e.version);
        match std::fs::read_to_string(&log) {
            Ok(text) => {
                if hex(Sha256::digest(text.as_bytes())) != e.log_sha256 {
                    r.problems.push(format!(
                        "{table}: commit {} was altered ({} differs from its chained hash)",
                        e.version,
                        log.display()
                    ));
                }
                removed.extend(actions(&text).1);
            }
            Err(_) => r.problems.push(format!(
                "{table}: commit {} was removed ({} is missing)",
                e.version,
                log.display()
            )),
        }
        for (p, h) in &e.files {
            live.insert(p.clone(), (e.version, h.clone()));
        }
    }
    for v in log_versions(&table_dir)
        .into_iter()
        .filter(|v| *v >= expected)
    {
        r.problems.push(format!("{table}: commit {v} is not in the chain (written after the chain's last entry, not by the archive)"));
    }
    for (p, (version, h)) in &live {
        r.files += 1;
        let f = table_dir.join(p);
        match sha256_file(&f) {
            Ok(got) if &got == h => {}
            Ok(_) => r.problems.push(format!("{table}: data file {} (added by commit {version}) was altered", f.display())),
            Err(_) if removed.contains(p) => {}
            Err(_) => r.problems.push(format!("{table}: data file {} (added by commit {version}) is missing and no commit removed it", f.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_and_hashes_cover_every_part() {
        assert_eq!(
            decode("table_name=public.a%20b/day=2026-12-04/p.parquet"),
            "table_name=public.a b/day=2026-12-04/p.parquet"
        );
        assert_eq!(decode("100%"), "100%");
        let files: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        let h = entry_hash("events", 3, "L", &files, "P");
        assert_ne!(h, entry_hash("events", 4, "L", &files, "P"));
        assert_ne!(h, entry_hash("events", 3, "L", &BTreeMap::new(), "P"));
        assert_ne!(h, entry_hash("events", 3, "L", &files, "Q"));
    }
}
