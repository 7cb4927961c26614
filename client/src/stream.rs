//! `SecureStream`: the application's end of a Noise session, as a tokio byte stream.
//!
//! Writes are sealed into Noise frames of at most 65535 bytes; reads open them. A
//! clean `shutdown()` sends the authenticated end of stream before finishing the
//! underlying stream, and a read returns end-of-file only after the peer's
//! authenticated end: if the stream ends without it (a relay or network cutting it
//! short), the read fails with `UnexpectedEof` wrapping [`NoiseError::Truncated`].
//! A stream the relay resets because the other side's relay connection went away (a
//! host switching Enable Relay off, or going offline) fails with [`SessionEnded`](crate::SessionEnded), so
//! the application can tell the user why.
//!
//! When what the other side sent breaks the session protocol (a frame that does not
//! open or breaks the framing rules, or a direction that ends without its `end`
//! frame), the read fails here as before, and the whole stream is abandoned with
//! [`codes::stream::PROTOCOL_VIOLATION`] (reset and stop-sending), so the other side
//! reads [`SessionEnded::ProtocolViolation`](crate::SessionEnded::ProtocolViolation) instead of a truncation it would blame
//! on the relay.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use blindrelay_protocol::codes;
use blindrelay_protocol::noise::{self, NoiseError, Opened, Transport, MAX_MESSAGE_LEN};
use blindrelay_protocol::{PublicKey, SessionLimits, StreamCode};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::linger::{StreamRecv, StreamSend};
use crate::session::{RelayTransport, SessionPath};

mod resume;

pub use resume::ResumeError;
pub(crate) use resume::{Rejoin, RejoinRefused, Rejoined, Resumption};

/// A half of a session's underlying stream that can be abandoned with an application
/// code the other side reads (a QUIC stream's reset or stop-sending code).
pub trait Abandon {
    /// Abandons this half with `code`: a sending half is reset, a receiving half told
    /// to stop. Nothing can be written or read on it afterwards. Streams that carry no
    /// codes (in-memory pipes) do nothing.
    fn abandon(&mut self, code: StreamCode);

    /// The code this half, dropped, stops a peer that still sends with (0 unless
    /// said otherwise). Streams that carry no codes do nothing.
    fn stop_dropped_with(&mut self, _code: StreamCode) {}

    /// The code this sending half, dropped, resets its direction with (`None`, as
    /// it starts: it finishes the direction, delivering what was written). Streams
    /// that carry no codes do nothing.
    fn reset_dropped_with(&mut self, _code: Option<StreamCode>) {}
}

impl Abandon for StreamSend {
    fn abandon(&mut self, code: StreamCode) {
        self.abandon_with(code);
    }

    fn reset_dropped_with(&mut self, code: Option<StreamCode>) {
        StreamSend::reset_dropped_with(self, code);
    }
}

impl Abandon for StreamRecv {
    fn abandon(&mut self, code: StreamCode) {
        self.abandon_with(code);
    }

    fn stop_dropped_with(&mut self, code: StreamCode) {
        self.stop_lingering_with(code);
    }
}

impl Abandon for blindrelay_transport::FramedSend {
    fn abandon(&mut self, code: StreamCode) {
        self.reset(code);
    }
}

impl Abandon for blindrelay_transport::FramedRecv {
    fn abandon(&mut self, code: StreamCode) {
        self.stop(code);
    }
}

impl Abandon for quinn::SendStream {
    fn abandon(&mut self, code: StreamCode) {
        let _ = self.reset(code.into());
    }
}

impl Abandon for quinn::RecvStream {
    fn abandon(&mut self, code: StreamCode) {
        let _ = self.stop(code.into());
    }
}

impl<T> Abandon for tokio::io::ReadHalf<T> {
    fn abandon(&mut self, _code: StreamCode) {}
}

impl<T> Abandon for tokio::io::WriteHalf<T> {
    fn abandon(&mut self, _code: StreamCode) {}
}

impl Abandon for &[u8] {
    fn abandon(&mut self, _code: StreamCode) {}
}

impl Abandon for tokio::io::Sink {
    fn abandon(&mut self, _code: StreamCode) {}
}

/// An established end-to-end encrypted session.
///
/// Like a `BufWriter`, a write may leave its last sealed frame buffered when the
/// stream's send window is full: call `flush()` (or `shutdown()`) before waiting for
/// an answer, as `tokio::io::copy` and `copy_bidirectional` do.
///
/// `R` and `W` are the two halves of the underlying ordered byte stream: by default
/// a relay's or host's stream on QUIC or TLS over TCP, which keep their connection
/// after the session is dropped until the peer has read it to the end (see
/// [`StreamSend`]), so the last bytes written
/// arrive even when the application drops everything right after writing them.
pub struct SecureStream<R = StreamRecv, W = StreamSend> {
    reader: R,
    writer: W,
    transport: Transport,
    path: SessionPath,
    /// On a relayed session, what carried this end's side to the relay.
    relay_transport: Option<RelayTransport>,
    session_id: u64,
    limits: SessionLimits,
    /// Ciphertext received but not yet opened.
    ciphertext: CiphertextBuf,
    /// Plaintext opened but not yet read by the application.
    plain: BytesMut,
    /// Sealed frames not yet accepted by the writer.
    write_buf: BytesMut,
    /// The underlying writer has been shut down.
    writer_closed: bool,
    /// What a resumable session keeps and does besides (PROTOCOL.md 10.8).
    resume: Option<Box<Resumption<R, W>>>,
}

impl<R, W> std::fmt::Debug for SecureStream<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream")
            .field("peer", self.transport.remote_static())
            .field("path", &self.path)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl<R, W> SecureStream<R, W> {
    /// Wraps an established Noise transport over a reader and writer. `read_buf`
    /// holds any bytes already read past the handshake.
    pub fn new(
        reader: R,
        writer: W,
        transport: Transport,
        path: SessionPath,
        session_id: u64,
        read_buf: BytesMut,
    ) -> Self {
        Self {
            reader,
            writer,
            transport,
            path,
            relay_transport: None,
            session_id,
            limits: SessionLimits::NONE,
            ciphertext: CiphertextBuf::new(&read_buf),
            plain: BytesMut::new(),
            write_buf: BytesMut::new(),
            writer_closed: false,
            resume: None,
        }
    }

    /// Makes the session resumable (its transport must be): it keeps what the peer
    /// has not acknowledged and finds a new stream by `resumption` when this one fails.
    pub(crate) fn with_resumption(mut self, resumption: Resumption<R, W>) -> Self
    where
        R: Abandon,
        W: Abandon,
    {
        debug_assert!(self.transport.resumable());
        // Dropped before its application ends it, the session is abandoned, not
        // truncated: the peer must not wait to resume it.
        self.reader.stop_dropped_with(codes::stream::CLOSED);
        self.writer.reset_dropped_with(Some(codes::stream::CLOSED));
        self.resume = Some(Box::new(resumption));
        self
    }

    /// Whether the session survives the loss of its stream (both ends agreed).
    pub fn resumable(&self) -> bool {
        self.resume.is_some()
    }

    /// How many times the session moved to a new stream.
    pub fn resumes(&self) -> u32 {
        self.resume.as_ref().map_or(0, |r| r.resumes())
    }

    /// The name a resume of this session gives its host now, if it is resumable:
    /// for tests that play someone else resuming it (`internal::resume_id`).
    pub(crate) fn resume_id(&self) -> Option<blindrelay_protocol::noise::ResumeId> {
        self.resume.as_ref().map(|_| self.transport.resume_id())
    }

    /// The Noise transport, for a driver that makes the session resumable.
    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Takes the stream apart into what a resumed session takes over.
    pub(crate) fn into_rejoined(self) -> Rejoined<R, W> {
        Rejoined {
            reader: self.reader,
            writer: self.writer,
            transport: self.transport,
            path: self.path,
            relay_transport: self.relay_transport,
            session_id: self.session_id,
            limits: self.limits,
            first_write: self.write_buf,
        }
    }

    /// The peer's static key: the player's on a host, the host id on a player.
    pub fn peer(&self) -> &PublicKey {
        self.transport.remote_static()
    }

    /// Which path this session took.
    pub fn path(&self) -> SessionPath {
        self.path
    }

    /// On a relayed session, what carried this end's side to the relay (the other
    /// end's may differ: the relay joins any two).
    pub fn relay_transport(&self) -> Option<RelayTransport> {
        self.relay_transport
    }

    /// The path in words, with the transport on a relayed one: `direct`,
    /// `relayed/quic`, `relayed/tcp`.
    pub fn route(&self) -> String {
        match self.relay_transport {
            Some(transport) => format!("{}/{transport}", self.path),
            None => self.path.to_string(),
        }
    }

    /// The relay's id for this session (0 on paths without a relay).
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// What the relay allows this session (no limits on a direct path).
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Records the limits the relay announced for this session.
    pub(crate) fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Records what carried this relayed session to the relay.
    pub(crate) fn with_relay_transport(mut self, transport: RelayTransport) -> Self {
        self.relay_transport = Some(transport);
        self
    }

    /// Sets how many frames this side sends under one key before rekeying.
    pub fn set_rekey_interval(&mut self, messages: u64) {
        self.transport.set_rekey_interval(messages);
    }

    /// The underlying reader and writer (of the stream now carrying the session).
    pub fn into_inner(self) -> (R, W) {
        (self.reader, self.writer)
    }
}

fn io_error(err: NoiseError) -> io::Error {
    let kind = match err {
        NoiseError::Truncated => io::ErrorKind::UnexpectedEof,
        NoiseError::WriteAfterEnd => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, err)
}

impl<R: Abandon, W: Abandon> SecureStream<R, W> {
    /// What the other side sent broke the session protocol: abandon the whole stream
    /// with a code that says so, then report `err` here.
    fn reject(&mut self, err: NoiseError) -> io::Error {
        self.reader.abandon(codes::stream::PROTOCOL_VIOLATION);
        self.writer.abandon(codes::stream::PROTOCOL_VIOLATION);
        io_error(err)
    }
}

impl<R, W> AsyncRead for SecureStream<R, W>
where
    R: AsyncRead + Abandon + Unpin,
    W: AsyncWrite + Abandon + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.resume.is_some() {
            return this.poll_read_resumable(cx, buf);
        }
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.transport.received_end() {
                return Poll::Ready(Ok(()));
            }
            if let Some(frame) = this.ciphertext.next_frame() {
                let opened = match this.transport.open(this.ciphertext.frame(frame)) {
                    Ok(opened) => opened,
                    Err(err) => return Poll::Ready(Err(this.reject(err))),
                };
                match opened {
                    Opened::Data(data) => {
                        // Straight into the caller's buffer; keep only the excess.
                        let n = data.len().min(buf.remaining());
                        buf.put_slice(&data[..n]);
                        this.plain.extend_from_slice(&data[n..]);
                        return Poll::Ready(Ok(()));
                    }
                    Opened::Rekeyed => continue,
                    Opened::End => return Poll::Ready(Ok(())),
                    // Only a resumable transport opens one, and those come above.
                    Opened::Ack(_) => continue,
                }
            }
            // Need more ciphertext: read into the buffer's free end.
            let mut spare = ReadBuf::new(this.ciphertext.spare());
            let polled = Pin::new(&mut this.reader).poll_read(cx, &mut spare);
            let filled = spare.filled().len();
            this.ciphertext.fill(filled);
            ready!(polled)?;
            if filled == 0 {
                // The stream ended: clean only after the peer's authenticated end.
                if let Err(err) = this.transport.handle_eof() {
                    return Poll::Ready(Err(this.reject(err)));
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Ciphertext read from the stream and not yet opened: one buffer, zeroed once when
/// the first read needs it, filled at its end and consumed from its start. Reads go
/// straight into bytes that are already initialised, so no read zeroes memory first
/// and none needs `unsafe`.
struct CiphertextBuf {
    bytes: Vec<u8>,
    /// Where the first byte not yet taken as a frame is.
    start: usize,
    /// Where the bytes read so far end.
    end: usize,
}

/// The buffer holds a whole frame of the largest size and at least [`MIN_READ`]
/// bytes more.
const CIPHERTEXT_BUF_LEN: usize = HEADROOM + 2 + MAX_MESSAGE_LEN + MIN_READ;

/// Where a frame read into an empty buffer starts: its message (after the 2-byte
/// prefix) then starts 64-byte aligned. Decryption copies the message into an
/// aligned buffer, and copies between addresses of different alignment are slow
/// with glibc on the AMD benchmark machine (docs/decisions.md).
const HEADROOM: usize = 62;

/// The least free space a read is offered, so reads stay large.
const MIN_READ: usize = 16 * 1024;

impl CiphertextBuf {
    /// A buffer holding `already_read`, bytes read past the handshake.
    fn new(already_read: &[u8]) -> Self {
        let mut bytes = Vec::new();
        if !already_read.is_empty() {
            bytes = vec![0; CIPHERTEXT_BUF_LEN.max(already_read.len())];
            bytes[..already_read.len()].copy_from_slice(already_read);
        }
        Self {
            bytes,
            start: 0,
            end: already_read.len(),
        }
    }

    /// Takes the next whole frame, if one is buffered: where its message (without
    /// the 2-byte length prefix) lies, for [`CiphertextBuf::frame`].
    fn next_frame(&mut self) -> Option<std::ops::Range<usize>> {
        let len = self.announced_len()?;
        if self.end - self.start < 2 + len {
            return None;
        }
        let message = self.start + 2..self.start + 2 + len;
        self.start = message.end;
        Some(message)
    }

    /// The bytes of a frame [`CiphertextBuf::next_frame`] took.
    fn frame(&self, message: std::ops::Range<usize>) -> &[u8] {
        &self.bytes[message]
    }

    /// Free space after the buffered bytes for the next read: up to the end of a
    /// largest frame, or [`MIN_READ`] bytes if that is more. A stream of largest
    /// frames is then read one whole frame per read, and no partial frame is ever
    /// moved. What is buffered moves to the front only when that space would run past
    /// the buffer's end.
    fn spare(&mut self) -> &mut [u8] {
        if self.bytes.is_empty() {
            self.bytes = vec![0; CIPHERTEXT_BUF_LEN];
        }
        if self.start == self.end {
            self.start = HEADROOM;
            self.end = HEADROOM;
        }
        // At most one partial frame is buffered (the reader asks for more only when
        // no whole frame is), so `buffered` < 2 + MAX_MESSAGE_LEN and the space fits
        // the buffer once moved to the front.
        let buffered = self.end - self.start;
        let limit = (2 + MAX_MESSAGE_LEN).max(buffered + MIN_READ);
        if self.start + limit > self.bytes.len() {
            self.bytes.copy_within(self.start..self.end, HEADROOM);
            self.start = HEADROOM;
            self.end = HEADROOM + buffered;
        }
        &mut self.bytes[self.end..self.start + limit]
    }

    /// Records that a read put `n` bytes into [`CiphertextBuf::spare`].
    fn fill(&mut self, n: usize) {
        self.end += n;
    }

    /// The length the next frame's prefix announces, once both its bytes are here.
    fn announced_len(&self) -> Option<usize> {
        match self.bytes.get(self.start..self.end)? {
            [high, low, ..] => Some(usize::from(u16::from_be_bytes([*high, *low]))),
            _ => None,
        }
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> SecureStream<R, W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write_buf.is_empty() {
            let n = ready!(Pin::new(&mut self.writer).poll_write(cx, &self.write_buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_buf.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<R, W> AsyncWrite for SecureStream<R, W>
where
    R: AsyncRead + Abandon + Unpin,
    W: AsyncWrite + Abandon + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.resume.is_some() {
            return this.poll_write_resumable(cx, data);
        }
        // At most one sealed frame waits here: drain it before taking more.
        ready!(this.poll_drain(cx))?;
        let n = data.len().min(noise::MAX_PLAINTEXT_LEN);
        this.transport
            .seal(&data[..n], &mut this.write_buf)
            .map_err(io_error)?;
        // Start sending now; if the writer is busy the frame waits for the next call.
        if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.resume.is_some() {
            return this.poll_flush_resumable(cx);
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.resume.is_some() {
            return this.poll_shutdown_resumable(cx);
        }
        if !this.transport.sent_end() {
            ready!(this.poll_drain(cx))?;
            this.transport
                .seal_end(&mut this.write_buf)
                .map_err(io_error)?;
        }
        ready!(this.poll_drain(cx))?;
        if !this.writer_closed {
            ready!(Pin::new(&mut this.writer).poll_shutdown(cx))?;
            this.writer_closed = true;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use blindrelay_protocol::noise::{HostHandshake, PlayerHandshake};
    use blindrelay_protocol::SecretKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

    type Half = SecureStream<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

    /// Player and host transports after a handshake in memory.
    fn handshake() -> (Transport, Transport) {
        let player_key = SecretKey::generate().unwrap();
        let host_key = SecretKey::generate().unwrap();
        let mut hs = PlayerHandshake::new(&player_key, &host_key.host_id()).unwrap();
        let mut wire = BytesMut::new();
        hs.write_hello(&mut wire).unwrap();
        let hello = noise::split_frame(&mut wire).unwrap();
        let host = HostHandshake::respond(&host_key, &hello, &mut wire).unwrap();
        let host = host.welcome(&mut wire).unwrap();
        let reply = noise::split_frame(&mut wire).unwrap();
        let player = hs.read_reply(&reply).unwrap();
        let verdict = noise::split_frame(&mut wire).unwrap();
        match player.open_verdict(&verdict).unwrap() {
            noise::VerdictOpened::Welcome(player) => (player, host),
            other => panic!("the host welcomed the player, not {:?}", other.verdict()),
        }
    }

    /// A session over an in-memory pipe.
    fn pair() -> (Half, Half) {
        let (player, host) = handshake();
        let (a, b) = tokio::io::duplex(256 * 1024);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (
            SecureStream::new(ar, aw, player, SessionPath::Relayed, 1, BytesMut::new()),
            SecureStream::new(br, bw, host, SessionPath::Relayed, 1, BytesMut::new()),
        )
    }

    #[tokio::test]
    async fn bytes_cross_intact_and_end_cleanly() {
        let (mut player, mut host) = pair();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            player.write_all(&data).await.unwrap();
            player.shutdown().await.unwrap();
            player
        });
        let mut received = Vec::new();
        host.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, expected);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_cut_stream_reads_as_truncation() {
        let (mut player, host) = handshake();

        // The player's side sends data but the "relay" finishes the stream before the
        // authenticated end arrives.
        let mut sent = BytesMut::new();
        player.seal(b"partial", &mut sent).unwrap();
        let reader: &[u8] = &sent;
        let mut host = SecureStream::new(
            reader,
            tokio::io::sink(),
            host,
            SessionPath::Relayed,
            1,
            BytesMut::new(),
        );
        let mut received = Vec::new();
        let err = host.read_to_end(&mut received).await.unwrap_err();
        assert_eq!(received, b"partial");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let inner = err.into_inner().unwrap().downcast::<NoiseError>().unwrap();
        assert_eq!(*inner, NoiseError::Truncated);
    }

    #[tokio::test]
    async fn rekeying_is_invisible_to_the_application() {
        let (mut player, mut host) = pair();
        player.set_rekey_interval(2);
        host.set_rekey_interval(3);
        for i in 0..10u8 {
            player.write_all(&[i; 1000]).await.unwrap();
            let mut got = [0u8; 1000];
            host.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [i; 1000]);
            host.write_all(&[i; 10]).await.unwrap();
            let mut got = [0u8; 10];
            player.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [i; 10]);
        }
    }

    #[test]
    fn ciphertext_comes_out_as_the_frames_that_went_in_whatever_the_read_sizes() {
        // Frames of every awkward size, the largest included, read in chunks that
        // never line up with them; each read is offered free space, never zeroed.
        let sizes = [
            0usize,
            1,
            2,
            17,
            1000,
            MAX_MESSAGE_LEN,
            3,
            MAX_MESSAGE_LEN - 1,
            5,
        ];
        let mut wire = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            wire.extend_from_slice(&(len as u16).to_be_bytes());
            wire.extend((0..len).map(|j| (i * 31 + j) as u8));
        }
        for chunk in [1usize, 7, 4096, 70_000] {
            let mut buf = CiphertextBuf::new(&wire[..3]);
            let mut fed = 3;
            let mut frames = Vec::new();
            while frames.len() < sizes.len() {
                while let Some(frame) = buf.next_frame() {
                    frames.push(buf.frame(frame).to_vec());
                }
                if fed == wire.len() {
                    break;
                }
                let spare = buf.spare();
                assert!(spare.len() >= MIN_READ, "reads stay large");
                let n = chunk.min(spare.len()).min(wire.len() - fed);
                spare[..n].copy_from_slice(&wire[fed..fed + n]);
                buf.fill(n);
                fed += n;
            }
            assert_eq!(frames.len(), sizes.len(), "chunks of {chunk}");
            for ((i, &len), frame) in sizes.iter().enumerate().zip(&frames) {
                let expected: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                assert_eq!(frame, &expected, "frame {i} in chunks of {chunk}");
            }
        }
    }
}
