//! Fuzz target bodies: one function per decoder, each taking arbitrary bytes.
//!
//! The `fuzz/` crate at the repository root wraps each in a libFuzzer target for
//! `cargo fuzz run` (nightly toolchain), and `protocol/tests/fuzz.rs` drives the same
//! functions on the stable toolchain: it replays the seed corpus in `fuzz/corpus/`
//! and then mutates it for a bounded time. A function fails (panics) only when a
//! decoder panics or breaks one of the invariants checked here: what decodes
//! re-encodes to the same bytes, and what is refused is refused with an error.

use bytes::BytesMut;

use crate::control::ControlMessage;
use crate::keys::{HostId, SecretKey};
use crate::noise::{split_frame, Hello, HostHandshake, PlayerHandshake, VerdictOpened};
use crate::punch::{Candidates, PathCheck, Ready};
use crate::registration::{HostRegistration, RelayRegistration, EXPORTER_LEN};
use crate::stream_frame::{StreamFrame, MAX_FRAME_LEN};
use crate::ticket::Ticket;
use crate::token::{self, IssuerKeys, IssuerSecretKey, Token};

/// A target's body: panics on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("control", control),
    ("control_stream", control_stream),
    ("ticket", ticket),
    ("ticket_text", ticket_text),
    ("host_id_text", host_id_text),
    ("noise_handshake", noise_handshake),
    ("noise_frames", noise_frames),
    ("token", token),
    ("token_text", token_text),
    ("key_files", key_files),
    ("registration", registration),
    ("stream_frames", stream_frames),
    ("punch", punch),
];

/// One control frame's content: decodes or errs; decoded messages re-encode to the
/// same bytes.
pub fn control(data: &[u8]) {
    if let Ok(message) = ControlMessage::decode(data) {
        assert_eq!(&message.to_frame()[2..], data, "{message:?}");
    }
}

/// A stream of control frames, fed in pieces as they would arrive.
pub fn control_stream(data: &[u8]) {
    let mut buf = BytesMut::new();
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            match ControlMessage::decode_frame(&mut buf) {
                Ok(Some(message)) => {
                    let frame = message.to_frame();
                    assert!(frame.len() <= 2 + crate::control::MAX_FRAME_LEN);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Never more than one frame buffered: the reader bounds its memory.
        assert!(buf.len() < 2 + crate::control::MAX_FRAME_LEN + 7);
    }
}

/// A ticket's binary form.
pub fn ticket(data: &[u8]) {
    if let Ok(ticket) = Ticket::from_bytes(data) {
        assert_eq!(Ticket::from_bytes(&ticket.to_bytes()), Ok(ticket));
    }
}

/// A ticket's text form.
pub fn ticket_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ticket) = text.parse::<Ticket>() {
            assert_eq!(ticket.to_string().parse::<Ticket>(), Ok(ticket));
        }
    }
}

/// A host id (or any key) in text form.
pub fn host_id_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(host_id) = text.parse::<HostId>() {
            assert_eq!(host_id.to_string().parse::<HostId>(), Ok(host_id));
        }
    }
}

/// A player's hello as the host receives it.
pub fn noise_handshake(data: &[u8]) {
    let host = SecretKey::from_bytes([2; 32]);
    let mut out = BytesMut::new();
    let _ = HostHandshake::respond(&host, data, &mut out);
}

/// Transport frames, split by their length prefixes, opened by both ends of a real
/// session (the player expecting the host's verdict first).
pub fn noise_frames(data: &[u8]) {
    let (player_key, host_key) = (
        SecretKey::from_bytes([1; 32]),
        SecretKey::from_bytes([2; 32]),
    );
    // A resumable session, so acknowledgements are opened too.
    let Ok(mut player) =
        PlayerHandshake::with_hello(&player_key, &host_key.host_id(), Hello::Resumable)
    else {
        return;
    };
    let mut wire = BytesMut::new();
    if player.write_hello(&mut wire).is_err() {
        return;
    }
    let Some(hello) = split_frame(&mut wire) else {
        return;
    };
    let Ok(host) = HostHandshake::respond(&host_key, &hello, &mut wire) else {
        return;
    };
    let Ok(mut host) = host.welcome_resumable(&mut wire) else {
        return;
    };
    let Some(reply) = split_frame(&mut wire) else {
        return;
    };
    let Ok(player) = player.read_reply(&reply) else {
        return;
    };
    // The player takes the input's first frame as the host's verdict, in place of
    // the real one; only a welcome lets it open the frames that follow.
    let mut input = BytesMut::from(data);
    let mut player = Some(player);
    let mut welcomed = None;
    while let Some(frame) = split_frame(&mut input) {
        let _ = host.open(&frame);
        if let Some(player) = player.take() {
            match player.open_verdict(&frame) {
                Ok(VerdictOpened::Welcome(transport) | VerdictOpened::Resumed(transport)) => {
                    welcomed = Some(transport);
                }
                Ok(
                    VerdictOpened::NotAuthorized(refused) | VerdictOpened::UnknownSession(refused),
                ) => {
                    assert!(refused.seal_end(&mut BytesMut::new()).is_ok());
                }
                Err(_) => {}
            }
        } else if let Some(transport) = welcomed.as_mut() {
            let _ = transport.open(&frame);
        }
    }
}

/// A registration token's binary form, checked against a fixed issuer.
pub fn token(data: &[u8]) {
    let keys = fixed_issuer_keys();
    let host = HostId::from_bytes([0xab; 32]);
    match Token::from_bytes(data) {
        Ok(parsed) => assert_eq!(parsed.to_bytes(), data),
        Err(_) => assert!(token::verify(data, &keys, &host, 0).is_err()),
    }
    let _ = token::verify(data, &keys, &host, 1_700_000_000);
}

/// A registration token's text form.
pub fn token_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(parsed) = text.parse::<Token>() {
            assert_eq!(parsed.to_string().parse::<Token>(), Ok(parsed));
        }
    }
}

/// Key files: host and player secret keys, issuer secret keys, issuer public key
/// lists (all text, read from files an operator or user edits).
pub fn key_files(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SecretKey::from_key_file(text);
        let _ = IssuerSecretKey::from_key_file(text);
        let _ = IssuerKeys::parse(text);
    }
}

/// Both sides of the registration machine fed whatever control frames `data` holds:
/// the first as the host's `Register` to the relay's side, the next as its proof;
/// every frame also as the relay's answer to a host at each of its steps. Nothing
/// panics, and no proof made without the host's key is admitted.
pub fn registration(data: &[u8]) {
    let mut frames = BytesMut::from(data);
    let mut messages = Vec::new();
    while let Ok(Some(message)) = ControlMessage::decode_frame(&mut frames) {
        messages.push(message);
    }
    let exporter = [3; EXPORTER_LEN];
    let keys = fixed_issuer_keys();
    let mut relay_inputs = messages.iter().cloned();
    if let Some(ControlMessage::Register { host_id, token, .. }) = relay_inputs.next() {
        for issuers in [None, Some(&keys)] {
            if let Ok((expect_proof, _challenge)) =
                RelayRegistration::start(host_id, token.clone(), issuers)
            {
                if let Some(answer) = relay_inputs.clone().next() {
                    // The relay's ephemeral key is fresh: no fixed input proves.
                    assert!(expect_proof.handle(answer, &exporter, 0).is_err());
                }
            }
        }
    }
    let host = SecretKey::from_bytes([5; 32]);
    for message in messages {
        let (expect_challenge, _) = HostRegistration::start(&host, None);
        let _ = expect_challenge.handle(message.clone(), &exporter);
        let (expect_challenge, _) = HostRegistration::start(&host, None);
        let challenge = ControlMessage::Challenge {
            relay_ephemeral: SecretKey::from_bytes([6; 32]).public_key(),
        };
        if let Ok((expect_registered, _)) = expect_challenge.handle(challenge, &exporter) {
            let _ = expect_registered.handle(message);
        }
    }
}

fn fixed_issuer_keys() -> IssuerKeys {
    match IssuerSecretKey::from_seed([7; 32]) {
        Ok(key) => IssuerKeys::new(vec![key.public_key()]),
        Err(_) => IssuerKeys::default(),
    }
}

/// A stream transport's frames, fed in pieces as a TLS connection delivers them:
/// every frame that decodes re-encodes to the bytes it came from, and the buffer
/// never holds more than one frame's worth before a frame completes or is refused.
pub fn stream_frames(data: &[u8]) {
    let mut buf = BytesMut::new();
    let mut consumed = 0;
    for piece in data.chunks(5) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.clone();
            match StreamFrame::decode(&mut buf) {
                Ok(Some(frame)) => {
                    let used = before.len() - buf.len();
                    let mut again = BytesMut::new();
                    frame.encode(&mut again);
                    assert_eq!(&again[..], &before[..used], "{frame:?}");
                    consumed += used;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            buf.len() < MAX_FRAME_LEN + 5,
            "buffered {} bytes",
            buf.len()
        );
    }
    assert!(consumed <= data.len());
}

/// A punch session's messages (PROTOCOL.md 10.9), fed in pieces: what decodes
/// re-encodes to the bytes it came from, and at most one message is ever buffered.
pub fn punch(data: &[u8]) {
    // The first byte picks which message the stream should carry.
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::new();
    for piece in data.chunks(3) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.clone();
            let mut again = BytesMut::new();
            let decoded = match which % 3 {
                0 => Candidates::decode_frame(&mut buf).map(|c| c.map(|c| c.encode(&mut again))),
                1 => PathCheck::decode_frame(&mut buf).map(|c| c.map(|c| c.encode(&mut again))),
                _ => Ready::decode_frame(&mut buf).map(|c| c.map(|c| c.encode(&mut again))),
            };
            match decoded {
                Ok(Some(())) => {
                    let used = before.len() - buf.len();
                    assert_eq!(&again[..], &before[..used]);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() < 2 + crate::punch::MAX_MESSAGE_LEN + 3);
    }
}
