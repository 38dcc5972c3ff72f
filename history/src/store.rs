//! The history store: two Delta Lake tables (`events`, `transactions`) under one location.
//!
//! Exactly once: every append commits, in the same Delta commit as its data, one `txn`
//! (application transaction) action per topic partition it consumed, `<name>/<topic>/<partition>`
//! → the next offset to read. A crash at any point leaves either the whole commit or none of
//! it, and a restart resumes from the offsets in the table, never from the consumer group.
//! Each table records the offsets of the topics it holds (`transactions`: the transaction
//! topic; `events`: every other), so the two commits of one batch need not be atomic together.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::datatypes::Schema as ArrowSchema;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use crate::record::{EventRow, TxRow};
use crate::{batch, schema, HistoryError};

/// Whether opening a store may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// The archive: create the tables if they are missing.
    CreateIfMissing,
    /// Questions and restore: the store must exist.
    Existing,
}

/// The next offset to read of one topic partition, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    /// The first offset not yet archived.
    pub next: i64,
}

/// Both tables, loaded.
pub struct Store {
    location: String,
    pub events: DeltaTable,
    pub transactions: DeltaTable,
    events_schema: Arc<ArrowSchema>,
    transactions_schema: Arc<ArrowSchema>,
}

/// The URL of `location` (a directory or an object store URL) joined with `table`.
fn table_url(location: &str, table: &str, open: Open) -> Result<url::Url, HistoryError> {
    let joined = format!("{}/{table}", location.trim_end_matches('/'));
    if !location.contains("://") && open == Open::Existing {
        let path = std::path::Path::new(&joined);
        if !path.join("_delta_log").exists() {
            return Err(HistoryError::NoStore {
                store: location.to_string(),
            });
        }
    }
    deltalake::ensure_table_uri(&joined).map_err(HistoryError::store(location))
}

/// Parquet settings: zstd, statistics per page, bloom filters on the columns questions look up.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("level 3 is valid"),
        ))
        .set_statistics_enabled(deltalake::parquet::file::properties::EnabledStatistics::Page)
        .set_column_bloom_filter_enabled("key_sort".into(), true)
        .set_column_bloom_filter_enabled("transaction_id".into(), true)
        .set_column_bloom_filter_enabled("id".into(), true)
        .build()
}

async fn open_table(
    location: &str,
    name: &str,
    fields: Vec<deltalake::kernel::StructField>,
    partitions: &[&str],
    open: Open,
) -> Result<DeltaTable, HistoryError> {
    let url = table_url(location, name, open)?;
    // A local table not created yet is not loaded (the kernel would log an error for it).
    let fresh = url
        .to_file_path()
        .is_ok_and(|p| !p.join("_delta_log").exists());
    let table = if fresh {
        deltalake::DeltaTableBuilder::from_url(url)
            .and_then(|b| b.build())
            .map_err(HistoryError::store(location))?
    } else {
        DeltaTable::try_from_url(url)
            .await
            .map_err(HistoryError::store(location))?
    };
    if table.version().is_some() {
        return match open {
            Open::CreateIfMissing => with_new_columns(table, location, fields).await,
            Open::Existing => Ok(table),
        };
    }
    if open == Open::Existing {
        return Err(HistoryError::NoStore {
            store: location.to_string(),
        });
    }
    table
        .create()
        .with_table_name(name)
        .with_columns(fields)
        .with_partition_columns(partitions.iter().map(|s| s.to_string()))
        .with_comment(format!("hindsight history: {name}"))
        .await
        .map_err(HistoryError::store(location))
}

/// `table` with the columns of `fields` it lacks added (a store archived by an earlier version;
/// new columns are nullable, and the rows from before read NULL in them). Readers
/// (`Open::Existing`) leave the table as it is: a column they ask for and it lacks reads NULL.
async fn with_new_columns(
    table: DeltaTable,
    location: &str,
    fields: Vec<deltalake::kernel::StructField>,
) -> Result<DeltaTable, HistoryError> {
    let schema = table
        .snapshot()
        .map_err(HistoryError::store(location))?
        .schema();
    let missing: Vec<_> = fields
        .into_iter()
        .filter(|f| schema.field(f.name()).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(table);
    }
    let names: Vec<String> = missing.iter().map(|f| f.name().to_string()).collect();
    tracing::info!(store = %location, columns = ?names, "adding new columns to the history store");
    table
        .add_columns()
        .with_fields(missing)
        .await
        .map_err(HistoryError::store(location))
}

impl Store {
    /// Open (or create) the store at `location`.
    pub async fn open(location: &str, open: Open) -> Result<Self, HistoryError> {
        let events = open_table(
            location,
            schema::EVENTS,
            schema::events_fields(),
            &schema::EVENTS_PARTITIONS,
            open,
        )
        .await?;
        let transactions = open_table(
            location,
            schema::TRANSACTIONS,
            schema::transactions_fields(),
            &[],
            open,
        )
        .await?;
        Ok(Store {
            location: location.to_string(),
            events,
            transactions,
            events_schema: schema::arrow(schema::events_fields()),
            transactions_schema: schema::arrow(schema::transactions_fields()),
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The application id of one topic partition's offsets.
    pub fn app_id(name: &str, topic: &str, partition: i32) -> String {
        format!("{name}/{topic}/{partition}")
    }

    /// The next offset to read of `topic`/`partition`, from the table that holds it.
    pub async fn next_offset(
        &self,
        name: &str,
        topic: &str,
        partition: i32,
        in_transactions: bool,
    ) -> Result<Option<i64>, HistoryError> {
        let table = if in_transactions {
            &self.transactions
        } else {
            &self.events
        };
        let state = table
            .snapshot()
            .map_err(HistoryError::store(&self.location))?;
        state
            .transaction_version(
                table.log_store().as_ref(),
                Self::app_id(name, topic, partition),
            )
            .await
            .map_err(HistoryError::store(&self.location))
    }

    /// Append event rows, recording `offsets` in the same commit.
    pub async fn append_events(
        &mut self,
        name: &str,
        rows: &[EventRow],
        offsets: &[PartitionOffset],
    ) -> Result<(), HistoryError> {
        let batch = batch::events(&self.events_schema, rows)?;
        commit(&mut self.events, &self.location, name, batch, offsets).await
    }

    /// Append transaction rows, recording `offsets` in the same commit.
    pub async fn append_transactions(
        &mut self,
        name: &str,
        rows: &[TxRow],
        offsets: &[PartitionOffset],
    ) -> Result<(), HistoryError> {
        let batch = batch::transactions(&self.transactions_schema, rows)?;
        commit(&mut self.transactions, &self.location, name, batch, offsets).await
    }

    /// Bring both tables to their latest versions (after another process committed).
    pub async fn refresh(&mut self) -> Result<(), HistoryError> {
        let loc = self.location.clone();
        self.events
            .update_state()
            .await
            .map_err(HistoryError::store(&loc))?;
        self.transactions
            .update_state()
            .await
            .map_err(HistoryError::store(&loc))
    }
}

/// Write `batch` and commit it with one `txn` action per consumed partition.
async fn commit(
    table: &mut DeltaTable,
    location: &str,
    name: &str,
    batch: deltalake::arrow::record_batch::RecordBatch,
    offsets: &[PartitionOffset],
) -> Result<(), HistoryError> {
    if batch.num_rows() == 0 && offsets.is_empty() {
        return Ok(());
    }
    let txns: Vec<Transaction> = offsets
        .iter()
        .map(|o| Transaction::new(Store::app_id(name, &o.topic, o.partition), o.next))
        .collect();
    let err = |e: DeltaTableError| HistoryError::Store {
        store: location.to_string(),
        source: Box::new(e),
    };
    let mut writer = RecordBatchWriter::for_table(table)
        .map_err(err)?
        .with_writer_properties(writer_properties())
        .with_commit_properties(CommitProperties::default().with_application_transactions(txns));
    writer.write(batch).await.map_err(err)?;
    writer.flush_and_commit(table).await.map_err(err)?;
    chain(location, table)
}

/// Chain the commit just made (local stores; see `chain`).
fn chain(location: &str, table: &DeltaTable) -> Result<(), HistoryError> {
    if crate::chain::local_dir(location).is_err() {
        return Ok(());
    }
    let name = table
        .table_url()
        .path_segments()
        .and_then(|mut s| s.rfind(|x| !x.is_empty()))
        .unwrap_or_default()
        .to_string();
    crate::chain::extend(location, &name)
}

/// Offsets by partition, from the store, for the partitions given.
pub type Offsets = HashMap<(String, i32), i64>;

/// Compact both tables' small files (Delta OPTIMIZE, bin-packing within each partition).
/// Safe beside a running archive: appends and compaction do not conflict, and the archive's
/// offsets (`txn` actions) carry over to the new table version.
pub async fn optimize(location: &str) -> Result<String, HistoryError> {
    let store = Store::open(location, Open::Existing).await?;
    let mut out = Vec::new();
    for (name, table) in [
        (schema::EVENTS, store.events),
        (schema::TRANSACTIONS, store.transactions),
    ] {
        let (table, m) = table
            .optimize()
            .with_writer_properties(writer_properties())
            .await
            .map_err(HistoryError::store(location))?;
        chain(location, &table)?;
        out.push(format!(
            "{name}: {} file(s) compacted into {}",
            m.num_files_removed, m.num_files_added
        ));
    }
    Ok(out.join("\n"))
}

/// Expire, per table in `retention` (`schema.table` → how long to keep), the day partitions of
/// `events` older than `now_ms - keep`: whole files are removed (a Delta DELETE on partition
/// columns only rewrites nothing), in a commit of its own that is chained, so `verify` tells
/// the expiry from tampering. One line per table that lost anything.
pub async fn expire(
    location: &str,
    retention: &[(String, std::time::Duration)],
    now_ms: i64,
) -> Result<Vec<String>, HistoryError> {
    let mut events = Store::open(location, Open::Existing).await?.events;
    let mut out = Vec::new();
    for (table, keep) in retention {
        let cutoff = crate::record::day_of(now_ms - keep.as_millis() as i64);
        let predicate = format!(
            "table_name = {} AND day < {}",
            crate::query::lit(table),
            crate::query::lit(&cutoff)
        );
        let (next, m) = events
            .delete()
            .with_predicate(predicate)
            .await
            .map_err(HistoryError::store(location))?;
        events = next;
        if m.num_removed_files > 0 {
            chain(location, &events)?;
            out.push(format!(
                "{table}: {} file(s) of days before {cutoff} expired",
                m.num_removed_files
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(table: &DeltaTable) -> Vec<String> {
        let snapshot = table.snapshot().expect("a loaded table");
        snapshot
            .schema()
            .fields()
            .map(|f| f.name().to_string())
            .collect()
    }

    /// A store archived before `cascade_json` existed gains the column when the archive opens
    /// it (rows from before read NULL); a reader leaves it as it is.
    #[tokio::test]
    async fn an_archive_from_before_a_new_column_gains_it() {
        let dir = std::env::temp_dir().join(format!("hs-evolve-{:08x}", rand::random::<u32>()));
        let location = dir.display().to_string();
        let mut old = schema::events_fields();
        assert_eq!(
            old.pop().map(|f| f.name().to_string()),
            Some("cascade_json".into())
        );
        let partitions = schema::EVENTS_PARTITIONS;
        let t = open_table(
            &location,
            schema::EVENTS,
            old,
            &partitions,
            Open::CreateIfMissing,
        )
        .await
        .unwrap();
        assert!(!names(&t).contains(&"cascade_json".to_string()));
        let t = open_table(
            &location,
            schema::EVENTS,
            schema::events_fields(),
            &partitions,
            Open::Existing,
        )
        .await
        .unwrap();
        assert!(
            !names(&t).contains(&"cascade_json".to_string()),
            "a reader changes nothing"
        );
        let store = Store::open(&location, Open::CreateIfMissing).await.unwrap();
        let want: Vec<String> = schema::events_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert_eq!(names(&store.events), want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
