//! `hindsight archive snapshot --table T`: a table's current rows as Debezium snapshot events
//! (`op: "r"`, `source.snapshot: "true"`), published on the table's topic like any change, so
//! that "as of" answers for rows that never changed after hindsight was deployed.
//!
//! The rows are read in one `REPEATABLE READ READ ONLY` transaction; its `pg_current_snapshot()`
//! is the consistent point, named in each event's statement. Its time orders it exactly against
//! captured changes: see [`consistent_point`]. The events form one transaction
//! of their own (BEGIN, the rows, END committed): they count only once the END is published,
//! so a snapshot that fails halfway is never half-visible. Capture's redaction rules apply.

use std::collections::BTreeMap;

use hindsight::audit::event::{
    ChangeEvent, ChangeKey, CommitStatus, DataCollection, Op, Row, Source, TransactionRecord,
    TxPosition, TxStatus,
};
use hindsight::audit::kafka::{KafkaSink, Record, SinkConfig};
use hindsight::capture::redact::Redactor;

use crate::HistoryError;

/// What to snapshot and where to publish.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connection string of the database.
    pub database: String,
    /// `schema.table`.
    pub table: String,
    pub sink: SinkConfig,
    pub redactor: Redactor,
}

/// What a snapshot published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub rows: u64,
    pub transaction_id: String,
    /// `pg_current_snapshot()` of the read.
    pub consistent_point: String,
    pub ts_ms: i64,
}

/// Rows read and published per round.
const CHUNK: i64 = 5_000;

/// The facts of the snapshot's transaction every event carries.
struct Context {
    db: String,
    user: String,
    schema: String,
    name: String,
    key: Vec<String>,
    ts_ms: i64,
    point: String,
    id: String,
    prefix: String,
}

async fn connect(conn: &str) -> Result<tokio_postgres::Client, HistoryError> {
    hindsight::pgconn::connect_as(conn, "hindsight-snapshot")
        .await
        .map_err(HistoryError::connect("snapshot: --database"))
}

/// Take the snapshot.
pub async fn run(o: &Options) -> Result<Report, HistoryError> {
    let Some((schema, name)) = o.table.split_once('.') else {
        return Err(HistoryError::Usage(format!(
            "snapshot: --table {:?} must be schema.table",
            o.table
        )));
    };
    let sink = KafkaSink::connect(o.sink.clone()).await?;
    let client = connect(&o.database).await?;
    let metas = hindsight::restore::db::table_meta(&client, std::slice::from_ref(&o.table))
        .await
        .map_err(|e| HistoryError::Usage(format!("snapshot: {e}")))?;
    let Some(meta) = metas.get(&o.table) else {
        return Err(HistoryError::Usage(format!(
            "snapshot: table {} not found in the database",
            o.table
        )));
    };
    let relation = hindsight::restore::sql::quote_table(schema, name);
    let head = consistent_point(&o.database, &client, &relation).await?;
    let ts_ms: i64 = head.get(1);
    let ctx = Context {
        point: head.get(0),
        ts_ms,
        db: head.get(2),
        user: head.get(3),
        schema: schema.to_string(),
        name: name.to_string(),
        key: meta.key.clone(),
        id: format!("snapshot:{}:{ts_ms}", o.table),
        prefix: o.sink.topic_prefix.clone(),
    };
    let total: i64 = client
        .query_one(&format!("SELECT count(*) FROM {relation}"), &[])
        .await
        .map_err(HistoryError::db(format!("snapshot: counting {relation}")))?
        .get(0);
    let topic = sink.change_topic(&ctx.db, schema, name);
    let tx_topic = sink.transaction_topic();
    sink.ensure_topics([topic.as_str(), tx_topic.as_str()])
        .await?;
    sink.publish(&[tx_record(
        &ctx,
        &tx_topic,
        &topic,
        TxStatus::Begin,
        total as u64,
    )])
    .await?;
    client
        .batch_execute(&format!(
            "DECLARE hs_snapshot NO SCROLL CURSOR FOR SELECT to_jsonb(t.*)::text FROM {relation} t"
        ))
        .await
        .map_err(HistoryError::db(format!("snapshot: reading {relation}")))?;
    let rows = publish_rows(&client, &sink, &ctx, &topic, &o.redactor).await?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(HistoryError::db("snapshot: ending the read"))?;
    sink.publish(&[tx_record(&ctx, &tx_topic, &topic, TxStatus::End, rows)])
        .await?;
    Ok(Report {
        rows,
        transaction_id: ctx.id,
        consistent_point: ctx.point,
        ts_ms,
    })
}

/// Start the read at a point that orders exactly against captured transactions. A second
/// session takes `SHARE` on the table, which waits for every transaction writing it to commit
/// (each published its records before its COMMIT, so before this point) and holds new writers
/// until the read's snapshot is taken and the clock has moved on (so each of them publishes
/// after this point). Writers wait only that long, not for the whole read.
/// Returns the row `(pg_current_snapshot(), time in ms, database, user)`.
async fn consistent_point(
    database: &str,
    client: &tokio_postgres::Client,
    relation: &str,
) -> Result<tokio_postgres::Row, HistoryError> {
    let guard = connect(database).await?;
    guard
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{}s'; LOCK TABLE {relation} IN SHARE MODE",
            LOCK_TIMEOUT_S
        ))
        .await
        .map_err(HistoryError::db(format!(
            "snapshot: LOCK TABLE {relation} IN SHARE MODE (needs UPDATE, DELETE or TRUNCATE on \
             the table; waits up to {LOCK_TIMEOUT_S} s for the transactions writing it)"
        )))?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(HistoryError::db("snapshot: starting the read"))?;
    let head = client
        .query_one(
            "SELECT pg_current_snapshot()::text, (extract(epoch FROM clock_timestamp()) * 1000)::int8, \
               current_database()::text, current_user::text",
            &[],
        )
        .await
        .map_err(HistoryError::db("snapshot: reading the snapshot point"))?;
    // A writer released now publishes in a later millisecond than the point.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    guard
        .batch_execute("COMMIT")
        .await
        .map_err(HistoryError::db("snapshot: releasing the table"))?;
    Ok(head)
}

/// How long a snapshot waits for the transactions writing its table.
const LOCK_TIMEOUT_S: u64 = 60;

/// Fetch the cursor in chunks and publish each chunk's events (acknowledged before the next).
async fn publish_rows(
    client: &tokio_postgres::Client,
    sink: &KafkaSink,
    ctx: &Context,
    topic: &str,
    redactor: &Redactor,
) -> Result<u64, HistoryError> {
    let mut n = 0u64;
    loop {
        let chunk = client
            .query(&format!("FETCH {CHUNK} FROM hs_snapshot"), &[])
            .await
            .map_err(HistoryError::db("snapshot: fetching rows"))?;
        if chunk.is_empty() {
            return Ok(n);
        }
        let mut records = Vec::with_capacity(chunk.len());
        for r in chunk {
            let text: String = r.get(0);
            let mut row: Row = serde_json::from_str(&text).map_err(|e| {
                HistoryError::Usage(format!("snapshot: a row is not a JSON object: {e}"))
            })?;
            let key = hindsight::audit::event::key_of(&row, &ctx.key);
            redactor.apply(&ctx.schema, &ctx.name, &mut row);
            let mut key_row = key;
            redactor.apply(&ctx.schema, &ctx.name, &mut key_row);
            n += 1;
            records.push(Record {
                topic: topic.to_string(),
                key: ChangeKey {
                    table: format!("{}.{}", ctx.schema, ctx.name),
                    key: key_row,
                }
                .to_bytes(),
                payload: serde_json::to_vec(&event(ctx, row, n, redactor)).expect("JSON"),
            });
        }
        sink.publish(&records).await?;
    }
}

fn event(ctx: &Context, row: Row, n: u64, redactor: &Redactor) -> ChangeEvent {
    ChangeEvent {
        before: None,
        after: Some(row),
        source: Source {
            version: env!("CARGO_PKG_VERSION").into(),
            connector: "hindsight".into(),
            name: ctx.prefix.clone(),
            ts_ms: ctx.ts_ms,
            snapshot: "true".into(),
            db: ctx.db.clone(),
            schema: ctx.schema.clone(),
            table: ctx.name.clone(),
            tx_id: None,
            user: ctx.user.clone(),
            application_name: "hindsight-snapshot".into(),
            client_addr: String::new(),
            statement: format!(
                "-- snapshot of {}.{} at pg_current_snapshot() = {}",
                ctx.schema, ctx.name, ctx.point
            ),
            fingerprint: String::new(),
            tags: BTreeMap::new(),
            session_id: ctx.id.clone(),
            statement_seq: 1,
            side_effects: None,
            side_effect_tables: Vec::new(),
            blocked_by: None,
            dry_run_rule: None,
            redacted: redactor.covers(&ctx.schema, &ctx.name),
            cascade: None,
        },
        op: Op::Read,
        ts_ms: ctx.ts_ms,
        transaction: TxPosition {
            id: ctx.id.clone(),
            total_order: n,
            data_collection_order: n,
        },
    }
}

/// The snapshot transaction's BEGIN or END, for `tx_topic`; its events are on `topic`.
fn tx_record(ctx: &Context, tx_topic: &str, topic: &str, status: TxStatus, count: u64) -> Record {
    let r = TransactionRecord {
        status,
        id: ctx.id.clone(),
        tx_id: None,
        event_count: count,
        data_collections: vec![DataCollection {
            data_collection: format!("{}.{}", ctx.schema, ctx.name),
            event_count: count,
            topic: Some(topic.to_string()),
        }],
        ts_ms: ctx.ts_ms,
        commit_status: (status == TxStatus::End).then_some(CommitStatus::Committed),
        resolution: None,
    };
    Record {
        topic: tx_topic.to_string(),
        key: ctx.id.clone().into_bytes(),
        payload: serde_json::to_vec(&r).expect("JSON"),
    }
}
