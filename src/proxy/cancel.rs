//! CancelRequests: which backend keys belong to live sessions, and forwarding a cancel upstream.
//!
//! Clients receive the upstream's own BackendKeyData unchanged, so a CancelRequest from a client
//! already carries the right pid and key; hindsight only has to send it to the server the
//! session is connected to. Keys of sessions that are not open through this proxy are dropped,
//! so a client cannot use hindsight to probe the server with guessed keys.

use super::upstream::Upstream;
use crate::wire::startup::CANCEL_REQUEST_CODE;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Key = (i32, Vec<u8>);

/// Backend keys of the sessions currently open through this proxy.
#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashSet<Key>>,
}

impl CancelRegistry {
    /// Register a session's key; it is removed when the returned guard drops.
    pub fn register(self: &Arc<Self>, pid: i32, key: &[u8]) -> KeyGuard {
        let k = (pid, key.to_vec());
        self.keys.lock().expect("registry lock").insert(k.clone());
        KeyGuard {
            registry: Arc::clone(self),
            key: k,
        }
    }

    /// Whether a key belongs to an open session.
    pub fn contains(&self, pid: i32, key: &[u8]) -> bool {
        self.keys
            .lock()
            .expect("registry lock")
            .contains(&(pid, key.to_vec()))
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.keys.lock().expect("registry lock").len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes its key from the registry when the session ends.
pub struct KeyGuard {
    registry: Arc<CancelRegistry>,
    key: Key,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.registry.keys.lock() {
            keys.remove(&self.key);
        }
    }
}

/// Send a CancelRequest for `(pid, key)` to the upstream and wait until the server closes the
/// connection (it processes the request before closing).
pub async fn forward(
    upstream: &Upstream,
    pid: i32,
    key: &[u8],
) -> Result<(), super::upstream::UpstreamError> {
    let mut conn = upstream.connect().await?;
    let mut packet = Vec::with_capacity(12 + key.len());
    packet.extend_from_slice(&((12 + key.len()) as u32).to_be_bytes());
    packet.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(key);
    let io = |source| super::upstream::UpstreamError::Connect {
        address: upstream.address().into(),
        source,
    };
    conn.write_all(&packet).await.map_err(io)?;
    conn.flush().await.map_err(io)?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut sink)).await;
    Ok(())
}
