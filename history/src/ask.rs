//! Asking a question end to end: SQL from [`crate::questions`], run on a [`Session`], rows
//! shaped and rendered as they stream. `hindsight history …` is a thin wrapper over [`ask`].

use std::io::Write;

use futures::StreamExt;
use serde_json::{Map, Value};

use crate::output::{batch_rows, columns, Format, Renderer};
use crate::query::Session;
use crate::questions::{self, Question, TxScope};
use crate::record::key_sort;
use crate::HistoryError;

/// Where `table-as-of` puts the rows.
#[derive(Debug, Clone)]
pub enum AsOfTarget {
    /// One JSON image per line, to the output.
    Output,
    /// Into a new table `into` (created `LIKE` the table) of the database at `target`.
    Table { target: String, into: String },
}

/// Answer `q`, writing to `out`; returns the number of rows.
pub async fn ask(
    session: &Session,
    q: &Question,
    format: Format,
    out: &mut dyn Write,
) -> Result<u64, HistoryError> {
    if let Question::RowAsOf { key, .. } = q {
        return row_as_of(session, q, &key_sort(key), format, out).await;
    }
    if let Question::Sql(text) = q {
        crate::query::parses(text).map_err(|e| HistoryError::Usage(format!("sql: {e}")))?;
    }
    let only = match q {
        Question::WhoChanged { column, .. } => column.clone(),
        _ => None,
    };
    let scope = scope(session, q).await?;
    let mut stream = session.stream(&questions::sql_in(q, &scope)).await?;
    let mut r = Renderer::new(format, out);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let order = columns(&batch);
        for row in batch_rows(&batch)? {
            r.row(questions::shape(row, &order, only.as_deref()))?;
        }
    }
    r.finish()
}

/// Most transactions a probe may name before a question reads the transaction records by time
/// instead (a long `IN` list costs more than it saves).
const MAX_PROBED: usize = 20_000;

/// The transaction records `q` needs: those of the transactions its events belong to, when a
/// probe finds few enough.
async fn scope(session: &Session, q: &Question) -> Result<TxScope, HistoryError> {
    let Some(probe) = questions::probe(q) else {
        return Ok(questions::default_scope(q));
    };
    let mut ids = Vec::new();
    let mut since = i64::MAX;
    for b in session.sql(&probe).await? {
        for row in batch_rows(&b)? {
            if ids.len() >= MAX_PROBED {
                return Ok(questions::default_scope(q));
            }
            since = since.min(row.get("first").and_then(Value::as_i64).unwrap_or(0));
            ids.push(
                row.get("transaction_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    Ok(TxScope::Ids {
        ids,
        since_ms: if since == i64::MAX { 0 } else { since },
    })
}

/// The row as of T: present with its image, absent (deleted, or its key moved), or unknown.
async fn row_as_of(
    session: &Session,
    q: &Question,
    key: &str,
    format: Format,
    out: &mut dyn Write,
) -> Result<u64, HistoryError> {
    let scope = scope(session, q).await?;
    let batches = session.sql(&questions::sql_in(q, &scope)).await?;
    let latest: Option<Map<String, Value>> = batches
        .iter()
        .map(batch_rows)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .next();
    let io = |e| HistoryError::Io {
        what: "writing the answer".into(),
        source: e,
    };
    let Some(latest) = latest else {
        let msg = "no change of this row was archived before that time: it did not exist, or it \
                   predates the archive (`hindsight archive snapshot --table …` records such rows)";
        match format {
            Format::Text => writeln!(out, "{msg}").map_err(io)?,
            _ => writeln!(out, "{}", serde_json::json!({"present": null, "note": msg}))
                .map_err(io)?,
        }
        return Ok(0);
    };
    let text = |k: &str| latest.get(k).and_then(Value::as_str).unwrap_or_default();
    let present = matches!(text("op"), "c" | "u" | "r") && text("key_sort") == key;
    let image: Map<String, Value> = serde_json::from_str(text("after_json")).unwrap_or_default();
    let basis = format!(
        "{} of transaction {} by {} ({}) at {}",
        text("op"),
        text("transaction_id"),
        text("application_name"),
        text("user_name"),
        text("ts")
    );
    match format {
        Format::Text => {
            if present {
                let mut r = Renderer::new(Format::Text, out);
                for (c, v) in image {
                    r.row(vec![
                        ("column".into(), Value::String(c)),
                        ("value".into(), v),
                    ])?;
                }
                r.finish()?;
                writeln!(out, "as of the latest change before then: {basis}").map_err(io)?;
            } else {
                writeln!(out, "absent at that time: removed by {basis}").map_err(io)?;
            }
        }
        _ => {
            let v = serde_json::json!({
                "present": present,
                "row": if present { Value::Object(image) } else { Value::Null },
                "latest_change": basis,
            });
            writeln!(out, "{v}").map_err(io)?;
        }
    }
    Ok(u64::from(present))
}

/// `table-as-of`: stream the images to the output (JSON lines) or into a new table.
pub async fn table_as_of(
    session: &Session,
    q: &Question,
    target: &AsOfTarget,
    out: &mut dyn Write,
) -> Result<u64, HistoryError> {
    let Question::TableAsOf { table, .. } = q else {
        return Err(HistoryError::Usage(
            "table_as_of needs a TableAsOf question".into(),
        ));
    };
    let mut stream = session.stream(&questions::sql(q)).await?;
    let mut sink = match target {
        AsOfTarget::Output => None,
        AsOfTarget::Table { target, into } => Some(IntoTable::create(target, table, into).await?),
    };
    let mut n = 0u64;
    let mut chunk: Vec<String> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        for row in batch_rows(&batch)? {
            let image = row
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("{}")
                .to_string();
            n += 1;
            match &mut sink {
                None => writeln!(out, "{image}").map_err(|e| HistoryError::Io {
                    what: "writing the rows".into(),
                    source: e,
                })?,
                Some(s) => {
                    chunk.push(image);
                    if chunk.len() >= 5_000 {
                        s.insert(std::mem::take(&mut chunk)).await?;
                    }
                }
            }
        }
    }
    if let Some(mut s) = sink {
        s.insert(chunk).await?;
        s.finish().await?;
    }
    Ok(n)
}

/// A new table filled in one transaction.
struct IntoTable {
    client: tokio_postgres::Client,
    into: String,
}

impl IntoTable {
    async fn create(target: &str, table: &str, into: &str) -> Result<Self, HistoryError> {
        let client = hindsight::pgconn::connect_as(target, "hindsight-history")
            .await
            .map_err(HistoryError::connect("table-as-of: --target"))?;
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let src = hindsight::restore::sql::quote_table(schema, name);
        client
            .batch_execute(&format!("BEGIN; CREATE TABLE {into} (LIKE {src} INCLUDING DEFAULTS)"))
            .await
            .map_err(HistoryError::db(format!(
                "table-as-of: creating {into} like {src} (the table must exist in --target to give the columns their types; --into must be a new name)"
            )))?;
        Ok(IntoTable {
            client,
            into: into.to_string(),
        })
    }

    async fn insert(&mut self, images: Vec<String>) -> Result<(), HistoryError> {
        if images.is_empty() {
            return Ok(());
        }
        let array = format!("[{}]", images.join(","));
        self.client
            .execute(
                &format!(
                    "INSERT INTO {0} SELECT * FROM jsonb_populate_recordset(NULL::{0}, $1::text::jsonb)",
                    self.into
                ),
                &[&array],
            )
            .await
            .map_err(HistoryError::db(format!("table-as-of: inserting into {}", self.into)))?;
        Ok(())
    }

    async fn finish(self) -> Result<(), HistoryError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(HistoryError::db("table-as-of: committing"))
    }
}
