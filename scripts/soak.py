"""Soak: many concurrent sessions through hindsight, some writing through capture, for a while.

Samples the proxy's RSS every second, times every COMMIT, counts errors; writes
<out>.csv (time, rss) and <out>.png (RSS over time, commits per second), prints one summary
line, and exits 1 if any statement failed or RSS grew after warm-up (a leak).

    python soak.py --port P --pid PID --seconds S --sessions N --writers W --out PATH
"""
import argparse
import asyncio
import random
import statistics
import sys
import time

import asyncpg


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def writer(pool_conn, rows, deadline, lat, errors, commits):
    conn = pool_conn
    while time.monotonic() < deadline:
        row = random.choice(rows)
        try:
            await conn.execute("BEGIN")
            await conn.execute("UPDATE soak SET v = v + 1, note = $2 WHERE id = $1", row, "x" * random.randint(1, 200))
            t0 = time.perf_counter()
            await conn.execute("COMMIT")
            lat.append((time.perf_counter() - t0) * 1000)
            commits[0] += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            errors.append(repr(e))
            try:
                await conn.execute("ROLLBACK")
            except Exception:  # noqa: BLE001
                pass
        await asyncio.sleep(random.uniform(0.0, 0.05))


async def reader(conn, deadline, errors):
    while time.monotonic() < deadline:
        try:
            await conn.fetchval("SELECT count(*) FROM soak WHERE id < 50")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        await asyncio.sleep(random.uniform(0.5, 1.5))


async def main(a):
    dsn = f"postgresql://postgres@127.0.0.1:{a.port}/postgres"
    setup = await asyncpg.connect(dsn)
    await setup.execute("DROP TABLE IF EXISTS soak; CREATE TABLE soak (id int PRIMARY KEY, v int NOT NULL DEFAULT 0, note text);"
                        f"INSERT INTO soak (id) SELECT g FROM generate_series(1, {a.writers * 4}) g")
    await setup.close()
    conns = []
    sem = asyncio.Semaphore(50)

    async def open_one():
        async with sem:
            return await asyncpg.connect(dsn, statement_cache_size=100)

    t_open = time.monotonic()
    conns = await asyncio.gather(*[open_one() for _ in range(a.sessions)])
    print(f"soak: {len(conns)} sessions open in {time.monotonic() - t_open:.1f} s", flush=True)
    start = time.monotonic()
    deadline = start + a.seconds
    lat, errors, commits = [], [], [0]
    samples = []

    async def sample():
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - start, rss_kib(a.pid), commits[0]))
            if len(samples) % 30 == 0:
                print(f"soak: {samples[-1][0]:.0f} s, RSS {samples[-1][1] / 1024:.1f} MiB, {commits[0]} commits, {len(errors)} errors", flush=True)
            await asyncio.sleep(1)

    rows = list(range(1, a.writers * 4 + 1))
    tasks = [writer(c, rows, deadline, lat, errors, commits) for c in conns[: a.writers]]
    tasks += [reader(c, deadline, errors) for c in conns[a.writers:]]
    await asyncio.gather(sample(), *tasks)
    for c in conns:
        await c.close()
    return samples, lat, errors, commits[0]


def report(a, samples, lat, errors, commits):
    with open(a.out + ".csv", "w") as f:
        f.write("seconds,rss_kib,commits\n")
        for t, r, c in samples:
            f.write(f"{t:.1f},{r},{c}\n")
    warm = [r for t, r, _ in samples if t >= a.seconds * 0.2]
    first, last = (warm[0], warm[-1]) if warm else (0, 0)
    peak = max(warm) if warm else 0
    q = statistics.quantiles(lat, n=100) if len(lat) >= 100 else [0] * 99
    line = (f"soak summary: {a.seconds} s, {a.sessions} sessions ({a.writers} writing through capture), "
            f"{commits} commits, p50 commit {q[49]:.2f} ms, p99 {q[98]:.2f} ms, errors {len(errors)}, "
            f"RSS after warm-up {first / 1024:.1f} MiB, at end {last / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
    print(line)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot([s[0] for s in samples], [s[1] / 1024 for s in samples], label="hindsight RSS (MiB)")
        ax.axvline(a.seconds * 0.2, color="grey", linestyle=":", label="end of warm-up")
        ax.set_xlabel("seconds")
        ax.set_ylabel("MiB")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        cps = [(samples[i][2] - samples[i - 1][2]) / max(samples[i][0] - samples[i - 1][0], 1e-9) for i in range(1, len(samples))]
        ax2.plot([s[0] for s in samples[1:]], cps, color="tab:orange", alpha=0.4, label="commits/s")
        ax2.set_ylabel("commits/s")
        ax2.set_ylim(bottom=0)
        ax.set_title(f"soak: {a.sessions} sessions, {a.writers} writing; p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms, {len(errors)} errors")
        fig.tight_layout()
        fig.subplots_adjust(bottom=0.24)
        fig.legend(loc="lower center", ncol=3, frameon=False)
        fig.savefig(a.out + ".png", dpi=110)
        print(f"soak: plot {a.out}.png")
    except ImportError:
        print("soak: matplotlib missing, no plot")
    for e in errors[:10]:
        print("error:", e)
    leak = last > first * 1.25 + 16 * 1024
    if errors or leak or commits == 0:
        print(f"FAILED soak: errors {len(errors)}, RSS {first} → {last} KiB{' (grew: a leak?)' if leak else ''}")
        return 1
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for k in ["port", "pid", "seconds", "sessions", "writers"]:
        p.add_argument("--" + k, type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    samples, lat, errors, commits = asyncio.run(main(a))
    sys.exit(report(a, samples, lat, errors, commits))
