//! The gates' live state: the current rules (swapped whole on reload), flag overrides and kill
//! switches set through the admin API (persisted next to the rules file, so they survive a
//! restart), and the watcher that reloads on change and on SIGHUP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::decide::{self, StatementFacts, Verdict};
use super::flags::FlagDef;
use super::guard::RowFacts;
use super::killswitch::{KillSwitches, Scope};
use super::rules::{self, RuleSet};
use super::GateError;
use crate::telemetry::events::Event;
use crate::telemetry::Metrics;

/// What the admin API changed, persisted as `<rules file>.state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeState {
    /// Flags set at runtime (they replace the file's definition of the same flag).
    #[serde(default)]
    pub flags: BTreeMap<String, FlagDef>,
    #[serde(default)]
    pub kill_switches: KillSwitches,
}

/// The gates of one proxy.
pub struct Gates {
    /// Shared with the other replicas: flag and kill-switch changes go through it.
    control: std::sync::OnceLock<Arc<crate::control::Control>>,
    path: PathBuf,
    state_path: PathBuf,
    rules: RwLock<Arc<RuleSet>>,
    state: RwLock<RuntimeState>,
    loaded: RwLock<Option<SystemTime>>,
    metrics: Metrics,
}

fn read(path: &Path) -> Result<String, GateError> {
    std::fs::read_to_string(path).map_err(|source| GateError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Gates {
    /// Load the rules file (an error refuses to start) and the persisted runtime state.
    /// `state`: where runtime changes are cached (default `<path>.state.json`).
    pub fn load(
        path: &Path,
        state: Option<&Path>,
        metrics: Metrics,
    ) -> Result<Arc<Gates>, GateError> {
        let rules = rules::compile(&read(path)?, &path.display().to_string())?;
        let state_path = state.map(Path::to_path_buf).unwrap_or_else(|| {
            let mut p = path.as_os_str().to_owned();
            p.push(".state.json");
            PathBuf::from(p)
        });
        let state = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| GateError::State {
                path: state_path.display().to_string(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RuntimeState::default(),
            Err(source) => {
                return Err(GateError::Read {
                    path: state_path.display().to_string(),
                    source,
                })
            }
        };
        Ok(Arc::new(Gates {
            control: std::sync::OnceLock::new(),
            path: path.to_path_buf(),
            state_path,
            rules: RwLock::new(Arc::new(rules)),
            state: RwLock::new(state),
            loaded: RwLock::new(modified(path)),
            metrics,
        }))
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.rules.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-read the file; an invalid file is rejected and the current rules stay.
    pub fn reload(&self) -> Result<(), GateError> {
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = modified(&self.path);
        let origin = self.path.display().to_string();
        let result = read(&self.path).and_then(|t| rules::compile(&t, &origin));
        match result {
            Ok(r) => {
                *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(r);
                Event::RulesReloaded {
                    path: &origin,
                    error: None,
                }
                .emit(&self.metrics);
                Ok(())
            }
            Err(e) => {
                Event::RulesReloaded {
                    path: &origin,
                    error: Some(&e),
                }
                .emit(&self.metrics);
                Err(e)
            }
        }
    }

    /// Reload when the file changes (checked every `every`) and on SIGHUP, until the process
    /// ends.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let sighup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(every) => {
                        let last = *me.loaded.read().unwrap_or_else(|e| e.into_inner());
                        if modified(&me.path) != last {
                            let _ = me.reload();
                        }
                    }
                    _ = sighup => { let _ = me.reload(); }
                }
            }
        });
    }

    fn record(&self, v: &Verdict) {
        match v {
            Verdict::Deny(h) => Event::GateDecision {
                rule: &h.rule,
                outcome: "deny",
                reason: &h.reason,
            }
            .emit(&self.metrics),
            Verdict::Audit(h) => Event::GateDecision {
                rule: &h.rule,
                outcome: "audit",
                reason: &h.reason,
            }
            .emit(&self.metrics),
            Verdict::Allow { .. } => {}
        }
    }

    /// Decide a statement before it runs.
    pub fn statement(&self, f: &StatementFacts) -> Verdict {
        if !decide::is_write(f.kind) {
            return Verdict::Allow { exempt: false };
        }
        let rules = self.rules();
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let flag = |n: &str| state.flags.get(n).or_else(|| rules.flags.get(n)).cloned();
        let v = decide::statement(&rules, &flag, &state.kill_switches, f);
        drop(state);
        self.record(&v);
        v
    }

    /// Whether any rule looks at rows (then captured rows are checked at COMMIT).
    pub fn has_row_rules(&self) -> bool {
        self.rules().rules.iter().any(|r| r.guard.is_some())
    }

    /// Decide one captured row at COMMIT.
    pub fn row(&self, f: &StatementFacts, row: &RowFacts) -> Verdict {
        let rules = self.rules();
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let flag = |n: &str| state.flags.get(n).or_else(|| rules.flags.get(n)).cloned();
        let v = decide::row(&rules, &flag, f, row);
        drop(state);
        self.record(&v);
        v
    }

    /// Current flags: the file's, with runtime overrides applied.
    pub fn flags(&self) -> BTreeMap<String, FlagDef> {
        let mut all = self.rules().flags.clone();
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        all.extend(state.flags.clone());
        all
    }

    /// Share flag and kill-switch changes with the other replicas through `control`.
    pub fn attach(&self, control: Arc<crate::control::Control>) {
        let _ = self.control.set(control);
    }

    /// The subscribers of the control topic's `flag/` and `kill/` records: every replica
    /// (this one too) applies them and keeps them in its state file.
    pub fn subscribers(self: &Arc<Self>) -> Vec<(&'static str, crate::control::Subscriber)> {
        let me = Arc::downgrade(self);
        let flags: crate::control::Subscriber = Box::new(move |name, value| {
            let Some(me) = me.upgrade() else { return };
            let def = value.and_then(|v| serde_json::from_value::<FlagDef>(v).ok());
            me.apply(|s| match def {
                Some(d) => {
                    s.flags.insert(name.to_string(), d);
                }
                None => {
                    s.flags.remove(name);
                }
            });
        });
        let me = Arc::downgrade(self);
        let kills: crate::control::Subscriber = Box::new(move |name, value| {
            let Some(me) = me.upgrade() else { return };
            let Some((scope, v)) = name
                .split_once('/')
                .and_then(|(s, v)| Some((Scope::parse(s)?, v)))
            else {
                tracing::warn!(name, "kill switch record with an unknown scope; ignored");
                return;
            };
            let on = value
                .and_then(|v| v.get("on").and_then(|o| o.as_bool()))
                .unwrap_or(false);
            me.apply(|s| set_kill(s, scope, v, on));
        });
        vec![("flag", flags), ("kill", kills)]
    }

    /// Set a flag at runtime (on every replica, and persisted). Unknown flags are refused: a
    /// typo must not look like success.
    pub async fn set_flag(&self, name: &str, def: FlagDef) -> Result<(), GateError> {
        if !self.rules().flags.contains_key(name) {
            return Err(GateError::UnknownFlag(name.to_string()));
        }
        if def.percentage > 100 {
            return Err(GateError::Invalid(format!(
                "percentage = {} (must be 0–100)",
                def.percentage
            )));
        }
        if let Some(c) = self.control.get() {
            let v = serde_json::to_value(&def).expect("flags serialise");
            c.publish("flag", name, Some(&v)).await.map_err(Box::new)?;
        }
        self.update(|s| {
            s.flags.insert(name.to_string(), def);
        })
    }

    pub fn kill_switches(&self) -> KillSwitches {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .kill_switches
            .clone()
    }

    /// Turn a kill switch on or off (on every replica, and persisted).
    pub async fn set_kill_switch(
        &self,
        scope: Scope,
        value: &str,
        on: bool,
    ) -> Result<(), GateError> {
        if value.is_empty() {
            return Err(GateError::Invalid("a kill switch needs a value".into()));
        }
        if let Some(c) = self.control.get() {
            let name = format!("{}/{value}", scope.label());
            let v = serde_json::json!({ "on": on });
            c.publish("kill", &name, Some(&v)).await.map_err(Box::new)?;
        }
        self.update(|s| set_kill(s, scope, value, on))
    }

    /// A change read from the control topic: applied, then cached in the state file (a
    /// failure to write the cache is logged; the change is in force).
    fn apply(&self, f: impl FnOnce(&mut RuntimeState)) {
        if let Err(e) = self.update(f) {
            tracing::error!(error = %e, "control change applied but not cached in the state file");
        }
    }

    fn update(&self, f: impl FnOnce(&mut RuntimeState)) -> Result<(), GateError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut next = state.clone();
        f(&mut next);
        if next == *state {
            return Ok(());
        }
        // Persist first: what the API confirmed must survive a restart.
        let text = serde_json::to_string_pretty(&next).expect("state serialises");
        let written =
            write_atomically(&self.state_path, text.as_bytes()).map_err(|source| GateError::Read {
                path: self.state_path.display().to_string(),
                source,
            });
        if written.is_ok() || self.control.get().is_some() {
            *state = next;
        }
        written
    }
}

/// Replace `path` with `bytes` so that a reader (or a crash) sees the old file or the new one,
/// never a part: a temporary file beside it, readable by the owner only (0600: flags and kill
/// switches are operational state), synced, then renamed over it, and the directory synced.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn set_kill(s: &mut RuntimeState, scope: Scope, value: &str, on: bool) {
    let key = (scope, value.to_string());
    if on {
        s.kill_switches.on.insert(key);
    } else {
        s.kill_switches.on.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_state_file_is_replaced_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hs-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.toml.state.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_atomically(&path, b"{\"new\": true}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"new\": true}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
