//! A TCP fault proxy for cluster tests and chaos runs.
//!
//! Each member's inbound port gets a [`Proxy`] in front of it; the other members dial the proxy.
//! Members dial from their own loopback address (127.0.1.N), so the proxy knows which link a
//! connection belongs to from its source address. A [`Network`] holds the rules for every link
//! `(from, to)`: cut (existing connections are severed and new ones refused, as a partition
//! with resets would) or delayed (each chunk is held for a fixed time in each direction).
//! Rules change at any time; the proxies apply them at once.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The rules of every link, shared by all proxies.
#[derive(Clone, Default)]
pub struct Network {
    inner: Arc<Mutex<Rules>>,
    /// Bumped on every change, so proxies re-check their connections at once.
    version: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct Rules {
    cut: HashSet<(u64, u64)>,
    delay: HashMap<(u64, u64), Duration>,
    /// Source address of each member.
    members: HashMap<IpAddr, u64>,
}

impl Network {
    pub fn new() -> Self {
        Self::default()
    }

    /// Member `id` dials from `address`.
    pub fn add_member(&self, id: u64, address: IpAddr) {
        self.rules().members.insert(address, id);
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Cuts the link from `from` to `to` (one direction).
    pub fn cut(&self, from: u64, to: u64) {
        self.rules().cut.insert((from, to));
        self.changed();
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        let ids: Vec<u64> = self.rules().members.values().copied().collect();
        {
            let mut rules = self.rules();
            for other in ids.into_iter().filter(|o| *o != id) {
                rules.cut.insert((id, other));
                rules.cut.insert((other, id));
            }
        }
        self.changed();
    }

    /// Splits the members into two sides that cannot reach each other.
    pub fn partition(&self, side: &[u64]) {
        let ids: Vec<u64> = self.rules().members.values().copied().collect();
        {
            let mut rules = self.rules();
            for a in side {
                for b in ids.iter().filter(|b| !side.contains(b)) {
                    rules.cut.insert((*a, *b));
                    rules.cut.insert((*b, *a));
                }
            }
        }
        self.changed();
    }

    /// Delays every chunk on the link from `from` to `to`.
    pub fn delay(&self, from: u64, to: u64, delay: Duration) {
        self.rules().delay.insert((from, to), delay);
        self.changed();
    }

    /// Removes every cut and delay.
    pub fn heal(&self) {
        {
            let mut rules = self.rules();
            rules.cut.clear();
            rules.delay.clear();
        }
        self.changed();
    }

    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.rules().cut.contains(&(from, to))
    }

    fn delay_of(&self, from: u64, to: u64) -> Duration {
        self.rules()
            .delay
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }

    fn member_at(&self, address: IpAddr) -> Option<u64> {
        self.rules().members.get(&address).copied()
    }
}

/// A proxy in front of member `to`'s port.
pub struct Proxy {
    pub address: SocketAddr,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on `listen` and forwards to `target`, which is member `to`.
    pub async fn start(
        network: Network,
        to: u64,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((inbound, peer)) = accepted else {
                    continue;
                };
                // Unknown sources (clients, tests) pass as member 0, never cut.
                let from = network.member_at(peer.ip()).unwrap_or(0);
                if network.is_cut(from, to) {
                    drop(inbound);
                    continue;
                }
                let network = network.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    relay(network, from, to, inbound, outbound, token).await;
                });
            }
        });
        Ok(Self { address, stop })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies both ways until either side closes, the link is cut or the proxy stops.
async fn relay(
    network: Network,
    from: u64,
    to: u64,
    inbound: TcpStream,
    outbound: TcpStream,
    stop: CancellationToken,
) {
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let forward = pump(network.clone(), from, to, in_read, out_write);
    let backward = pump(network.clone(), to, from, out_read, in_write);
    let mut version = network.version.subscribe();
    let cut = async {
        loop {
            if network.is_cut(from, to) || network.is_cut(to, from) {
                return;
            }
            if version.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
        _ = cut => {}
        _ = stop.cancelled() => {}
    }
}

async fn pump(
    network: Network,
    from: u64,
    to: u64,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = network.delay_of(from, to);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if writer.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
