//! The rules file: what it may say (serde, `deny_unknown_fields`), and its compiled form.
//!
//! ```toml
//! [[rule]]
//! name = "bfso-needs-certification-v2"
//! tables = ["public.brieff"]
//! columns = ["bfso"]
//! operations = ["update"]
//! require_flag = "certification_v2"
//! action = "deny"
//!
//! [flags.certification_v2]
//! enabled = false
//! for = { application_name = ["certification-v2"] }
//! ```
//!
//! Knows nothing about sessions or the network; `decide` evaluates a compiled [`RuleSet`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use super::flags::FlagDef;
use super::guard::Guard;
use super::GateError;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the write (the default).
    #[default]
    Deny,
    /// Dry run: let the write through and record that this rule would have refused it.
    Audit,
    /// Let the write through and stop evaluating (exemptions, e.g. for a migration user).
    Allow,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Audit => "audit",
            Action::Allow => "allow",
        }
    }
}

/// One `[[rule]]` as written. Every matcher given must match; an absent matcher matches all.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Unique name, shown in errors, events, metrics and the admin API.
    pub name: String,
    /// Why the rule exists (shown in `rules explain` and the admin API).
    #[serde(default)]
    pub description: String,
    /// insert, update, delete, upsert, merge, copy, truncate, ddl, opaque.
    #[serde(default)]
    pub operations: Vec<String>,
    /// `schema.table` patterns; `*` matches any run of characters (`vacols.*`, `*.brieff`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Columns written (SET list, INSERT/COPY column list); a statement naming none of them
    /// (or naming no columns, e.g. `INSERT … VALUES` without a list) does not match.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Database users.
    #[serde(default)]
    pub users: Vec<String>,
    /// Databases.
    #[serde(default)]
    pub databases: Vec<String>,
    /// `application_name` values.
    #[serde(default)]
    pub applications: Vec<String>,
    /// Client addresses, as CIDR (`10.0.0.0/8`) or single addresses.
    #[serde(default)]
    pub client_addrs: Vec<String>,
    /// sqlcommenter tags: key → accepted values (`{ controller = ["certifications"] }`).
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    /// pg_query fingerprints (hex) of statements.
    #[serde(default)]
    pub fingerprints: Vec<String>,
    /// The write is allowed only when this flag is on for the actor.
    #[serde(default)]
    pub require_flag: Option<String>,
    /// CEL predicate over each changed row (`before`, `after`, `changed("col")`): the rule
    /// matches the rows for which it is true. Checked on the captured rows at COMMIT.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub action: Action,
    /// Extra text for the client's error (how to get unblocked).
    #[serde(default)]
    pub hint: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Evaluated in file order.
    #[serde(default)]
    pub rule: Vec<RuleDef>,
    /// Feature flags by name.
    #[serde(default)]
    pub flags: BTreeMap<String, FlagDef>,
}

/// A CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> Option<u128> {
            match (self.addr, ip) {
                (IpAddr::V4(_), IpAddr::V4(v)) => Some(u32::from(v) as u128),
                (IpAddr::V6(_), IpAddr::V6(v)) => Some(u128::from(v)),
                (IpAddr::V4(_), IpAddr::V6(v)) => v.to_ipv4_mapped().map(|v| u32::from(v) as u128),
                _ => None,
            }
        };
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        let (Some(a), Some(b)) = (bits(self.addr), bits(ip)) else {
            return false;
        };
        if self.prefix == 0 {
            return true;
        }
        let shift = width - self.prefix as u32;
        (a >> shift) == (b >> shift)
    }
}

/// A `*` glob (no allocation: it runs for every rule on every write).
pub fn glob(pattern: &str, text: &str) -> bool {
    let Some(star) = pattern.find('*') else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(&pattern[..star]) else {
        return false;
    };
    let mut parts = pattern[star + 1..].split('*').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A table pattern split at its first dot.
#[derive(Debug, Clone)]
pub struct TablePattern {
    pub schema: String,
    pub name: String,
}

impl TablePattern {
    /// A statement's table as written; an unqualified name matches any schema (hindsight does
    /// not know the session's search_path, and a deny rule must not miss).
    pub fn matches(&self, schema: &str, name: &str) -> bool {
        glob(&self.name, name) && (schema.is_empty() || glob(&self.schema, schema))
    }
}

/// A rule ready to evaluate.
#[derive(Debug)]
pub struct Rule {
    pub def: RuleDef,
    pub tables: Vec<TablePattern>,
    pub client_addrs: Vec<Cidr>,
    pub guard: Option<Guard>,
    /// Decisions this rule made since it was loaded.
    pub hits: AtomicU64,
}

/// Every rule and flag of one version of the file.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub flags: BTreeMap<String, FlagDef>,
}

const OPERATIONS: &[&str] = &[
    "insert", "update", "delete", "upsert", "merge", "copy", "truncate", "ddl", "opaque",
];

/// 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    let at = text.find(needle)?;
    Some(text[..at].matches('\n').count() + 1)
}

/// Parse and compile a rules file's text; `origin` names it in errors.
pub fn compile(text: &str, origin: &str) -> Result<RuleSet, GateError> {
    let file: RulesFile = toml::from_str(text).map_err(|e| GateError::Syntax {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    let mut rules = Vec::with_capacity(file.rule.len());
    let mut seen = std::collections::HashSet::new();
    for def in file.rule {
        let at = |what: String| GateError::Rule {
            origin: origin.to_string(),
            line: line_of(text, &format!("\"{}\"", def.name)).unwrap_or(0),
            rule: def.name.clone(),
            message: what,
        };
        if def.name.trim().is_empty() {
            return Err(GateError::Syntax {
                origin: origin.to_string(),
                message: "a [[rule]] has an empty name".into(),
            });
        }
        if !seen.insert(def.name.clone()) {
            return Err(at("a rule with this name comes earlier in the file".into()));
        }
        if let Some(op) = def
            .operations
            .iter()
            .find(|o| !OPERATIONS.contains(&o.as_str()))
        {
            return Err(at(format!(
                "unknown operation {op:?} (one of: {})",
                OPERATIONS.join(", ")
            )));
        }
        let mut tables = Vec::new();
        for t in &def.tables {
            let Some((schema, name)) = t.split_once('.') else {
                return Err(at(format!(
                    "table pattern {t:?} needs a schema: \"public.{t}\" or \"*.{t}\""
                )));
            };
            tables.push(TablePattern {
                schema: schema.to_string(),
                name: name.to_string(),
            });
        }
        let mut client_addrs = Vec::new();
        for a in &def.client_addrs {
            client_addrs.push(Cidr::parse(a).ok_or_else(|| {
                at(format!(
                    "client address {a:?} is not an address or CIDR block (e.g. 10.0.0.0/8)"
                ))
            })?);
        }
        if let Some(f) = &def.require_flag {
            if !file.flags.contains_key(f) {
                return Err(at(format!(
                    "require_flag = {f:?}, but there is no [flags.{f}] section"
                )));
            }
        }
        let guard = match &def.when {
            Some(src) => Some(Guard::compile(src).map_err(|e| at(format!("when: {e}")))?),
            None => None,
        };
        rules.push(Rule {
            def,
            tables,
            client_addrs,
            guard,
            hits: AtomicU64::new(0),
        });
    }
    for (name, f) in &file.flags {
        if f.percentage > 100 {
            return Err(GateError::Syntax {
                origin: origin.to_string(),
                message: format!(
                    "[flags.{name}] percentage = {} (must be 0–100), line {}",
                    f.percentage,
                    line_of(text, &format!("[flags.{name}]")).unwrap_or(0)
                ),
            });
        }
    }
    Ok(RuleSet {
        rules,
        flags: file.flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_cidrs() {
        assert!(glob("*", "x"));
        assert!(glob("brie*", "brieff"));
        assert!(glob("*ff", "brieff"));
        assert!(glob("b*e*f", "brieff"));
        assert!(!glob("brief", "brieff"));
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        let t = TablePattern {
            schema: "vacols".into(),
            name: "*".into(),
        };
        assert!(
            t.matches("vacols", "brieff") && t.matches("", "brieff") && !t.matches("public", "x")
        );
    }

    #[test]
    fn errors_name_the_rule_line_and_fix() {
        let text = "[[rule]]\nname = \"a\"\noperations = [\"updte\"]\n";
        let e = compile(text, "rules.toml").unwrap_err().to_string();
        assert!(
            e.contains("rules.toml:2") && e.contains("updte") && e.contains("update"),
            "{e}"
        );
        let e = compile("[[rule]]\nname = \"a\"\nbogus = 1\n", "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("line 3"), "{e}");
        let e = compile("[[rule]]\nname = \"a\"\nrequire_flag = \"nope\"\n", "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[flags.nope]"), "{e}");
        let e = compile("[[rule]]\nname = \"a\"\ntables = [\"brieff\"]\n", "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("public.brieff"), "{e}");
        let e = compile("[[rule]]\nname = \"a\"\nwhen = 'after.x =='\n", "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("when:"), "{e}");
    }
}
