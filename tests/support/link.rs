#![allow(dead_code)] // shared by test targets that each use part of it
//! A fault-injecting TCP relay for tests: `listen → target`, which can cut every connection
//! and refuse new ones (a network partition) and be restored, without touching either side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; dropping it stops accepting (open connections end with the runtime).
pub struct Link {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: connections opened before a cut end at it.
    generation: watch::Sender<u64>,
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Relay from a free port (or `port`, when given) to `target`; `up` says whether it
    /// starts passing traffic or cut.
    pub async fn start(target: SocketAddr, port: Option<u16>, up: bool) -> Link {
        let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
            .await
            .expect("relay binds");
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(up));
        let (generation, _) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let (u, g, n) = (
            Arc::clone(&up),
            generation.subscribe(),
            Arc::clone(&connections),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !u.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                n.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(pipe(client, target, g.clone()));
            }
        });
        Link {
            addr,
            up,
            generation,
            connections,
            task,
        }
    }

    /// Cut: close every open connection and refuse new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Pass traffic again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pipe(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    cut.borrow_and_update();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}
