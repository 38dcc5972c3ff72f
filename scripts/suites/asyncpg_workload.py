"""A realistic asyncpg workload (binary protocol, prepared statements, pipelined executemany,
binary COPY, transactions with savepoints, LISTEN/NOTIFY, cursors, errors), run once directly
against PostgreSQL, once through a relaying hindsight and, if given, once through a capturing
one. Every observable result is recorded; the transcripts must be identical.

usage: python asyncpg_workload.py DIRECT_DSN PROXIED_DSN [CAPTURING_DSN]
"""
import asyncio
import datetime
import decimal
import sys
import uuid

import asyncpg


async def workload(dsn: str, schema: str) -> list:
    out = []
    rec = out.append
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "asyncpg-suite"})
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}")
        await conn.execute(
            """CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL, price numeric(12,2),
                                  tags text[], meta jsonb, seen timestamptz, uid uuid, blob bytea)"""
        )
        rows = [
            (i, f"item {i}", decimal.Decimal(i) / 7, [f"t{i % 3}", "x"], f'{{"n": {i}}}',
             datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=i),
             uuid.UUID(int=i), bytes([i % 256]) * (i % 50))
            for i in range(1, 501)
        ]
        # executemany pipelines Bind/Execute for every row in one round trip.
        await conn.executemany(
            "INSERT INTO item VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)",
            [(a, b, round(c, 2), d, e, f, g, h) for (a, b, c, d, e, f, g, h) in rows],
        )
        rec(await conn.fetchval("SELECT count(*) FROM item"))
        stmt = await conn.prepare("SELECT id, name, price, tags, meta, seen, uid, blob FROM item WHERE id = $1")
        for i in (1, 77, 500):
            rec(tuple(await stmt.fetchrow(i)))
        rec([tuple(a.type) for a in stmt.get_attributes()][:3])
        # COPY in both directions.
        await conn.execute("CREATE TABLE log (id bigserial PRIMARY KEY, msg text, at date)")
        res = await conn.copy_records_to_table(
            "log", records=[(f"m{i}", datetime.date(2024, 1, 1 + i % 28)) for i in range(2000)], columns=["msg", "at"]
        )
        rec(res)
        rec(await conn.fetchval("SELECT sum(length(msg)) FROM log"))
        # Transactions, savepoints, rollback.
        async with conn.transaction():
            await conn.execute("UPDATE item SET price = price * 2 WHERE id <= 10")
            try:
                async with conn.transaction():
                    await conn.execute("UPDATE item SET name = NULL WHERE id = 1")
            except asyncpg.NotNullViolationError as e:
                rec(("savepoint rolled back", e.sqlstate, str(e)))
        rec(await conn.fetchval("SELECT sum(price) FROM item WHERE id <= 10"))
        tr = conn.transaction()
        await tr.start()
        await conn.execute("DELETE FROM item WHERE id > 400")
        await tr.rollback()
        rec(await conn.fetchval("SELECT count(*) FROM item"))
        # Server-side cursor inside a transaction.
        async with conn.transaction():
            total = 0
            async for r in conn.cursor("SELECT id FROM item ORDER BY id", prefetch=37):
                total += r["id"]
            rec(total)
        # Errors keep the connection usable.
        for sql in ("SELECT 1/0", "SELECT * FROM missing_table", "INSERT INTO item (id, name) VALUES (1, 'dup')"):
            try:
                await conn.execute(sql)
            except asyncpg.PostgresError as e:
                rec((type(e).__name__, e.sqlstate, str(e)))
        rec(await conn.fetchval("SELECT 42"))
        # LISTEN/NOTIFY between two connections.
        got = asyncio.get_running_loop().create_future()
        listener = await asyncpg.connect(dsn)
        await listener.add_listener("suite_chan", lambda c, pid, ch, payload: got.done() or got.set_result((ch, payload)))
        await conn.execute("SELECT pg_notify('suite_chan', 'hello from asyncpg')")
        rec(await asyncio.wait_for(got, 10))
        await listener.close()
        # Server parameters the driver relies on.
        rec((conn.get_server_version().major >= 12, conn.get_settings().client_encoding))
        # Many concurrent connections.
        async def one(i):
            c = await asyncpg.connect(dsn)
            try:
                return await c.fetchval("SELECT $1::int * 2", i)
            finally:
                await c.close()
        rec(sum(await asyncio.gather(*(one(i) for i in range(30)))))
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
    return out


async def main():
    direct, proxied = sys.argv[1], sys.argv[2]
    a = await workload(direct, "suite_asyncpg_direct")
    runs = [("relaying", proxied, "suite_asyncpg_proxied")]
    if len(sys.argv) > 3:
        runs.append(("capturing", sys.argv[3], "suite_asyncpg_captured"))
    failed = False
    for label, dsn, schema in runs:
        b = await workload(dsn, schema)
        if a != b:
            failed = True
            for i, (x, y) in enumerate(zip(a, b)):
                if x != y:
                    print(f"FAILED  asyncpg step {i} ({label}): direct={x!r} through hindsight={y!r}")
            if len(a) != len(b):
                print(f"FAILED  asyncpg ({label}): {len(a)} results directly, {len(b)} through hindsight")
        else:
            print(f"ok      asyncpg {asyncpg.__version__} workload: {len(a)} results identical direct vs through {label} hindsight")
    sys.exit(1 if failed else 0)


asyncio.run(main())
