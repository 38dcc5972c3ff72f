//! Archive rows → Arrow record batches in the tables' schemas ([`crate::schema`]).

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, ListBuilder, StringArray,
    StringBuilder, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Schema};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;

use crate::record::{EventRow, TxRow};

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn opt_strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn longs(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn micros(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter_values(values.map(|ms| ms * 1000))
            .with_timezone("UTC"),
    )
}

/// A list-of-strings column with the element field `schema` declares for `name`.
fn string_lists<'a>(
    schema: &Schema,
    name: &str,
    values: impl Iterator<Item = &'a [String]>,
) -> Result<ArrayRef, ArrowError> {
    let DataType::List(field) = schema.field_with_name(name)?.data_type().clone() else {
        return Err(ArrowError::SchemaError(format!(
            "{name} is not a list column"
        )));
    };
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(field);
    for list in values {
        for s in list {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Ok(Arc::new(b.finish()))
}

/// The `events` rows as one batch.
pub fn events(schema: &Arc<Schema>, rows: &[EventRow]) -> Result<RecordBatch, ArrowError> {
    let r = rows;
    let s = |f: fn(&EventRow) -> &str| strings(r.iter().map(f));
    let o = |f: fn(&EventRow) -> Option<&str>| opt_strings(r.iter().map(f));
    let bin = |f: fn(&EventRow) -> Option<&[u8]>| -> ArrayRef {
        Arc::new(r.iter().map(f).collect::<BinaryArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        s(|e| &e.table_name),
        s(|e| &e.day),
        s(|e| &e.op),
        micros(r.iter().map(|e| e.ts_ms)),
        longs(r.iter().map(|e| e.ts_ms)),
        longs(r.iter().map(|e| e.event_ts_ms)),
        s(|e| &e.db),
        s(|e| &e.schema_name),
        s(|e| &e.relation),
        Arc::new(r.iter().map(|e| e.tx_id).collect::<Int64Array>()),
        s(|e| &e.transaction_id),
        longs(r.iter().map(|e| e.total_order)),
        longs(r.iter().map(|e| e.data_collection_order)),
        s(|e| &e.key_json),
        s(|e| &e.key_sort),
        o(|e| e.old_key_sort.as_deref()),
        o(|e| e.before_json.as_deref()),
        o(|e| e.after_json.as_deref()),
        string_lists(
            schema,
            "changed_columns",
            r.iter().map(|e| &e.changed_columns[..]),
        )?,
        s(|e| &e.user_name),
        s(|e| &e.application_name),
        s(|e| &e.client_addr),
        s(|e| &e.statement),
        s(|e| &e.fingerprint),
        s(|e| &e.tags_json),
        s(|e| &e.session_id),
        longs(r.iter().map(|e| e.statement_seq)),
        o(|e| e.side_effects.as_deref()),
        string_lists(
            schema,
            "side_effect_tables",
            r.iter().map(|e| &e.side_effect_tables[..]),
        )?,
        o(|e| e.blocked_by.as_deref()),
        o(|e| e.dry_run_rule.as_deref()),
        Arc::new(BooleanArray::from_iter(r.iter().map(|e| Some(e.redacted)))),
        s(|e| &e.snapshot),
        s(|e| &e.version),
        s(|e| &e.connector),
        s(|e| &e.topic_prefix),
        s(|e| &e.at.topic),
        Arc::new(Int32Array::from_iter_values(
            r.iter().map(|e| e.at.partition),
        )),
        longs(r.iter().map(|e| e.at.offset)),
        o(|e| e.unreadable.as_ref().map(|u| u.reason.as_str())),
        bin(|e| e.unreadable.as_ref().and_then(|u| u.key.as_deref())),
        bin(|e| e.unreadable.as_ref().and_then(|u| u.payload.as_deref())),
        o(|e| e.cascade_json.as_deref()),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

/// The `transactions` rows as one batch.
pub fn transactions(schema: &Arc<Schema>, rows: &[TxRow]) -> Result<RecordBatch, ArrowError> {
    let r = rows;
    let columns: Vec<ArrayRef> = vec![
        strings(r.iter().map(|t| t.id.as_str())),
        strings(r.iter().map(|t| t.status.as_str())),
        Arc::new(r.iter().map(|t| t.tx_id).collect::<Int64Array>()),
        longs(r.iter().map(|t| t.event_count)),
        strings(r.iter().map(|t| t.data_collections_json.as_str())),
        longs(r.iter().map(|t| t.ts_ms)),
        micros(r.iter().map(|t| t.ts_ms)),
        opt_strings(r.iter().map(|t| t.commit_status.as_deref())),
        opt_strings(r.iter().map(|t| t.resolution.as_deref())),
        opt_strings(r.iter().map(|t| t.at.as_ref().map(|a| a.topic.as_str()))),
        Arc::new(
            r.iter()
                .map(|t| t.at.as_ref().map(|a| a.partition))
                .collect::<Int32Array>(),
        ),
        Arc::new(
            r.iter()
                .map(|t| t.at.as_ref().map(|a| a.offset))
                .collect::<Int64Array>(),
        ),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}
