#!/usr/bin/env python3
"""An outside reader of a hindsight history store, using only PyPI's `deltalake` (delta-rs's
Python binding) and `pyarrow`: what a user's own tools see, without hindsight.

    history_reader.py STORE

Prints one JSON object: per table, the row count and a SHA-256 digest over every row's
identifying and content columns (sorted), so a test can compare it with hindsight's own answer.
"""
import hashlib
import json
import os
import sys

from deltalake import DeltaTable

EVENT_COLUMNS = ["kafka_topic", "kafka_partition", "kafka_offset", "op", "table_name", "key_json",
                 "before_json", "after_json", "transaction_id", "application_name"]
TX_COLUMNS = ["id", "status", "commit_status", "tx_id", "kafka_offset"]


def digest(table, columns):
    data = table.select(columns).to_pylist()
    lines = sorted("|".join("" if r[c] is None else str(r[c]) for c in columns) for r in data)
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return len(lines), h.hexdigest()


def main():
    store = sys.argv[1]
    out = {}
    for name, columns in (("events", EVENT_COLUMNS), ("transactions", TX_COLUMNS)):
        dt = DeltaTable(os.path.join(store, name))
        table = dt.to_pyarrow_table()
        rows, dig = digest(table, columns)
        out[name] = {"version": dt.version(), "rows": rows, "digest": dig,
                     "partitions": dt.metadata().partition_columns}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    # deltalake 1.6 with pyarrow 26 may abort during interpreter teardown; the answer is out.
    os._exit(0)


if __name__ == "__main__":
    main()
