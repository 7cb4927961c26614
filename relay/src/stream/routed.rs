//! A stream a door accepted, on its way to the [router](crate::route), with what
//! the registration or session it starts needs of its connection.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::policy::admission::ConnectionPermit;
use crate::stream::halves::{StreamRecv, StreamSend};
use crate::stream::link::Link;
use crate::stream::window::ReceiveWindow;

/// A stream a door accepted, and the connection it came on.
pub(crate) struct RoutedStream {
    pub send: StreamSend,
    pub recv: StreamRecv,
    pub link: Link,
    pub permit: Arc<ConnectionPermit>,
    /// The QUIC connection's receive window, opened while it carries sessions; none
    /// on a stream transport, where the kernel's socket buffers play that part.
    pub window: Option<Arc<ReceiveWindow>>,
    /// Set while the connection is beyond `connections.max`: it may register, which
    /// sheds an idle registration and ends the probation, but not open sessions.
    pub probation: Arc<AtomicBool>,
    /// Set once this connection holds a registration.
    pub is_host: Arc<AtomicBool>,
}
