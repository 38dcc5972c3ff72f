//! Feature flags: on or off globally, for listed actors, or for a stable percentage of actors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who is writing: what flags and rules look at.
#[derive(Debug, Clone, Default)]
pub struct Actor<'a> {
    pub application: &'a str,
    pub user: &'a str,
    pub tags: Option<&'a BTreeMap<String, String>>,
}

/// Actors a flag is on for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagFor {
    /// `application_name` values.
    #[serde(default)]
    pub application_name: Vec<String>,
    /// Database users.
    #[serde(default)]
    pub user: Vec<String>,
    /// sqlcommenter tag values: key → values.
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
}

/// One `[flags.NAME]` (also the body of the admin API's `PUT /gates/flags/NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagDef {
    /// On for everyone.
    #[serde(default)]
    pub enabled: bool,
    /// On for these actors.
    #[serde(default, rename = "for")]
    pub for_: FlagFor,
    /// On for this share (0–100) of actors, chosen by a stable hash of the flag name,
    /// application_name and user (the same actor always gets the same answer).
    #[serde(default)]
    pub percentage: u8,
}

impl FlagDef {
    /// Whether the flag is on for `actor` (flag `name` salts the percentage hash).
    pub fn is_on(&self, name: &str, actor: &Actor) -> bool {
        if self.enabled {
            return true;
        }
        let f = &self.for_;
        if f.application_name.iter().any(|a| a == actor.application)
            || f.user.iter().any(|u| u == actor.user)
        {
            return true;
        }
        if let Some(tags) = actor.tags {
            if f.tags
                .iter()
                .any(|(k, vs)| tags.get(k).is_some_and(|v| vs.contains(v)))
            {
                return true;
            }
        }
        self.percentage > 0 && bucket(name, actor) < self.percentage as u64
    }
}

/// 0–99, stable for (flag, application, user): FNV-1a, not randomised per process.
fn bucket(name: &str, actor: &Actor) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name
        .bytes()
        .chain([0])
        .chain(actor.application.bytes())
        .chain([0])
        .chain(actor.user.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h % 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_by_actor_and_stable_percentage() {
        let f = FlagDef {
            for_: FlagFor {
                application_name: vec!["cert-v2".into()],
                ..FlagFor::default()
            },
            ..FlagDef::default()
        };
        fn actor(app: &str) -> Actor<'_> {
            Actor {
                application: app,
                user: "u",
                tags: None,
            }
        }
        assert!(f.is_on("x", &actor("cert-v2")));
        assert!(!f.is_on("x", &actor("cert-v1")));
        let half = FlagDef {
            percentage: 50,
            ..FlagDef::default()
        };
        let on = (0..1000)
            .filter(|i| {
                let app = format!("app{i}");
                half.is_on("x", &actor(&app))
            })
            .count();
        assert!((350..650).contains(&on), "{on}");
        let app = "app7".to_string();
        assert_eq!(half.is_on("x", &actor(&app)), half.is_on("x", &actor(&app)));
    }
}
