//! What a restore asks the database: the tables' keys and columns, the outcome of transactions
//! whose END record is missing, and the current (optionally locked) state of the planned rows.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::GenericClient;

use super::plan::{key_of, Action, ConflictPolicy, Image, RowPlan, TableMeta};
use super::sql::{literal, quote, quote_table};
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
                WHERE f.contype = 'f' AND f.conrelid = c.oid AND f.confrelid <> c.oid), \
               (SELECT coalesce(json_agg(u.cols ORDER BY u.indexrelid), '[]')::text FROM ( \
                  SELECT i.indexrelid, json_agg(a.attname ORDER BY k.ord) AS cols FROM pg_index i \
                  CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                  WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL \
                    AND i.indexprs IS NULL \
                  GROUP BY i.indexrelid) u) \
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
                unique: serde_json::from_str(&r.get::<_, String>(5)).unwrap_or_default(),
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
///
/// The `target` and `expected` images of the rows found are replaced by the server's rendering
/// of the same values (`to_jsonb(jsonb_populate_record(…))`, in this session), so that they
/// compare with `actual` column by column exactly: a timestamptz captured in another time zone,
/// or a number written another way, is the same value.
pub async fn read_actual<C: GenericClient>(
    client: &C,
    meta: &TableMeta,
    relation: &str,
    rows: &mut [&mut RowPlan],
    lock: bool,
) -> Result<(), RestoreError> {
    for chunk in rows.chunks_mut(CHUNK) {
        read_actual_chunk(client, meta, relation, chunk, lock).await?;
    }
    Ok(())
}

/// Rows per query of the reads below: bounds what a query and its result hold in memory.
const CHUNK: usize = 5_000;

async fn read_actual_chunk<C: GenericClient>(
    client: &C,
    meta: &TableMeta,
    relation: &str,
    rows: &mut [&mut RowPlan],
    lock: bool,
) -> Result<(), RestoreError> {
    let param = {
        #[derive(serde::Serialize)]
        struct In<'a> {
            i: usize,
            k: &'a Row,
            x: &'a Option<Image>,
            g: &'a Option<Image>,
        }
        let input: Vec<In> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| In {
                i,
                k: &r.key,
                x: &r.expected,
                g: &r.target,
            })
            .collect();
        serde_json::to_string(&input).expect("JSON")
    };
    let join = key_join(meta, "t", "k");
    let norm = |col: &str| {
        format!("CASE WHEN e.{col} IS NULL OR e.{col} = 'null' THEN NULL ELSE to_jsonb(jsonb_populate_record(NULL::{relation}, e.{col}))::text END")
    };
    let q = format!(
        "SELECT e.i, to_jsonb(t.*)::text, {x}, {g}, \
           coalesce(to_jsonb(t.*) = to_jsonb(jsonb_populate_record(NULL::{relation}, e.x)), false) \
         FROM jsonb_to_recordset($1::text::jsonb) AS e(i int8, k jsonb, x jsonb, g jsonb) \
         CROSS JOIN LATERAL jsonb_populate_record(NULL::{relation}, e.k) AS k \
         JOIN {relation} AS t ON {join}{}",
        if lock { " FOR UPDATE OF t" } else { "" },
        x = norm("x"),
        g = norm("g"),
    );
    let found = client
        .query(&q, &[&param])
        .await
        .map_err(RestoreError::db("reading the current rows"))?;
    let parse = |s: Option<String>| s.and_then(|s| Image::from_json(s).ok());
    type Found = (Option<Image>, Option<Image>, Option<Image>, bool);
    let mut by_index: HashMap<usize, Found> = HashMap::new();
    for r in found {
        let i = r.get::<_, i64>(0) as usize;
        by_index
            .entry(i)
            .or_insert((parse(r.get(1)), parse(r.get(2)), parse(r.get(3)), r.get(4)));
    }
    for (i, r) in rows.iter_mut().enumerate() {
        match by_index.remove(&i) {
            Some((image, expected, target, matches)) => {
                r.actual_matches = matches && r.expected.is_some();
                if expected.is_some() {
                    r.expected = expected;
                }
                if target.is_some() {
                    r.target = target;
                }
                r.actual = image;
            }
            None => {
                r.actual = None;
                r.actual_matches = r.expected.is_none();
            }
        }
    }
    Ok(())
}

/// `t.k1 = k.k1 AND …` on the key columns (no key: the whole row as jsonb equals `e.k`).
fn key_join(meta: &TableMeta, t: &str, k: &str) -> String {
    if meta.key.is_empty() {
        return format!("to_jsonb({t}.*) = e.{k}");
    }
    let cols: Vec<String> = meta
        .key
        .iter()
        .map(|c| format!("{t}.{0} = {k}.{0}", quote(c)))
        .collect();
    cols.join(" AND ")
}

/// Note in `rows` (all of one table) each restore that would put a row on the key or unique
/// values another row holds now: a deleted row whose values are in use again, or an update
/// that would write a unique column back to a value taken since. `RowPlan::collision` names
/// the index's columns and the other row's key.
pub async fn collisions<C: GenericClient>(
    client: &C,
    meta: &TableMeta,
    relation: &str,
    rows: &mut [&mut RowPlan],
    policy: ConflictPolicy,
) -> Result<(), RestoreError> {
    if meta.unique.is_empty() {
        return Ok(());
    }
    for chunk in rows.chunks_mut(CHUNK) {
        collisions_chunk(client, meta, relation, chunk, policy).await?;
    }
    Ok(())
}

async fn collisions_chunk<C: GenericClient>(
    client: &C,
    meta: &TableMeta,
    relation: &str,
    rows: &mut [&mut RowPlan],
    policy: ConflictPolicy,
) -> Result<(), RestoreError> {
    #[derive(serde::Serialize)]
    struct In {
        i: usize,
        /// The row as the restore would leave it.
        x: Row,
        /// The row as it is now (not a collision with itself).
        l: Option<Image>,
    }
    let unique_cols: Vec<&String> = meta.unique.iter().flatten().collect();
    let input: Vec<In> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let target = r.target.as_ref()?.row();
            let x = match (&r.action, &r.actual) {
                (Action::Insert, None) => target,
                (Action::Update(_), Some(live)) => {
                    let writes = r.writes(policy, true);
                    if !writes.iter().any(|c| unique_cols.contains(&c)) {
                        return None;
                    }
                    let mut x = live.row();
                    for c in writes {
                        x.insert(c.clone(), target.get(&c).cloned().unwrap_or_default());
                    }
                    x
                }
                _ => return None,
            };
            Some(In {
                i,
                x,
                l: r.actual.clone(),
            })
        })
        .collect();
    if input.is_empty() || meta.unique.is_empty() {
        return Ok(());
    }
    let arms: Vec<String> = meta
        .unique
        .iter()
        .enumerate()
        .map(|(n, cols)| {
            let on: Vec<String> = cols.iter().map(|c| format!("t.{0} = x.{0}", quote(c))).collect();
            format!(
                "SELECT e.i, {n}, to_jsonb(t.*)::text FROM jsonb_to_recordset($1::text::jsonb) AS e(i int8, x jsonb, l jsonb) \
                 CROSS JOIN LATERAL jsonb_populate_record(NULL::{relation}, e.x) AS x \
                 JOIN {relation} AS t ON {} WHERE e.l IS NULL OR to_jsonb(t.*) <> e.l",
                on.join(" AND ")
            )
        })
        .collect();
    let param = serde_json::to_string(&input).expect("JSON");
    let found = client
        .query(&arms.join(" UNION ALL "), &[&param])
        .await
        .map_err(RestoreError::db("checking key and unique collisions"))?;
    for r in found {
        let (i, n) = (r.get::<_, i64>(0) as usize, r.get::<_, i32>(1) as usize);
        let other: Row = serde_json::from_str(&r.get::<_, String>(2)).unwrap_or_default();
        if rows[i].collision.is_none() {
            rows[i].collision = Some((meta.unique[n].clone(), key_of(&other, &meta.key)));
        }
    }
    Ok(())
}
