//! The end-to-end session between a player and a host: Noise IK and its framing.
//!
//! Whatever joins them (a relay splicing two QUIC streams, or a direct QUIC
//! connection), player and host run this session over one ordered byte stream. The
//! relay sees only what this module writes: handshake messages and ciphertext.
//!
//! ## Handshake
//!
//! `Noise_IK_25519_AESGCM_BLAKE2s` with prologue [`PROLOGUE`]. The player is the
//! initiator and knows the host's static key in advance: it *is* the host id from the
//! ticket. One round trip:
//!
//! ```text
//! player -> host   hello   (-> e, es, s, ss)   payload: empty
//! host -> player   reply   (<- e, ee, se)      payload: empty
//! ```
//!
//! The hello's payload would be replayable (IK's first message can be replayed to
//! the host by anyone who recorded it), so nothing goes in it; application data flows
//! only once both sides hold transport keys. Receivers ignore non-empty handshake
//! payloads so a later version can use them for something harmless.
//!
//! ## Framing
//!
//! Every Noise message, handshake or transport, travels as a 2-byte big-endian length
//! followed by that many bytes (so at most 65535, the Noise limit). The plaintext of
//! a transport message is the body followed by one type byte. The type goes last so
//! the body sits at the start of every buffer it is copied through: with the type
//! first, each 64 KiB body was copied to an address one byte off alignment, which
//! is very slow with glibc's copy on our AMD benchmark machine (docs/decisions.md).
//!
//! | type | name  | body         | meaning                                          |
//! |------|-------|--------------|--------------------------------------------------|
//! | 0x00 | data  | 1..=65518 B  | application bytes                                |
//! | 0x01 | end   | empty        | the sender will send nothing more (clean close)  |
//! | 0x02 | rekey | empty        | the sender's next message uses `REKEY(k)`        |
//! | 0x03 | verdict | 1 B        | host only, first frame: `0x00` welcome, `0x01` not authorized |
//!
//! ## The host's verdict
//!
//! The host's first transport frame, sent together with its handshake reply, is a
//! verdict: welcome, or not authorized (the host serves only players whose static
//! key it knows). Both verdicts are one body byte, so the frame is 20 bytes on the
//! wire either way and the relay cannot tell a refused player from a served one by
//! sizes. After "not authorized" the host sends no data, only its `end` once the
//! player has left, and the player reads nothing after the verdict: both ends leave
//! as the ends of a served session do when its player leaves at once.
//! The player accepts no other frame first; the host accepts no verdict at all.
//!
//! The order is kept by types, not flags (each state consumed, the next returned):
//!
//! ```text
//! player: PlayerHandshake --read_reply--> ExpectVerdict --open_verdict--> Transport
//!                                                                     \-> Refused
//! host:   HostHandshake::respond --> PendingVerdict --welcome--> Transport
//!                                                   \--refuse---> Refused
//! ```
//!
//! [`Refused`] can only seal that side's one `end` frame.
//!
//! Because "end" is encrypted and authenticated, a relay or network that cuts the
//! stream short is detected ([`NoiseError::Truncated`]) instead of looking like a
//! clean close.
//!
//! ## Keys over time
//!
//! Each side rekeys its sending key (Noise spec section 11.3) after
//! [`DEFAULT_REKEY_INTERVAL`] messages, announcing it with a rekey frame under the old
//! key. Nonces are never reset; a cipher state whose nonce reaches 2^64-1 refuses to
//! go on ([`NoiseError::NonceExhausted`]) and the session must end, as the spec says.

use bytes::BytesMut;

use crate::keys::{HostId, PublicKey, SecretKey};
use crate::resume::ReplayBuffer;

/// The Noise protocol name. It is part of protocol version 1: changing the cipher
/// means a new ALPN and prologue.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_AESGCM_BLAKE2s";

/// Prologue: the protocol version and the Noise protocol name, mixed into the
/// handshake hash so peers that disagree on either fail the handshake.
pub const PROLOGUE: &[u8] = b"blindrelay/1 session Noise_IK_25519_AESGCM_BLAKE2s";

/// Largest Noise message (the Noise spec's limit, and what a 2-byte prefix can say).
pub const MAX_MESSAGE_LEN: usize = 65535;

/// Bytes the AEAD tag adds to every transport message.
pub const TAG_LEN: usize = 16;

/// Most application bytes in one data frame.
pub const MAX_PLAINTEXT_LEN: usize = MAX_MESSAGE_LEN - TAG_LEN - 1;

/// Messages a side sends under one key before rekeying.
pub const DEFAULT_REKEY_INTERVAL: u64 = 1 << 16;

mod frame_type {
    pub const DATA: u8 = 0x00;
    pub const END: u8 = 0x01;
    pub const REKEY: u8 = 0x02;
    pub const VERDICT: u8 = 0x03;
    pub const ACK: u8 = 0x04;
}

/// Bytes of a hello's payload when the player can resume (PROTOCOL.md 10.8): zero
/// for a new session, or the resume id of the session to continue.
pub const RESUME_ID_LEN: usize = 32;

/// The payload of a hello that asks for a punch session (PROTOCOL.md 10.9): these
/// 32 ASCII bytes. A resume id is a hash of secret keys and is never this; a host
/// from before punching takes it for a resume id it does not hold and answers
/// "unknown session", so the session never reaches its application.
pub const PUNCH_HELLO: [u8; RESUME_ID_LEN] = *b"blindrelay/1 punch, direct path?";

/// The host's decision about a player, sent as its first transport frame: what
/// [`ExpectVerdict::open_verdict`] found in it, as a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The host serves this player: the session is open, without resumption.
    Welcome,
    /// The host does not serve this player's static key; nothing more follows.
    NotAuthorized,
    /// The host serves this player, and both ends acknowledge what they receive and
    /// keep what the other has not acknowledged, so the session can be resumed.
    WelcomeResumable,
    /// The host holds the session the player asked to resume: it goes on here.
    Resumed,
    /// The host holds no such session (or not for this player); nothing follows.
    UnknownSession,
    /// The host serves this player's punch session: data frames carry candidates.
    Punch,
}

impl Verdict {
    fn to_byte(self) -> u8 {
        match self {
            Self::Welcome => 0x00,
            Self::NotAuthorized => 0x01,
            Self::WelcomeResumable => 0x02,
            Self::Resumed => 0x03,
            Self::UnknownSession => 0x04,
            Self::Punch => 0x05,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        [
            Self::Welcome,
            Self::NotAuthorized,
            Self::WelcomeResumable,
            Self::Resumed,
            Self::UnknownSession,
            Self::Punch,
        ]
        .into_iter()
        .find(|verdict| verdict.to_byte() == byte)
    }
}

/// What a session's hello asks for, carried in its (encrypted) payload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// A new session without resumption: an empty payload, as players before
    /// resumption send.
    Plain,
    /// A new session the player can resume: 32 zero bytes.
    Resumable,
    /// Continue the session with this resume id: its 32 bytes.
    Resume(ResumeId),
    /// A punch session, which carries the two ends' direct-path candidates instead
    /// of application bytes: [`PUNCH_HELLO`].
    Punch,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain => "Plain",
            Self::Resumable => "Resumable",
            Self::Resume(_) => "Resume(..)",
            Self::Punch => "Punch",
        })
    }
}

impl Hello {
    fn payload(&self) -> &[u8] {
        const ZERO: [u8; RESUME_ID_LEN] = [0; RESUME_ID_LEN];
        match self {
            Self::Plain => &[],
            Self::Resumable => &ZERO,
            Self::Resume(id) => &id.0,
            Self::Punch => &PUNCH_HELLO,
        }
    }

    /// Reads a received payload. Payloads of other lengths are ignored, as a later
    /// version's may be.
    fn from_payload(payload: &[u8]) -> Self {
        match <[u8; RESUME_ID_LEN]>::try_from(payload) {
            Ok(bytes) if bytes == [0; RESUME_ID_LEN] => Self::Resumable,
            Ok(PUNCH_HELLO) => Self::Punch,
            Ok(bytes) => Self::Resume(ResumeId(bytes)),
            Err(_) => Self::Plain,
        }
    }
}

/// The secret name of a resumable session, known to its two ends only: derived from
/// the keys of the handshake that opened (or last resumed) it, never sent but inside
/// a resume hello's encrypted payload. Each resume gives the session a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResumeId([u8; RESUME_ID_LEN]);

impl ResumeId {
    /// Label mixed into the derivation (PROTOCOL.md 10.8).
    const LABEL: &'static [u8] = b"blindrelay/1 resume id";

    /// `BLAKE2s-256(LABEL || k1 || k2)` of a handshake's two transport keys.
    fn derive(keys: &([u8; 32], [u8; 32])) -> Self {
        use blake2::Digest;
        let mut hash = blake2::Blake2s256::new();
        hash.update(Self::LABEL);
        hash.update(keys.0);
        hash.update(keys.1);
        Self(hash.finalize().into())
    }

    /// The id's bytes, for the test vectors.
    pub fn to_bytes(self) -> [u8; RESUME_ID_LEN] {
        self.0
    }
}

impl std::fmt::Debug for ResumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeId(..)")
    }
}

/// Why the session failed. Every one of these ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// The handshake failed: wrong host key, corrupted message, or a peer speaking
    /// another protocol version.
    #[error("noise handshake failed: {reason}")]
    Handshake {
        /// What went wrong.
        reason: &'static str,
    },
    /// A transport frame failed authentication: it was altered, reordered or forged.
    #[error("frame failed authentication (altered, reordered or forged)")]
    Decrypt,
    /// A frame's decrypted type byte is not one the protocol defines.
    #[error("unknown frame type {kind:#04x}")]
    UnknownFrameType {
        /// The type received.
        kind: u8,
    },
    /// A data frame had no body, or an end/rekey frame had one.
    #[error("malformed {kind} frame")]
    MalformedFrame {
        /// The frame's name.
        kind: &'static str,
    },
    /// A frame arrived after the peer's authenticated end of stream.
    #[error("data after the end of stream")]
    DataAfterEnd,
    /// This side tried to send after it sent the end of stream.
    #[error("write after the end of stream")]
    WriteAfterEnd,
    /// The stream ended without the peer's authenticated end of stream: someone in
    /// the middle cut it short.
    #[error("session truncated: the stream ended without an authenticated end of stream")]
    Truncated,
    /// A cipher state used its last nonce; the session cannot continue.
    #[error("nonce space exhausted; the session must end")]
    NonceExhausted,
    /// A frame came, or was to be sent, out of the session's order: the host's first
    /// frame must be its verdict, and only the host sends one, once.
    #[error("frame out of order: {reason}")]
    OutOfOrder {
        /// What the order required.
        reason: &'static str,
    },
    /// An acknowledgement was malformed, went backwards, or acknowledged bytes that
    /// were never sent.
    #[error("bad acknowledgement: {reason}")]
    BadAck {
        /// What was wrong with it.
        reason: &'static str,
    },
    /// More application bytes than one frame holds were given to seal at once.
    #[error("{len} bytes do not fit one frame (max {max})")]
    PayloadTooLarge {
        /// Bytes given.
        len: usize,
        /// [`MAX_PLAINTEXT_LEN`].
        max: usize,
    },
}

fn transport_error(err: snow::Error) -> NoiseError {
    match err {
        snow::Error::Decrypt => NoiseError::Decrypt,
        snow::Error::State(snow::error::StateProblem::Exhausted) => NoiseError::NonceExhausted,
        // Input errors mean a frame of impossible size; treat like a forgery.
        _ => NoiseError::Decrypt,
    }
}

fn handshake_error(err: snow::Error) -> NoiseError {
    let reason = match err {
        snow::Error::Decrypt => "message failed authentication (wrong host key, or altered)",
        snow::Error::Input => "message has the wrong length",
        snow::Error::Dh => "key agreement failed",
        snow::Error::Rng => "random number generator failed",
        _ => "unexpected handshake state",
    };
    NoiseError::Handshake { reason }
}

fn builder<'a>(local: &'a [u8; 32]) -> snow::Builder<'a> {
    let params = NOISE_PARAMS
        .parse()
        // NOISE_PARAMS is a constant that the unit tests parse.
        .expect("NOISE_PARAMS is a valid Noise protocol name");
    snow::Builder::new(params)
        .local_private_key(local)
        .and_then(|b| b.prologue(PROLOGUE))
        // Each setter fails only when called twice; each is called once here.
        .expect("builder setters are called once each")
}

/// Appends `message` to `out` with its 2-byte length prefix, encrypting via `write`.
fn write_framed(
    out: &mut BytesMut,
    max_len: usize,
    write: impl FnOnce(&mut [u8]) -> Result<usize, snow::Error>,
) -> Result<(), snow::Error> {
    let start = out.len();
    out.resize(start + 2 + max_len, 0);
    match write(&mut out[start + 2..]) {
        Ok(len) => {
            // len <= max_len <= MAX_MESSAGE_LEN, which fits a u16.
            out[start..start + 2].copy_from_slice(&(len as u16).to_be_bytes());
            out.truncate(start + 2 + len);
            Ok(())
        }
        Err(err) => {
            out.truncate(start);
            Err(err)
        }
    }
}

/// Takes one length-prefixed message off the front of `buf` if it is complete.
///
/// The 2-byte prefix cannot announce more than [`MAX_MESSAGE_LEN`], so a reader never
/// needs more than `2 + MAX_MESSAGE_LEN` bytes buffered.
pub fn split_frame(buf: &mut BytesMut) -> Option<BytesMut> {
    let prefix = buf.get(..2)?;
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if buf.len() < 2 + len {
        return None;
    }
    let mut frame = buf.split_to(2 + len);
    let _ = frame.split_to(2);
    Some(frame)
}

/// The player's side of the handshake (Noise initiator).
pub struct PlayerHandshake {
    state: snow::HandshakeState,
    hello: Hello,
}

impl PlayerHandshake {
    /// Starts a handshake with the host `host_id` as player `player_key`, for a
    /// session without resumption.
    pub fn new(player_key: &SecretKey, host_id: &HostId) -> Result<Self, NoiseError> {
        Self::with_hello(player_key, host_id, Hello::Plain)
    }

    /// Starts a handshake whose hello asks for `hello`: a new session, resumable or
    /// not, or the resumption of one.
    pub fn with_hello(
        player_key: &SecretKey,
        host_id: &HostId,
        hello: Hello,
    ) -> Result<Self, NoiseError> {
        Self::with_ephemeral(player_key, host_id, hello, None)
    }

    fn with_ephemeral(
        player_key: &SecretKey,
        host_id: &HostId,
        hello: Hello,
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<Self, NoiseError> {
        // A low-order host key would make `es` and `ss` public, exposing the player's
        // static key to whoever relays the hello. No real host id is low-order.
        if player_key.diffie_hellman(host_id.public_key()).is_none() {
            return Err(NoiseError::Handshake {
                reason: "host id is not a usable X25519 key",
            });
        }
        let local = player_key.to_bytes();
        let mut builder = builder(&local)
            .remote_public_key(host_id.as_bytes())
            .expect("remote key is set once");
        if let Some(ephemeral) = ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(ephemeral);
        }
        let state = builder.build_initiator().map_err(handshake_error)?;
        Ok(Self { state, hello })
    }

    /// Appends the hello (first handshake message) to `out`, length-prefixed.
    pub fn write_hello(&mut self, out: &mut BytesMut) -> Result<(), NoiseError> {
        let (state, payload) = (&mut self.state, self.hello.payload());
        write_framed(out, 256, |buf| state.write_message(payload, buf)).map_err(handshake_error)
    }

    /// Reads the host's reply (without its length prefix) and finishes the handshake.
    ///
    /// What comes back can do one thing: open the host's verdict, its first frame
    /// ([`ExpectVerdict::open_verdict`]). Only a welcome yields a [`Transport`].
    pub fn read_reply(mut self, reply: &[u8]) -> Result<ExpectVerdict, NoiseError> {
        let mut payload = [0u8; MAX_MESSAGE_LEN];
        self.state
            .read_message(reply, &mut payload)
            .map_err(handshake_error)?;
        Ok(ExpectVerdict {
            transport: Transport::from_handshake(self.state)?,
            hello: self.hello,
        })
    }
}

/// The player after the handshake: the host's keys are known, its verdict is not.
#[derive(Debug)]
pub struct ExpectVerdict {
    transport: Transport,
    hello: Hello,
}

/// What the host's verdict let the player do next.
#[derive(Debug)]
pub enum VerdictOpened {
    /// The host serves this player: the session is open ([`Transport::resumable`]
    /// says whether it can be resumed).
    Welcome(Transport),
    /// The host holds the session the player asked to resume: it goes on here.
    Resumed(Transport),
    /// The host does not serve this player's key. Its direction has ended; the player
    /// may only seal its own `end`, as a served player that leaves at once does.
    NotAuthorized(Refused),
    /// The host holds no session by the resume id the player gave. It ends as
    /// [`VerdictOpened::NotAuthorized`] does.
    UnknownSession(Refused),
}

impl VerdictOpened {
    /// The verdict as a plain value.
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Welcome(transport) if transport.resumable => Verdict::WelcomeResumable,
            Self::Welcome(transport) if transport.punch => Verdict::Punch,
            Self::Welcome(_) => Verdict::Welcome,
            Self::Resumed(_) => Verdict::Resumed,
            Self::NotAuthorized(_) => Verdict::NotAuthorized,
            Self::UnknownSession(_) => Verdict::UnknownSession,
        }
    }
}

impl ExpectVerdict {
    /// The host's static key: the host id the handshake was encrypted to.
    pub fn remote_static(&self) -> &PublicKey {
        &self.transport.remote
    }

    /// Opens the host's first frame (without its length prefix), which must be its
    /// verdict, and moves on to the state that verdict allows.
    pub fn open_verdict(mut self, frame: &[u8]) -> Result<VerdictOpened, NoiseError> {
        let transport = &mut self.transport;
        if transport.open_buf.len() < frame.len() {
            transport.open_buf.resize(frame.len(), 0);
        }
        let len = transport
            .state
            .read_message(frame, &mut transport.open_buf)
            .map_err(transport_error)?;
        let verdict = match &transport.open_buf[..len] {
            [byte, frame_type::VERDICT] => {
                Verdict::from_byte(*byte).ok_or(NoiseError::MalformedFrame { kind: "verdict" })?
            }
            [.., frame_type::VERDICT] => {
                return Err(NoiseError::MalformedFrame { kind: "verdict" })
            }
            _ => {
                return Err(NoiseError::OutOfOrder {
                    reason: "the host's first frame must be its verdict",
                })
            }
        };
        let resuming = matches!(self.hello, Hello::Resume(_));
        let punching = self.hello == Hello::Punch;
        match verdict {
            Verdict::Welcome if !resuming && !punching => {
                Ok(VerdictOpened::Welcome(self.transport))
            }
            Verdict::Punch if punching => {
                self.transport.punch = true;
                Ok(VerdictOpened::Welcome(self.transport))
            }
            Verdict::WelcomeResumable if self.hello == Hello::Resumable => {
                self.transport.resumable = true;
                Ok(VerdictOpened::Welcome(self.transport))
            }
            Verdict::Resumed if resuming => {
                self.transport.resumable = true;
                Ok(VerdictOpened::Resumed(self.transport))
            }
            Verdict::NotAuthorized | Verdict::UnknownSession => {
                // A host from before punching takes a punch hello for a resume.
                if verdict == Verdict::UnknownSession && !resuming && !punching {
                    return Err(NoiseError::OutOfOrder {
                        reason: "an unknown session answers a resume or a punch only",
                    });
                }
                // A refusal ends the host's direction: nothing may follow it.
                self.transport.received_end = true;
                let refused = Refused {
                    transport: self.transport,
                };
                Ok(if verdict == Verdict::NotAuthorized {
                    VerdictOpened::NotAuthorized(refused)
                } else {
                    VerdictOpened::UnknownSession(refused)
                })
            }
            _ => Err(NoiseError::OutOfOrder {
                reason: "the verdict does not answer the hello",
            }),
        }
    }
}

/// The host's side of the handshake (Noise responder), done in one step.
pub struct HostHandshake;

impl HostHandshake {
    /// Reads a player's hello (without its length prefix) and appends the reply to
    /// `out`.
    ///
    /// What comes back can do one thing: seal the verdict on the player whose key
    /// [`PendingVerdict::remote_static`] names, with [`PendingVerdict::welcome`] or
    /// [`PendingVerdict::refuse`]. Nothing else can be sent before it.
    pub fn respond(
        host_key: &SecretKey,
        hello: &[u8],
        out: &mut BytesMut,
    ) -> Result<PendingVerdict, NoiseError> {
        Self::respond_with_ephemeral(host_key, hello, out, None)
    }

    fn respond_with_ephemeral(
        host_key: &SecretKey,
        hello: &[u8],
        out: &mut BytesMut,
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<PendingVerdict, NoiseError> {
        let local = host_key.to_bytes();
        let mut builder = builder(&local);
        if let Some(ephemeral) = ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(ephemeral);
        }
        let mut state = builder.build_responder().map_err(handshake_error)?;
        let mut payload = [0u8; MAX_MESSAGE_LEN];
        let payload_len = state
            .read_message(hello, &mut payload)
            .map_err(handshake_error)?;
        let asked = Hello::from_payload(&payload[..payload_len]);
        let player = remote_static(&state)?;
        // A low-order player key makes `ss`/`se` public: the player would have no
        // identity worth checking. Refuse rather than serve an anonymous-by-accident
        // player under a key that anyone can claim.
        if host_key.diffie_hellman(&player).is_none() {
            return Err(NoiseError::Handshake {
                reason: "player static key is not a usable X25519 key",
            });
        }
        write_framed(out, 256, |buf| state.write_message(&[], buf)).map_err(handshake_error)?;
        Ok(PendingVerdict {
            transport: Transport::from_handshake(state)?,
            hello: asked,
        })
    }
}

/// The host after its handshake reply: it knows the player's key and owes the player
/// a verdict, which is the only thing it can send next.
///
/// Both verdicts are the same size on the wire, so the relay cannot tell a refused
/// player from a served one by the frame.
#[derive(Debug)]
pub struct PendingVerdict {
    transport: Transport,
    hello: Hello,
}

impl PendingVerdict {
    /// The player's static key, by which the host decides whether to serve it.
    pub fn remote_static(&self) -> &PublicKey {
        &self.transport.remote
    }

    /// What the player's hello asked for. A replayed hello asks the same, so nothing
    /// may be done on it but answer (PROTOCOL.md 10.8).
    pub fn hello(&self) -> Hello {
        self.hello
    }

    /// Seals the welcome: the session is open, without resumption.
    pub fn welcome(mut self, out: &mut BytesMut) -> Result<Transport, NoiseError> {
        self.transport.seal_verdict(Verdict::Welcome, out)?;
        Ok(self.transport)
    }

    /// Seals the welcome of a resumable session, for a player whose hello offered
    /// it ([`Hello::Resumable`]).
    pub fn welcome_resumable(mut self, out: &mut BytesMut) -> Result<Transport, NoiseError> {
        if self.hello != Hello::Resumable {
            return Err(NoiseError::OutOfOrder {
                reason: "a resumable welcome answers a resumable hello only",
            });
        }
        self.transport
            .seal_verdict(Verdict::WelcomeResumable, out)?;
        self.transport.resumable = true;
        Ok(self.transport)
    }

    /// Seals "resumed", for a player that asked to resume a session the host holds
    /// for its key: the session goes on over this stream.
    pub fn resumed(mut self, out: &mut BytesMut) -> Result<Transport, NoiseError> {
        if !matches!(self.hello, Hello::Resume(_)) {
            return Err(NoiseError::OutOfOrder {
                reason: "\"resumed\" answers a resume only",
            });
        }
        self.transport.seal_verdict(Verdict::Resumed, out)?;
        self.transport.resumable = true;
        Ok(self.transport)
    }

    /// Seals the welcome of a punch session, for a player whose hello asked for
    /// one ([`Hello::Punch`]): its data frames carry candidates (PROTOCOL.md 10.9).
    pub fn welcome_punch(mut self, out: &mut BytesMut) -> Result<Transport, NoiseError> {
        if self.hello != Hello::Punch {
            return Err(NoiseError::OutOfOrder {
                reason: "a punch welcome answers a punch hello only",
            });
        }
        self.transport.seal_verdict(Verdict::Punch, out)?;
        self.transport.punch = true;
        Ok(self.transport)
    }

    /// Seals "unknown session", for a resume the host cannot honour, or a punch
    /// session it does not hold (as a host from before punching answers). It ends
    /// as a refusal does, the same size on the wire.
    pub fn unknown_session(mut self, out: &mut BytesMut) -> Result<Refused, NoiseError> {
        if !matches!(self.hello, Hello::Resume(_) | Hello::Punch) {
            return Err(NoiseError::OutOfOrder {
                reason: "\"unknown session\" answers a resume or a punch only",
            });
        }
        self.transport.seal_verdict(Verdict::UnknownSession, out)?;
        Ok(Refused {
            transport: self.transport,
        })
    }

    /// Seals "not authorized". No data can follow, only the host's one `end` frame
    /// ([`Refused::seal_end`]): the host sends it once the player has left, so that
    /// its direction ends as a served session's does when its player leaves at once,
    /// and the relay cannot tell the two apart by how the stream ends.
    pub fn refuse(mut self, out: &mut BytesMut) -> Result<Refused, NoiseError> {
        self.transport.seal_verdict(Verdict::NotAuthorized, out)?;
        Ok(Refused {
            transport: self.transport,
        })
    }
}

/// Either end of a session the host refused: all that is left is to seal this
/// side's one `end` frame, as the end of a served session that ends at once would.
#[derive(Debug)]
pub struct Refused {
    transport: Transport,
}

impl Refused {
    /// The other end's static key.
    pub fn remote_static(&self) -> &PublicKey {
        &self.transport.remote
    }

    /// Seals this side's end of stream, the last frame it sends.
    pub fn seal_end(mut self, out: &mut BytesMut) -> Result<(), NoiseError> {
        self.transport.seal_end(out)
    }
}

fn remote_static(state: &snow::HandshakeState) -> Result<PublicKey, NoiseError> {
    let bytes: [u8; 32] = state
        .get_remote_static()
        .and_then(|key| key.try_into().ok())
        .ok_or(NoiseError::Handshake {
            reason: "peer sent no static key",
        })?;
    Ok(PublicKey::from_bytes(bytes))
}

/// What one received transport frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Application bytes.
    Data(&'a [u8]),
    /// The peer rekeyed; nothing for the application.
    Rekeyed,
    /// The peer's authenticated end of stream: no more data will come.
    End,
    /// The peer has every byte this side sent up to this count (resumable sessions).
    Ack(u64),
}

/// An established session: seals outgoing frames and opens incoming ones.
pub struct Transport {
    state: snow::TransportState,
    remote: PublicKey,
    seal_buf: Vec<u8>,
    open_buf: Vec<u8>,
    rekey_interval: u64,
    sent_under_key: u64,
    sent_end: bool,
    received_end: bool,
    /// Both ends acknowledge and keep what is not acknowledged (a resumable session).
    resumable: bool,
    /// A punch session: its data frames carry candidates (PROTOCOL.md 10.9), for
    /// the client library, never for an application.
    punch: bool,
    /// The id under which this session can be resumed next.
    resume_id: ResumeId,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("remote", &self.remote)
            .field("sent_end", &self.sent_end)
            .field("received_end", &self.received_end)
            .finish_non_exhaustive()
    }
}

impl Transport {
    fn from_handshake(mut state: snow::HandshakeState) -> Result<Self, NoiseError> {
        let remote = remote_static(&state)?;
        let resume_id = ResumeId::derive(&state.dangerously_get_raw_split());
        let state = state.into_transport_mode().map_err(handshake_error)?;
        Ok(Self {
            state,
            remote,
            seal_buf: Vec::new(),
            open_buf: Vec::new(),
            rekey_interval: DEFAULT_REKEY_INTERVAL,
            sent_under_key: 0,
            sent_end: false,
            received_end: false,
            resumable: false,
            punch: false,
            resume_id,
        })
    }

    /// Seals the host's verdict: its very first frame, which never waits behind a
    /// rekey. Only [`PendingVerdict`] calls this, once.
    fn seal_verdict(&mut self, verdict: Verdict, out: &mut BytesMut) -> Result<(), NoiseError> {
        self.seal_raw(frame_type::VERDICT, &[verdict.to_byte()], out)?;
        self.sent_under_key += 1;
        Ok(())
    }

    /// The peer's static public key: the player's key on the host side, the host id
    /// on the player side.
    pub fn remote_static(&self) -> &PublicKey {
        &self.remote
    }

    /// Sets how many messages this side sends under one key (at least 1).
    pub fn set_rekey_interval(&mut self, messages: u64) {
        self.rekey_interval = messages.max(1);
    }

    /// Whether both ends acknowledge what they receive, so that the session can be
    /// resumed on another stream.
    pub fn resumable(&self) -> bool {
        self.resumable
    }

    /// Whether this is a punch session (PROTOCOL.md 10.9).
    pub fn punch(&self) -> bool {
        self.punch
    }

    /// The id a resume hello gives to continue this session on another stream. Only
    /// the two ends know it; it is new for every handshake.
    pub fn resume_id(&self) -> ResumeId {
        self.resume_id
    }

    /// Seals an acknowledgement: this side has every byte the peer sent, up to
    /// `received` (a resumable session only).
    pub fn seal_ack(&mut self, received: u64, out: &mut BytesMut) -> Result<(), NoiseError> {
        if !self.resumable {
            return Err(NoiseError::OutOfOrder {
                reason: "acknowledgements belong to resumable sessions",
            });
        }
        self.seal_frame(frame_type::ACK, &received.to_be_bytes(), out)
    }

    /// Whether the peer's end of stream has arrived.
    pub fn received_end(&self) -> bool {
        self.received_end
    }

    /// Whether this side has sealed its end of stream.
    pub fn sent_end(&self) -> bool {
        self.sent_end
    }

    /// Seals up to [`MAX_PLAINTEXT_LEN`] application bytes as one data frame appended
    /// to `out` (preceded by a rekey frame when the key is due for one).
    pub fn seal(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), NoiseError> {
        if data.len() > MAX_PLAINTEXT_LEN {
            return Err(NoiseError::PayloadTooLarge {
                len: data.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        self.seal_frame(frame_type::DATA, data, out)
    }

    /// Seals the authenticated end of stream. Nothing can be sealed after it.
    pub fn seal_end(&mut self, out: &mut BytesMut) -> Result<(), NoiseError> {
        self.seal_frame(frame_type::END, &[], out)?;
        self.sent_end = true;
        Ok(())
    }

    /// Opens one received frame (without its length prefix).
    ///
    /// After the peer's `end` nothing may follow, but in a resumable session its
    /// acknowledgements (and rekeys) go on until the stream ends: `end` closes the
    /// peer's data, not what it says about ours.
    pub fn open(&mut self, frame: &[u8]) -> Result<Opened<'_>, NoiseError> {
        if self.received_end && !self.resumable {
            return Err(NoiseError::DataAfterEnd);
        }
        if self.open_buf.len() < frame.len() {
            self.open_buf.resize(frame.len(), 0);
        }
        let len = self
            .state
            .read_message(frame, &mut self.open_buf)
            .map_err(transport_error)?;
        let Some((&kind, body)) = self.open_buf[..len].split_last() else {
            return Err(NoiseError::MalformedFrame { kind: "empty" });
        };
        if self.received_end && kind != frame_type::ACK && kind != frame_type::REKEY {
            return Err(NoiseError::DataAfterEnd);
        }
        match kind {
            frame_type::VERDICT => Err(NoiseError::OutOfOrder {
                reason: "a verdict comes only from the host, once, first",
            }),
            frame_type::DATA if body.is_empty() => Err(NoiseError::MalformedFrame { kind: "data" }),
            frame_type::DATA => Ok(Opened::Data(&self.open_buf[..len - 1])),
            frame_type::END if !body.is_empty() => Err(NoiseError::MalformedFrame { kind: "end" }),
            frame_type::END => {
                self.received_end = true;
                Ok(Opened::End)
            }
            frame_type::REKEY if !body.is_empty() => {
                Err(NoiseError::MalformedFrame { kind: "rekey" })
            }
            frame_type::REKEY => {
                self.state.rekey_incoming();
                Ok(Opened::Rekeyed)
            }
            frame_type::ACK if !self.resumable => Err(NoiseError::OutOfOrder {
                reason: "acknowledgements belong to resumable sessions",
            }),
            frame_type::ACK => match <[u8; 8]>::try_from(body) {
                Ok(count) => Ok(Opened::Ack(u64::from_be_bytes(count))),
                Err(_) => Err(NoiseError::MalformedFrame { kind: "ack" }),
            },
            kind => Err(NoiseError::UnknownFrameType { kind }),
        }
    }

    /// Call when the underlying stream ends: fine after the peer's end of stream,
    /// [`NoiseError::Truncated`] before it.
    pub fn handle_eof(&self) -> Result<(), NoiseError> {
        if self.received_end {
            Ok(())
        } else {
            Err(NoiseError::Truncated)
        }
    }

    /// [`Transport::seal`] for a resumable session: seals as much of `data` as
    /// `replay` has room for in one piece (at most [`MAX_PLAINTEXT_LEN`]), as one
    /// data frame, keeping the bytes there. Returns how many: 0 only when `data` is
    /// empty or `replay` full, and then nothing is sealed.
    ///
    /// The copy kept is the one sealed: a frame's plaintext is copied once, as
    /// [`Transport::seal`] copies it once to append its type byte.
    pub fn seal_kept(
        &mut self,
        data: &[u8],
        replay: &mut ReplayBuffer,
        out: &mut BytesMut,
    ) -> Result<usize, NoiseError> {
        let data = &data[..data.len().min(MAX_PLAINTEXT_LEN)];
        if data.is_empty() || replay.room() == 0 {
            return Ok(0);
        }
        self.before_frame(frame_type::DATA, out)?;
        let state = &mut self.state;
        let n = replay.push_with(data, frame_type::DATA, |plaintext| {
            write_framed(out, plaintext.len() + TAG_LEN, |buf| {
                state.write_message(plaintext, buf)
            })
            .map_err(transport_error)
        })?;
        self.sent_under_key += 1;
        Ok(n)
    }

    fn seal_frame(&mut self, kind: u8, body: &[u8], out: &mut BytesMut) -> Result<(), NoiseError> {
        self.before_frame(kind, out)?;
        self.seal_raw(kind, body, out)?;
        self.sent_under_key += 1;
        Ok(())
    }

    /// Refuses a frame of `kind` after this side's `end`, and seals a rekey first
    /// when the key is due for one.
    fn before_frame(&mut self, kind: u8, out: &mut BytesMut) -> Result<(), NoiseError> {
        if self.sent_end && kind != frame_type::ACK {
            return Err(NoiseError::WriteAfterEnd);
        }
        if self.sent_under_key + 1 >= self.rekey_interval {
            self.seal_raw(frame_type::REKEY, &[], out)?;
            self.state.rekey_outgoing();
            self.sent_under_key = 0;
        }
        Ok(())
    }

    fn seal_raw(&mut self, kind: u8, body: &[u8], out: &mut BytesMut) -> Result<(), NoiseError> {
        self.seal_buf.clear();
        self.seal_buf.extend_from_slice(body);
        self.seal_buf.push(kind);
        let (state, plaintext) = (&mut self.state, &self.seal_buf);
        write_framed(out, plaintext.len() + TAG_LEN, |buf| {
            state.write_message(plaintext, buf)
        })
        .map_err(transport_error)
    }
}

/// Appends the framed bytes for `data` of any length, split into full frames.
pub fn seal_all(
    transport: &mut Transport,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), NoiseError> {
    for chunk in data.chunks(MAX_PLAINTEXT_LEN) {
        transport.seal(chunk, out)?;
    }
    Ok(())
}

#[doc(hidden)]
/// Deterministic handshakes for test vectors only: fixed ephemeral keys make every
/// byte reproducible. Never use outside tests: reusing an ephemeral key breaks Noise.
///
/// Public (hidden) rather than `#[cfg(test)]` only because the worked examples of
/// PROTOCOL.md are checked by an integration test, outside this crate; the helpers
/// that bend a session's rules live in the unit tests alone.
pub mod testing {
    use super::*;

    /// [`PlayerHandshake::new`] with a fixed ephemeral key.
    pub fn player_with_ephemeral(
        player_key: &SecretKey,
        host_id: &HostId,
        ephemeral: &[u8; 32],
    ) -> Result<PlayerHandshake, NoiseError> {
        PlayerHandshake::with_ephemeral(player_key, host_id, Hello::Plain, Some(ephemeral))
    }

    /// [`PlayerHandshake::with_hello`] with a fixed ephemeral key.
    pub fn player_hello_with_ephemeral(
        player_key: &SecretKey,
        host_id: &HostId,
        hello: Hello,
        ephemeral: &[u8; 32],
    ) -> Result<PlayerHandshake, NoiseError> {
        PlayerHandshake::with_ephemeral(player_key, host_id, hello, Some(ephemeral))
    }

    /// [`HostHandshake::respond`] with a fixed ephemeral key.
    pub fn host_respond_with_ephemeral(
        host_key: &SecretKey,
        hello: &[u8],
        out: &mut BytesMut,
        ephemeral: &[u8; 32],
    ) -> Result<PendingVerdict, NoiseError> {
        HostHandshake::respond_with_ephemeral(host_key, hello, out, Some(ephemeral))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> (SecretKey, SecretKey) {
        (
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([2; 32]),
        )
    }

    /// Runs a whole handshake in memory; returns (player, host) transports.
    fn pair() -> (Transport, Transport) {
        let (player_key, host_key) = keys();
        let mut player = PlayerHandshake::new(&player_key, &host_key.host_id()).unwrap();
        let mut wire = BytesMut::new();
        player.write_hello(&mut wire).unwrap();
        let hello = split_frame(&mut wire).unwrap();
        let host = HostHandshake::respond(&host_key, &hello, &mut wire).unwrap();
        let reply = split_frame(&mut wire).unwrap();
        let player = player.read_reply(&reply).unwrap();
        let host = host.welcome(&mut wire).unwrap();
        let verdict = split_frame(&mut wire).unwrap();
        (welcomed(player.open_verdict(&verdict)), host)
    }

    fn welcomed(opened: Result<VerdictOpened, NoiseError>) -> Transport {
        match opened {
            Ok(VerdictOpened::Welcome(transport)) => transport,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Sets the nonce the next received frame is expected under.
    fn set_receiving_nonce(transport: &mut Transport, nonce: u64) {
        transport.state.set_receiving_nonce(nonce);
    }

    fn open_all(transport: &mut Transport, wire: &mut BytesMut) -> Result<Vec<u8>, NoiseError> {
        let mut out = Vec::new();
        while let Some(frame) = split_frame(wire) {
            match transport.open(&frame)? {
                Opened::Data(data) => out.extend_from_slice(data),
                Opened::Rekeyed | Opened::End | Opened::Ack(_) => {}
            }
        }
        Ok(out)
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn params_parse() {
        let _: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    }

    #[test]
    fn handshake_authenticates_both_sides() {
        let (player_key, host_key) = keys();
        let (player, host) = pair();
        assert_eq!(player.remote_static(), host_key.host_id().public_key());
        assert_eq!(host.remote_static(), &player_key.public_key());
    }

    #[test]
    fn known_vector_pins_handshake_and_framing() {
        // Fixed static and ephemeral keys make every byte deterministic; this digest
        // changes if the pattern, cipher, prologue, framing or frame types change.
        let (player_key, host_key) = keys();
        let mut player =
            testing::player_with_ephemeral(&player_key, &host_key.host_id(), &[3; 32]).unwrap();
        let mut wire = BytesMut::new();
        player.write_hello(&mut wire).unwrap();
        let mut transcript = wire.to_vec();
        let hello = split_frame(&mut wire).unwrap();
        assert_eq!(hello.len(), 32 + 48 + 16, "IK hello: e, encrypted s, tag");
        let host =
            testing::host_respond_with_ephemeral(&host_key, &hello, &mut wire, &[4; 32]).unwrap();
        let mut host = host.welcome(&mut wire).unwrap();
        transcript.extend_from_slice(&wire);
        let reply = split_frame(&mut wire).unwrap();
        assert_eq!(reply.len(), 32 + 16, "IK reply: e, tag");
        let player = player.read_reply(&reply).unwrap();
        let verdict = split_frame(&mut wire).unwrap();
        assert_eq!(verdict.len(), 1 + 1 + TAG_LEN, "verdict: body, type, tag");
        let mut player = welcomed(player.open_verdict(&verdict));

        player.seal(b"GET /movie.mkv", &mut wire).unwrap();
        player.seal_end(&mut wire).unwrap();
        host.seal(b"200 OK", &mut wire).unwrap();
        transcript.extend_from_slice(&wire);
        assert_eq!(
            sha256_hex(&transcript),
            "f43b4db74f529e9b60576c87062d4a4432a973fa9016a7254cfc0b693f0c39d9"
        );
    }

    /// A handshake with fixed ephemeral keys asking `hello`, answered by `answer`:
    /// the player's and the host's transports, and the wire bytes.
    fn fixed_handshake(
        hello: Hello,
        ephemerals: ([u8; 32], [u8; 32]),
        answer: fn(PendingVerdict, &mut BytesMut) -> Result<Transport, NoiseError>,
    ) -> (Transport, Transport, Vec<u8>) {
        let (player_key, host_key) = keys();
        let mut player = testing::player_hello_with_ephemeral(
            &player_key,
            &host_key.host_id(),
            hello,
            &ephemerals.0,
        )
        .unwrap();
        let mut wire = BytesMut::new();
        player.write_hello(&mut wire).unwrap();
        let frame = split_frame(&mut wire.clone()).unwrap();
        let mut transcript = wire.to_vec();
        let mut wire = BytesMut::new();
        let host =
            testing::host_respond_with_ephemeral(&host_key, &frame, &mut wire, &ephemerals.1)
                .unwrap();
        let host = answer(host, &mut wire).unwrap();
        transcript.extend_from_slice(&wire);
        let reply = split_frame(&mut wire).unwrap();
        let verdict = split_frame(&mut wire).unwrap();
        let player = match player.read_reply(&reply).unwrap().open_verdict(&verdict) {
            Ok(VerdictOpened::Welcome(player) | VerdictOpened::Resumed(player)) => player,
            other => panic!("not served: {other:?}"),
        };
        (player, host, transcript)
    }

    #[test]
    fn the_resume_id_and_a_resume_handshake_are_pinned() {
        // PROTOCOL.md 10.8: the session of 10.7 made resumable, and a resume of it.
        let (player, host, transcript) = fixed_handshake(
            Hello::Resumable,
            ([3; 32], [4; 32]),
            PendingVerdict::welcome_resumable,
        );
        assert_eq!(transcript.len(), 2 + 128 + 2 + 48 + 2 + 18);
        let id = player.resume_id();
        assert_eq!(id, host.resume_id());
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(&id.to_bytes()),
            "10d23e8385e35510253b6e1f730584f260ba682b6ff050fa42c24fe97a24800a"
        );

        let (mut player, mut host, mut transcript) = fixed_handshake(
            Hello::Resume(id),
            ([5; 32], [6; 32]),
            PendingVerdict::resumed,
        );
        assert_eq!(
            transcript.len(),
            2 + 128 + 2 + 48 + 2 + 18,
            "the sizes of a new session"
        );
        let mut wire = BytesMut::new();
        host.seal_ack(14, &mut wire).unwrap();
        player.seal_ack(6, &mut wire).unwrap();
        transcript.extend_from_slice(&wire);
        assert_eq!(
            sha256_hex(&transcript),
            "435d59853782a444a0661d33bba32fb023899434556091141c7d86b764dd5391"
        );
        assert_ne!(player.resume_id(), id, "each resume makes a new id");
    }

    /// A hello asking `hello` and the host's reply, in memory: (player, host, wire
    /// bytes of the hello with its prefix).
    fn hello_and_reply(hello: Hello) -> (ExpectVerdict, PendingVerdict, usize, BytesMut) {
        let (player_key, host_key) = keys();
        let mut player =
            PlayerHandshake::with_hello(&player_key, &host_key.host_id(), hello).unwrap();
        let mut wire = BytesMut::new();
        player.write_hello(&mut wire).unwrap();
        let hello_len = wire.len();
        let hello = split_frame(&mut wire).unwrap();
        let host = HostHandshake::respond(&host_key, &hello, &mut wire).unwrap();
        assert_eq!(host.remote_static(), &player_key.public_key());
        let reply = split_frame(&mut wire).unwrap();
        let player = player.read_reply(&reply).unwrap();
        assert_eq!(player.remote_static(), host_key.host_id().public_key());
        (player, host, hello_len, wire)
    }

    #[test]
    fn a_refused_player_learns_it_from_a_frame_the_size_of_a_welcome() {
        // What a refused host or player may not do (seal data, a second verdict, a
        // second end) does not compile: `Refused` has `seal_end(self)` and nothing
        // else, and `PendingVerdict` only its verdicts.
        let resume = Hello::Resume(ResumeId([9; 32]));
        let answers = [
            (Hello::Plain, Verdict::Welcome),
            (Hello::Plain, Verdict::NotAuthorized),
            (Hello::Resumable, Verdict::Welcome),
            (Hello::Resumable, Verdict::WelcomeResumable),
            (Hello::Resumable, Verdict::NotAuthorized),
            (resume, Verdict::Resumed),
            (resume, Verdict::UnknownSession),
            (resume, Verdict::NotAuthorized),
            (Hello::Punch, Verdict::Punch),
            (Hello::Punch, Verdict::UnknownSession),
            (Hello::Punch, Verdict::NotAuthorized),
        ];
        for (hello, verdict) in answers {
            let (player, host, hello_len, _) = hello_and_reply(hello);
            let expected_hello = if hello == Hello::Plain {
                2 + 96
            } else {
                2 + 96 + 32
            };
            assert_eq!(hello_len, expected_hello, "{hello:?}");
            assert_eq!(host.hello(), hello);
            let mut wire = BytesMut::new();
            // The reply again, for its size: it is 48 bytes whatever the hello.
            wire.extend_from_slice(&[0; 2 + 48]);
            let refused_host = match verdict {
                Verdict::Welcome => host.welcome(&mut wire).map(|_| None),
                Verdict::WelcomeResumable => host.welcome_resumable(&mut wire).map(|_| None),
                Verdict::Resumed => host.resumed(&mut wire).map(|_| None),
                Verdict::NotAuthorized => host.refuse(&mut wire).map(Some),
                Verdict::UnknownSession => host.unknown_session(&mut wire).map(Some),
                Verdict::Punch => host.welcome_punch(&mut wire).map(|_| None),
            }
            .unwrap();
            assert_eq!(
                wire.len(),
                2 + 48 + 2 + 18,
                "reply + verdict: the same bytes"
            );
            let _ = wire.split_to(2 + 48);
            let frame = split_frame(&mut wire).unwrap();
            let opened = player.open_verdict(&frame).unwrap();
            assert_eq!(opened.verdict(), verdict);
            match (opened, refused_host) {
                (
                    VerdictOpened::NotAuthorized(player) | VerdictOpened::UnknownSession(player),
                    Some(host),
                ) => {
                    // Each side seals exactly one end, the same frame the ends of a
                    // served session send when its player leaves at once.
                    let mut end = BytesMut::new();
                    player.seal_end(&mut end).unwrap();
                    assert_eq!(end.len(), 2 + 17);
                    host.seal_end(&mut end).unwrap();
                    assert_eq!(end.len(), 2 * (2 + 17));
                }
                (VerdictOpened::Welcome(transport) | VerdictOpened::Resumed(transport), None) => {
                    let resumable = matches!(verdict, Verdict::WelcomeResumable | Verdict::Resumed);
                    assert_eq!(transport.resumable(), resumable, "{verdict:?}");
                    assert_eq!(transport.punch(), verdict == Verdict::Punch, "{verdict:?}");
                }
                (opened, _) => panic!("{verdict:?} opened as {:?}", opened.verdict()),
            }
        }
    }

    /// A host from before punching read a hello's payload as this did: 32 zero
    /// bytes a new resumable session, any other 32 bytes a resume id. It takes the
    /// punch hello for a resume it does not hold, answers "unknown session", and
    /// never hands the session to its application; the player of today reads that
    /// answer as "this host does not punch" (PROTOCOL.md 12).
    #[test]
    fn a_host_from_before_punching_answers_a_punch_hello_with_unknown_session() {
        let old_reading = |payload: &[u8]| match <[u8; RESUME_ID_LEN]>::try_from(payload) {
            Ok(bytes) if bytes == [0; RESUME_ID_LEN] => Hello::Resumable,
            Ok(bytes) => Hello::Resume(ResumeId(bytes)),
            Err(_) => Hello::Plain,
        };
        assert_eq!(PUNCH_HELLO.len(), RESUME_ID_LEN);
        assert_eq!(&PUNCH_HELLO, b"blindrelay/1 punch, direct path?");
        assert_eq!(
            old_reading(Hello::Punch.payload()),
            Hello::Resume(ResumeId(PUNCH_HELLO))
        );
        // Every other hello reads as it did.
        for hello in [
            Hello::Plain,
            Hello::Resumable,
            Hello::Resume(ResumeId([9; 32])),
        ] {
            assert_eq!(old_reading(hello.payload()), hello);
            assert_eq!(Hello::from_payload(hello.payload()), hello);
        }
        // What that old host sends: "unknown session" on a resume it lacks, sealed
        // as it sealed it; the punching player takes it as a refusal.
        let (player, host, _, _) = hello_and_reply(Hello::Punch);
        let mut wire = BytesMut::new();
        let mut host = host.transport;
        host.seal_verdict(Verdict::UnknownSession, &mut wire)
            .unwrap();
        let frame = split_frame(&mut wire).unwrap();
        assert!(matches!(
            player.open_verdict(&frame),
            Ok(VerdictOpened::UnknownSession(_))
        ));
    }

    /// A player from before resumption, byte for byte (PROTOCOL.md 10.7's hello,
    /// with its empty payload): a host of today reads it as a plain session and
    /// answers with the very bytes it answered then, welcome 0x00 included, so that
    /// player never meets an acknowledgement (PROTOCOL.md 12).
    #[test]
    fn an_old_players_hello_gets_the_old_answer() {
        let unhex = |text: &str| -> Vec<u8> {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
                .collect()
        };
        let hello = unhex(concat!(
            "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22",
            "15b8a95d5d330d08a031e199b7afdcf979ca70099a3500fe2d2184680b23ffb3",
            "90c517e232762641d2faae5f04dd355d4c7d5459f0dc18748700bd470db9a2c0",
        ));
        let (_, host_key) = keys();
        let mut answer = BytesMut::new();
        let host =
            testing::host_respond_with_ephemeral(&host_key, &hello, &mut answer, &[4; 32]).unwrap();
        assert_eq!(host.hello(), Hello::Plain);
        let mut host = host.welcome(&mut answer).unwrap();
        assert!(!host.resumable());
        assert_eq!(
            answer.to_vec(),
            unhex(concat!(
                "0030ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b",
                "6ea50427c0490d796c8145ded074c1c3",
                "0012df114df60cbaeaa24c14634e7e5d9e0fbdf8",
            )),
            "the reply and welcome of PROTOCOL.md 10.7"
        );
        assert!(
            host.seal_ack(1, &mut answer).is_err(),
            "no acknowledgement for it"
        );
    }

    #[test]
    fn a_verdict_must_answer_the_hello_it_follows() {
        let resume = Hello::Resume(ResumeId([9; 32]));
        // Verdicts the host's API refuses to seal for the hello it got...
        let (_, host, _, _) = hello_and_reply(Hello::Plain);
        assert!(host.welcome_resumable(&mut BytesMut::new()).is_err());
        let (_, host, _, _) = hello_and_reply(Hello::Resumable);
        assert!(host.resumed(&mut BytesMut::new()).is_err());
        let (_, host, _, _) = hello_and_reply(Hello::Resumable);
        assert!(host.unknown_session(&mut BytesMut::new()).is_err());
        let (_, host, _, _) = hello_and_reply(resume);
        assert!(host.welcome_resumable(&mut BytesMut::new()).is_err());
        let (_, host, _, _) = hello_and_reply(Hello::Resumable);
        assert!(host.welcome_punch(&mut BytesMut::new()).is_err());
        let (_, host, _, _) = hello_and_reply(Hello::Punch);
        assert!(host.welcome_resumable(&mut BytesMut::new()).is_err());
        // ...and that a player refuses when a host sends them anyway: a punch session
        // is never handed to an application as a plain one, nor the other way round.
        for (hello, verdict) in [
            (Hello::Plain, Verdict::Punch),
            (Hello::Resumable, Verdict::Punch),
            (resume, Verdict::Punch),
            (Hello::Punch, Verdict::Welcome),
            (Hello::Punch, Verdict::WelcomeResumable),
            (Hello::Punch, Verdict::Resumed),
            (Hello::Plain, Verdict::WelcomeResumable),
            (Hello::Plain, Verdict::Resumed),
            (Hello::Resumable, Verdict::Resumed),
            (Hello::Resumable, Verdict::UnknownSession),
            (resume, Verdict::Welcome),
            (resume, Verdict::WelcomeResumable),
        ] {
            let (player, host, _, _) = hello_and_reply(hello);
            let mut wire = BytesMut::new();
            let mut host = host.transport;
            host.seal_verdict(verdict, &mut wire).unwrap();
            let frame = split_frame(&mut wire).unwrap();
            assert!(
                matches!(
                    player.open_verdict(&frame),
                    Err(NoiseError::OutOfOrder { .. })
                ),
                "{hello:?} then {verdict:?}"
            );
        }
    }

    /// A resumable session in memory, and the host's view of the hello.
    fn resumable_pair() -> (Transport, Transport) {
        let (player, host, _, _) = hello_and_reply(Hello::Resumable);
        let mut wire = BytesMut::new();
        let host = host.welcome_resumable(&mut wire).unwrap();
        let frame = split_frame(&mut wire).unwrap();
        (welcomed(player.open_verdict(&frame)), host)
    }

    #[test]
    fn both_ends_know_the_resume_id_and_each_handshake_has_its_own() {
        let (player, host) = resumable_pair();
        assert_eq!(player.resume_id(), host.resume_id());
        let (again, _) = resumable_pair();
        assert_ne!(player.resume_id(), again.resume_id());
        // The host reads the id from a resume hello, and answers on.
        let (player_view, host_view, _, _) = hello_and_reply(Hello::Resume(player.resume_id()));
        assert_eq!(host_view.hello(), Hello::Resume(host.resume_id()));
        let mut wire = BytesMut::new();
        let resumed = host_view.resumed(&mut wire).unwrap();
        let frame = split_frame(&mut wire).unwrap();
        match player_view.open_verdict(&frame).unwrap() {
            VerdictOpened::Resumed(transport) => {
                assert_eq!(transport.resume_id(), resumed.resume_id());
                assert_ne!(transport.resume_id(), player.resume_id(), "a new id");
            }
            other => panic!("expected resumed, got {:?}", other.verdict()),
        }
        assert_eq!(
            format!("{:?}", player.resume_id()),
            "ResumeId(..)",
            "never printed"
        );
    }

    #[test]
    fn acknowledgements_cross_in_resumable_sessions_only() {
        let (mut player, mut host) = resumable_pair();
        let mut wire = BytesMut::new();
        host.seal_ack(1 << 40, &mut wire).unwrap();
        assert_eq!(wire.len(), 2 + 8 + 1 + TAG_LEN);
        let frame = split_frame(&mut wire).unwrap();
        assert_eq!(player.open(&frame), Ok(Opened::Ack(1 << 40)));
        // A short body is malformed.
        host.seal_raw(frame_type::ACK, &[0; 7], &mut wire).unwrap();
        let frame = split_frame(&mut wire).unwrap();
        assert_eq!(
            player.open(&frame),
            Err(NoiseError::MalformedFrame { kind: "ack" })
        );

        // After `end`, acknowledgements go on; nothing else does.
        host.seal_end(&mut wire).unwrap();
        host.seal_ack(7, &mut wire).unwrap();
        assert_eq!(host.seal(b"x", &mut wire), Err(NoiseError::WriteAfterEnd));
        host.seal_raw(frame_type::DATA, b"x", &mut wire).unwrap();
        let frames: Vec<_> = std::iter::from_fn(|| split_frame(&mut wire)).collect();
        assert_eq!(player.open(&frames[0]), Ok(Opened::End));
        assert_eq!(player.open(&frames[1]), Ok(Opened::Ack(7)));
        assert_eq!(player.open(&frames[2]), Err(NoiseError::DataAfterEnd));

        let (mut player, mut host) = pair();
        assert!(matches!(
            host.seal_ack(1, &mut wire),
            Err(NoiseError::OutOfOrder { .. })
        ));
        host.seal_raw(frame_type::ACK, &1u64.to_be_bytes(), &mut wire)
            .unwrap();
        let frame = split_frame(&mut wire).unwrap();
        assert!(matches!(
            player.open(&frame),
            Err(NoiseError::OutOfOrder { .. })
        ));
    }

    /// Two identical resumable sessions: fixed ephemeral keys on both sides.
    fn twin_resumable_host() -> Transport {
        let (player_key, host_key) = keys();
        let mut player = testing::player_hello_with_ephemeral(
            &player_key,
            &host_key.host_id(),
            Hello::Resumable,
            &[3; 32],
        )
        .unwrap();
        let mut wire = BytesMut::new();
        player.write_hello(&mut wire).unwrap();
        let hello = split_frame(&mut wire).unwrap();
        let host =
            testing::host_respond_with_ephemeral(&host_key, &hello, &mut wire, &[4; 32]).unwrap();
        host.welcome_resumable(&mut wire).unwrap()
    }

    /// What a peer of any version reads: a frame sealed from the kept copy is, byte
    /// for byte, the frame `seal` makes of the same bytes.
    #[test]
    fn a_frame_sealed_from_the_kept_copy_is_the_frame_seal_makes() {
        let (mut kept, mut plain) = (twin_resumable_host(), twin_resumable_host());
        let mut replay = ReplayBuffer::new(1 << 20);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (mut from_kept, mut from_plain, mut at) = (BytesMut::new(), BytesMut::new(), 0);
        while at < data.len() {
            let n = kept
                .seal_kept(&data[at..], &mut replay, &mut from_kept)
                .unwrap();
            plain.seal(&data[at..at + n], &mut from_plain).unwrap();
            at += n;
        }
        assert_eq!(from_kept, from_plain);
    }

    #[test]
    fn what_a_resumable_session_seals_is_what_its_replay_buffer_keeps() {
        let (mut player, mut host) = resumable_pair();
        host.set_rekey_interval(3);
        let mut replay = ReplayBuffer::new(1 << 20);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut wire, mut at) = (BytesMut::new(), 0);
        while at < data.len() {
            let n = host.seal_kept(&data[at..], &mut replay, &mut wire).unwrap();
            assert!(n > 0 && n <= MAX_PLAINTEXT_LEN);
            at += n;
        }
        assert_eq!(replay.sent(), data.len() as u64);
        let kept: Vec<u8> = replay.unacknowledged().flatten().copied().collect();
        assert_eq!(kept, data, "kept as sealed");
        // The peer opens every frame, the rekeys between them included.
        assert_eq!(open_all(&mut player, &mut wire).unwrap(), data);

        // Nothing is sealed or kept when the buffer is full, or after `end`.
        let mut full = ReplayBuffer::new(0);
        let room = full.room();
        assert_eq!(host.seal_kept(&data, &mut full, &mut wire), Ok(room));
        assert_eq!(host.seal_kept(&data, &mut full, &mut wire), Ok(0));
        wire.clear();
        host.seal_end(&mut wire).unwrap();
        wire.clear();
        assert_eq!(
            host.seal_kept(b"x", &mut replay, &mut wire),
            Err(NoiseError::WriteAfterEnd)
        );
        assert_eq!((wire.len(), replay.sent()), (0, data.len() as u64));
    }

    #[test]
    fn the_player_accepts_nothing_before_the_verdict_and_no_verdict_after() {
        let (player_key, host_key) = keys();
        let mut player = PlayerHandshake::new(&player_key, &host_key.host_id()).unwrap();
        let mut wire = BytesMut::new();
        player.write_hello(&mut wire).unwrap();
        let hello = split_frame(&mut wire).unwrap();
        let host = HostHandshake::respond(&host_key, &hello, &mut wire).unwrap();
        let reply = split_frame(&mut wire).unwrap();
        let player = player.read_reply(&reply).unwrap();
        // A host that skipped its verdict (built by hand: the API cannot).
        let mut host = host.transport;
        host.seal(b"data", &mut wire).unwrap();
        let frame = split_frame(&mut wire).unwrap();
        assert!(matches!(
            player.open_verdict(&frame),
            Err(NoiseError::OutOfOrder { .. })
        ));

        // A second verdict, after a welcome, is refused by the open session.
        let (mut player, mut host) = pair();
        host.seal_verdict(Verdict::Welcome, &mut wire).unwrap();
        let frame = split_frame(&mut wire).unwrap();
        assert!(matches!(
            player.open(&frame),
            Err(NoiseError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn data_flows_both_ways_and_end_is_authenticated() {
        let (mut player, mut host) = pair();
        let mut wire = BytesMut::new();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        seal_all(&mut player, &big, &mut wire).unwrap();
        player.seal_end(&mut wire).unwrap();
        assert_eq!(open_all(&mut host, &mut wire).unwrap(), big);
        assert!(host.received_end());
        assert_eq!(host.handle_eof(), Ok(()));

        host.seal(b"reply", &mut wire).unwrap();
        assert_eq!(open_all(&mut player, &mut wire).unwrap(), b"reply");
        assert_eq!(player.handle_eof(), Err(NoiseError::Truncated));
    }

    #[test]
    fn frames_never_exceed_the_noise_limit() {
        let (mut player, _) = pair();
        let mut wire = BytesMut::new();
        player.seal(&[7; MAX_PLAINTEXT_LEN], &mut wire).unwrap();
        assert_eq!(wire.len(), 2 + MAX_MESSAGE_LEN);
        assert_eq!(
            player.seal(&[7; MAX_PLAINTEXT_LEN + 1], &mut wire),
            Err(NoiseError::PayloadTooLarge {
                len: MAX_PLAINTEXT_LEN + 1,
                max: MAX_PLAINTEXT_LEN
            })
        );
    }

    #[test]
    fn a_stream_cut_short_is_truncation_not_a_clean_end() {
        let (mut player, mut host) = pair();
        let mut wire = BytesMut::new();
        player.seal(b"first half", &mut wire).unwrap();
        assert_eq!(open_all(&mut host, &mut wire).unwrap(), b"first half");
        assert_eq!(host.handle_eof(), Err(NoiseError::Truncated));
    }

    #[test]
    fn altered_reordered_and_dropped_frames_are_detected() {
        let (mut player, mut host) = pair();
        let mut wire = BytesMut::new();
        player.seal(b"one", &mut wire).unwrap();
        let mut frame = split_frame(&mut wire).unwrap();
        frame[5] ^= 1;
        assert_eq!(host.open(&frame), Err(NoiseError::Decrypt));

        let (mut player, mut host) = pair();
        player.seal(b"one", &mut wire).unwrap();
        player.seal(b"two", &mut wire).unwrap();
        let first = split_frame(&mut wire).unwrap();
        let second = split_frame(&mut wire).unwrap();
        assert_eq!(host.open(&second), Err(NoiseError::Decrypt));
        let _ = first;

        // The end frame itself cannot be forged by the relay.
        let (_, mut host) = pair();
        assert_eq!(host.open(&[0u8; 17]), Err(NoiseError::Decrypt));
    }

    #[test]
    fn nothing_is_accepted_after_the_end() {
        let (mut player, mut host) = pair();
        let mut wire = BytesMut::new();
        player.seal_end(&mut wire).unwrap();
        assert_eq!(
            player.seal(b"late", &mut wire),
            Err(NoiseError::WriteAfterEnd)
        );
        let end = split_frame(&mut wire).unwrap();
        assert_eq!(host.open(&end), Ok(Opened::End));
        assert_eq!(host.open(&end), Err(NoiseError::DataAfterEnd));
    }

    #[test]
    fn rekeying_keeps_the_session_going() {
        let (mut player, mut host) = pair();
        player.set_rekey_interval(3);
        let mut wire = BytesMut::new();
        let mut rekeys = 0;
        let mut received = Vec::new();
        for i in 0..20u8 {
            player.seal(&[i; 10], &mut wire).unwrap();
            while let Some(frame) = split_frame(&mut wire) {
                match host.open(&frame).unwrap() {
                    Opened::Data(data) => received.extend_from_slice(data),
                    Opened::Rekeyed => rekeys += 1,
                    Opened::End | Opened::Ack(_) => unreachable!(),
                }
            }
        }
        assert_eq!(received.len(), 200);
        assert!(
            rekeys >= 6,
            "expected a rekey every 3 messages, saw {rekeys}"
        );
    }

    #[test]
    fn a_receiver_that_ignores_rekey_cannot_read_on() {
        // Proves the rekey frame really changes the key: skip it and decryption fails.
        let (mut player, mut host) = pair();
        player.set_rekey_interval(2);
        let mut wire = BytesMut::new();
        player.seal(b"a", &mut wire).unwrap();
        player.seal(b"b", &mut wire).unwrap();
        let frames: Vec<_> = std::iter::from_fn(|| split_frame(&mut wire)).collect();
        assert_eq!(frames.len(), 3, "data, rekey, data");
        assert_eq!(host.open(&frames[0]), Ok(Opened::Data(b"a")));
        set_receiving_nonce(&mut host, 2);
        assert_eq!(host.open(&frames[2]), Err(NoiseError::Decrypt));
    }

    #[test]
    fn nonce_exhaustion_ends_the_session() {
        let (_, mut host) = pair();
        set_receiving_nonce(&mut host, u64::MAX);
        assert_eq!(host.open(&[0u8; 32]), Err(NoiseError::NonceExhausted));
    }

    #[test]
    fn the_wrong_host_cannot_answer() {
        let (player_key, host_key) = keys();
        let stranger = SecretKey::from_bytes([9; 32]);
        let mut player = PlayerHandshake::new(&player_key, &host_key.host_id()).unwrap();
        let mut wire = BytesMut::new();
        player.write_hello(&mut wire).unwrap();
        let hello = split_frame(&mut wire).unwrap();
        assert!(matches!(
            HostHandshake::respond(&stranger, &hello, &mut wire),
            Err(NoiseError::Handshake { .. })
        ));
    }

    #[test]
    fn low_order_keys_are_refused() {
        let (player_key, _) = keys();
        assert!(PlayerHandshake::new(&player_key, &HostId::from_bytes([0; 32])).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_host(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (_, host_key) = keys();
            let mut out = BytesMut::new();
            prop_assert!(HostHandshake::respond(&host_key, &bytes, &mut out).is_err());
        }

        #[test]
        fn arbitrary_frames_never_panic_a_session(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..8)) {
            let (_, mut host) = pair();
            for frame in frames {
                let _ = host.open(&frame);
            }
            let mut wire = BytesMut::from(&[0u8, 5, 1, 2][..]);
            prop_assert!(split_frame(&mut wire).is_none());
        }
    }
}
