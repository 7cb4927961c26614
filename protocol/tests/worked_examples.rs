//! Every worked example in PROTOCOL.md, computed here from the crate and found in the
//! document, so a second implementation can check itself against the text alone and
//! the text cannot drift from the code.
//!
//! The document writes long hex in pieces (`0060` `5dfe…`); [`Doc::has`] looks for a
//! value with the pieces joined, so an example passes only if its bytes appear whole.

use std::net::SocketAddr;

use blindrelay_protocol::noise::{self, testing, VerdictOpened, NOISE_PARAMS, PROLOGUE};
use blindrelay_protocol::registration::{self, PROOF_CONTEXT};
use blindrelay_protocol::{
    Claims, ControlMessage, ErrorCode, HostId, IssuerSecretKey, PublicKey, RelayUrl, SecretKey,
    SessionLimits, Ticket, Token,
};
use bytes::BytesMut;

const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// PROTOCOL.md with the separators between hex pieces (`` ` ` ``) removed.
struct Doc(String);

impl Doc {
    fn load() -> Self {
        Self(PROTOCOL_MD.replace("` `", ""))
    }

    /// Panics unless `text` appears in the document (pieces joined).
    #[track_caller]
    fn has(&self, text: &str) {
        assert!(self.0.contains(text), "PROTOCOL.md does not show {text:?}");
    }

    /// `bytes` written as `prefix` bytes in full, then a run of one repeated byte
    /// elided as the document writes it (`lead` bytes, `…`, one byte: `1111…11` or
    /// `00…00`), then `suffix` bytes in full.
    #[track_caller]
    fn has_elided(&self, bytes: &[u8], prefix: usize, lead: usize, suffix: usize) {
        let run = &bytes[prefix..bytes.len() - suffix];
        assert!(run.iter().all(|&b| b == run[0]), "not a run: {run:?}");
        let text = format!(
            "{}{}…{}{}",
            hex(&bytes[..prefix]),
            hex(&run[..lead]),
            hex(&run[..1]),
            hex(&bytes[bytes.len() - suffix..])
        );
        self.has(&text);
    }
}

#[test]
fn section_3_key_host_id_and_key_file() {
    let doc = Doc::load();
    let key = SecretKey::from_bytes([2; 32]);
    doc.has(&hex(key.public_key().as_bytes()));
    let text = key.host_id().to_string();
    assert_eq!(text, "z2gtvuomwyz6y63qyf4bjjohn3gqffufaugtir2fxicyodsypvmq");
    doc.has(&text);
    let file = key.to_key_file();
    doc.has(&format!("```text\n{file}```"));
    assert_eq!(SecretKey::from_key_file(&file).unwrap().to_bytes(), [2; 32]);
}

#[test]
fn section_5_3_ticket_bytes_checksum_and_text() {
    let doc = Doc::load();
    let url: RelayUrl = "blindrelay://r.example:7".parse().unwrap();
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let ticket = Ticket::new(HostId::from_bytes([0xab; 32]), url, vec![addr]).unwrap();
    let bytes = ticket.to_bytes();
    assert_eq!(bytes.len(), 71);
    let (body, checksum) = bytes.split_at(67);
    assert_eq!(checksum, &sha256(body)[..4]);
    doc.has(&format!("`{}`", hex(&bytes[..1])));
    doc.has(&format!("`{}`", hex(&bytes[33..35])));
    doc.has(&format!("`{}`", hex(&bytes[35..59])));
    doc.has(&format!("`{}`", hex(&bytes[59..60])));
    doc.has(&format!("`{}`", hex(&bytes[60..67])));
    doc.has(&format!("`{}`", hex(checksum)));
    let text = ticket.to_string();
    doc.has(&format!("```text\n{text}\n```"));
    assert_eq!(text.parse::<Ticket>().unwrap(), ticket);
}

#[test]
fn section_5_1_smallest_and_largest_tickets() {
    let doc = Doc::load();
    // No relay and one IPv4 address: version, host id, URL length, address count,
    // one address, checksum.
    let one_v4 = vec!["10.0.0.1:80".parse().unwrap()];
    let smallest = Ticket::with_routes(HostId::from_bytes([1; 32]), None, one_v4).unwrap();
    assert_eq!(smallest.to_bytes().len(), 1 + 32 + 2 + 1 + 7 + 4);
    assert_eq!(smallest.to_bytes().len(), 47);
    // The field limits: a 512-byte URL and eight IPv6 addresses.
    assert_eq!(1 + 32 + 2 + 512 + 1 + 8 * 19 + 4, 704);
    doc.has("| Ticket, binary                               | 47 to 704 bytes ");
}

#[test]
fn section_6_alpn_bytes() {
    let doc = Doc::load();
    doc.has(&format!("`{}`", hex(b"blindrelay/1")));
    doc.has(&format!("`{}`", hex(b"blindrelay-direct/1")));
}

#[test]
fn section_7_4_control_frames() {
    let doc = Doc::load();
    let frame = |message: ControlMessage| message.to_frame().to_vec();
    let register = frame(ControlMessage::register(HostId::from_bytes([0x11; 32])));
    doc.has_elided(&register, 4, 2, 0);
    doc.has(&format!("`{}`", &hex(&register)[..8]));
    doc.has(&format!(
        "{}` followed by 64 hex digits `11…11`",
        &hex(&register)[..8]
    ));
    doc.has_elided(
        &frame(ControlMessage::Register {
            host_id: HostId::from_bytes([0x11; 32]),
            token: Some(vec![0xaa, 0xbb, 0xcc]),
            redirects: 0,
        }),
        4,
        2,
        5,
    );
    doc.has_elided(
        &frame(ControlMessage::Challenge {
            relay_ephemeral: PublicKey::from_bytes([0x22; 32]),
        }),
        4,
        2,
        0,
    );
    doc.has_elided(&frame(ControlMessage::Proof { mac: [0x33; 32] }), 4, 2, 0);
    doc.has(&hex(&frame(ControlMessage::Registered)));
    doc.has(&hex(&frame(ControlMessage::Redirect {
        members: vec!["r0.example:443".to_owned(), "[::1]:4433".to_owned()],
    })));
    doc.has(&hex(&frame(ControlMessage::Move {
        members: vec!["10.0.0.7:443".to_owned()],
    })));
    doc.has_elided(
        &frame(ControlMessage::Connect {
            host_id: HostId::from_bytes([0x44; 32]),
            redirects: 2,
        }),
        4,
        2,
        1,
    );
    doc.has_elided(
        &frame(ControlMessage::Register {
            host_id: HostId::from_bytes([0x11; 32]),
            token: Some(vec![0xaa, 0xbb, 0xcc]),
            redirects: 1,
        }),
        4,
        2,
        6,
    );
    doc.has(&hex(&frame(ControlMessage::GoingAway {
        retry_after_ms: 1500,
    })));
    doc.has_elided(
        &frame(ControlMessage::connect(HostId::from_bytes([0x44; 32]))),
        4,
        2,
        0,
    );
    doc.has_elided(
        &frame(ControlMessage::Connected {
            session_id: 0x0102030405060708,
            limits: SessionLimits::NONE,
        }),
        12,
        1,
        0,
    );
    doc.has_elided(
        &frame(ControlMessage::Incoming {
            session_id: 7,
            limits: SessionLimits {
                rate: 1_250_000,
                ..SessionLimits::NONE
            },
        }),
        20,
        1,
        0,
    );
    let error = hex(&frame(ControlMessage::error(
        ErrorCode::HostOffline,
        "host offline",
    )));
    assert_eq!(error, "0012017f0003000c686f7374206f66666c696e65");
    doc.has(&format!("`{error}`"));
}

#[test]
fn section_7_5_limit_fields_in_table_order() {
    let doc = Doc::load();
    let limits = SessionLimits {
        rate: 1,
        host_rate: 2,
        max_bytes: 3,
        max_duration_secs: 4,
        idle_timeout_secs: 5,
        stall_timeout_secs: 6,
    };
    let mut out = Vec::new();
    limits.encode(&mut out);
    assert_eq!(out.len(), 36);
    doc.has(&format!("`{}`", hex(&out)));
}

#[test]
fn section_8_2_registration_proof() {
    let doc = Doc::load();
    let host = SecretKey::from_bytes([2; 32]);
    let relay = SecretKey::from_bytes([5; 32]);
    let exporter = [0x5a; 32];
    let h = host.host_id();
    let e = relay.public_key();
    let k = host.diffie_hellman(&e).unwrap();
    assert_eq!(
        relay.diffie_hellman(h.public_key()),
        Some(k),
        "both sides' k"
    );
    let mac = registration::prove(&host, &e, &exporter).unwrap();
    // The MAC as defined, computed here without the crate's proof code.
    let mut message = PROOF_CONTEXT.to_vec();
    message.extend_from_slice(&exporter);
    message.extend_from_slice(h.as_bytes());
    message.extend_from_slice(e.as_bytes());
    assert_eq!(message.len(), 127);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k);
    assert_eq!(ring::hmac::sign(&key, &message).as_ref(), mac);
    for value in [h.as_bytes(), e.as_bytes(), &k, &mac] {
        doc.has(&format!("| `{}` |", hex(value)));
    }
}

#[test]
fn section_8_8_registration_token() {
    let doc = Doc::load();
    let issuer = IssuerSecretKey::from_seed([7; 32]).unwrap();
    let public = issuer.public_key();
    let token = issuer
        .issue(Claims {
            host_id: HostId::from_bytes([0xab; 32]),
            expires: 1_800_000_000,
            tier: "free".to_owned(),
        })
        .unwrap();
    let bytes = token.to_bytes();
    assert_eq!(bytes.len(), 1 + 8 + 32 + 8 + 1 + 4 + 64);
    assert_eq!(&bytes[1..9], &sha256(public.as_bytes())[..8]);
    doc.has(&format!("`{}`", hex(public.as_bytes())));
    doc.has(&format!("`{}`", public));
    doc.has(&format!("`{}`", hex(public.id())));
    // The token whole, in hex (written in lines of 32 bytes) and in text.
    let lines: Vec<String> = bytes.chunks(32).map(hex).collect();
    doc.has(&format!("```text\n{}\n```", lines.join("\n")));
    let text = token.to_string();
    doc.has(&format!("```text\n{text}\n```"));
    // Read in either case, with whitespace around it.
    let loose = format!("  {}\n", text.to_ascii_uppercase());
    assert_eq!(loose.parse::<Token>().unwrap(), token);
    // The signature verifies over the context and the fields, with ring alone.
    let mut signed = b"blindrelay/1 registration token".to_vec();
    signed.extend_from_slice(&bytes[..bytes.len() - 64]);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public.as_bytes())
        .verify(&signed, &bytes[bytes.len() - 64..])
        .expect("the signature covers the context and every field before it");
    doc.has("\"blindrelay/1 registration token\"");
}

#[test]
fn section_10_1_prologue() {
    let doc = Doc::load();
    assert_eq!(PROLOGUE.len(), 50);
    doc.has(&format!("`{}`", String::from_utf8_lossy(PROLOGUE)));
    doc.has(&format!("`{}`", hex(PROLOGUE)));
    doc.has(&format!("`{NOISE_PARAMS}`"));
}

#[test]
fn section_10_7_noise_vector() {
    let doc = Doc::load();
    let keys: Vec<SecretKey> = (1..=4).map(|b| SecretKey::from_bytes([b; 32])).collect();
    for key in &keys {
        doc.has(&format!("| `{}` |", hex(key.public_key().as_bytes())));
    }
    let (player_key, host_key) = (&keys[0], &keys[1]);

    let mut player =
        testing::player_with_ephemeral(player_key, &host_key.host_id(), &[3; 32]).unwrap();
    let mut wire = BytesMut::new();
    player.write_hello(&mut wire).unwrap();
    let mut rows = vec![wire.to_vec()];
    let mut transcript = wire.to_vec();
    let hello = noise::split_frame(&mut wire).unwrap();
    let host = testing::host_respond_with_ephemeral(host_key, &hello, &mut wire, &[4; 32]).unwrap();
    let reply_len = wire.len();
    let mut host = host.welcome(&mut wire).unwrap();
    rows.push(wire[..reply_len].to_vec());
    rows.push(wire[reply_len..].to_vec());
    transcript.extend_from_slice(&wire);
    let reply = noise::split_frame(&mut wire).unwrap();
    let player = player.read_reply(&reply).unwrap();
    let verdict = noise::split_frame(&mut wire).unwrap();
    let Ok(VerdictOpened::Welcome(mut player)) = player.open_verdict(&verdict) else {
        panic!("the vector's host welcomes its player");
    };
    let mut out = BytesMut::new();
    player.seal(b"GET /movie.mkv", &mut out).unwrap();
    rows.push(out.split().to_vec());
    player.seal_end(&mut out).unwrap();
    rows.push(out.split().to_vec());
    host.seal(b"200 OK", &mut out).unwrap();
    rows.push(out.to_vec());
    for row in &rows[3..] {
        transcript.extend_from_slice(row);
    }
    assert_eq!(transcript.len(), 245);
    for row in &rows {
        doc.has(&format!("| `{}` |", hex(row)));
    }
    for plaintext in [
        "0003",
        "474554202f6d6f7669652e6d6b7600",
        "01",
        "323030204f4b00",
    ] {
        doc.has(&format!("`{plaintext}`"));
    }
    doc.has(&format!("```text\n{}\n```", hex(&sha256(&transcript))));

    // The handshake hash, from the same handshake run on the Noise library directly.
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let mut initiator = snow::Builder::new(params.clone())
        .local_private_key(&[1; 32])
        .unwrap()
        .remote_public_key(host_key.public_key().as_bytes())
        .unwrap()
        .prologue(PROLOGUE)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&[3; 32])
        .build_initiator()
        .unwrap();
    let mut responder = snow::Builder::new(params)
        .local_private_key(&[2; 32])
        .unwrap()
        .prologue(PROLOGUE)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&[4; 32])
        .build_responder()
        .unwrap();
    let (mut a, mut b) = ([0u8; 256], [0u8; 256]);
    let n = initiator.write_message(&[], &mut a).unwrap();
    assert_eq!(&a[..n], &rows[0][2..], "the hello, byte for byte");
    responder.read_message(&a[..n], &mut b).unwrap();
    let n = responder.write_message(&[], &mut a).unwrap();
    assert_eq!(&a[..n], &rows[1][2..], "the reply, byte for byte");
    initiator.read_message(&a[..n], &mut b).unwrap();
    assert_eq!(
        initiator.get_handshake_hash(),
        responder.get_handshake_hash()
    );
    doc.has(&format!("`{}`", hex(initiator.get_handshake_hash())));
}
