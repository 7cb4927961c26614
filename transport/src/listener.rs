//! An accept loop for the small HTTP listeners beside the protocol (the relay's
//! admin port, the host's panel) that one client cannot lock the others out of.
//!
//! Such a listener answers probes and people, a few requests at a time, and each
//! connection it holds costs a task and a file descriptor. So it holds at most
//! [`Caps::max`] connections, at most [`Caps::per_address`] from one address, and
//! it never stops accepting: a connection beyond a cap makes room by ending an
//! older one, from its own address when that address is at its cap, else from the
//! address that holds the most. A flood of idle connections from one address
//! therefore displaces only its own, and a probe from elsewhere (kubelet, from its
//! node) keeps its place; each connection is also served under its deadline by the
//! caller's handler, so whatever is displaced or cut was the flood's.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, Id, JoinSet};

/// How many connections a listener holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections held at once.
    pub max: usize,
    /// Connections held at once from one IP address.
    pub per_address: usize,
}

/// Accepts connections on `listener` and serves each with `serve` in a task of its
/// own, within `caps`, until `shutdown` resolves; then ends every connection still
/// held. `displaced` is called once for each connection ended to make room.
pub async fn serve_within<S, F>(
    listener: TcpListener,
    caps: Caps,
    shutdown: impl Future<Output = ()>,
    serve: S,
    displaced: impl Fn(),
) where
    S: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut held = Held::new(caps);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(err) => err.id(),
                };
                held.remove(id);
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors, mostly: back off instead of spinning.
                        tracing::debug!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if held.make_room(peer.ip()) {
                    displaced();
                }
                let task = tasks.spawn(serve(stream, peer));
                held.insert(peer.ip(), task);
            }
        }
    }
    tasks.shutdown().await;
}

/// The connections a listener holds, by address, oldest first.
struct Held {
    caps: Caps,
    by_address: HashMap<IpAddr, VecDeque<AbortHandle>>,
    address_of: HashMap<Id, IpAddr>,
}

impl Held {
    fn new(caps: Caps) -> Self {
        Self {
            caps,
            by_address: HashMap::new(),
            address_of: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.address_of.len()
    }

    fn insert(&mut self, address: IpAddr, task: AbortHandle) {
        self.address_of.insert(task.id(), address);
        self.by_address.entry(address).or_default().push_back(task);
    }

    /// Forgets a connection that has ended.
    fn remove(&mut self, id: Id) {
        let Some(address) = self.address_of.remove(&id) else {
            return;
        };
        if let Some(tasks) = self.by_address.get_mut(&address) {
            tasks.retain(|task| task.id() != id);
            if tasks.is_empty() {
                self.by_address.remove(&address);
            }
        }
    }

    /// Ends a held connection if one more from `address` would break a cap: that
    /// address's oldest when it is at its own cap, else the oldest of the address
    /// holding the most. Whether one was ended.
    fn make_room(&mut self, address: IpAddr) -> bool {
        let own = self.by_address.get(&address).map_or(0, VecDeque::len);
        let victim = if own >= self.caps.per_address.max(1) {
            address
        } else if self.len() >= self.caps.max.max(1) {
            match self
                .by_address
                .iter()
                .max_by_key(|(_, tasks)| tasks.len())
                .map(|(address, _)| *address)
            {
                Some(address) => address,
                None => return false,
            }
        } else {
            return false;
        };
        let Some(oldest) = self
            .by_address
            .get_mut(&victim)
            .and_then(VecDeque::pop_front)
        else {
            return false;
        };
        oldest.abort();
        self.remove(oldest.id());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A listener whose handler answers one byte with one byte, and never ends a
    /// connection by itself.
    async fn echo_listener(
        caps: Caps,
    ) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let displaced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = displaced.clone();
        tokio::spawn(serve_within(
            listener,
            caps,
            std::future::pending(),
            |mut stream: TcpStream, _| async move {
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).await.is_ok() {
                    if stream.write_all(&byte).await.is_err() {
                        break;
                    }
                }
            },
            move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        ));
        (addr, displaced)
    }

    async fn connect_from(to: SocketAddr, from: [u8; 4]) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind((IpAddr::from(from), 0).into()).expect("bind");
        socket.connect(to).await.expect("connect")
    }

    /// Waits (at most 5 s) until `count` has reached `want`.
    async fn wait_for(count: &std::sync::atomic::AtomicU64, want: u64) {
        let reached = tokio::time::timeout(Duration::from_secs(5), async {
            while count.load(std::sync::atomic::Ordering::Relaxed) < want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "{count:?} of {want}");
    }

    /// Whether the listener still serves `stream`.
    async fn served(stream: &mut TcpStream) -> bool {
        if stream.write_all(b"x").await.is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte)).await,
            Ok(Ok(_))
        )
    }

    #[tokio::test]
    async fn a_flood_from_one_address_displaces_only_its_own() {
        let caps = Caps {
            max: 8,
            per_address: 3,
        };
        let (addr, displaced) = echo_listener(caps).await;
        let mut probe = connect_from(addr, [127, 0, 9, 1]).await;
        assert!(served(&mut probe).await);
        let mut flood = Vec::new();
        for _ in 0..50 {
            flood.push(connect_from(addr, [127, 0, 9, 2]).await);
        }
        // Every flood connection accepted: all but three displaced.
        wait_for(&displaced, 47).await;
        // The probe is still served; of the flood, only its newest three are.
        assert!(served(&mut probe).await);
        let mut alive = 0;
        for stream in &mut flood {
            if served(stream).await {
                alive += 1;
            }
        }
        assert_eq!(alive, 3);
        assert_eq!(displaced.load(std::sync::atomic::Ordering::Relaxed), 47);
    }

    #[tokio::test]
    async fn connections_that_end_give_their_place_back() {
        let caps = Caps {
            max: 4,
            per_address: 4,
        };
        let (addr, displaced) = echo_listener(caps).await;
        for round in 0..3 {
            let mut held = Vec::new();
            for _ in 0..4 {
                let mut stream = connect_from(addr, [127, 0, 9, 6]).await;
                assert!(served(&mut stream).await, "round {round}");
                held.push(stream);
            }
            // Closed by their clients: the handlers end, and their places with them.
            drop(held);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(displaced.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_address_holding_most_makes_room() {
        let caps = Caps {
            max: 4,
            per_address: 3,
        };
        let (addr, displaced) = echo_listener(caps).await;
        let mut a: Vec<_> = Vec::new();
        for _ in 0..3 {
            a.push(connect_from(addr, [127, 0, 9, 3]).await);
        }
        let mut b = connect_from(addr, [127, 0, 9, 4]).await;
        assert!(served(&mut b).await);
        // The fifth connection, from a third address: the cap is full, and the
        // address holding three gives up its oldest.
        let mut c = connect_from(addr, [127, 0, 9, 5]).await;
        assert!(served(&mut c).await);
        wait_for(&displaced, 1).await;
        assert!(served(&mut b).await);
        assert!(
            !served(&mut a[0]).await,
            "the oldest of the biggest holder went"
        );
        assert!(served(&mut a[1]).await && served(&mut a[2]).await);
        assert_eq!(displaced.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
