//! Transactions this process has published a BEGIN for and not yet closed with an END (or
//! given up on): in-doubt healing leaves them alone, since their END may still come.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The set of in-flight transaction ids, shared by every session of one process.
#[derive(Debug, Default)]
pub struct InFlight {
    ids: Mutex<HashSet<String>>,
}

impl InFlight {
    /// Mark `id` in flight until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>, id: &str) -> Pending {
        self.lock().insert(id.to_string());
        Pending {
            set: Arc::clone(self),
            id: id.to_string(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One transaction in flight; dropping it (END published, or the outcome lost with the
/// server connection, or the publish failed) takes it out of the set.
#[derive(Debug)]
pub struct Pending {
    set: Arc<InFlight>,
    id: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_in_flight_until_its_guard_is_dropped() {
        let set = Arc::new(InFlight::default());
        let g = set.enter("a:1");
        assert!(set.contains("a:1"));
        drop(g);
        assert!(!set.contains("a:1") && set.is_empty());
    }
}
