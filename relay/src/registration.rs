//! Registration: a host proves it holds its host id's key and becomes reachable.
//!
//! Runs the relay's side of the flow in
//! [`blindrelay_protocol::registration`]: `Register` (already read by the connection),
//! `Challenge`, `Proof`, then `Registered` or `Error`. The registration lasts as long
//! as the host keeps this control stream open; when the host finishes or resets it,
//! or its connection ends, the host id is removed from the registry.
//!
//! On a relay that requires registration tokens (see [`crate::tokens`]), a `Register`
//! without one is refused before the challenge, and the token is checked after the
//! proof. A registration admitted by a token ends when the token expires: the relay
//! sends `Error { TokenExpired }` and removes it, and the host needs a new token.

use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::registration::{RelayChallenge, EXPORTER_LABEL, EXPORTER_LEN};
use blindrelay_protocol::{codes, ControlMessage, ErrorCode, HostId};
use tracing::{debug, info, info_span, Instrument};

use crate::connection::{read_message, send_error, Shared, Stream};
use crate::registry::Host;
use crate::stats::Stats;
use crate::tokens;

pub(crate) async fn serve(
    host_id: HostId,
    token: Option<Vec<u8>>,
    mut stream: Stream,
    shared: Arc<Shared>,
) {
    let span = info_span!("registration", host = %crate::privacy::host_tag(&host_id));
    async move {
        // Boxed: the exchange's state is freed once it is over, and what a host
        // holds for as long as it stays registered is only the wait below.
        let admitted = Box::pin(admit(host_id, token, &mut stream, &shared)).await;
        let Some(Admitted {
            registration,
            expires,
        }) = admitted
        else {
            return;
        };
        // Removes the entry however this task ends, including when the connection's
        // task is torn down and cancels it mid-await.
        let _registered = Unregister {
            shared: &shared,
            host_id,
            registration,
        };
        let Stream { send, recv, .. } = &mut stream;
        let token_expired = async {
            match expires {
                Some(expires) => {
                    let left = Duration::from_secs(expires.saturating_sub(tokens::unix_now()));
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        enum End {
            Host,
            TokenExpired,
            Draining,
        }
        let end = tokio::select! {
            () = hold(send, recv) => End::Host,
            () = token_expired => End::TokenExpired,
            () = shared.draining() => End::Draining,
        };
        match end {
            End::Host => {}
            End::TokenExpired => {
                info!("registration token expired; ending the registration");
                let error = ControlMessage::error(
                    ErrorCode::TokenExpired,
                    "the registration token expired: register with a new one",
                );
                send_error(send, &error).await;
            }
            End::Draining => {
                // The relay is going away: end the registration now (the guard
                // removes it) and tell the host to register again elsewhere or later.
                // Its running sessions go on until the relay closes.
                Stats::bump(&shared.stats.hosts_told_going_away);
                let going_away = ControlMessage::GoingAway {
                    retry_after_ms: GOING_AWAY_RETRY_MS,
                };
                if send.write_all(&going_away.to_frame()).await.is_ok() && send.finish().is_ok() {
                    // Delivered (acknowledged) before the registration ends: the drain
                    // waits for registrations to end before it closes connections.
                    let _ = tokio::time::timeout(GOING_AWAY_DELIVERY, send.stopped()).await;
                }
                info!("told the host the relay is going away");
            }
        }
    }
    .instrument(span)
    .await
}

/// A registration the relay accepted and confirmed to the host.
struct Admitted {
    /// Its number in the registry, to remove this one and not a newer one.
    registration: u64,
    /// When its token expires (Unix seconds), on a relay that requires tokens.
    expires: Option<u64>,
}

/// Challenge, proof, token and tier, then the registry entry and `Registered`.
/// `None` once the host was refused (and told why) or went away.
async fn admit(
    host_id: HostId,
    token: Option<Vec<u8>>,
    stream: &mut Stream,
    shared: &Shared,
) -> Option<Admitted> {
    let Stream {
        send,
        recv,
        connection,
        permit,
        is_host,
    } = stream;
    let refused = |reason: &'static str| {
        Stats::bump(&shared.stats.registrations_refused);
        debug!(reason, "registration refused");
    };
    let address = connection.remote_address();
    if let Err(refusal) = shared.admission.check_registration_rate(address, 1) {
        Stats::bump(&shared.stats.registrations_rate_limited);
        refused("rate limited");
        let error = ControlMessage::error(refusal.code(), refusal.reason());
        send_error(send, &error).await;
        return None;
    }
    // A missing token is refused before any work; it says nothing about the host.
    if shared.config.token_issuers.is_some() && token.is_none() {
        refused("no registration token");
        let refusal = tokens::required();
        let error = ControlMessage::error(refusal.code, refusal.reason);
        send_error(send, &error).await;
        return None;
    }
    let (challenge, message) = match RelayChallenge::new(host_id) {
        Ok(challenge) => challenge,
        Err(err) => {
            refused("no randomness for a challenge");
            let error = ControlMessage::error(ErrorCode::Internal, err.to_string());
            send_error(send, &error).await;
            return None;
        }
    };
    if send.write_all(&message.to_frame()).await.is_err() {
        refused("host went away before the challenge");
        return None;
    }
    let deadline = shared.config.limits.connections.first_message_timeout.0;
    let answer = tokio::time::timeout(deadline, read_message(recv)).await;
    let mac = match answer {
        Ok(Ok(ControlMessage::Proof { mac })) => mac,
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            refused("no proof");
            let error = ControlMessage::error(ErrorCode::BadRequest, "expected a Proof");
            send_error(send, &error).await;
            return None;
        }
    };
    let mut exporter = [0u8; EXPORTER_LEN];
    if connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .is_err()
    {
        refused("keying material unavailable");
        let error = ControlMessage::error(ErrorCode::Internal, "cannot bind proof to connection");
        send_error(send, &error).await;
        return None;
    }
    if let Err(err) = challenge.verify(&exporter, &mac) {
        // A failed proof costs its address a second attempt: guessing is slower
        // than registering.
        let _ = shared.admission.check_registration_rate(address, 1);
        refused("proof failed");
        let error = ControlMessage::error(ErrorCode::ProofFailed, err.to_string());
        send_error(send, &error).await;
        return None;
    }

    // Checked only now that the host holds the key: a stranger cannot probe which
    // tokens a host id has, or whether they are still valid.
    let (tier, expires) = match &shared.config.token_issuers {
        Some(issuers) => {
            let claims = match tokens::check(token.as_deref(), issuers, &host_id) {
                Ok(claims) => claims,
                Err(refusal) => {
                    refused("registration token refused");
                    let error = ControlMessage::error(refusal.code, refusal.reason);
                    send_error(send, &error).await;
                    return None;
                }
            };
            match shared.tiers.named(&claims.tier) {
                Some(tier) => (tier, Some(claims.expires)),
                None => {
                    refused("registration token names an unknown tier");
                    let error = ControlMessage::error(
                        ErrorCode::TokenInvalid,
                        format!(
                            "the token's tier {:?} is not configured on this relay",
                            claims.tier
                        ),
                    );
                    send_error(send, &error).await;
                    return None;
                }
            }
        }
        None => (shared.tiers.of(&host_id), None),
    };
    debug!(tier = %tier.name, "proof verified");
    let host = Arc::new(Host::new(connection.clone(), permit.clone(), tier));
    let (registration, replaced) = shared.registry.insert(host_id, host);
    let confirmed = send.write_all(&ControlMessage::Registered.to_frame()).await;
    if confirmed.is_err() {
        // The new host never learned it registered: keep the old one reachable
        // rather than leaving the host id with nobody.
        refused("host went away before the confirmation");
        match replaced {
            Some(old) => shared.registry.restore(host_id, registration, old),
            None => {
                shared.registry.remove(&host_id, registration);
            }
        }
        return None;
    }
    Stats::bump(&shared.stats.registrations_accepted);
    if let Some(old) = replaced {
        Stats::bump(&shared.stats.registrations_replaced);
        info!("replacing an older registration of this host id");
        old.host.connection.close(
            codes::close::REPLACED.into(),
            b"replaced by a newer registration of this host id",
        );
    }
    is_host.store(true, std::sync::atomic::Ordering::Release);
    info!("host registered");
    Some(Admitted {
        registration,
        expires,
    })
}

/// What a draining relay suggests hosts wait before registering again: long enough
/// for a restarted relay on the same address to come up, short enough that hosts
/// are back within seconds.
const GOING_AWAY_RETRY_MS: u32 = 1000;

/// How long a draining relay waits for a host to acknowledge `GoingAway`.
const GOING_AWAY_DELIVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Removes a registration from the registry when dropped.
struct Unregister<'a> {
    shared: &'a Shared,
    host_id: HostId,
    registration: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if self
            .shared
            .registry
            .remove(&self.host_id, self.registration)
        {
            info!("host unregistered");
            self.shared.drain_progress.notify_waiters();
        }
    }
}

/// Keeps the registration until the host ends the control stream or its connection.
/// Nothing more is expected on the stream in this protocol version.
async fn hold(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    match read_message(recv).await {
        Ok(message) => {
            debug!(
                kind = message.kind_name(),
                "unexpected message on the registration stream"
            );
            let error = ControlMessage::error(
                ErrorCode::BadRequest,
                "nothing is expected after registration",
            );
            send_error(send, &error).await;
        }
        Err(err) => debug!(%err, "registration stream ended"),
    }
}
