//! What a restore asks the database: the tables' keys and columns, the outcome of transactions
//! whose END record is missing, and the current (optionally locked) state of the planned rows.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::GenericClient;

use super::plan::{RowPlan, TableMeta};
use super::sql::{literal, quote_table};
use super::RestoreError;
use crate::audit::event::Row;

/// Catalog facts for `tables` (`schema.table`). Tables that do not exist are missing from the
/// result.
pub async fn table_meta<C: GenericClient>(
    client: &C,
    tables: &[String],
) -> Result<BTreeMap<String, TableMeta>, RestoreError> {
    let mut out = BTreeMap::new();
    for t in tables {
        let Some((schema, name)) = t.split_once('.') else {
            continue;
        };
        let q = format!(
            "SELECT n.nspname, c.relname, \
               (SELECT coalesce(json_agg(a.attname ORDER BY k.ord), '[]')::text FROM pg_index i \
                  CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                WHERE i.indrelid = c.oid AND i.indexrelid = (SELECT i2.indexrelid FROM pg_index i2 \
                  WHERE i2.indrelid = c.oid AND (i2.indisprimary OR i2.indisreplident) \
                  ORDER BY i2.indisprimary DESC LIMIT 1)), \
               (SELECT coalesce(json_agg(a.attname ORDER BY a.attnum), '[]')::text FROM pg_attribute a \
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), \
               (SELECT coalesce(json_agg(DISTINCT rn.nspname || '.' || rc.relname), '[]')::text \
                FROM pg_constraint f JOIN pg_class rc ON rc.oid = f.confrelid \
                JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
                WHERE f.contype = 'f' AND f.conrelid = c.oid AND f.confrelid <> c.oid) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass({})",
            literal(&quote_table(schema, name))
        );
        let rows = client
            .query(&q, &[])
            .await
            .map_err(RestoreError::db("reading the catalog"))?;
        let Some(r) = rows.first() else { continue };
        let list = |i: usize| -> Vec<String> {
            serde_json::from_str(&r.get::<_, String>(i)).unwrap_or_default()
        };
        out.insert(
            t.clone(),
            TableMeta {
                schema: r.get(0),
                name: r.get(1),
                key: list(2),
                columns: list(3),
                references: list(4),
            },
        );
    }
    Ok(out)
}

/// `txid_status()` of each transaction id: `committed`, `aborted`, `in progress` or NULL.
pub async fn txid_status<C: GenericClient>(
    client: &C,
    txid: i64,
) -> Result<Option<String>, RestoreError> {
    let row = client
        .query_one("SELECT txid_status($1::int8)", &[&txid])
        .await
        .map_err(RestoreError::db(
            "resolving a transaction with txid_status()",
        ))?;
    Ok(row.get(0))
}

/// Fill in `actual` and `actual_matches` of `rows` (all of one table, `meta`) from the table
/// `relation` (the table itself, or a copy with the same columns). With `lock`, the rows found
/// are locked `FOR UPDATE` until the end of the transaction.
pub async fn read_actual<C: GenericClient>(
    client: &C,
    meta: &TableMeta,
    relation: &str,
    rows: &mut [&mut RowPlan],
    lock: bool,
) -> Result<(), RestoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let param = {
        #[derive(serde::Serialize)]
        struct In<'a> {
            i: usize,
            k: &'a Row,
            x: &'a Option<Row>,
        }
        let input: Vec<In> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| In {
                i,
                k: &r.key,
                x: &r.expected,
            })
            .collect();
        serde_json::to_string(&input).expect("JSON")
    };
    let join = if meta.key.is_empty() {
        "to_jsonb(t.*) = e.k".to_string()
    } else {
        let cols: Vec<String> = meta
            .key
            .iter()
            .map(|c| format!("t.{0} = k.{0}", super::sql::quote(c)))
            .collect();
        cols.join(" AND ")
    };
    let q = format!(
        "SELECT e.i, to_jsonb(t.*)::text, coalesce(to_jsonb(t.*) = e.x, false) \
         FROM jsonb_to_recordset($1::text::jsonb) AS e(i int8, k jsonb, x jsonb) \
         CROSS JOIN LATERAL jsonb_populate_record(NULL::{relation}, e.k) AS k \
         JOIN {relation} AS t ON {join}{}",
        if lock { " FOR UPDATE OF t" } else { "" }
    );
    let found = client
        .query(&q, &[&param])
        .await
        .map_err(RestoreError::db("reading the current rows"))?;
    let mut by_index: HashMap<usize, (Row, bool)> = HashMap::new();
    for r in found {
        let i = r.get::<_, i64>(0) as usize;
        let image: Row = serde_json::from_str(&r.get::<_, String>(1)).unwrap_or_default();
        by_index.entry(i).or_insert((image, r.get(2)));
    }
    for (i, r) in rows.iter_mut().enumerate() {
        match by_index.remove(&i) {
            Some((image, matches)) => {
                r.actual = Some(image);
                r.actual_matches = matches && r.expected.is_some();
            }
            None => {
                r.actual = None;
                r.actual_matches = r.expected.is_none();
            }
        }
    }
    Ok(())
}
