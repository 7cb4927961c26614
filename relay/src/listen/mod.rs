//! The doors: where connections come in, and what each does before it hands a
//! stream to the [router](crate::route).
//!
//! - [`quic`]: the QUIC endpoint's connections, hosts' and players';
//! - [`webtransport`]: browsers' WebTransport sessions on that endpoint;
//! - [`tcp`]: TLS over TCP, and HTTPS ([`web`]) with its WebSocket, for networks
//!   that block UDP;
//! - [`admin`]: the operator's metrics and health, on a port of its own;
//! - [`probe`]: a second UDP port that only tells a client its address.

pub(crate) mod admin;
pub(crate) mod probe;
pub(crate) mod quic;
pub(crate) mod tcp;
pub(crate) mod web;
pub(crate) mod webtransport;

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    // The size of what a function returns, without calling it (one per arity).
    fn output_size3<F: Fn(A, B, C) -> R, A, B, C, R>(_f: &F) -> usize {
        size_of::<R>()
    }
    fn output_size4<F: Fn(A, B, C, D) -> R, A, B, C, D, R>(_f: &F) -> usize {
        size_of::<R>()
    }
    fn output_size7<F: Fn(A, B, C, D, E, G, H) -> R, A, B, C, D, E, G, H, R>(_f: &F) -> usize {
        size_of::<R>()
    }

    /// Every idle host holds these futures for hours, each in a task sized for its
    /// largest state: a few kilobytes more in any of them is a relay that holds
    /// fewer hosts in the same memory (docs/performance.md, "Idle registrations").
    /// Bounds with room for the compiler's changes, far under what inlining the
    /// handshake, a browser's or a session's state into them costs.
    #[test]
    fn an_idle_hosts_long_lived_futures_stay_small() {
        let quic_connection = output_size3(&super::quic::handle);
        let stream = output_size3(&crate::route::serve);
        let registration = output_size4(&crate::flows::registration::register_and_hold);
        let tcp_connection = output_size7(&super::tcp::handle);
        let sizes = format!(
            "QUIC connection {quic_connection} B, stream {stream} B, registration {registration} B, \
             TCP connection {tcp_connection} B"
        );
        // Before the handshakes, a browser's connection and the first message were
        // boxed: 3,040, 1,360, 1,472 and 8,696 bytes.
        assert!(quic_connection <= 1024, "{sizes}");
        assert!(stream <= 256, "{sizes}");
        assert!(registration <= 2048, "{sizes}");
        assert!(tcp_connection <= 1024, "{sizes}");
    }
}
