//! Registration tokens: a relay that requires them admits a host only with a valid
//! token for its own host id, refuses every other token with a code of its own, puts
//! the host in the token's tier, and ends the registration when the token expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blindrelay_client::{HostAgent, HostState, TransportPreference};
use blindrelay_protocol::control::ControlMessage;
use blindrelay_protocol::token::{Claims, IssuerKeys, IssuerSecretKey};
use blindrelay_protocol::{ErrorCode, HostId, SecretKey};
use blindrelay_relay::limits::TierConfig;
use blindrelay_relay::units::Rate;
use blindrelay_relay::Relay;
use blindrelay_tests::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A relay that requires tokens from `issuer`, with a tier `free` capped at 2 Mbit/s.
fn token_relay(issuer: &IssuerSecretKey) -> Relay {
    init_tracing();
    let mut config = relay_config();
    config.token_issuers = Some(IssuerKeys::new(vec![issuer.public_key()]));
    let mut free = TierConfig::default();
    free.session_rate = Some(Rate(250_000));
    config.limits.tiers.insert("free".to_owned(), free);
    Relay::spawn(config).unwrap()
}

fn issue(issuer: &IssuerSecretKey, host_id: HostId, expires: u64, tier: &str) -> Vec<u8> {
    issuer
        .issue(Claims {
            host_id,
            expires,
            tier: tier.to_owned(),
        })
        .unwrap()
        .to_bytes()
}

/// Registers `host_id` by hand with `token`, proving with `prover`; returns the
/// relay's last answer (its refusal, or `Registered`) and the stream that holds it.
async fn register_with_token(
    relay: &Relay,
    host_id: HostId,
    prover: &SecretKey,
    token: Option<Vec<u8>>,
) -> (ControlMessage, quinn::SendStream, quinn::RecvStream) {
    let connection = raw_connection(relay).await;
    let register = ControlMessage::Register {
        host_id,
        token,
        redirects: 0,
    };
    register_with(&connection, register, prover, &connection).await
}

fn code_of(message: &ControlMessage) -> Option<ErrorCode> {
    match message {
        ControlMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_registers_the_host_in_the_tier_it_names() {
    let issuer = IssuerSecretKey::generate().unwrap();
    let relay = token_relay(&issuer);
    let key = SecretKey::generate().unwrap();
    let token = issue(&issuer, key.host_id(), now() + 3600, "free");
    let mut config = host_config(key.clone(), relay.url());
    config.token = Some(blindrelay_protocol::Token::from_bytes(&token).unwrap());
    let agent = HostAgent::start(config).expect("host agent starts");
    wait_for_state(&agent, |state| *state == HostState::Registered).await;
    let ticket = agent.ticket().clone();
    let _echo = spawn_echo_host(agent);

    let session = player().connect(&ticket).await.unwrap();
    assert_eq!(session.limits().rate, 250_000, "the token's tier applies");
    let (mut read, mut write) = tokio::io::split(session);
    let (sent, echoed) = tokio::join!(
        write_pattern(&mut write, 3, 64 << 10),
        read_pattern(&mut read, 3)
    );
    sent.unwrap();
    assert_eq!(echoed.unwrap(), 64 << 10);

    // A token for the default tier works as well.
    let other = SecretKey::generate().unwrap();
    let token = issue(&issuer, other.host_id(), now() + 3600, "default");
    let (verdict, _send, _recv) =
        register_with_token(&relay, other.host_id(), &other, Some(token)).await;
    assert_eq!(verdict, ControlMessage::Registered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_token_is_refused_with_its_own_code() {
    let issuer = IssuerSecretKey::generate().unwrap();
    let relay = token_relay(&issuer);
    let key = SecretKey::generate().unwrap();
    let host = key.host_id();
    let later = now() + 3600;
    let stranger = IssuerSecretKey::generate().unwrap();
    let mut tampered = issue(&issuer, host, later, "default");
    let expiry_byte = 1 + 8 + 32 + 7;
    tampered[expiry_byte] ^= 0x80;

    let cases: Vec<(&str, Option<Vec<u8>>, ErrorCode)> = vec![
        ("missing", None, ErrorCode::TokenRequired),
        (
            "expired",
            Some(issue(&issuer, host, now() - 1, "default")),
            ErrorCode::TokenExpired,
        ),
        (
            "wrong host",
            Some(issue(
                &issuer,
                SecretKey::generate().unwrap().host_id(),
                later,
                "default",
            )),
            ErrorCode::TokenWrongHost,
        ),
        ("tampered", Some(tampered), ErrorCode::TokenInvalid),
        (
            "unknown issuer",
            Some(issue(&stranger, host, later, "default")),
            ErrorCode::TokenInvalid,
        ),
        (
            "unknown tier",
            Some(issue(&issuer, host, later, "gold")),
            ErrorCode::TokenInvalid,
        ),
        ("malformed", Some(vec![1, 2, 3]), ErrorCode::TokenMalformed),
    ];
    for (case, token, want) in cases {
        let (answer, _send, _recv) = register_with_token(&relay, host, &key, token).await;
        assert_eq!(code_of(&answer), Some(want), "{case}: {answer:?}");
    }
    assert_eq!(relay.stats().registered_hosts, 0);

    // Someone without the key learns nothing about a token: the proof fails first,
    // whether the token is valid or not.
    let impostor = SecretKey::generate().unwrap();
    for token in [
        issue(&issuer, host, later, "default"),
        issue(&issuer, host, now() - 1, "default"),
    ] {
        let (answer, _send, _recv) =
            register_with_token(&relay, host, &impostor, Some(token)).await;
        assert_eq!(code_of(&answer), Some(ErrorCode::ProofFailed), "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_token_is_refused_or_expires_waits_for_a_new_one_and_stays_direct() {
    let issuer = IssuerSecretKey::generate().unwrap();
    let relay = token_relay(&issuer);
    let token_for = |key: &SecretKey, expires| {
        blindrelay_protocol::Token::from_bytes(&issue(&issuer, key.host_id(), expires, "default"))
            .unwrap()
    };
    // No token at all: refused, and the agent waits; a token puts it on the relay.
    let key = SecretKey::generate().unwrap();
    let agent = HostAgent::start(host_config(key.clone(), relay.url())).expect("starts");
    let state = wait_for_state(&agent, |s| matches!(s, HostState::TokenRefused { .. })).await;
    assert!(state.to_string().contains("token required"), "{state}");
    agent.set_token(token_for(&key, now() + 3600));
    wait_for_state(&agent, |s| *s == HostState::Registered).await;

    // A token that expires under a running registration, on a host that also
    // listens directly: only the relay side ends.
    let key = SecretKey::generate().unwrap();
    let mut config = host_config(key.clone(), relay.url());
    config.direct = Some("127.0.0.1:0".parse().unwrap());
    config.token = Some(token_for(&key, now() + 3));
    let agent = HostAgent::start(config).expect("starts");
    wait_for_state(&agent, |s| *s == HostState::Registered).await;
    let ticket = agent.ticket().clone();
    let mut states = agent.watch_state();
    // The agent echoes its sessions and takes new tokens from the test meanwhile.
    let (renew, host) = echo_taking_tokens(agent);
    let state = tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| matches!(s, HostState::TokenRefused { .. })),
    )
    .await
    .expect("the relay ends the registration at expiry")
    .unwrap()
    .clone();
    assert_eq!(state.to_string(), "token expired");
    let direct = player()
        .connect_via(&ticket, blindrelay_client::PathPreference::DirectOnly)
        .await
        .expect("the direct path goes on");
    echo_exactly(direct, 1 << 16).await;
    // A renewed token, and the relay has the host back without a restart.
    renew.send(token_for(&key, now() + 3600)).await.unwrap();
    tokio::time::timeout(PATIENCE, states.wait_for(|s| *s == HostState::Registered))
        .await
        .expect("registered again")
        .unwrap();
    let relayed = player()
        .connect_via(&ticket, blindrelay_client::PathPreference::RelayOnly)
        .await
        .expect("relayed again");
    echo_exactly(relayed, 1 << 16).await;
    host.abort();
}

/// Runs `agent` as an echo host that takes the tokens sent to it, as a host agent's
/// owner renews them.
fn echo_taking_tokens(
    mut agent: HostAgent,
) -> (
    tokio::sync::mpsc::Sender<blindrelay_protocol::Token>,
    tokio::task::JoinHandle<()>,
) {
    let (renew, mut renewed) = tokio::sync::mpsc::channel(1);
    let host = tokio::spawn(async move {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                session = agent.accept() => match session {
                    Some(session) => { sessions.spawn(echo(session)); }
                    None => break,
                },
                Some(token) = renewed.recv() => agent.set_token(token),
            }
        }
    });
    (renew, host)
}

/// Moves `len` bytes through an echo host and back, exactly.
async fn echo_exactly(session: blindrelay_client::SecureStream, len: u64) {
    use tokio::io::AsyncWriteExt;
    let (mut read, mut write) = tokio::io::split(session);
    let writes = async {
        write_pattern_from(&mut write, &mut Pattern::new(5), len).await?;
        write.shutdown().await
    };
    let (written, echoed) = tokio::join!(writes, read_pattern(&mut read, 5));
    written.unwrap();
    assert_eq!(echoed.unwrap(), len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_ends_when_its_token_expires() {
    let issuer = IssuerSecretKey::generate().unwrap();
    let relay = token_relay(&issuer);
    let key = SecretKey::generate().unwrap();
    // Whole seconds: expire two to three seconds from now.
    let token = issue(&issuer, key.host_id(), now() + 3, "default");
    let (verdict, _send, mut recv) =
        register_with_token(&relay, key.host_id(), &key, Some(token)).await;
    assert_eq!(verdict, ControlMessage::Registered);
    assert_eq!(relay.stats().registered_hosts, 1);
    let ended = tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv))
        .await
        .expect("the relay ends the registration at expiry")
        .expect("with an error message");
    assert_eq!(code_of(&ended), Some(ErrorCode::TokenExpired), "{ended:?}");
    tokio::time::timeout(PATIENCE, async {
        while relay.stats().registered_hosts != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the host id is no longer registered");
}

/// Sends 1000 bytes of `byte` through an echo host and reads them back.
async fn round(session: &mut blindrelay_client::SecureStream, byte: u8) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    session.write_all(&[byte; 1000]).await.unwrap();
    let mut back = [0u8; 1000];
    session.read_exact(&mut back).await.unwrap();
    assert_eq!(back, [byte; 1000]);
}

/// Waits until the Unix clock has passed `expires` by a second: the relay's
/// expiry timer for it has fired by then, had nothing moved it.
async fn outlive(expires: u64) {
    while now() <= expires + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_on_the_registration_stream_moves_its_expiry_and_a_bad_one_ends_it() {
    let issuer = IssuerSecretKey::generate().unwrap();
    let relay = token_relay(&issuer);
    let key = SecretKey::generate().unwrap();
    let old = now() + 3;
    let (verdict, mut send, mut recv) = register_with_token(
        &relay,
        key.host_id(),
        &key,
        Some(issue(&issuer, key.host_id(), old, "default")),
    )
    .await;
    assert_eq!(verdict, ControlMessage::Registered);
    // Renewed: answered `Registered`, and the old expiry passes without a word.
    let renew = ControlMessage::Renew {
        token: issue(&issuer, key.host_id(), now() + 3600, "default"),
    };
    send.write_all(&renew.to_frame()).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_message(&mut recv))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(answer, ControlMessage::Registered);
    assert_eq!(relay.stats().tokens_renewed, 1);
    outlive(old).await;
    let said = tokio::time::timeout(Duration::from_millis(500), read_message(&mut recv)).await;
    assert!(said.is_err(), "at the old expiry the relay said {said:?}");
    assert_eq!(
        relay.stats().registered_hosts,
        1,
        "still registered after the old expiry"
    );
    // A token for another host ends the registration with its code.
    let other = SecretKey::generate().unwrap().host_id();
    let wrong = ControlMessage::Renew {
        token: issue(&issuer, other, now() + 3600, "default"),
    };
    send.write_all(&wrong.to_frame()).await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, read_message(&mut recv))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(
        code_of(&ended),
        Some(ErrorCode::TokenWrongHost),
        "{ended:?}"
    );
    tokio::time::timeout(PATIENCE, async {
        while relay.stats().registered_hosts != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the host id is no longer registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_renewed_before_expiry_stays_registered_and_its_session_runs_across_it() {
    let issuer = IssuerSecretKey::generate().unwrap();
    let relay = token_relay(&issuer);
    for transport in [TransportPreference::Quic, TransportPreference::Tcp] {
        let key = SecretKey::generate().unwrap();
        let token_for = |expires| {
            blindrelay_protocol::Token::from_bytes(&issue(
                &issuer,
                key.host_id(),
                expires,
                "default",
            ))
            .unwrap()
        };
        let old = now() + 4;
        let mut config = host_config(key.clone(), relay.url());
        config.transport = transport;
        config.token = Some(token_for(old));
        let agent = HostAgent::start(config).expect("starts");
        wait_for_state(&agent, |s| *s == HostState::Registered).await;
        let ticket = agent.ticket().clone();
        let mut states = agent.watch_state();
        states.borrow_and_update();
        let (renew, host) = echo_taking_tokens(agent);
        let mut session = player_over(transport)
            .connect_via(&ticket, blindrelay_client::PathPreference::RelayOnly)
            .await
            .expect("relayed");
        round(&mut session, 1).await;
        let renewals = relay.stats().tokens_renewed;
        renew.send(token_for(now() + 3600)).await.unwrap();
        tokio::time::timeout(PATIENCE, async {
            while relay.stats().tokens_renewed == renewals {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the relay takes the renewed token");
        outlive(old).await;
        // The same session, past the old expiry, and a new one: nothing was cut.
        round(&mut session, 2).await;
        assert!(
            !states.has_changed().unwrap(),
            "{transport:?}: the state never left Registered"
        );
        assert_eq!(*states.borrow(), HostState::Registered, "{transport:?}");
        assert_eq!(relay.stats().registered_hosts, 1);
        let fresh = player_over(transport)
            .connect_via(&ticket, blindrelay_client::PathPreference::RelayOnly)
            .await
            .expect("relayed after the old expiry");
        echo_exactly(fresh, 1 << 16).await;
        round(&mut session, 3).await;
        host.abort();
        let _ = host.await;
    }
}

/// A `Renew` the relay refuses for the address's registration rate ends the
/// registration (PROTOCOL.md 8.9), but the host's token is still good: the host
/// registers again with it, over QUIC and over TLS/TCP, and never waits for a new one.
async fn a_renewal_refused_for_the_rate_is_not_a_refused_token(transport: TransportPreference) {
    let issuer = IssuerSecretKey::generate().unwrap();
    let mut config = relay_config();
    config.token_issuers = Some(IssuerKeys::new(vec![issuer.public_key()]));
    // One registration a second, no burst: the registration takes it, and a renewal
    // right after is refused.
    config.limits.registrations.per_ip_per_s = 1;
    config.limits.registrations.per_ip_burst = 1;
    init_tracing();
    let relay = Relay::spawn(config).unwrap();
    let key = SecretKey::generate().unwrap();
    let token = |expires| {
        blindrelay_protocol::Token::from_bytes(&issue(&issuer, key.host_id(), expires, "default"))
            .unwrap()
    };
    let mut config = host_config(key.clone(), relay.url());
    config.transport = transport;
    config.token = Some(token(now() + 3600));
    let agent = HostAgent::start(config).expect("starts");
    wait_for_state(&agent, |s| *s == HostState::Registered).await;
    let mut states = agent.watch_state();
    states.mark_unchanged();
    agent.set_token(token(now() + 7200));
    let left = tokio::time::timeout(PATIENCE, states.wait_for(|s| *s != HostState::Registered))
        .await
        .is_ok_and(|seen| seen.is_ok());
    assert!(left, "the relay did not end the registration");
    let back = tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| matches!(s, HostState::Registered | HostState::TokenRefused { .. })),
    )
    .await
    .map(|seen| seen.map(|s| s.clone()));
    assert!(
        matches!(back, Ok(Ok(HostState::Registered))),
        "after a renewal refused for the rate: {back:?}"
    );
}

mod a_renewal_refused_for_the_rate_is_not_a_refused_token {
    use blindrelay_client::TransportPreference;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic() {
        super::a_renewal_refused_for_the_rate_is_not_a_refused_token(TransportPreference::Quic)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        super::a_renewal_refused_for_the_rate_is_not_a_refused_token(TransportPreference::Tcp)
            .await;
    }
}
