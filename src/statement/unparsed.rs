//! Texts hindsight's parser cannot read whole, in front of a server whose grammar is newer.
//!
//! hindsight parses with PostgreSQL 18's grammar (`parser`). A newer server will accept syntax
//! it lacks (as PostgreSQL 18 accepted `GENERATED ALWAYS AS (…) VIRTUAL`, `WITHOUT OVERLAPS`
//! and `NOT ENFORCED` while hindsight read PostgreSQL 17's), and a query string holding one such
//! statement fails to parse as a whole. Relaying it unread would also relay the writes beside
//! it (`CREATE TABLE … <new syntax>; INSERT …`) uncaptured, and its schema change unrecorded.
//! So such a text is cut into its statements as
//! psql cuts a script — at `;` outside parentheses and outside a `BEGIN ATOMIC … END` body,
//! from the scanner's tokens — and each is read on its own:
//! - a statement the parser reads is analysed as usual;
//! - one it cannot read is judged by its first keyword (`assumed`): a schema change
//!   (CREATE, ALTER, DROP, GRANT, REVOKE, COMMENT, …) or another utility statement is assumed
//!   to be what that keyword says, and anything that may write rows (INSERT … COPY, WITH,
//!   SELECT, TRUNCATE, EXPLAIN, PREPARE) or control the transaction is not assumed at all:
//!   the caller refuses the text.
//!
//! The tests below use a made-up clause (`SOMEDAY`) for syntax no grammar hindsight has reads.
//!
//! This module knows nothing of servers or sessions: the capture layer decides when to use it
//! (only in front of a server newer than the parser) and asks that server's grammar about
//! every statement taken on assumption before running anything.

use std::ops::Range;

use pg_query::protobuf::{KeywordKind, ScanToken, Token};

use super::analysis::{Analysis, AnalysisError, Kind, TableName, Write};
use super::cache::{AnalysisCache, Statement};

/// One statement of a text the parser could not read whole.
#[derive(Debug, Clone)]
pub struct Piece {
    /// Its analysis (spans into the whole text).
    pub statement: Statement,
    /// How hindsight knows what it does.
    pub basis: Basis,
}

/// How hindsight knows what a [`Piece`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// The parser read it.
    Parsed,
    /// The parser could not read it; its kind is assumed from its first keyword.
    Assumed,
    /// The parser could not read it, and it may write rows or control the transaction: it
    /// cannot be captured (the parser's error).
    Refused(AnalysisError),
}

/// `sql` cut into its statements, each read on its own (see the module docs); `None` when
/// the scanner itself rejects the text (an unterminated literal: the server rejects it too).
pub fn pieces(sql: &str, cache: &AnalysisCache) -> Option<Vec<Piece>> {
    let tokens = crate::statement::parser::tokens(sql).ok()?;
    let pieces = statement_ranges(sql, &tokens)
        .into_iter()
        .map(|(range, toks)| piece(sql, range, toks, cache))
        .collect();
    Some(pieces)
}

fn piece(sql: &str, range: Range<usize>, tokens: &[ScanToken], cache: &AnalysisCache) -> Piece {
    let text = &sql[range.clone()];
    match cache.get(text).as_ref() {
        Ok(a) if a.statements.len() == 1 => {
            let mut statement = a.statements[0].clone();
            let span = &mut statement.located.span;
            *span = span.start + range.start..span.end + range.start;
            Piece {
                statement,
                basis: Basis::Parsed,
            }
        }
        parsed => {
            let error = match parsed {
                Err(e) => e.clone(),
                Ok(_) => AnalysisError::Syntax {
                    message: "not one statement".into(),
                    excerpt: text.chars().take(80).collect(),
                },
            };
            let analysis = assumed(sql, tokens);
            let basis = match analysis {
                Some(_) => Basis::Assumed,
                None => Basis::Refused(error),
            };
            let analysis = analysis.unwrap_or_else(|| Analysis::of(Kind::Opaque));
            Piece {
                statement: Statement {
                    located: super::analysis::Located {
                        analysis,
                        span: range,
                    },
                    fingerprint: String::new(),
                },
                basis,
            }
        }
    }
}

/// Byte ranges of the statements of `sql` (without their `;`), each with its tokens; empty
/// statements are left out. Cut as psql cuts: not inside parentheses (a rule's
/// `DO (…; …)`), nor inside the `BEGIN ATOMIC … END` body of a CREATE FUNCTION or PROCEDURE,
/// where `BEGIN` and `CASE` open what `END` closes.
fn statement_ranges<'t>(
    sql: &str,
    tokens: &'t [ScanToken],
) -> Vec<(Range<usize>, &'t [ScanToken])> {
    let mut out = Vec::new();
    let (mut first, mut parens, mut begins) = (0usize, 0i32, 0i32);
    let mut words: Vec<i32> = Vec::new();
    let mut start = 0usize;
    fn flush<'t>(
        range: Range<usize>,
        toks: &'t [ScanToken],
        out: &mut Vec<(Range<usize>, &'t [ScanToken])>,
    ) {
        if toks.iter().any(|t| !is_comment(t)) {
            out.push((range, toks));
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        if is_comment(t) {
            continue;
        }
        match Token::try_from(t.token).unwrap_or(Token::Nul) {
            Token::Ascii40 => parens += 1,
            Token::Ascii41 => parens -= 1,
            Token::Ascii59 if parens <= 0 && begins <= 0 => {
                flush(start..t.start as usize, &tokens[first..i], &mut out);
                (first, parens, begins) = (i + 1, 0, 0);
                start = t.end as usize;
                words.clear();
                continue;
            }
            Token::BeginP | Token::Case if creates_routine(&words) => begins += 1,
            Token::EndP if begins > 0 => begins -= 1,
            _ => {}
        }
        if is_word(t) && words.len() < 4 {
            words.push(t.token);
        }
    }
    flush(start..sql.len(), &tokens[first..], &mut out);
    // Leading whitespace is not part of a statement (spans start at its first token).
    out.into_iter()
        .map(|(r, toks)| {
            let from = toks
                .iter()
                .find(|t| !is_comment(t))
                .map_or(r.start, |t| t.start as usize)
                .max(r.start);
            (from..r.end, toks)
        })
        .collect()
}

/// `CREATE [OR REPLACE] FUNCTION | PROCEDURE`: the statements whose body may be
/// `BEGIN ATOMIC … END` (psql's test, on the first words).
fn creates_routine(words: &[i32]) -> bool {
    let w = |i: usize, t: Token| words.get(i) == Some(&(t as i32));
    w(0, Token::Create)
        && (w(1, Token::Function)
            || w(1, Token::Procedure)
            || (w(1, Token::Or)
                && w(2, Token::Replace)
                && (w(3, Token::Function) || w(3, Token::Procedure))))
}

fn is_comment(t: &ScanToken) -> bool {
    t.token == Token::SqlComment as i32 || t.token == Token::CComment as i32
}

fn is_word(t: &ScanToken) -> bool {
    t.token == Token::Ident as i32 || t.keyword_kind != KeywordKind::NoKeyword as i32
}

/// What an unreadable statement is assumed to do, from its first keyword; `None` when it may
/// write rows or control the transaction (nothing is assumed of those).
fn assumed(sql: &str, tokens: &[ScanToken]) -> Option<Analysis> {
    let mut words = tokens.iter().filter(|t| !is_comment(t));
    let first = Token::try_from(words.next()?.token).unwrap_or(Token::Nul);
    let kind = match first {
        Token::Create
        | Token::Alter
        | Token::Drop
        | Token::Grant
        | Token::Revoke
        | Token::Comment
        | Token::Security
        | Token::ImportP
        | Token::Refresh => Kind::Ddl,
        Token::Set | Token::Reset => Kind::Session,
        Token::Insert
        | Token::Update
        | Token::DeleteP
        | Token::Merge
        | Token::Copy
        | Token::With
        | Token::Select
        | Token::Values
        | Token::Table
        | Token::Truncate
        | Token::Explain
        | Token::Prepare
        | Token::Execute
        | Token::BeginP
        | Token::Start
        | Token::Commit
        | Token::EndP
        | Token::Rollback
        | Token::AbortP
        | Token::Savepoint
        | Token::Release
        | Token::Ascii40 => return None,
        // DO, CALL, VACUUM, LISTEN, …: what they write cannot be known from the text.
        _ => Kind::Opaque,
    };
    let mut a = Analysis::of(kind);
    if kind == Kind::Ddl {
        let rest: Vec<&ScanToken> = words.collect();
        if let Some(table) = table_of(sql, first, &rest) {
            a.writes.push(Write::ddl(table));
        }
    }
    Some(a)
}

/// The table of `CREATE [GLOBAL|LOCAL] [TEMP|TEMPORARY|UNLOGGED] TABLE [IF NOT EXISTS] name`
/// or `ALTER TABLE [IF EXISTS] [ONLY] name` (rules and events name it); others name none.
fn table_of(sql: &str, first: Token, rest: &[&ScanToken]) -> Option<TableName> {
    let is = |t: &ScanToken, k: Token| t.token == k as i32;
    let skip: &[Token] = match first {
        Token::Create => &[
            Token::Global,
            Token::Local,
            Token::Temp,
            Token::Temporary,
            Token::Unlogged,
        ],
        Token::Alter => &[],
        _ => return None,
    };
    let mut i = rest
        .iter()
        .take_while(|t| skip.iter().any(|k| is(t, *k)))
        .count();
    if !is(rest.get(i)?, Token::Table) {
        return None;
    }
    i += 1;
    for word in [Token::IfP, Token::Not, Token::Exists, Token::Only] {
        if rest.get(i).is_some_and(|t| is(t, word)) {
            i += 1;
        }
    }
    let name =
        |t: &ScanToken| is_word(t).then(|| identifier(&sql[t.start as usize..t.end as usize]));
    let first_name = name(rest.get(i)?)?;
    match (rest.get(i + 1), rest.get(i + 2)) {
        (Some(dot), Some(second)) if is(dot, Token::Ascii46) => Some(TableName {
            schema: first_name,
            name: name(second)?,
        }),
        _ => Some(TableName {
            schema: String::new(),
            name: first_name,
        }),
    }
}

/// An identifier as the server reads it: quoted kept as written, unquoted folded to lower case.
fn identifier(token: &str) -> String {
    match token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => token.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(sql: &str) -> Vec<(String, Kind, Basis)> {
        let cache = AnalysisCache::new(100);
        pieces(sql, &cache)
            .unwrap()
            .into_iter()
            .map(|p| {
                let basis = match p.basis {
                    Basis::Refused(_) => Basis::Refused(AnalysisError::Syntax {
                        message: String::new(),
                        excerpt: String::new(),
                    }),
                    b => b,
                };
                (
                    sql[p.statement.located.span.clone()].to_string(),
                    p.statement.located.analysis.kind,
                    basis,
                )
            })
            .collect()
    }

    fn refused() -> Basis {
        Basis::Refused(AnalysisError::Syntax {
            message: String::new(),
            excerpt: String::new(),
        })
    }

    #[test]
    fn pieces_are_read_on_their_own_and_unreadable_ones_judged_by_keyword() {
        let sql = "CREATE TABLE v (a int, b int GENERATED ALWAYS AS (a*2) SOMEDAY);\n INSERT INTO v VALUES (1); /* c; */ ALTER TABLE v ADD c int GENERATED ALWAYS AS (1) SOMEDAY ;;";
        assert_eq!(
            cut(sql),
            vec![
                (
                    "CREATE TABLE v (a int, b int GENERATED ALWAYS AS (a*2) SOMEDAY)".into(),
                    Kind::Ddl,
                    Basis::Assumed
                ),
                (
                    "INSERT INTO v VALUES (1)".into(),
                    Kind::Insert,
                    Basis::Parsed
                ),
                (
                    "ALTER TABLE v ADD c int GENERATED ALWAYS AS (1) SOMEDAY ".into(),
                    Kind::Ddl,
                    Basis::Assumed
                ),
            ]
        );
        let cut_of = |sql: &str| {
            cut(sql)
                .into_iter()
                .map(|(_, k, b)| (k, b))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cut_of("UPDATE t SET a = 1 RETURNING a b c"),
            vec![(Kind::Opaque, refused())]
        );
        assert_eq!(cut_of("TRUNCATE t oops"), vec![(Kind::Opaque, refused())]);
        assert_eq!(cut_of("(SELECT 1) oops"), vec![(Kind::Opaque, refused())]);
        assert_eq!(
            cut_of("EXPLAIN ANALYZE oops"),
            vec![(Kind::Opaque, refused())]
        );
        assert_eq!(cut_of("BEGIN oops"), vec![(Kind::Opaque, refused())]);
        assert_eq!(
            cut_of("VACUUM (x) t u"),
            vec![(Kind::Opaque, Basis::Assumed)]
        );
        assert_eq!(
            cut_of("SET oops oops"),
            vec![(Kind::Session, Basis::Assumed)]
        );
    }

    #[test]
    fn routine_bodies_and_rule_actions_are_not_cut() {
        let sql = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); SELECT CASE WHEN true THEN 1 END; END; \
                   CREATE RULE r AS ON INSERT TO t DO ALSO (DELETE FROM u; DELETE FROM w); DELETE FROM t";
        let got: Vec<String> = cut(sql).into_iter().map(|(s, ..)| s).collect();
        assert_eq!(
            got,
            vec![
                "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); SELECT CASE WHEN true THEN 1 END; END",
                "CREATE RULE r AS ON INSERT TO t DO ALSO (DELETE FROM u; DELETE FROM w)",
                "DELETE FROM t",
            ]
        );
        // Outside a CREATE FUNCTION, BEGIN is a statement of its own.
        let got: Vec<String> = cut("BEGIN; SELECT 1; END")
            .into_iter()
            .map(|(s, ..)| s)
            .collect();
        assert_eq!(got, vec!["BEGIN", "SELECT 1", "END"]);
    }

    #[test]
    fn unreadable_table_ddl_names_its_table() {
        let cache = AnalysisCache::new(10);
        let table = |sql: &str| {
            pieces(sql, &cache).unwrap()[0]
                .statement
                .located
                .analysis
                .writes
                .first()
                .map(|w| w.table.to_string())
        };
        assert_eq!(
            table("CREATE UNLOGGED TABLE IF NOT EXISTS s.\"T x\" (a int VIRTUAL)").as_deref(),
            Some("s.T x")
        );
        assert_eq!(
            table("ALTER TABLE IF EXISTS ONLY Tab ADD b int GENERATED ALWAYS AS (1) SOMEDAY")
                .as_deref(),
            Some("tab")
        );
        assert_eq!(table("CREATE INDEX i ON t (a) oops"), None);
        assert!(pieces("SELECT 'unterminated", &cache).is_none());
    }
}
