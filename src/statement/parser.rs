//! The one door to libpg_query (PostgreSQL 18's grammar and lexer): every parse, scan and
//! fingerprint hindsight takes goes through here, with the options it fixes.
//!
//! - `parse`: the top-level SQL grammar, as the server's `raw_parser` reads a query.
//! - `tokens`: the server's lexer, one token per lexeme (comments included), without the
//!   protobuf round trip of `pg_query::scan` (the lexer once, not twice, and no encoding).
//! - `fingerprint`: the statement's identity with its constants left out, computed the way
//!   libpg_query 17 did (`RANGEVAR_PG17_COMPAT`): schema names count, aliases do not, and runs of
//!   two or more digits in a relation name are left out (`t_2024_01` and `t_2024_02` share one).
//!   Footprints are keyed by it, so the parser's upgrade from PostgreSQL 17's grammar kept every
//!   fingerprint of a write without RETURNING (checked over both regression corpora: 10,789
//!   writes, none changed). A write with RETURNING has another one since: PostgreSQL 18 made
//!   its list a clause of its own (`RETURNING WITH (OLD AS o) …`), and the tree changed.

use pg_query::protobuf::ScanToken;
use pg_query::{FingerprintOptions, ParserOptions};

/// How fingerprints are taken (see the module documentation).
fn fingerprint_options() -> FingerprintOptions {
    FingerprintOptions::RANGEVAR_PG17_COMPAT
}

/// `sql` parsed with the top-level grammar.
pub fn parse(sql: &str) -> pg_query::Result<pg_query::ParseResult> {
    pg_query::parse(sql, ParserOptions::DEFAULT)
}

/// `sql`'s tokens, as PostgreSQL's lexer cuts it.
pub fn tokens(sql: &str) -> pg_query::Result<Vec<ScanToken>> {
    pg_query::scan_tokens(sql)
}

/// `sql`'s fingerprint (see the module documentation).
pub fn fingerprint(sql: &str) -> pg_query::Result<pg_query::Fingerprint> {
    pg_query::fingerprint(sql, ParserOptions::DEFAULT, fingerprint_options())
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    /// Footprints are keyed by fingerprint: a write keeps the one libpg_query 17 gave it (the
    /// value below is 6.2.1's), schemas count and aliases do not, as they did then.
    #[test]
    fn fingerprints_are_libpg_query_17s() {
        let fp = |sql: &str| fingerprint(sql).unwrap().hex;
        assert_eq!(fp("INSERT INTO test10fk VALUES (1)"), "b1bc35d94ef56ccf");
        assert_ne!(fp("UPDATE a.t SET x = 1"), fp("UPDATE b.t SET x = 1"));
        assert_eq!(fp("UPDATE t AS p SET x = 1"), fp("UPDATE t AS q SET x = 1"));
    }
}
