//! The two Delta tables of a history store, their columns and partitioning. Defined once here,
//! in Delta's own types; the Arrow schema the writer fills is derived from them, so the two
//! can never disagree.

use std::sync::Arc;

use deltalake::arrow::datatypes::Schema as ArrowSchema;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::kernel::{ArrayType, DataType, StructField, StructType};

/// The `events` table: one row per change event (and per statement-level or unreadable
/// record), partitioned by table and day.
pub const EVENTS: &str = "events";
/// The `transactions` table: BEGIN / END records and the archive's RESOLVED decisions.
pub const TRANSACTIONS: &str = "transactions";

/// Partition columns of `events`.
pub const EVENTS_PARTITIONS: [&str; 2] = ["table_name", "day"];

fn col(name: &str, t: DataType, nullable: bool) -> StructField {
    StructField::new(name, t, nullable)
}

fn strings() -> DataType {
    DataType::Array(Box::new(ArrayType::new(DataType::STRING, false)))
}

/// Columns of `events`, in order (see [`crate::record::EventRow`] for their meaning).
pub fn events_fields() -> Vec<StructField> {
    use DataType as T;
    vec![
        col("table_name", T::STRING, false),
        col("day", T::STRING, false),
        col("op", T::STRING, false),
        col("ts", T::TIMESTAMP, false),
        col("ts_ms", T::LONG, false),
        col("event_ts_ms", T::LONG, false),
        col("db", T::STRING, false),
        col("schema_name", T::STRING, false),
        col("relation", T::STRING, false),
        col("tx_id", T::LONG, true),
        col("transaction_id", T::STRING, false),
        col("total_order", T::LONG, false),
        col("data_collection_order", T::LONG, false),
        col("key_json", T::STRING, false),
        col("key_sort", T::STRING, false),
        col("old_key_sort", T::STRING, true),
        col("before_json", T::STRING, true),
        col("after_json", T::STRING, true),
        col("changed_columns", strings(), false),
        col("user_name", T::STRING, false),
        col("application_name", T::STRING, false),
        col("client_addr", T::STRING, false),
        col("statement", T::STRING, false),
        col("fingerprint", T::STRING, false),
        col("tags_json", T::STRING, false),
        col("session_id", T::STRING, false),
        col("statement_seq", T::LONG, false),
        col("side_effects", T::STRING, true),
        col("side_effect_tables", strings(), false),
        col("blocked_by", T::STRING, true),
        col("dry_run_rule", T::STRING, true),
        col("redacted", T::BOOLEAN, false),
        col("snapshot", T::STRING, false),
        col("version", T::STRING, false),
        col("connector", T::STRING, false),
        col("topic_prefix", T::STRING, false),
        col("kafka_topic", T::STRING, false),
        col("kafka_partition", T::INTEGER, false),
        col("kafka_offset", T::LONG, false),
        col("unreadable_reason", T::STRING, true),
        col("raw_key", T::BINARY, true),
        col("raw_value", T::BINARY, true),
        // Added after the first release: last, and nullable, so that `Store::open` can add it
        // to an existing table (Delta appends new columns; rows from before read NULL).
        col("cascade_json", T::STRING, true),
    ]
}

/// Columns of `transactions`.
pub fn transactions_fields() -> Vec<StructField> {
    use DataType as T;
    vec![
        col("id", T::STRING, false),
        col("status", T::STRING, false),
        col("tx_id", T::LONG, true),
        col("event_count", T::LONG, false),
        col("data_collections_json", T::STRING, false),
        col("ts_ms", T::LONG, false),
        col("ts", T::TIMESTAMP, false),
        col("commit_status", T::STRING, true),
        col("resolution", T::STRING, true),
        col("kafka_topic", T::STRING, true),
        col("kafka_partition", T::INTEGER, true),
        col("kafka_offset", T::LONG, true),
    ]
}

/// The Arrow schema of a table's columns, as the Delta writer expects it.
pub fn arrow(fields: Vec<StructField>) -> Arc<ArrowSchema> {
    let st = StructType::try_new(fields).expect("the history schema is valid");
    let schema: ArrowSchema = (&st)
        .try_into_arrow()
        .expect("the history schema converts to Arrow");
    Arc::new(schema)
}
