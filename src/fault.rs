//! Test-only crash points (`fault.crash_at`): the process aborts (no clean-up, like `kill -9`)
//! at one named point of the commit path, so tests hit the windows between "events
//! acknowledged" and "COMMIT forwarded", and between "commit result" and "END published",
//! deterministically. Nobody sets it in production: the proxy logs an ERROR at start when
//! it is armed.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Where the process may abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashPoint {
    /// The brokers acknowledged the transaction's BEGIN and events; COMMIT not yet forwarded.
    AfterPublish,
    /// The server answered the COMMIT; the END record not yet published.
    BeforeEnd,
}

/// `[fault]`: test-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// TEST ONLY: abort the process at this point. Unset (the default): never.
    pub crash_at: Option<CrashPoint>,
    /// TEST ONLY: abort with this probability each time the point is passed (1.0: the first
    /// time), so a chaos run hits the window at random.
    pub crash_probability: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            crash_at: None,
            crash_probability: 1.0,
        }
    }
}

static ARMED: OnceLock<(CrashPoint, f64)> = OnceLock::new();

/// Arm the crash point of `cfg` for this process (first call wins).
pub fn arm(cfg: &FaultConfig) {
    if let Some(p) = cfg.crash_at {
        tracing::error!(point = ?p, probability = cfg.crash_probability, "TEST FAULT ARMED: this process will abort at a crash point (fault.crash_at); never set this in production");
        let _ = ARMED.set((p, cfg.crash_probability));
    }
}

/// Abort here if this point is armed (and the dice say so).
pub fn point(p: CrashPoint) {
    if let Some((armed, probability)) = ARMED.get() {
        if *armed == p && dice() < *probability {
            eprintln!("hindsight: test fault: aborting at {p:?}");
            std::process::abort();
        }
    }
}

/// A number in [0, 1): good enough to pick moments at random (RandomState is seeded randomly
/// per process and per instance).
fn dice() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
