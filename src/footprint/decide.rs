//! Pure decisions: the mode in force for an application, and what one sighting of a write
//! path means in that mode.

use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::config::FootprintMode as Mode;

/// Where a path stands in its actor's footprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Learned or approved.
    Known,
    /// Seen outside learning and not approved (it was alerted or refused before).
    Unapproved,
    /// Never seen.
    New,
}

/// What to do about one sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Count it.
    Quiet,
    /// Add it to the footprint as learned.
    Learn,
    /// Add it as unapproved and alert.
    Alert,
    /// Refuse the statement; `first`: the path is new (it is recorded and alerted too).
    Refuse { first: bool },
}

/// One sighting of a path in `mode`.
pub fn sight(mode: Mode, known: Known) -> Outcome {
    match (mode, known) {
        (_, Known::Known) => Outcome::Quiet,
        (Mode::Learn, Known::New | Known::Unapproved) => Outcome::Learn,
        (Mode::Alert, Known::New) => Outcome::Alert,
        (Mode::Alert, Known::Unapproved) => Outcome::Quiet,
        (Mode::Enforce, Known::New) => Outcome::Refuse { first: true },
        (Mode::Enforce, Known::Unapproved) => Outcome::Refuse { first: false },
    }
}

/// The modes as configured and as switched at runtime.
#[derive(Debug, Clone, Default)]
pub struct Modes {
    /// For applications without their own.
    pub default: Option<Mode>,
    /// `footprints.applications`.
    pub configured: BTreeMap<String, Mode>,
    /// Switched through the admin API or CLI (shared by every replica); wins over config.
    pub switched: BTreeMap<String, Mode>,
    /// `footprints.learn_for`: `learn` turns into `alert` this long after the application's
    /// first write seen.
    pub learn_for: Option<Duration>,
}

/// The mode in force for `application`, whose first write was seen at `first_seen_ms` (None:
/// never), at `now_ms`.
pub fn mode_for(modes: &Modes, application: &str, first_seen_ms: Option<i64>, now_ms: i64) -> Mode {
    if let Some(m) = modes.switched.get(application) {
        return *m;
    }
    let m = modes
        .configured
        .get(application)
        .copied()
        .or(modes.default)
        .unwrap_or(Mode::Learn);
    match (m, modes.learn_for, first_seen_ms) {
        (Mode::Learn, Some(period), Some(first))
            if now_ms.saturating_sub(first) >= period.as_millis() as i64 =>
        {
            Mode::Alert
        }
        _ => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sightings_in_each_mode() {
        use Known as K;
        assert_eq!(sight(Mode::Learn, K::New), Outcome::Learn);
        assert_eq!(sight(Mode::Learn, K::Unapproved), Outcome::Learn);
        assert_eq!(sight(Mode::Alert, K::New), Outcome::Alert);
        assert_eq!(sight(Mode::Alert, K::Unapproved), Outcome::Quiet);
        assert_eq!(
            sight(Mode::Enforce, K::New),
            Outcome::Refuse { first: true }
        );
        assert_eq!(
            sight(Mode::Enforce, K::Unapproved),
            Outcome::Refuse { first: false }
        );
        for m in [Mode::Learn, Mode::Alert, Mode::Enforce] {
            assert_eq!(sight(m, K::Known), Outcome::Quiet);
        }
    }

    #[test]
    fn learning_ends_after_learn_for_and_switches_win() {
        let day = 86_400_000;
        let mut modes = Modes {
            default: Some(Mode::Learn),
            learn_for: Some(Duration::from_secs(7 * 86_400)),
            ..Modes::default()
        };
        assert_eq!(mode_for(&modes, "a", None, 0), Mode::Learn);
        assert_eq!(mode_for(&modes, "a", Some(0), 6 * day), Mode::Learn);
        assert_eq!(mode_for(&modes, "a", Some(0), 7 * day), Mode::Alert);
        modes.configured.insert("a".into(), Mode::Enforce);
        assert_eq!(mode_for(&modes, "a", Some(0), 0), Mode::Enforce);
        modes.switched.insert("a".into(), Mode::Learn);
        assert_eq!(mode_for(&modes, "a", Some(0), 30 * day), Mode::Learn);
        assert_eq!(mode_for(&Modes::default(), "b", None, 0), Mode::Learn);
    }
}
