//! Registration: a host proves it holds its host id's key and becomes reachable.
//!
//! Runs the relay's side of the flow in
//! [`blindrelay_protocol::registration`]: `Register` (already read by the connection),
//! `Challenge`, `Proof`, then `Registered` or `Error`. The registration lasts as long
//! as the host keeps this control stream open; when the host finishes or resets it,
//! or its connection ends, the host id is removed from the registry.
//!
//! On a relay that requires registration tokens (see [`crate::policy::token_issuers`]), a `Register`
//! without one is refused before the challenge, and the token is checked after the
//! proof. A registration admitted by a token ends when the token expires: the relay
//! sends `Error { TokenExpired }` and removes it, and the host needs a new token.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::registration::{self, RelayRegistration};
use blindrelay_protocol::{codes, ControlMessage, ErrorCode, HostId};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, Instrument};

use crate::ops::stats::Stats;
use crate::policy::admission;
use crate::policy::admission::RegistrationPlaces;
use crate::policy::tiers::Tier;
use crate::policy::token_issuers;
use crate::state::dials::DialRequest;
use crate::state::registry::Host;
use crate::state::RelayState;
use crate::stream::control::{read_message, refuse, write_control};
use crate::stream::halves::SessionSend;
use crate::stream::link::Link;
use crate::stream::routed::RoutedStream;

pub(crate) async fn register_and_hold(
    host_id: HostId,
    token: Option<Vec<u8>>,
    mut stream: RoutedStream,
    state: Arc<RelayState>,
) {
    let span = info_span!("registration", host = %crate::ops::privacy::host_tag(&host_id));
    async move {
        // Boxed: the exchange's state is freed once it is over, and what a host
        // holds for as long as it stays registered is only the wait below.
        let admitted = Box::pin(admit(host_id, token, &mut stream, &state)).await;
        let Some(Admitted {
            registration,
            expires,
            mut dials,
            _place,
        }) = admitted
        else {
            return;
        };
        // Removes the entry however this task ends, including when the connection's
        // task is torn down and cancels it mid-await.
        let _registered = Unregister {
            state: &state,
            host_id,
            registration,
        };
        let RoutedStream {
            send, recv, link, ..
        } = &mut stream;
        // Only on a relay that requires tokens: moved on by each renewal.
        let mut token_expired = expires.map(|expires| Box::pin(tokio::time::sleep_until(until(expires))));
        enum End {
            Host(Option<ControlMessage>),
            TokenExpired,
            Renewal(ControlMessage),
            Draining,
            Moved(Vec<String>),
        }
        let end = {
            let draining = state.draining();
            // In a pool: another member became this host's owner. Boxed, and only
            // in a pool: every idle host holds this future for hours.
            let moved = async {
                match &state.pool {
                    Some(pool) => Box::pin(pool.moved_away(host_id)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(draining, moved);
            'registration: loop {
                // Nothing is expected from the host after `Registered` but renewed
                // tokens: another message ends the registration, and so does the end
                // of the stream. One read at a time, never dropped half done.
                let host_said = read_message(recv);
                tokio::pin!(host_said);
                loop {
                    tokio::select! {
                        message = &mut host_said => match message.ok() {
                            Some(ControlMessage::Renew { token }) => {
                                let renewal = Renewal { host_id, from: link.remote_address(), state: &state };
                                match Box::pin(renewal.take(&token, send)).await {
                                    Ok(Taken::Renewed(expires)) => {
                                        if let (Some(timer), Some(expires)) = (token_expired.as_mut(), expires) {
                                            timer.as_mut().reset(until(expires));
                                        }
                                        continue 'registration;
                                    }
                                    Ok(Taken::HostLeft) => break 'registration End::Host(None),
                                    Err(refusal) => break 'registration End::Renewal(refusal),
                                }
                            }
                            other => break 'registration End::Host(other),
                        },
                        () = async {
                            match token_expired.as_mut() {
                                Some(timer) => timer.await,
                                None => std::future::pending().await,
                            }
                        } => break 'registration End::TokenExpired,
                        () = &mut draining => break 'registration End::Draining,
                        members = &mut moved => break 'registration End::Moved(members),
                        Some(dial) = async { match dials.as_mut() {
                            Some(dials) => dials.recv().await,
                            None => std::future::pending().await,
                        } } => {
                            let message = ControlMessage::Dial {
                                session_id: dial.session_id,
                                secret: dial.secret,
                            };
                            // Boxed: the write's state would otherwise be carried
                            // by every idle host, TCP or not, for its whole stay.
                            if Box::pin(write_control(send, &message)).await.is_err() {
                                break 'registration End::Host(None);
                            }
                        }
                    }
                }
            }
        };
        match end {
            End::Host(None) => debug!("registration stream ended"),
            End::Host(Some(message)) => {
                debug!(
                    kind = message.name(),
                    "unexpected message on the registration stream"
                );
                let error = ControlMessage::error(
                    ErrorCode::BadRequest,
                    "nothing is expected after registration",
                );
                Box::pin(refuse(send, recv, &error)).await;
            }
            End::Renewal(error) => {
                info!("renewed token refused; ending the registration");
                Box::pin(refuse(send, recv, &error)).await;
            }
            End::TokenExpired => {
                info!("registration token expired; ending the registration");
                let error = ControlMessage::error(
                    ErrorCode::TokenExpired,
                    "the registration token expired: register with a new one",
                );
                // Boxed, like every tail below: a future is as large as its largest
                // await, and every idle host holds this one for hours.
                Box::pin(refuse(send, recv, &error)).await;
            }
            End::Moved(members) => {
                Stats::bump(&state.stats.pool_moved_membership);
                info!("another pool member owns the host now: told it to move");
                Box::pin(tell_to_move(send, recv, members)).await;
            }
            End::Draining if draining_successors(&state, &host_id).is_some() => {
                // In a pool: the host moves to its next owner, the hosts of this
                // relay spread over the move jitter, and its registration here lasts
                // until it is registered there.
                let members = draining_successors(&state, &host_id).unwrap_or_default();
                let jitter = state.pool.as_ref().map(|pool| pool.jitter());
                Stats::bump(&state.stats.pool_moved_drain);
                Box::pin(async {
                    tokio::time::sleep(jitter.unwrap_or_default()).await;
                    tell_to_move(send, recv, members).await;
                })
                .await;
                info!("the relay drains: told the host to move to its next owner");
            }
            End::Draining => {
                // The relay is going away: end the registration now (the guard
                // removes it) and tell the host to register again elsewhere or later.
                // Its running sessions go on until the relay closes.
                Stats::bump(&state.stats.hosts_told_going_away);
                let going_away = ControlMessage::GoingAway {
                    retry_after_ms: GOING_AWAY_RETRY_MS,
                };
                // Written within the control-write deadline: a host that grants no
                // credit cannot hold the drain (its stream is reset, and the
                // registration ends all the same).
                Box::pin(async {
                    if write_control(send, &going_away).await.is_ok() {
                        send.finish();
                        // Delivered (acknowledged) before the registration ends: the
                        // drain waits for registrations to end before it closes
                        // connections.
                        let _ = tokio::time::timeout(GOING_AWAY_DELIVERY, send.stopped()).await;
                    }
                })
                .await;
                info!("told the host the relay is going away");
            }
        }
    }
    .instrument(span)
    .await
}

/// Where a host of this draining pool member goes: its ranking without this relay;
/// `None` outside a pool or when no other member is known.
fn draining_successors(state: &RelayState, host_id: &HostId) -> Option<Vec<String>> {
    let members = state.pool.as_ref()?.successors(host_id);
    (!members.is_empty()).then_some(members)
}

/// Sends `Move`, then holds the registration until the host ends it (once it is
/// registered with its new owner, so it stays reachable throughout) or
/// [`MOVE_GRACE`] passes. A host that grants no credit for the message, or never
/// ends the stream, holds nothing beyond the deadline.
async fn tell_to_move(
    send: &mut crate::stream::halves::StreamSend,
    recv: &mut crate::stream::halves::StreamRecv,
    members: Vec<String>,
) {
    let message = ControlMessage::Move { members };
    let told = async {
        if write_control(send, &message).await.is_ok() {
            // Whatever the host sends now, or the stream's end, ends the wait.
            let _ = read_message(recv).await;
        }
    };
    let _ = tokio::time::timeout(MOVE_GRACE, told).await;
}

/// The tokio instant of `expires`, Unix seconds.
fn until(expires: u64) -> tokio::time::Instant {
    let left = Duration::from_secs(expires.saturating_sub(token_issuers::unix_now()));
    tokio::time::Instant::now() + left
}

/// A `Renew` on a running registration (PROTOCOL.md section 8.9).
struct Renewal<'a> {
    host_id: HostId,
    from: std::net::SocketAddr,
    state: &'a RelayState,
}

impl Renewal<'_> {
    /// Checks `token` and answers `Registered` when it holds; `Err` is the refusal
    /// that ends the registration.
    async fn take(
        self,
        token: &[u8],
        send: &mut crate::stream::halves::StreamSend,
    ) -> Result<Taken, ControlMessage> {
        // Each renewal costs a signature check: it counts as a registration attempt.
        if let Err(refusal) = self.state.admission.check_registration_rate(self.from, 1) {
            return Err(ControlMessage::error(refusal.code(), refusal.reason()));
        }
        let issuers = self.state.config.token_issuers.as_ref();
        let claims =
            registration::check_renewal(token, issuers, &self.host_id, token_issuers::unix_now())
                .map_err(|refusal| refusal.to_message())?;
        if write_control(send, &ControlMessage::Registered)
            .await
            .is_err()
        {
            return Ok(Taken::HostLeft);
        }
        Stats::bump(&self.state.stats.tokens_renewed);
        let expires = claims.map(|claims| claims.expires);
        info!(?expires, "registration token renewed");
        Ok(Taken::Renewed(expires))
    }
}

/// A renewal the relay took.
enum Taken {
    /// Answered; the registration now lasts until this (Unix seconds), or as long
    /// as before on a relay that requires no tokens.
    Renewed(Option<u64>),
    /// The host went away before the answer.
    HostLeft,
}

/// How long a registration told to move lasts at most: time for the host to
/// register with its new owner (a few round trips, perhaps a redirect) first.
const MOVE_GRACE: Duration = Duration::from_secs(10);

/// A registration the relay accepted and confirmed to the host.
struct Admitted {
    /// Its number in the registry, to remove this one and not a newer one.
    registration: u64,
    /// When its token expires (Unix seconds), on a relay that requires tokens.
    expires: Option<u64>,
    /// On a stream transport: the sessions that wait for this host to `Dial`.
    dials: Option<mpsc::Receiver<DialRequest>>,
    /// Its place under the per-address registration cap.
    _place: RegistrationPlaces,
}

/// Challenge, proof, token and tier, then the registry entry and `Registered`.
/// `None` once the host was refused (and told why, from one place) or went away.
async fn admit(
    host_id: HostId,
    token: Option<Vec<u8>>,
    stream: &mut RoutedStream,
    state: &RelayState,
) -> Option<Admitted> {
    let refusal = match exchange(host_id, token, stream, state).await {
        Ok(Exchange::Admitted(admitted, place)) => {
            return confirm(admitted, place, stream, state).await
        }
        Ok(Exchange::HostLeft(why)) => {
            Stats::bump(&state.stats.registrations_refused);
            debug!(why, "registration abandoned");
            return None;
        }
        Err(refusal) => refusal,
    };
    Stats::bump(&state.stats.registrations_refused);
    if let Refused::Admission(refusal) = refusal {
        if refusal.code() == ErrorCode::RateLimited {
            Stats::bump(&state.stats.registrations_rate_limited);
        }
    }
    if let Refused::Registration(registration::Refusal::Proof(_)) = refusal {
        // A failed proof costs its address a second attempt: guessing is slower than
        // registering.
        let _ = state
            .admission
            .check_registration_rate(stream.link.remote_address(), 1);
    }
    debug!(code = %refusal.code(), "registration refused");
    refuse(&mut stream.send, &mut stream.recv, &refusal.to_message()).await;
    None
}

/// How the exchange before the registry entry ended, short of a refusal.
enum Exchange {
    /// The host proved its key (and its token holds): its tier is known.
    Admitted(Proved, RegistrationPlaces),
    /// The host went away mid-exchange; there is nobody to tell.
    HostLeft(&'static str),
}

/// A host that proved its key, with the tier it runs under.
struct Proved {
    host_id: HostId,
    tier: Arc<Tier>,
    /// When its token expires (Unix seconds), on a relay that requires tokens.
    expires: Option<u64>,
}

/// Why the relay refuses a registration: the protocol's own refusals, and the
/// relay's admission rules in front of them.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Admission(admission::Refusal),
    #[error(transparent)]
    Registration(registration::Refusal),
    #[error("cannot bind the proof to this connection")]
    NoKeyingMaterial,
}

impl Refused {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Admission(refusal) => refusal.code(),
            Self::Registration(refusal) => refusal.code(),
            Self::NoKeyingMaterial => ErrorCode::Internal,
        }
    }

    fn to_message(&self) -> ControlMessage {
        match self {
            Self::Admission(refusal) => ControlMessage::error(refusal.code(), refusal.reason()),
            Self::Registration(refusal) => refusal.to_message(),
            Self::NoKeyingMaterial => ControlMessage::error(self.code(), self.to_string()),
        }
    }
}

/// Runs the relay's side of the registration machine on the stream: rate, challenge,
/// proof, token, tier.
async fn exchange(
    host_id: HostId,
    token: Option<Vec<u8>>,
    stream: &mut RoutedStream,
    state: &RelayState,
) -> Result<Exchange, Refused> {
    let RoutedStream {
        send, recv, link, ..
    } = stream;
    state
        .admission
        .check_registration_rate(link.remote_address(), 1)
        .map_err(Refused::Admission)?;
    let place = state
        .admission
        .hold_registration(link.remote_address())
        .map_err(Refused::Admission)?;
    let issuers = state.config.token_issuers.as_ref();
    let (expect_proof, challenge) =
        RelayRegistration::start(host_id, token, issuers).map_err(Refused::Registration)?;
    if write_control(send, &challenge).await.is_err() {
        return Ok(Exchange::HostLeft("host took no challenge"));
    }
    let deadline = state.config.limits.connections.first_message_timeout.0;
    let proof = match tokio::time::timeout(deadline, read_message(recv)).await {
        Ok(Ok(message)) => message,
        Ok(Err(_)) => return Err(no_proof("an unreadable message")),
        Err(_) => return Err(no_proof("nothing in time")),
    };
    let exporter = link.exporter().map_err(|_| Refused::NoKeyingMaterial)?;
    let admitted = expect_proof
        .handle(proof, &exporter, token_issuers::unix_now())
        .map_err(Refused::Registration)?;
    let (tier, expires) = match admitted.claims {
        Some(claims) => match state.tiers.named(&claims.tier) {
            Some(tier) => (tier, Some(claims.expires)),
            None => {
                let tier = claims.tier;
                return Err(Refused::Registration(registration::Refusal::UnknownTier {
                    tier,
                }));
            }
        },
        None => (state.tiers.of(&host_id), None),
    };
    debug!(tier = %tier.name, "proof verified");
    if stream.probation.load(Ordering::Acquire) {
        // A host that proved its key, on a connection beyond the cap: the idlest
        // registration with no session makes room, or there is none. (Never for a
        // connection that has proved nothing: an unauthenticated flood sheds
        // nobody.)
        if !state.registry.shed_idle(Some(&host_id)) {
            return Err(Refused::Admission(admission::Refusal::AtCapacity));
        }
        stream.probation.store(false, Ordering::Release);
        Stats::bump(&state.stats.connections_shed);
        info!("connection cap reached: shed an idle registration");
    }
    Ok(Exchange::Admitted(
        Proved {
            host_id,
            tier,
            expires,
        },
        place,
    ))
}

fn no_proof(got: &'static str) -> Refused {
    Refused::Registration(registration::Refusal::ExpectedProof { got })
}

/// Enters a proved host in the registry and tells it so; closes the registration it
/// replaces.
async fn confirm(
    proved: Proved,
    place: RegistrationPlaces,
    stream: &mut RoutedStream,
    state: &RelayState,
) -> Option<Admitted> {
    let Proved {
        host_id,
        tier,
        expires,
    } = proved;
    let mut host = Host::new(
        stream.link.clone(),
        stream.permit.clone(),
        stream.window.clone(),
        tier,
    );
    // A host on a stream transport gets its sessions by `Dial`, which this
    // registration's task writes; a few may wait at once, each within its own
    // host-stream deadline.
    let dials = match stream.link {
        Link::Quic(_) | Link::WebTransport(_) => None,
        Link::Framed(_) => {
            let (ask, dials) = mpsc::channel(DIALS_QUEUED);
            host.dial = Some(ask);
            Some(dials)
        }
    };
    let host = Arc::new(host);
    let (registration, replaced) = state.registry.insert(host_id, host);
    let confirmed = write_control(&mut stream.send, &ControlMessage::Registered).await;
    if confirmed.is_err() {
        // The new host never learned it registered: keep the old one reachable
        // rather than leaving the host id with nobody.
        Stats::bump(&state.stats.registrations_refused);
        debug!("host went away before the confirmation");
        match replaced {
            Some(old) => state.registry.restore(host_id, registration, old),
            None => {
                state.registry.remove(&host_id, registration);
            }
        }
        return None;
    }
    Stats::bump(&state.stats.registrations_accepted);
    if let Some(old) = replaced {
        Stats::bump(&state.stats.registrations_replaced);
        info!("replacing an older registration of this host id");
        old.host.link.close(
            codes::close::REPLACED,
            "replaced by a newer registration of this host id",
        );
    }
    stream
        .is_host
        .store(true, std::sync::atomic::Ordering::Release);
    info!("host registered");
    Some(Admitted {
        registration,
        expires,
        dials,
        _place: place,
    })
}

/// What a draining relay suggests hosts wait before registering again: long enough
/// for a restarted relay on the same address to come up, short enough that hosts
/// are back within seconds.
const GOING_AWAY_RETRY_MS: u32 = 1000;

/// Sessions that may wait at once for a stream-transport host's registration to
/// write their `Dial`; more wait for room, within their host-stream deadline.
const DIALS_QUEUED: usize = 16;

/// How long a draining relay waits for a host to acknowledge `GoingAway`.
const GOING_AWAY_DELIVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Removes a registration from the registry when dropped.
struct Unregister<'a> {
    state: &'a RelayState,
    host_id: HostId,
    registration: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if self.state.registry.remove(&self.host_id, self.registration) {
            info!("host unregistered");
            self.state.drain_progress.notify_waiters();
        }
    }
}
