//! The SQL of a row-image column that hindsight reads back from the server.
//!
//! Every image leaves the server as the hex digits of the row's JSON in UTF-8
//! (`encode(convert_to(to_jsonb(row)::text, 'UTF8'), 'hex')`), never as `jsonb`: text is
//! converted to the session's `client_encoding` on the way out, and ASCII hex digits are the same
//! in every encoding — and in text and binary result format, whatever `bytea_output` says. As `jsonb`, an image would
//! arrive in the client's encoding — which hindsight would have to convert back (exactly only
//! where it has the tables) — and a row holding a character that encoding cannot represent
//! (a Chinese name in a row a LATIN1 client updates) would make the server fail the client's
//! statement: capture would change its outcome. As hex of UTF-8, the conversion is the server's
//! own and cannot fail, whatever the client's encoding.
//!
//! A `SQL_ASCII` database stores bytes without an encoding; converting them to UTF8 fails on
//! bytes that are not UTF-8, so there the bytes come out unconverted and [`super::rows`]
//! checks them.
//!
//! Only columns hindsight reads are built here: images kept in the server for a moment (a
//! before image in a transaction-local setting, MERGE's pre-read rows) stay `jsonb`/text and
//! are converted when they are read out.

/// The target encoding of [`json`]: UTF-8, but the database's own bytes in a `SQL_ASCII`
/// database (see the module documentation).
const TARGET: &str =
    "CASE WHEN pg_catalog.getdatabaseencoding() = 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END";

/// The image of row `row` (a table reference `t.*`, or a row alias such as `old`).
pub fn row(row: &str) -> String {
    json(&format!("to_jsonb({row})"))
}

/// The image held by `expr`, any expression of type `jsonb`, `json` or `text` (NULL stays NULL).
pub fn json(expr: &str) -> String {
    format!("pg_catalog.encode(pg_catalog.convert_to(({expr})::text, {TARGET}), 'hex')")
}

/// A missing image, typed as the others are (a `UNION` branch with nothing to report).
pub const NULL: &str = "NULL::text";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_hex_of_utf8() {
        assert_eq!(
            row("\"t\".*"),
            "pg_catalog.encode(pg_catalog.convert_to((to_jsonb(\"t\".*))::text, CASE WHEN pg_catalog.getdatabaseencoding() = 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END), 'hex')"
        );
    }
}
