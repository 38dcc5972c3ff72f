// A legacy Java application's writes, through the real PostgreSQL JDBC driver (pgjdbc, Debian's
// libpostgresql-jdbc-java), run by tests/integration/jdbc.rs once directly and once through a
// capturing hindsight. It prints a transcript of everything the driver returned (update counts,
// generated keys, rows, errors with SQLSTATE); the test requires both transcripts to be equal.
//
//   java -cp /usr/share/java/postgresql.jar tests/jdbc/JdbcWorkload.java HOST PORT DB
//
// What pgjdbc does that hand-written protocol tests do not: BEGIN sent in the same pipeline as
// the first statement, batches of Bind/Execute under one Sync, named server-side statements and
// binary results after `prepareThreshold` executions, `RETURNING *` appended for generated keys,
// multi-row INSERT rewriting, `autosave` savepoints around every statement, updatable result
// sets, CopyManager, and the simple protocol with `preferQueryMode=simple`.

import java.math.BigDecimal;
import java.sql.*;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PGobject;

public class JdbcWorkload {
    static String base;

    static void say(String s) {
        System.out.println(s);
    }

    static Connection open(String extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", "postgres");
        p.setProperty("password", "password");
        return DriverManager.getConnection(base + extra, p);
    }

    /** Every row of a result set, one line each. */
    static void rows(String label, ResultSet rs) throws SQLException {
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            StringBuilder b = new StringBuilder(label).append(':');
            for (int i = 1; i <= n; i++) b.append(' ').append(text(rs, i));
            say(b.toString());
        }
    }

    /** A column as text; bytea (binary after prepareThreshold) as hex, not as an object id. */
    static String text(ResultSet rs, int i) throws SQLException {
        if (!"bytea".equals(rs.getMetaData().getColumnTypeName(i))) return rs.getString(i);
        byte[] bytes = rs.getBytes(i);
        if (bytes == null) return null;
        StringBuilder b = new StringBuilder("\\x");
        for (byte x : bytes) b.append(String.format("%02x", x));
        return b.toString();
    }

    static void error(String label, SQLException e) {
        say(label + ": " + e.getSQLState() + " " + e.getMessage().split("\n")[0]);
    }

    /** autocommit inserts with generated keys, past prepareThreshold (named statements). */
    static void insertsWithKeys(Connection c) throws SQLException {
        String sql = "INSERT INTO item (sku, qty, price, tags, meta, seen, uid, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
        try (PreparedStatement ps = c.prepareStatement(sql, Statement.RETURN_GENERATED_KEYS)) {
            for (int i = 1; i <= 8; i++) {
                ps.setString(1, "sku-" + i);
                ps.setInt(2, i * 10);
                ps.setBigDecimal(3, new BigDecimal("19.99").multiply(BigDecimal.valueOf(i)));
                ps.setArray(4, c.createArrayOf("text", new String[] {"t" + i, "shared", null}));
                PGobject json = new PGobject();
                json.setType("jsonb");
                json.setValue("{\"n\": " + i + ", \"s\": \"caf\u00e9\"}");
                ps.setObject(5, json);
                ps.setObject(6, OffsetDateTime.of(2026, 1, i, 12, 30, 15, 123456000, ZoneOffset.ofHours(2)));
                ps.setObject(7, UUID.nameUUIDFromBytes(("u" + i).getBytes()));
                ps.setBytes(8, new byte[] {0, (byte) i, (byte) 0xff, 0x27});
                say("insert " + i + ": " + ps.executeUpdate());
                try (ResultSet keys = ps.getGeneratedKeys()) {
                    rows("  key", keys);
                }
            }
        }
    }

    /** One transaction: a batch of inserts (one Sync), then updates executed many times. */
    static void batchThenUpdates(Connection c) throws SQLException {
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO note (id, body) VALUES (?, ?)")) {
            for (int i = 1; i <= 20; i++) {
                ps.setInt(1, i);
                ps.setString(2, "note " + i);
                ps.addBatch();
            }
            say("batch: " + Arrays.toString(ps.executeBatch()));
        }
        try (PreparedStatement ps = c.prepareStatement("UPDATE item SET qty = qty + ?, price = price * 2 WHERE id = ?")) {
            for (int i = 1; i <= 7; i++) {
                ps.setInt(1, i);
                ps.setLong(2, i);
                say("update " + i + ": " + ps.executeUpdate());
            }
        }
        c.commit();
    }

    /** Savepoints: the rolled-back part must leave no event. */
    static void savepoints(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            say("delete before savepoint: " + s.executeUpdate("DELETE FROM note WHERE id = 20"));
            Savepoint sp = c.setSavepoint("sp1");
            say("delete in savepoint: " + s.executeUpdate("DELETE FROM note WHERE id < 5"));
            c.rollback(sp);
            Savepoint sp2 = c.setSavepoint();
            say("update in savepoint: " + s.executeUpdate("UPDATE note SET body = upper(body) WHERE id BETWEEN 5 AND 7"));
            c.releaseSavepoint(sp2);
        }
        c.commit();
    }

    /** A batch with a duplicate key fails as a whole; the transaction is rolled back. */
    static void failingBatch(Connection c) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO note (id, body) VALUES (?, ?)")) {
            for (int id : new int[] {50, 51, 3, 52}) {
                ps.setInt(1, id);
                ps.setString(2, "dup? " + id);
                ps.addBatch();
            }
            ps.executeBatch();
            say("failing batch: no error");
        } catch (BatchUpdateException e) {
            say("failing batch: " + e.getSQLState() + " counts " + Arrays.toString(e.getUpdateCounts()));
        }
        c.rollback();
        try (Statement s = c.createStatement()) {
            say("rolled back work: " + s.executeUpdate("UPDATE item SET qty = -1"));
        }
        c.rollback();
    }

    /** Several statements in one execute(): pgjdbc sends each as its own Parse/Bind/Execute. */
    static void multiStatement(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            boolean result = s.execute("UPDATE note SET body = body || '!' WHERE id < 3; DELETE FROM note WHERE id = 19; SELECT count(*) FROM note");
            while (true) {
                if (result) {
                    try (ResultSet rs = s.getResultSet()) {
                        rows("  multi rows", rs);
                    }
                } else {
                    int n = s.getUpdateCount();
                    if (n == -1) break;
                    say("  multi count: " + n);
                }
                result = s.getMoreResults();
            }
        }
        c.commit();
    }

    /** An upsert executed as a batch, then an updatable result set (pgjdbc writes the SQL). */
    static void upsertAndUpdatable(Connection c) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(
                "INSERT INTO note (id, body) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET body = excluded.body || ' (again)'")) {
            for (int id : new int[] {6, 60, 7}) {
                ps.setInt(1, id);
                ps.setString(2, "upsert " + id);
                ps.addBatch();
            }
            say("upsert batch: " + Arrays.toString(ps.executeBatch()));
        }
        try (Statement s = c.createStatement(ResultSet.TYPE_SCROLL_INSENSITIVE, ResultSet.CONCUR_UPDATABLE);
                ResultSet rs = s.executeQuery("SELECT id, body FROM note WHERE id IN (8, 9) ORDER BY id")) {
            rs.next();
            rs.updateString("body", "updated through the result set");
            rs.updateRow();
            rs.next();
            rs.deleteRow();
            rs.moveToInsertRow();
            rs.updateInt("id", 70);
            rs.updateString("body", "inserted through the result set");
            rs.insertRow();
            say("updatable: done");
        }
        c.commit();
    }

    /** COPY FROM STDIN through CopyManager, in autocommit. */
    static void copyIn(Connection c) throws Exception {
        CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
        String data = "200\tcopied 200\n201\t\\N\n202\tcopied \u00e9\n";
        long n = copy.copyIn("COPY note (id, body) FROM STDIN", new java.io.StringReader(data));
        say("copy: " + n);
    }

    /** reWriteBatchedInserts: pgjdbc turns the batch into multi-row INSERTs. */
    static void rewrittenBatch() throws SQLException {
        try (Connection c = open("?reWriteBatchedInserts=true")) {
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO note (id, body) VALUES (?, ?)")) {
                for (int i = 100; i < 137; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "rewritten " + i);
                    ps.addBatch();
                }
                say("rewritten batch: " + Arrays.toString(ps.executeBatch()));
            }
            c.commit();
        }
    }

    /**
     * Large batches in autocommit: one implicit transaction of thousands of Bind/Execute under a
     * single Sync. pgjdbc writes them without reading replies until its receive estimate fills,
     * so a proxy that held replies back would deadlock it.
     */
    static void largeBatches() throws SQLException {
        try (Connection c = open("")) {
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO note (id, body) VALUES (?, ?)")) {
                for (int i = 1000; i < 4000; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "large " + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                say("large insert batch: " + counts.length + " statements, " + Arrays.stream(counts).sum() + " rows");
            }
            try (PreparedStatement ps = c.prepareStatement("UPDATE note SET body = body || ' updated' WHERE id = ?")) {
                for (int i = 1000; i < 4000; i += 2) {
                    ps.setInt(1, i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                say("large update batch: " + counts.length + " statements, " + Arrays.stream(counts).sum() + " rows");
            }
        }
    }

    /** preferQueryMode=simple: parameters are inlined and the simple protocol is used. */
    static void simpleMode() throws SQLException {
        try (Connection c = open("?preferQueryMode=simple")) {
            try (PreparedStatement ps = c.prepareStatement("UPDATE item SET tags = ?, meta = meta || ? WHERE sku = ?")) {
                ps.setArray(1, c.createArrayOf("text", new String[] {"simple", "it's"}));
                PGobject json = new PGobject();
                json.setType("jsonb");
                json.setValue("{\"mode\": \"simple\"}");
                ps.setObject(2, json);
                ps.setString(3, "sku-2");
                say("simple update: " + ps.executeUpdate());
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO note (id, body) VALUES (?, ?)", new String[] {"id", "body"})) {
                ps.setInt(1, 300);
                ps.setString(2, "simple 'quoted'");
                say("simple insert: " + ps.executeUpdate());
                try (ResultSet keys = ps.getGeneratedKeys()) {
                    rows("  simple key", keys);
                }
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                say("simple delete: " + s.executeUpdate("DELETE FROM item WHERE sku = 'sku-8'"));
            }
            c.commit();
        }
    }

    /** autosave=always: a savepoint before every statement, rolled back to on error. */
    static void autosave() throws SQLException {
        try (Connection c = open("?autosave=always")) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                say("autosave update: " + s.executeUpdate("UPDATE note SET body = 'kept' WHERE id = 10"));
                try {
                    s.executeUpdate("UPDATE note SET body = (1 / (id - id))::text WHERE id = 11");
                } catch (SQLException e) {
                    error("autosave failure", e);
                }
                say("autosave after failure: " + s.executeUpdate("UPDATE note SET body = 'also kept' WHERE id = 12"));
            }
            c.commit();
        }
    }

    /** Server-side prepared from the first execution, binary results (prepareThreshold=-1). */
    static void forcedServerPrepare() throws SQLException {
        try (Connection c = open("?prepareThreshold=-1")) {
            try (PreparedStatement ps = c.prepareStatement("UPDATE item SET seen = ?, qty = qty * 3 WHERE id = ? RETURNING id, qty, seen")) {
                for (long id : new long[] {3, 4, 99}) {
                    ps.setObject(1, OffsetDateTime.of(2026, 11, 29, 8, 0, 0, 0, ZoneOffset.UTC));
                    ps.setLong(2, id);
                    try (ResultSet rs = ps.executeQuery()) {
                        rows("  returning " + id, rs);
                    }
                }
            }
            try (PreparedStatement ps = c.prepareStatement("DELETE FROM note WHERE id = ANY(?)")) {
                ps.setArray(1, c.createArrayOf("int4", new Integer[] {13, 14, 999}));
                say("delete any: " + ps.executeUpdate());
            }
        }
    }

    public static void main(String[] args) throws Exception {
        base = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/" + args[2];
        try (Connection c = open("")) {
            insertsWithKeys(c);
            batchThenUpdates(c);
            savepoints(c);
            failingBatch(c);
            multiStatement(c);
            upsertAndUpdatable(c);
            c.setAutoCommit(true);
            copyIn(c);
        }
        rewrittenBatch();
        largeBatches();
        simpleMode();
        autosave();
        forcedServerPrepare();
        try (Connection c = open(""); Statement s = c.createStatement()) {
            rows("item", s.executeQuery("SELECT * FROM item ORDER BY id"));
            rows("note", s.executeQuery("SELECT * FROM note WHERE id < 1000 ORDER BY id"));
            rows("large notes", s.executeQuery("SELECT count(*), md5(string_agg(id || body, ',' ORDER BY id)) FROM note WHERE id >= 1000"));
        }
    }
}
