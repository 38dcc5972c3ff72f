//! The SQL of a row-image column that hindsight reads back from the server.
//!
//! In a session whose `client_encoding` is not UTF-8, images leave the server as the hex
//! digits of the row's JSON in UTF-8 (`encode(convert_to(to_jsonb(row)::text, 'UTF8'), 'hex')`,
//! [`Form::Hex`]), not as `jsonb`: text is converted to the client's encoding on the way out,
//! and a row holding a character that encoding cannot represent (a Chinese name in a row a
//! LATIN1 client updates) would make the server fail the client's statement — capture would
//! change its outcome — and the images would need converting back. As hex of UTF-8 the
//! conversion is the server's own and cannot fail, and ASCII hex digits are the same in every
//! encoding, in text and binary result format, whatever `bytea_output` says.
//!
//! A `SQL_ASCII` database stores bytes without an encoding; converting them to UTF8 fails on
//! bytes that are not UTF-8, so there the bytes come out unconverted and [`super::rows`]
//! checks them.
//!
//! In a UTF-8 session none of this is needed, and images leave as `jsonb` ([`Form::Jsonb`]):
//! hex costs a conversion and twice the bytes (a bulk UPDATE's capture took 15–45 % longer).
//!
//! Only columns hindsight reads are built here: images kept in the server for a moment (a
//! before image in a transaction-local setting, MERGE's pre-read rows) stay `jsonb`/text and
//! are converted when they are read out.

use crate::wire::client_text::ClientEncoding;

/// The target encoding of [`Form::Hex`]: UTF-8, but the database's own bytes in a `SQL_ASCII`
/// database (see the module documentation).
const TARGET: &str =
    "CASE WHEN pg_catalog.getdatabaseencoding() = 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END";

/// How image columns leave the server, by the session's `client_encoding` when the SQL is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `jsonb`, in a UTF-8 session: the server's text is already UTF-8, and any character can be
    /// sent. The cheaper form (no conversion, half the bytes of hex).
    Jsonb,
    /// Hex digits of UTF-8, in any other session (see the module documentation).
    Hex,
}

impl Form {
    /// The form for a session in `encoding`.
    pub fn for_session(encoding: ClientEncoding) -> Self {
        match encoding {
            ClientEncoding::Utf8 => Form::Jsonb,
            ClientEncoding::Other => Form::Hex,
        }
    }

    /// The image of row `row` (a table reference `t.*`, or a row alias such as `old`).
    pub fn row(self, row: &str) -> String {
        let image = format!("to_jsonb({row})");
        match self {
            Form::Jsonb => image,
            Form::Hex => hex(&image),
        }
    }

    /// The image held by `expr`, a primary expression (a function call or a column) of type
    /// `jsonb`, `json` or `text` holding JSON (NULL stays NULL).
    pub fn json(self, expr: &str) -> String {
        match self {
            Form::Jsonb => format!("{expr}::jsonb"),
            Form::Hex => hex(expr),
        }
    }

    /// A name (or a JSON list of names) from the catalog, `expr` of type `name` or `text`.
    pub fn name(self, expr: &str) -> String {
        match self {
            Form::Jsonb => expr.to_string(),
            Form::Hex => hex(expr),
        }
    }

    /// A missing image, typed as the others are (a `UNION` branch with nothing to report).
    pub fn null(self) -> &'static str {
        match self {
            Form::Jsonb => "NULL::jsonb",
            Form::Hex => "NULL::text",
        }
    }
}

/// `expr` (any type with a text cast) as the hex digits of its text in UTF-8.
fn hex(expr: &str) -> String {
    format!("pg_catalog.encode(pg_catalog.convert_to(({expr})::text, {TARGET}), 'hex')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_jsonb_in_utf8_sessions_else_hex_of_utf8() {
        assert_eq!(Form::Jsonb.row("\"t\".*"), "to_jsonb(\"t\".*)");
        assert_eq!(Form::Jsonb.json("f(x)"), "f(x)::jsonb");
        assert_eq!(Form::Jsonb.name("c.relname"), "c.relname");
        assert_eq!(
            Form::Hex.row("\"t\".*"),
            "pg_catalog.encode(pg_catalog.convert_to((to_jsonb(\"t\".*))::text, CASE WHEN pg_catalog.getdatabaseencoding() = 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END), 'hex')"
        );
    }
}
