//! A captured write of the simple protocol sent as a statement the server prepared once:
//! `Bind` (its numbers as parameters), `Describe`, `Execute`, `Sync` instead of a Query, so
//! that the server plans the write with its capture columns once per session, not once per
//! statement (`statement::binding` says which numbers can be parameters).
//!
//! Pure: [`bound`] turns a rewrite into the statement to prepare and the values to bind;
//! `client/bound.rs` keeps which statements a session has prepared and sends the frames.

use super::positions::Replaced;
use super::rewrite::Rewritten;
use crate::statement::binding::{Param, ParamType};

/// A rewritten write with its client's numbers as parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundWrite {
    /// The rewritten write with each number replaced by `$n`: the same text for every
    /// statement of one shape whose numbers have the same types.
    pub sql: String,
    pub types: Vec<ParamType>,
    /// Each parameter's value, in text form (as the client spelled the number).
    pub values: Vec<String>,
    /// Where each `$n` stands in `sql` (characters, 0-based) and how long its number was.
    replaced: Vec<Replaced>,
}

impl BoundWrite {
    /// What identifies the prepared statement: its parameter types and its text.
    pub fn key(&self) -> String {
        let mut k = String::with_capacity(self.sql.len() + 8 * self.types.len());
        for t in &self.types {
            k.push_str(t.sql());
            k.push(',');
        }
        k.push('\0');
        k.push_str(&self.sql);
        k
    }

    /// The PREPARE that makes it the session's statement `name`, and how many characters come
    /// before the write in it (an error the server raises later points into that whole text).
    pub fn prepare(&self, name: &str) -> (String, i64) {
        let types: Vec<&str> = self.types.iter().map(|t| t.sql()).collect();
        let head = match types.is_empty() {
            true => format!("PREPARE {name} AS "),
            false => format!("PREPARE {name} ({}) AS ", types.join(", ")),
        };
        let at = head.chars().count() as i64;
        (head + &self.sql, at)
    }

    /// `Positions::params` for the write sent at character `sent_at` (0-based).
    pub fn position_params(&self, sent_at: i64) -> Vec<Replaced> {
        self.replaced
            .iter()
            .map(|r| Replaced {
                at: sent_at + r.at + 1,
                ..*r
            })
            .collect()
    }
}

#[cfg(test)]
impl BoundWrite {
    /// A bound write of `sql` with one int4 parameter.
    pub(crate) fn for_test(sql: &str) -> Self {
        BoundWrite {
            sql: sql.to_string(),
            types: vec![ParamType::Int4],
            values: vec!["1".into()],
            replaced: Vec::new(),
        }
    }
}

/// `rw` (the rewrite of the client's statement `original`) with the numbers `params` (byte
/// ranges in `original`) as parameters; `None` when `rw` runs more than the write itself or a
/// number is not where the rewrite kept the client's text.
pub fn bound(rw: &Rewritten, original: &str, params: &[Param]) -> Option<BoundWrite> {
    if rw.guard.is_some() || rw.pre_read.is_some() || rw.post_read.is_some() {
        return None;
    }
    let mut sql = String::with_capacity(rw.text.len());
    let mut replaced = Vec::with_capacity(params.len());
    let mut values = Vec::with_capacity(params.len());
    let mut copied = 0;
    for (i, p) in params.iter().enumerate() {
        let at = in_rewrite(rw, p.range.start);
        let end = at + p.range.len();
        let number = original.get(p.range.clone())?;
        if at < copied || rw.text.get(at..end)? != number {
            return None;
        }
        sql.push_str(&rw.text[copied..at]);
        let reference = format!("${}", i + 1);
        replaced.push(Replaced {
            at: sql.chars().count() as i64,
            len: reference.len() as i64,
            was: number.chars().count() as i64,
        });
        sql.push_str(&reference);
        values.push(number.to_string());
        copied = end;
    }
    sql.push_str(&rw.text[copied..]);
    Some(BoundWrite {
        sql,
        types: params.iter().map(|p| p.ty).collect(),
        values,
        replaced,
    })
}

/// Where byte `at` of the client's statement is in the rewrite's text: past every piece of
/// text hindsight inserted at or before it.
fn in_rewrite(rw: &Rewritten, at: usize) -> usize {
    let mut pos = at;
    for added in &rw.inserts {
        if added.at <= pos {
            pos += added.len;
        } else {
            break;
        }
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::positions::Positions;
    use crate::capture::rewrite::{Added, Shape};
    use crate::statement::binding::params;
    use std::sync::Arc;

    fn rewritten(text: &str, inserts: Vec<Added>) -> Rewritten {
        let mut rw = Rewritten::returning(
            text.into(),
            Arc::new(Shape::statement(
                crate::statement::Kind::Update,
                Default::default(),
            )),
        );
        rw.inserts = inserts;
        rw
    }

    #[test]
    fn numbers_become_parameters_where_the_rewrite_kept_them() {
        let original = "UPDATE t SET a = a + -15 WHERE id = 7";
        // Before 18: the WHERE wrapped, the store added, the images returned.
        let text = "UPDATE t SET a = a + -15 WHERE (id = 7) AND s() RETURNING x";
        let rw = rewritten(
            text,
            vec![Added { at: 31, len: 1 }, Added { at: 38, len: 9 }],
        );
        let p = params(original, 2).unwrap();
        let b = bound(&rw, original, &p).unwrap();
        assert_eq!(
            b.sql,
            "UPDATE t SET a = a + -$1 WHERE (id = $2) AND s() RETURNING x"
        );
        assert_eq!(b.values, ["15", "7"]);
        assert_eq!(b.types, [ParamType::Int4, ParamType::Int4]);
        let (prepare, at) = b.prepare("__hs_b1");
        assert_eq!(
            prepare,
            format!("PREPARE __hs_b1 (int4, int4) AS {}", b.sql)
        );
        assert_eq!(at, 32);
        // An error at `$2` in the PREPARE's text points at the client's `7`.
        let positions = Positions {
            shift: at,
            inserts: rw.position_inserts(at),
            params: b.position_params(at),
            ..Positions::default()
        };
        let dollar2 = at + b.sql.find("$2").unwrap() as i64 + 1;
        assert_eq!(
            positions.map(dollar2),
            original.find('7').unwrap() as i64 + 1
        );
    }

    #[test]
    fn a_number_the_rewrite_moved_is_not_bound() {
        let original = "UPDATE t SET a = 5";
        let rw = rewritten(
            "UPDATE t SET a = CASE WHEN s() THEN (5) END RETURNING x",
            vec![],
        );
        assert_eq!(bound(&rw, original, &params(original, 1).unwrap()), None);
    }

    #[test]
    fn a_write_with_a_pre_read_is_not_bound() {
        let original = "UPDATE t SET a = 5";
        let mut rw = rewritten("UPDATE t SET a = 5 RETURNING x", vec![]);
        rw.pre_read = Some("SELECT 1".into());
        assert_eq!(bound(&rw, original, &params(original, 1).unwrap()), None);
    }
}
