//! A text's shape: its tokens with every constant's value left out, so that texts that differ
//! only in their constants (and white space) share one analysis.
//!
//! Clients that put values in the text (pgbench's simple protocol, most ORMs' "literal" mode)
//! send a new text for each row; without this, each costs a full parse (the parse tree crosses
//! from libpg_query to Rust as protobuf: ~20 µs for a one-line UPDATE), against ~3 µs for the
//! scan that finds the shape. PostgreSQL's grammar decides on token kinds, never on a
//! constant's value (the one string that is not a value, `UESCAPE '!'`, which says how the
//! `U&"…"` before it reads, stays in the shape), so two texts with the same shape parse to the
//! same tree but for those values, and an [`Analysis`](super::analysis::Analysis) of row writes and reads holds none of
//! them: table, column and alias names are identifiers, kept in the shape. Analyses that *do*
//! read a constant (`EXPLAIN (ANALYZE 0)`) or whose fingerprint keeps one (options of schema
//! changes) are not shared: see [`Shape::shareable`].

use super::analysis::Kind;
use pg_query::protobuf::Token;

/// The shape of a text, and where its tokens are (to place statement spans in it).
pub struct Shape {
    /// Every token's text, a constant's replaced by its kind, separated by NULs (no token
    /// holds one: the server refuses NUL in a query).
    pub key: String,
    /// Byte ranges of the tokens in the text.
    tokens: Vec<(usize, usize)>,
    /// The text's length in bytes.
    len: usize,
    /// Whether the text holds an EXPLAIN (whose options may be constants the analysis reads).
    explains: bool,
}

/// A position in a text, told by the tokens around it, so that it can be found again in a
/// text of the same shape. A position may be several of these at once (`5;`: the end of `5`
/// and the start of `;`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    TextStart,
    TextEnd,
    TokenStart(usize),
    TokenEnd(usize),
}

/// A position as every [`Boundary`] it is in the text it was found in.
pub type Place = Vec<Boundary>;

fn is_constant(token: i32) -> bool {
    [
        Token::Iconst,
        Token::Fconst,
        Token::Sconst,
        Token::Usconst,
        Token::Bconst,
        Token::Xconst,
    ]
    .iter()
    .any(|t| *t as i32 == token)
}

/// Whether statements of `kind` can share one analysis across constants: their analysis reads
/// no constant. Every kind is named, so a new one must be decided here.
fn shares_analysis(kind: Kind) -> bool {
    match kind {
        Kind::Read | Kind::Insert | Kind::Update | Kind::Delete | Kind::Upsert | Kind::Merge => {
            true
        }
        // COPY's and TRUNCATE's options, schema changes' (fillfactor = 70), SET's values,
        // transaction control's (PREPARE TRANSACTION 'gid'), and what hindsight cannot see into:
        // parsed each time.
        Kind::CopyIn
        | Kind::Truncate
        | Kind::Ddl
        | Kind::Transaction(_)
        | Kind::Session
        | Kind::Opaque => false,
    }
}

impl Shape {
    /// The shape of `text`, or `None` when the scanner rejects it (the full parse then reports
    /// why).
    pub fn of(text: &str) -> Option<Shape> {
        let scanned = super::parser::tokens(text).ok()?;
        let mut key = String::with_capacity(text.len());
        let mut tokens = Vec::with_capacity(scanned.len());
        let mut explains = false;
        let mut after_uescape = false;
        for t in &scanned {
            let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
            let word = text.get(start..end)?;
            // `UESCAPE '!'` is no value: it says how the `U&"…"` identifier before it reads.
            if is_constant(t.token) && !after_uescape {
                key.push('\u{1}');
                key.push_str(&t.token.to_string());
            } else {
                explains |= t.token == Token::Explain as i32;
                key.push_str(word);
            }
            key.push('\0');
            tokens.push((start, end));
            after_uescape = t.token == Token::Uescape as i32;
        }
        Some(Shape {
            key,
            tokens,
            len: text.len(),
            explains,
        })
    }

    /// Whether an analysis of statements of `kinds` can be shared by every text of this shape:
    /// row writes and reads, outside EXPLAIN.
    pub fn shareable(&self, kinds: impl IntoIterator<Item = Kind>) -> bool {
        !self.explains && kinds.into_iter().all(shares_analysis)
    }

    /// Every boundary `pos` is in this text; empty if none (inside a token).
    pub fn place(&self, pos: usize) -> Place {
        let mut place = Vec::new();
        if pos == 0 {
            place.push(Boundary::TextStart);
        }
        if pos == self.len {
            place.push(Boundary::TextEnd);
        }
        // Tokens are in order and do not overlap: a token ending at `pos` is the last one that
        // starts before it, one starting at `pos` the next (binary search: a text of thousands
        // of statements asks this for each).
        let next = self.tokens.partition_point(|&(start, _)| start < pos);
        if next > 0 && self.tokens[next - 1].1 == pos {
            place.push(Boundary::TokenEnd(next - 1));
        }
        if self
            .tokens
            .get(next)
            .is_some_and(|&(start, _)| start == pos)
        {
            place.push(Boundary::TokenStart(next));
        }
        place
    }

    /// Where `place` (found in a text of the same shape) is in this text: `None` if its
    /// boundaries are not all at one position here (white space differs around it).
    pub fn find(&self, place: &[Boundary]) -> Option<usize> {
        let mut at = None;
        for b in place {
            let pos = match *b {
                Boundary::TextStart => 0,
                Boundary::TextEnd => self.len,
                Boundary::TokenStart(i) => self.tokens.get(i)?.0,
                Boundary::TokenEnd(i) => self.tokens.get(i)?.1,
            };
            if at.is_some_and(|a| a != pos) {
                return None;
            }
            at = Some(pos);
        }
        at
    }
}

/// Whether every text of `one`'s shape has `one`'s `fingerprint` (one statement's text).
///
/// pg_query's fingerprint leaves out `A_Const` nodes (and casts of them), not every constant:
/// `float(30)` chooses a type, `CURRENT_TIME(3)` and typmods are kept, a string option is a
/// `DefElem`'s. The proof, taken once per shape: `pg_query::normalize` puts a parameter where
/// each `A_Const` was, and no other constant of a row write or read; if every constant token
/// of `one` became a parameter (a unary minus folded with it), and the normalised text has
/// the same fingerprint (what it replaced was left out), then texts that differ from `one`
/// only in those values — the grammar does not look at them — have that fingerprint too.
/// `false` whenever any step cannot say (then each text gets its own).
pub fn fingerprint_is_shared(one: &str, fingerprint: &str) -> bool {
    if fingerprint.is_empty() {
        return false;
    }
    let Ok(normalized) = pg_query::normalize(one) else {
        return false;
    };
    let (Ok(a), Ok(n)) = (
        super::parser::tokens(one),
        super::parser::tokens(&normalized),
    ) else {
        return false;
    };
    constants_became_parameters(one, &a, &normalized, &n)
        && super::parser::fingerprint(&normalized).is_ok_and(|f| f.hex == fingerprint)
}

/// Whether `normalized`'s tokens are `text`'s with each constant (with a unary minus before
/// it) replaced by one parameter, and everything else the same.
fn constants_became_parameters(
    text: &str,
    tokens: &[pg_query::protobuf::ScanToken],
    normalized: &str,
    replaced: &[pg_query::protobuf::ScanToken],
) -> bool {
    let word = |s: &str, t: &pg_query::protobuf::ScanToken| -> Option<String> {
        s.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)
            .map(str::to_string)
    };
    let is_param = |t: &pg_query::protobuf::ScanToken| t.token == Token::Param as i32;
    let (mut i, mut j) = (0, 0);
    while let Some(t) = tokens.get(i) {
        let Some(r) = replaced.get(j) else {
            return false;
        };
        let minus = word(text, t).as_deref() == Some("-")
            && tokens.get(i + 1).is_some_and(|c| is_constant(c.token));
        i += if is_constant(t.token) && is_param(r) {
            1
        } else if minus && is_param(r) {
            2
        } else if !is_constant(t.token)
            && t.token == r.token
            && word(text, t).is_some_and(|w| Some(w) == word(normalized, r))
        {
            1
        } else {
            return false;
        };
        j += 1;
    }
    j == replaced.len()
}

/// `text` with every constant (but an escape character) replaced by another of its kind, the
/// `n`-th of three: a text of the same shape. For the tests and the `shape` fuzz target.
#[doc(hidden)]
pub fn with_other_constants(text: &str, n: usize) -> Option<String> {
    let tokens = crate::statement::parser::tokens(text).ok()?;
    let mut out = String::new();
    let mut at = 0;
    let after_uescape = |i: usize| i > 0 && tokens[i - 1].token == Token::Uescape as i32;
    for (_, t) in tokens
        .iter()
        .enumerate()
        .filter(|&(i, t)| is_constant(t.token) && !after_uescape(i))
    {
        let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
        out.push_str(text.get(at..start)?);
        out.push_str(match Token::try_from(t.token).ok()? {
            Token::Iconst => ["7", "123456", "0"][n % 3],
            Token::Fconst => ["2.5", "1e10", "0.001"][n % 3],
            Token::Bconst => ["b'1'", "b'0000'", "b''"][n % 3],
            Token::Xconst => ["x'ff'", "x'0'", "x''"][n % 3],
            _ => ["'zz'", "''", "'1 day'"][n % 3],
        });
        at = end;
    }
    out.push_str(text.get(at..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_left_out_of_the_shape_and_nothing_else_is() {
        let a = Shape::of("UPDATE t SET a = a + -3447 WHERE id = 88771").unwrap();
        let b = Shape::of("UPDATE t  SET a = a + -1 WHERE id = 5").unwrap();
        assert_eq!(a.key, b.key);
        for other in [
            "UPDATE t SET a = a + -1 WHERE id = '5'", // another kind of constant
            "UPDATE t SET b = a + -1 WHERE id = 5",   // another column
            "UPDATE \"t\" SET a = a + -1 WHERE id = 5", // quoted: another token
            "UPDATE t SET a = a + -1 WHERE id = $1",
            "UPDATE t SET a = a + -1 WHERE id = 5 /* x */",
        ] {
            assert_ne!(a.key, Shape::of(other).unwrap().key, "{other}");
        }
    }

    #[test]
    fn a_place_is_found_only_where_every_boundary_of_it_agrees() {
        let a = Shape::of("SELECT 1; SELECT 22").unwrap();
        let b = Shape::of("SELECT 333; SELECT 4").unwrap();
        let c = Shape::of("SELECT 333 ; SELECT 4").unwrap();
        // The end of `1` and the start of `;`.
        let place = a.place(8);
        assert_eq!(place, [Boundary::TokenEnd(1), Boundary::TokenStart(2)]);
        assert_eq!(b.find(&place), Some(10));
        assert_eq!(
            c.find(&place),
            None,
            "apart in c: which one was meant is unknown"
        );
        assert_eq!(b.find(&a.place(a.len)), Some(b.len));
        assert!(a.place(2).is_empty(), "inside SELECT");
    }

    #[test]
    fn only_row_writes_and_reads_outside_explain_are_shared() {
        let s = Shape::of("UPDATE t SET a = 1").unwrap();
        assert!(s.shareable([Kind::Update, Kind::Read]));
        assert!(!s.shareable([Kind::Ddl]));
        assert!(!s.shareable([Kind::Session]));
        let e = Shape::of("EXPLAIN (ANALYZE 0) UPDATE t SET a = 1").unwrap();
        assert!(!e.shareable([Kind::Update]));
    }

    /// Statements whose constants are all values the fingerprint leaves out, and statements
    /// with a constant it keeps (or that the proof cannot vouch for).
    const SHARED: &[&str] = &[
        "UPDATE pgbench_accounts SET abalance = abalance + -3447 WHERE aid = 88771;",
        "UPDATE pgbench_tellers SET tbalance = tbalance + 3447 WHERE tid = 7",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 88771",
        "INSERT INTO h (tid, bid, aid, delta, mtime) VALUES (41, 8, 88771, -3447, CURRENT_TIMESTAMP)",
        "SELECT * FROM t WHERE d > now() - interval '1 day' AND s = E'a\\'b' LIMIT 10 OFFSET 5",
        "UPDATE t SET a = '{1,2}'::int[], b = 1.5e3, c = x'1f', d = b'101' WHERE id IN (1, 2, $1)",
        "DELETE FROM t WHERE a = 1 - 2 AND b = - 3 RETURNING *",
    ];
    const NOT_SHARED: &[&str] = &[
        "SELECT a::float(30) FROM t WHERE id = 1", // float(p) chooses float4 or float8
        "SELECT a::varchar(30) FROM t",            // a typmod: not normalised
        "SELECT a, count(*) FROM t GROUP BY 1",    // GROUP BY 1: not normalised
        "SELECT CURRENT_TIME(3)",                  // a precision, not a value
        r#"UPDATE U&"t!0061" UESCAPE '!' SET v = 1"#,
    ];

    #[test]
    fn a_fingerprint_is_shared_only_when_every_constant_is_a_value_it_leaves_out() {
        let fp = |t: &str| crate::statement::parser::fingerprint(t).unwrap().hex;
        for text in SHARED {
            assert!(fingerprint_is_shared(text, &fp(text)), "{text}");
            assert!(
                !fingerprint_is_shared(text, "0123"),
                "another fingerprint: {text}"
            );
        }
        for text in NOT_SHARED {
            assert!(!fingerprint_is_shared(text, &fp(text)), "{text}");
        }
    }

    /// The property the cache relies on: when the proof says shared, every text of the same
    /// shape that parses has the fingerprint; and the proof is needed (texts of NOT_SHARED
    /// have other fingerprints with other constants).
    #[test]
    fn texts_of_a_shape_whose_fingerprint_is_shared_have_it() {
        let fp = |t: &str| crate::statement::parser::fingerprint(t).ok().map(|f| f.hex);
        let mut differed = 0;
        for text in SHARED.iter().chain(NOT_SHARED) {
            let mine = fp(text).unwrap();
            let shared = fingerprint_is_shared(text, &mine);
            for n in 0..3 {
                let other = with_other_constants(text, n).unwrap();
                assert_eq!(
                    Shape::of(&other).unwrap().key,
                    Shape::of(text).unwrap().key,
                    "{other}"
                );
                match fp(&other) {
                    Some(f) if shared => assert_eq!(f, mine, "{text} vs {other}"),
                    Some(f) => differed += usize::from(f != mine),
                    None => {}
                }
            }
        }
        assert!(
            differed > 0,
            "no text without the proof changed its fingerprint"
        );
    }
}
