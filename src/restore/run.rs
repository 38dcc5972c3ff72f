//! Planning a restore end to end, streaming the log so that memory follows what is selected,
//! not the size of the topics:
//!
//! 1. the transaction records; transactions without an END are resolved with `txid_status()`;
//! 2. every change topic once: each committed change becomes a small [`Seen`], and only selected
//!    changes are kept whole;
//! 3. row histories from the `Seen`s; the few changes outside the selection that came after a
//!    selected one in the same row are read again by offset;
//! 4. the row plans, compared with the rows in the database now, merged per column.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio_postgres::Client;

use super::log::{AuditLog, LogOpener, LogSource, LoggedChange, Range, TxInfo};
use super::plan::{self, Change, ConflictPolicy, LogPosition, Plan, Seen, TopicOrdinal};
use super::progress::Progress;
use super::selection::Selection;
use super::{db, merge, sql, RestoreError};
use crate::audit::event::CommitStatus;

/// What to restore.
#[derive(Debug, Clone)]
pub struct Request {
    pub selection: Selection,
    /// Reconstruct `table` as of this time (ms since the epoch) instead: every change committed
    /// after it is selected.
    pub as_of: Option<AsOf>,
    /// How conflicts are decided (`--conflicts`).
    pub policy: ConflictPolicy,
}

#[derive(Debug, Clone)]
pub struct AsOf {
    pub ms: i64,
    /// `schema.table`.
    pub table: String,
}

/// Connect to the target database (`postgres://…` or `host=… …`; `sslmode`, including
/// `verify-full`, and `sslrootcert` are honoured, see `pgconn`).
pub async fn connect(target: &str) -> Result<Client, RestoreError> {
    Ok(crate::pgconn::connect_as(target, "hindsight-restore").await?)
}

/// Run a blocking Kafka read off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RestoreError> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RestoreError::Io {
            what: "reading the audit log".into(),
            source: std::io::Error::other(e),
        })?
}

/// The selection `req` makes, given the transactions (`--as-of` selects every one after it).
fn effective_selection(
    req: &Request,
    txs: &HashMap<String, TxInfo>,
) -> Result<Selection, RestoreError> {
    let mut selection = req.selection.clone();
    if let Some(as_of) = &req.as_of {
        selection.tables = vec![as_of.table.clone()];
        selection.transactions = txs
            .iter()
            .filter(|(_, t)| t.ts_ms > as_of.ms)
            .map(|(id, _)| id.clone())
            .collect();
        if selection.transactions.is_empty() {
            selection.transactions.push("(none after --as-of)".into());
        }
    } else if selection.is_empty() {
        return Err(RestoreError::NoSelection);
    }
    Ok(selection)
}

/// Transactions that committed: by their END record, else by `txid_status()`. The others
/// without an END are returned with what the server said, for the in-doubt list.
async fn committed(
    client: &Client,
    txs: &HashMap<String, TxInfo>,
) -> Result<(HashSet<String>, BTreeMap<String, String>), RestoreError> {
    let mut committed = HashSet::new();
    let mut unresolved = BTreeMap::new();
    for (id, t) in txs {
        match t.outcome {
            Some(CommitStatus::Committed) => {
                committed.insert(id.clone());
            }
            Some(CommitStatus::Aborted) => {}
            // Unknown (an END from in-doubt healing whose server had forgotten the txid), or
            // no END at all: ask this server, in case it still knows.
            Some(CommitStatus::Unknown) | None => {
                let status = match t.txid {
                    Some(x) => db::txid_status(client, x).await?,
                    None => None,
                };
                if status.as_deref() == Some("committed") {
                    committed.insert(id.clone());
                } else {
                    unresolved.insert(
                        id.clone(),
                        format!(
                            "{id} (txId {}: {})",
                            t.txid.map_or("none".into(), |x| x.to_string()),
                            status.unwrap_or_else(|| "unknown".into())
                        ),
                    );
                }
            }
        }
    }
    Ok((committed, unresolved))
}

/// One table's part of the first pass.
#[derive(Default)]
struct TableScan {
    topics: TableTopics,
    seen: Vec<Seen>,
    /// The selected changes, whole.
    kept: HashMap<LogPosition, Change>,
}

/// What the first pass over the change topics found.
#[derive(Default)]
struct Scan {
    tables: BTreeMap<String, TableScan>,
    /// Transactions with a selected change (committed or not).
    selected_tx: HashSet<String>,
}

/// Where `c` sorts: its transaction's publish time, else its statement's; `topic` is the
/// ordinal of the topic it was read from among its table's.
fn position(c: &LoggedChange, txs: &HashMap<String, TxInfo>, topic: TopicOrdinal) -> LogPosition {
    LogPosition {
        ts_ms: txs
            .get(&c.event.transaction.id)
            .map(|t| t.ts_ms)
            .unwrap_or(c.event.source.ts_ms),
        partition: c.partition,
        offset: c.offset,
        topic,
    }
}

/// The topics one table's changes were read from, in the order first read: one, unless
/// `kafka.topic_routing` changed while they were written (its table's topic, then its
/// database's, or the other way round).
#[derive(Debug, Default, Clone)]
struct TableTopics(Vec<String>);

impl TableTopics {
    /// The ordinal of `topic`, added if new.
    fn ordinal(&mut self, topic: &str) -> TopicOrdinal {
        let i = match self.0.iter().position(|t| t == topic) {
            Some(i) => i,
            None => {
                self.0.push(topic.to_string());
                self.0.len() - 1
            }
        };
        TopicOrdinal::try_from(i).expect("a table's changes lie in a handful of topics")
    }

    /// The ordinal of `topic` if known.
    fn find(&self, topic: &str) -> Option<TopicOrdinal> {
        let i = self.0.iter().position(|t| t == topic)?;
        TopicOrdinal::try_from(i).ok()
    }

    fn name(&self, ordinal: TopicOrdinal) -> &str {
        &self.0[usize::from(ordinal)]
    }
}

/// Pass 1: every change once.
fn scan(
    reader: &dyn AuditLog,
    selection: &Selection,
    committed: &HashSet<String>,
    txs: &HashMap<String, TxInfo>,
    progress: &Progress,
) -> Result<Scan, RestoreError> {
    let mut out = Scan::default();
    let ranges = reader.table_ranges();
    progress.phase("reading changes", super::log::total(&ranges));
    reader.changes(&ranges, progress, &mut |c| {
        let selected = selection.matches(&c);
        if selected {
            out.selected_tx.insert(c.event.transaction.id.clone());
        }
        if !committed.contains(&c.event.transaction.id) {
            return Ok(());
        }
        let t = out.tables.entry(c.table()).or_default();
        let at = position(&c, txs, t.topics.ordinal(&c.topic));
        t.seen.push(Seen::of(&c, at, selected));
        if selected {
            t.kept.insert(at, Change::of(c, at, true));
        }
        Ok(())
    })?;
    progress.finish();
    Ok(out)
}

/// Pass 2: the changes outside the selection that row histories need, by offset range.
fn fetch(
    reader: &dyn AuditLog,
    wanted: &HashMap<String, HashSet<LogPosition>>,
    topics: &HashMap<String, TableTopics>,
    txs: &HashMap<String, TxInfo>,
    progress: &Progress,
) -> Result<HashMap<String, HashMap<LogPosition, Change>>, RestoreError> {
    let mut spans: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for (table, positions) in wanted {
        for p in positions {
            let span = spans
                .entry((topics[table].name(p.topic).to_string(), p.partition))
                .or_insert((p.offset, p.offset + 1));
            *span = (span.0.min(p.offset), span.1.max(p.offset + 1));
        }
    }
    let ranges: Vec<Range> = spans
        .into_iter()
        .map(|((topic, partition), (from, to))| Range {
            topic,
            partition,
            from,
            to,
        })
        .collect();
    let mut out: HashMap<String, HashMap<LogPosition, Change>> = HashMap::new();
    if ranges.is_empty() {
        return Ok(out);
    }
    progress.phase("reading later changes", super::log::total(&ranges));
    reader.changes(&ranges, progress, &mut |c| {
        let table = c.table();
        let Some(topic) = topics.get(&table).and_then(|t| t.find(&c.topic)) else {
            return Ok(());
        };
        let at = position(&c, txs, topic);
        if wanted.get(&table).is_some_and(|w| w.contains(&at)) {
            out.entry(table)
                .or_default()
                .insert(at, Change::of(c, at, false));
        }
        Ok(())
    })?;
    progress.finish();
    Ok(out)
}

/// Row histories (positions, in order) per table, and the changes outside the selection
/// they need that the first pass did not keep.
type Histories = BTreeMap<String, Vec<Vec<LogPosition>>>;

fn histories(
    found: &mut Scan,
    metas: &BTreeMap<String, plan::TableMeta>,
) -> (Histories, HashMap<String, HashSet<LogPosition>>) {
    let mut histories = Histories::new();
    let mut wanted: HashMap<String, HashSet<LogPosition>> = HashMap::new();
    for (table, t) in found
        .tables
        .iter_mut()
        .filter(|(n, _)| metas.contains_key(*n))
    {
        t.seen.sort_by_key(|s| s.at);
        let lineages = plan::lineages(&t.seen);
        let need: HashSet<LogPosition> = plan::needed(&t.seen, &lineages)
            .into_iter()
            .filter(|at| !t.kept.contains_key(at))
            .collect();
        if !need.is_empty() {
            wanted.insert(table.clone(), need);
        }
        let positions = lineages
            .iter()
            .map(|l| l.iter().map(|i| t.seen[*i].at).collect())
            .collect();
        histories.insert(table.clone(), positions);
        t.seen = Vec::new();
    }
    (histories, wanted)
}

/// The row plans of `histories` from the changes of both passes (moved out as they are used,
/// so the kept changes shrink as the plans grow), and the redacted rows left out.
fn row_plans(
    histories: Histories,
    found: &mut Scan,
    mut later: HashMap<String, HashMap<LogPosition, Change>>,
    metas: &BTreeMap<String, plan::TableMeta>,
) -> Result<(Vec<plan::RowPlan>, Vec<String>), RestoreError> {
    let mut rows = Vec::new();
    let mut redacted = Vec::new();
    for (table, lineages) in histories {
        let meta = &metas[&table];
        let t = found.tables.get_mut(&table).expect("scanned");
        let mut extra = later.remove(&table).unwrap_or_default();
        for l in lineages {
            let changes: Option<Vec<Change>> = l
                .iter()
                .map(|at| t.kept.remove(at).or_else(|| extra.remove(at)))
                .collect();
            let Some(changes) = changes else {
                return Err(RestoreError::LogIncomplete(format!(
                    "{table}: a change read in the first pass was not found again (the topic was compacted or deleted meanwhile)"
                )));
            };
            let changes: Vec<&Change> = changes.iter().collect();
            match plan::row_plan(&table, meta, &changes) {
                Some(Ok(r)) => rows.push(r),
                Some(Err(r)) => redacted.push(r),
                None => {}
            }
        }
    }
    Ok((rows, redacted))
}

/// The live rows, collisions and the merge: decide once to know which columns would be
/// written, look for collisions on those, and decide again with them.
async fn decide(
    client: &Client,
    metas: &BTreeMap<String, plan::TableMeta>,
    rows: &mut [plan::RowPlan],
    policy: ConflictPolicy,
) -> Result<(), RestoreError> {
    check(client, metas, rows, None, false).await?;
    merge::decide(rows, policy);
    for (table, meta) in metas {
        let mut mine: Vec<&mut plan::RowPlan> =
            rows.iter_mut().filter(|r| r.table == *table).collect();
        let relation = sql::quote_table(&meta.schema, &meta.name);
        db::collisions(client, meta, &relation, &mut mine, policy).await?;
    }
    merge::decide(rows, policy);
    Ok(())
}

/// Build the plan for `req` from the log at `src` (opened by `open`) and the database behind
/// `client`.
pub async fn plan(
    client: &Client,
    open: &LogOpener,
    src: &LogSource,
    req: &Request,
    progress: &Progress,
) -> Result<Plan, RestoreError> {
    if req.as_of.is_none() && req.selection.is_empty() {
        return Err(RestoreError::NoSelection);
    }
    let (source, p, open) = (src.clone(), progress.clone(), open.clone());
    let (reader, txs) = blocking(move || {
        let reader = open.open(&source)?;
        let txs = reader.transactions(&p)?;
        Ok((reader, txs))
    })
    .await?;
    let selection = effective_selection(req, &txs)?;
    let (committed, unresolved) = committed(client, &txs).await?;
    let txs = std::sync::Arc::new(txs);
    let (t, p) = (txs.clone(), progress.clone());
    let (reader, mut found) = blocking(move || {
        let found = scan(reader.as_ref(), &selection, &committed, &t, &p)?;
        Ok((reader, found))
    })
    .await?;
    let with_selected: Vec<String> = found
        .tables
        .iter()
        .filter(|(_, t)| !t.kept.is_empty())
        .map(|(name, _)| name.clone())
        .collect();
    let metas = db::table_meta(client, &with_selected).await?;
    let (histories, wanted) = histories(&mut found, &metas);
    let topics: HashMap<String, TableTopics> = found
        .tables
        .iter()
        .map(|(n, t)| (n.clone(), t.topics.clone()))
        .collect();
    let (t, p) = (txs.clone(), progress.clone());
    let later = blocking(move || fetch(reader.as_ref(), &wanted, &topics, &t, &p)).await?;
    let (mut rows, redacted) = row_plans(histories, &mut found, later, &metas)?;
    let selected_tx = std::mem::take(&mut found.selected_tx);
    drop(found);
    decide(client, &metas, &mut rows, req.policy).await?;
    let in_doubt = unresolved
        .into_iter()
        .filter(|(id, _)| selected_tx.contains(id))
        .map(|(_, v)| v)
        .collect();
    Ok(Plan {
        tables: metas,
        policy: req.policy,
        rows,
        in_doubt,
        redacted,
    })
}

/// Read the current state of `rows` (optionally from a copy named `into` instead of each
/// table, and optionally locking them).
pub async fn check<C: tokio_postgres::GenericClient>(
    client: &C,
    metas: &BTreeMap<String, plan::TableMeta>,
    rows: &mut [plan::RowPlan],
    into: Option<&str>,
    lock: bool,
) -> Result<(), RestoreError> {
    for (table, meta) in metas {
        let relation = match into {
            Some(i) => i.to_string(),
            None => sql::quote_table(&meta.schema, &meta.name),
        };
        let mut mine: Vec<&mut plan::RowPlan> =
            rows.iter_mut().filter(|r| r.table == *table).collect();
        db::read_actual(client, meta, &relation, &mut mine, lock).await?;
    }
    Ok(())
}
