//! The host owner's panel: a small local web page and JSON API beside the running
//! host, the way a media server's "Remote Access" settings page works.
//!
//! - `GET /api/status`: Enable Relay, where the host stands in words, its direct
//!   listener, its ticket, the sessions open now (path, player's short key, bytes
//!   each way, duration);
//! - `POST /api/relay {"enabled": bool}`: switches Enable Relay through the host's
//!   own loop, the same path the SIGUSR1/SIGUSR2 signals take;
//! - `GET/POST/DELETE /api/players`: the authorized players, edited in the host's
//!   own file and in force for the next session;
//! - `POST /api/scan?width=W&height=H`: a camera frame in grey, answered with the
//!   player key its QR code holds ([`scan`]);
//! - `GET /api/ticket.svg`: the ticket as a QR code;
//! - `GET /api/web.svg`: the share link for browsers as a QR code, a phone's way in
//!   (404 where the relay serves no player to browsers);
//! - `/`, `/panel.js`, `/panel.css`: the page, compiled into the binary.
//!
//! What keeps it safe is in [`guard`]; every response carries a strict
//! Content-Security-Policy, and nothing it serves holds the host's secret key.

mod guard;
mod players;
mod relay_state;
mod scan;
mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use blindrelay_client::{AuthorizedPlayers, HostState, RelayTransport, RelayUrl};
use blindrelay_transport::listener::{self, Caps};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

pub(crate) use relay_state::{load as load_relay_state, save as save_relay_state};
pub(crate) use sessions::{OpenSession, SessionTable};

/// What the host's loop is asked to do by the panel.
pub(crate) enum PanelCommand {
    /// Switch Enable Relay, then answer on `done`.
    SetRelay {
        /// On or off.
        enabled: bool,
        /// Answered once the switch is applied.
        done: oneshot::Sender<()>,
    },
}

/// What the panel shows of the host, and the way to ask its loop for changes.
pub(crate) struct HostView {
    /// The host id.
    pub(crate) host_id: String,
    /// The ticket players use.
    pub(crate) ticket: String,
    /// The share link for browsers, the ticket in its fragment, where the relay
    /// serves the web player on the host's origin.
    pub(crate) web: Option<String>,
    /// The home relay, if any.
    pub(crate) relay: Option<RelayUrl>,
    /// The direct addresses in the ticket.
    pub(crate) direct: Vec<SocketAddr>,
    /// The agent's state.
    pub(crate) state: watch::Receiver<HostState>,
    /// When the agent tries its relay again, while it waits to.
    pub(crate) retry_at: watch::Receiver<Option<std::time::Instant>>,
    /// What carries the registration, while there is one.
    pub(crate) relay_transport: watch::Receiver<Option<RelayTransport>>,
    /// Enable Relay as the host's loop last switched it.
    pub(crate) relay_enabled: watch::Receiver<bool>,
    /// The authorized players file, if the host has one.
    pub(crate) players: Option<AuthorizedPlayers>,
    /// The sessions open now.
    pub(crate) sessions: SessionTable,
    /// Requests to the host's loop.
    pub(crate) commands: mpsc::Sender<PanelCommand>,
}

/// Why the panel could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PanelStartError {
    /// The address could not be bound.
    #[error("cannot listen for the panel on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The system's random number generator failed.
    #[error("cannot make the panel's access token: no system randomness")]
    Random,
    /// The ticket or the share link does not fit in a QR code.
    #[error("cannot draw the ticket or the share link as a QR code: {0}")]
    Qr(#[from] qrcode::types::QrError),
}

/// Connections the panel holds at once. Its clients are one owner's browser tabs
/// on this machine, which need a handful; beyond the cap a new connection ends the
/// oldest, so that whoever opens hundreds of idle connections to the panel cannot
/// take the host to its file limit (and its sessions with it).
const CAPS: Caps = Caps {
    max: 64,
    per_address: 64,
};

/// How long a connection may take to send a request head, and may sit idle
/// between requests.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one panel connection with hyper: keep-alive, within [`HEAD_TIMEOUT`].
async fn serve_connection(stream: tokio::net::TcpStream, app: Router) {
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(app),
        );
    if let Err(err) = connection.await {
        tracing::debug!(%err, "panel connection ended");
    }
}

/// A running panel; it stops when dropped.
pub(crate) struct Panel {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Panel {
    /// Binds `addr` and serves the panel for `view`.
    pub(crate) async fn start(addr: SocketAddr, view: HostView) -> Result<Self, PanelStartError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| PanelStartError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| PanelStartError::Bind { addr, source })?;
        let guard = guard::Guard::new(bound).map_err(|_| PanelStartError::Random)?;
        let url = format!("http://{bound}/#token={}", guard.token());
        let qr_svg = qr_code(&view.ticket)?;
        let web_qr_svg = view.web.as_deref().map(qr_code).transpose()?;
        let state = Arc::new(PanelState {
            guard,
            view,
            qr_svg,
            web_qr_svg,
            edit: tokio::sync::Mutex::new(()),
            scan: tokio::sync::Mutex::new(()),
        });
        let app = router(state);
        let task = tokio::spawn(listener::serve_within(
            listener,
            CAPS,
            std::future::pending(),
            move |stream, _| serve_connection(stream, app.clone()),
            || tracing::debug!("a panel connection made room for a newer one"),
        ));
        info!(%bound, "panel listening");
        Ok(Self { url, task })
    }

    /// The link to open, with the access token after `#` (a browser never sends
    /// what follows `#` to a server, so it stays out of request lines and logs).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Panel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a request was answered with an error; each becomes a JSON `{"error": ...}`.
#[derive(Debug, thiserror::Error)]
enum PanelError {
    /// Refused by the guard.
    #[error(transparent)]
    Refused(#[from] guard::Refusal),
    /// A body that is not the JSON the endpoint takes.
    #[error("malformed request body: {0}")]
    BadBody(String),
    /// A body that is not declared as JSON.
    #[error("send the body as JSON (Content-Type: application/json)")]
    NotJson,
    /// A player key or note that cannot be listed.
    #[error(transparent)]
    BadEntry(#[from] players::EntryError),
    /// The host serves every player: there is no list to edit.
    #[error("this host serves every player (no --authorized-players FILE): start it with one to keep a list")]
    OpenList,
    /// Enable Relay on, for a host that has no relay.
    #[error("this host was started without --relay: there is no relay to enable")]
    NoRelay,
    /// Removing a player that is not listed.
    #[error("this player is not on the list")]
    NotListed,
    /// The file has a line that is not a key (edited by hand, say).
    #[error("the authorized players file has an invalid line {line}: fix it by hand first")]
    FileInvalid {
        /// 1-based line number.
        line: usize,
    },
    /// The file could not be read or written.
    #[error("cannot update the authorized players file: {0}")]
    File(std::io::Error),
    /// A camera frame with no key in it, or not a frame.
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
    /// A frame sent while another is being read.
    #[error("a frame is being read already: send the next when it is answered")]
    ScanBusy,
    /// The host is stopping.
    #[error("the host is stopping")]
    HostStopped,
    /// No such page or endpoint.
    #[error("not found")]
    NotFound,
}

impl IntoResponse for PanelError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Refused(guard::Refusal::Token) => StatusCode::UNAUTHORIZED,
            Self::Refused(_) => StatusCode::FORBIDDEN,
            Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Scan(scan::ScanError::BadFrame { .. }) => StatusCode::BAD_REQUEST,
            Self::Scan(scan::ScanError::NoKey) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ScanBusy => StatusCode::TOO_MANY_REQUESTS,
            Self::BadEntry(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::OpenList | Self::NoRelay | Self::FileInvalid { .. } => StatusCode::CONFLICT,
            Self::NotListed | Self::NotFound => StatusCode::NOT_FOUND,
            Self::File(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::HostStopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The panel's shared state.
struct PanelState {
    guard: guard::Guard,
    view: HostView,
    /// The ticket's QR code; the ticket does not change while the host runs.
    qr_svg: String,
    /// The share link's QR code, where there is a link.
    web_qr_svg: Option<String>,
    /// One edit of the players file at a time.
    edit: tokio::sync::Mutex<()>,
    /// One camera frame read at a time: reading takes a core for a moment.
    scan: tokio::sync::Mutex<()>,
}

/// The page's policy: its own scripts, styles and API only; images also from
/// `blob:` (the QR code, fetched with the token); never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob:; \
    object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The largest request body: the API takes a key and a note, never more (but for
/// a camera frame, [`scan::MAX_FRAME`]).
const MAX_BODY: usize = 4096;

fn router(state: Arc<PanelState>) -> Router {
    Router::new()
        .route("/", get(page_html))
        .route("/panel.js", get(page_js))
        .route("/panel.css", get(page_css))
        .route("/api/status", get(status))
        .route("/api/relay", post(switch_relay))
        .route(
            "/api/players",
            get(players_list).post(player_add).delete(player_remove),
        )
        .route(
            "/api/scan",
            post(scan_frame).layer(DefaultBodyLimit::max(scan::MAX_FRAME)),
        )
        .route("/api/ticket.svg", get(ticket_qr))
        .route("/api/web.svg", get(web_qr))
        .fallback(|| async { PanelError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guarded))
        .with_state(state)
}

/// Runs the guard's checks before every handler and adds the security headers to
/// every answer, refusals included.
async fn guarded(State(state): State<Arc<PanelState>>, request: Request, next: Next) -> Response {
    let checked = state.guard.check_site(request.headers()).and_then(|()| {
        if request.uri().path().starts_with("/api/") {
            state.guard.check_token(request.headers())
        } else {
            Ok(())
        }
    });
    let mut response = match checked {
        Ok(()) => json_refusals(next.run(request).await),
        Err(refusal) => PanelError::Refused(refusal).into_response(),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The answers axum itself gives (a wrong method, a body over the limit) in the
/// API's JSON error form, so a client reads every refusal the same way.
fn json_refusals(response: Response) -> Response {
    let words = match response.status() {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed: state changes are POST or DELETE",
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large",
        _ => return response,
    };
    let mut json = (response.status(), Json(json!({ "error": words }))).into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, allow.clone());
    }
    json
}

async fn page_html() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page/index.html"),
    )
}

async fn page_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("page/panel.js"),
    )
}

async fn page_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("page/panel.css"),
    )
}

async fn ticket_qr(State(state): State<Arc<PanelState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        state.qr_svg.clone(),
    )
}

async fn web_qr(State(state): State<Arc<PanelState>>) -> Result<impl IntoResponse, PanelError> {
    let svg = state.web_qr_svg.clone().ok_or(PanelError::NotFound)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg))
}

/// The player key in a camera frame (`POST /api/scan?width=W&height=H`, the body
/// `W * H` grey bytes). The frame is read on a blocking thread and then dropped.
async fn scan_frame(
    State(state): State<Arc<PanelState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, PanelError> {
    // As for JSON: a plain HTML form cannot send this type.
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/octet-stream"));
    if !declared {
        return Err(PanelError::BadBody(
            "send the frame as application/octet-stream".to_owned(),
        ));
    }
    let (width, height) = scan::frame_size(uri.query()).ok_or_else(|| {
        PanelError::BadBody("name the frame's size: ?width=W&height=H".to_owned())
    })?;
    let _one = state.scan.try_lock().map_err(|_| PanelError::ScanBusy)?;
    let key = tokio::task::spawn_blocking(move || scan::read_key(width, height, &body))
        .await
        .map_err(|_| PanelError::HostStopped)??;
    Ok(Json(json!({ "key": key.to_string() })))
}

/// `text` as a QR code, in SVG.
fn qr_code(text: &str) -> Result<String, qrcode::types::QrError> {
    Ok(qrcode::QrCode::new(text.as_bytes())?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .build())
}

async fn status(State(state): State<Arc<PanelState>>) -> Json<Value> {
    Json(status_json(&state.view))
}

fn status_json(view: &HostView) -> Value {
    let host_state = view.state.borrow().clone();
    let direct = (!view.direct.is_empty()).then(|| {
        let addrs: Vec<String> = view.direct.iter().map(ToString::to_string).collect();
        format!("direct listener at {}", addrs.join(", "))
    });
    json!({
        "host_id": view.host_id,
        // A host without a relay has nothing to enable, whatever the flag says.
        "relay_enabled": *view.relay_enabled.borrow() && view.relay.is_some(),
        "relay": view.relay.as_ref().map(relay_name),
        "state": state_code(&host_state),
        "status": relay_words(
            &host_state,
            view.relay.as_ref(),
            *view.relay_transport.borrow(),
            retry_in(view),
        ),
        "relay_transport": view.relay_transport.borrow().map(|t| t.to_string()),
        "direct": view.direct.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "direct_status": direct,
        "ticket": view.ticket,
        "web": view.web,
        "players": match &view.players {
            Some(list) => json!({ "mode": "list", "count": list.len() }),
            None => json!({ "mode": "open" }),
        },
        "sessions": view.sessions.snapshot(),
    })
}

/// How long until the agent tries its relay again, if it is waiting to.
fn retry_in(view: &HostView) -> Option<std::time::Duration> {
    let at = (*view.retry_at.borrow())?;
    Some(at.saturating_duration_since(std::time::Instant::now()))
}

/// A relay as the panel names it: host and port (the pin is for machines).
fn relay_name(relay: &RelayUrl) -> String {
    if relay.host().contains(':') {
        format!("[{}]:{}", relay.host(), relay.port())
    } else {
        format!("{}:{}", relay.host(), relay.port())
    }
}

/// A short machine-readable name for the state, for scripts.
fn state_code(state: &HostState) -> &'static str {
    match state {
        HostState::Connecting { .. } => "connecting",
        HostState::Registered => "registered",
        HostState::Disabled => "disabled",
        HostState::RelayUntrusted { .. } => "relay_untrusted",
        HostState::TokenRefused { .. } => "token_refused",
        HostState::Stopped { .. } => "stopped",
        _ => "other",
    }
}

/// Where the host stands with its relay, in the owner's words.
fn relay_words(
    state: &HostState,
    relay: Option<&RelayUrl>,
    transport: Option<RelayTransport>,
    retry_in: Option<std::time::Duration>,
) -> String {
    let Some(relay) = relay else {
        return "no relay: reachable only directly".to_owned();
    };
    let relay = relay_name(relay);
    match state {
        HostState::Registered => match transport {
            Some(RelayTransport::Tcp) => format!("reachable through relay {relay} over TLS/TCP"),
            Some(RelayTransport::WebSocket) => {
                format!("reachable through relay {relay} over WebSocket")
            }
            _ => format!("reachable through relay {relay} over QUIC"),
        },
        HostState::Disabled => "relay disabled".to_owned(),
        HostState::Connecting { .. } if retry_in.is_some() => {
            // Rounded up: "retrying in 0 s" would read as stuck.
            let secs = retry_in.map_or(0, |left| left.as_millis().div_ceil(1000));
            format!("relay {relay} unreachable: retrying in {secs} s")
        }
        HostState::Connecting { attempt: 1 } => format!("connecting to relay {relay}"),
        HostState::Connecting { attempt } => {
            format!("relay {relay} unreachable: retrying (attempt {attempt})")
        }
        HostState::RelayUntrusted { .. } => format!(
            "relay {relay} not trusted: use the relay URL with ?pin=... that blindrelayd printed"
        ),
        HostState::TokenRefused { code, .. }
            if *code == blindrelay_protocol::ErrorCode::TokenExpired =>
        {
            "registration refused: token expired".to_owned()
        }
        HostState::TokenRefused { code, .. } => format!("registration refused: {code}"),
        HostState::Stopped { reason } => format!("stopped: {reason}"),
        other => other.to_string(),
    }
}

/// The body of `POST /api/relay`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySwitch {
    enabled: bool,
}

async fn switch_relay(
    State(state): State<Arc<PanelState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, PanelError> {
    let RelaySwitch { enabled } = json_body(&headers, &body)?;
    if enabled && state.view.relay.is_none() {
        return Err(PanelError::NoRelay);
    }
    let (done, applied) = oneshot::channel();
    state
        .view
        .commands
        .send(PanelCommand::SetRelay { enabled, done })
        .await
        .map_err(|_| PanelError::HostStopped)?;
    applied.await.map_err(|_| PanelError::HostStopped)?;
    Ok(Json(status_json(&state.view)))
}

/// The body of `POST /api/players`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddPlayer {
    key: String,
    #[serde(default)]
    note: String,
}

/// The body of `DELETE /api/players`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemovePlayer {
    key: String,
}

async fn players_list(State(state): State<Arc<PanelState>>) -> Result<Json<Value>, PanelError> {
    let Some(list) = &state.view.players else {
        return Ok(Json(json!({ "mode": "open", "players": [] })));
    };
    let text = read_list(list).await?;
    players_json(&text)
}

async fn player_add(
    State(state): State<Arc<PanelState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), PanelError> {
    let AddPlayer { key, note } = json_body(&headers, &body)?;
    let key = players::parse_key(&key)?;
    let note = players::check_note(&note)?.to_owned();
    let list = state.view.players.as_ref().ok_or(PanelError::OpenList)?;
    let _edit = state.edit.lock().await;
    let text = read_list(list).await?;
    players::list(&text).map_err(|line| PanelError::FileInvalid { line })?;
    let Some(text) = players::with_added(&text, &key, &note) else {
        return Ok((StatusCode::OK, players_json(&text)?));
    };
    write_list(list, text.clone()).await?;
    info!(player = %key.short(), "player added from the panel");
    Ok((StatusCode::CREATED, players_json(&text)?))
}

async fn player_remove(
    State(state): State<Arc<PanelState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, PanelError> {
    let RemovePlayer { key } = json_body(&headers, &body)?;
    let key = players::parse_key(&key)?;
    let list = state.view.players.as_ref().ok_or(PanelError::OpenList)?;
    let _edit = state.edit.lock().await;
    let text = read_list(list).await?;
    players::list(&text).map_err(|line| PanelError::FileInvalid { line })?;
    let text = players::without(&text, &key).ok_or(PanelError::NotListed)?;
    write_list(list, text.clone()).await?;
    info!(player = %key.short(), "player removed from the panel");
    players_json(&text)
}

fn players_json(text: &str) -> Result<Json<Value>, PanelError> {
    let listed = players::list(text).map_err(|line| PanelError::FileInvalid { line })?;
    Ok(Json(json!({ "mode": "list", "players": listed })))
}

async fn read_list(list: &AuthorizedPlayers) -> Result<String, PanelError> {
    let path = list.path().to_owned();
    tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
        .await
        .map_err(|err| PanelError::File(std::io::Error::other(err)))?
        .map_err(PanelError::File)
}

/// Writes the new list and puts it in force before answering, so that the next
/// handshake sees it whatever the file's timestamps say.
async fn write_list(list: &AuthorizedPlayers, text: String) -> Result<(), PanelError> {
    let path = list.path().to_owned();
    tokio::task::spawn_blocking(move || players::write_atomically(&path, &text))
        .await
        .map_err(|err| PanelError::File(std::io::Error::other(err)))?
        .map_err(PanelError::File)?;
    list.reload()
        .map_err(|err| PanelError::File(std::io::Error::other(err)))?;
    Ok(())
}

/// Parses a JSON body declared as JSON.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, PanelError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    // Besides saying what the body is, this keeps the API out of reach of plain
    // HTML forms, which cannot send this type.
    if !declared {
        return Err(PanelError::NotJson);
    }
    serde_json::from_slice(body).map_err(|err| PanelError::BadBody(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_the_owner_says_them() {
        let relay: RelayUrl = "blindrelay://relay.example:4433".parse().expect("url");
        assert_eq!(
            relay_words(&HostState::Registered, Some(&relay), None, None),
            "reachable through relay relay.example:4433 over QUIC"
        );
        assert_eq!(
            relay_words(
                &HostState::Registered,
                Some(&relay),
                Some(RelayTransport::Tcp),
                None
            ),
            "reachable through relay relay.example:4433 over TLS/TCP"
        );
        assert_eq!(
            relay_words(&HostState::Disabled, Some(&relay), None, None),
            "relay disabled"
        );
        assert_eq!(
            relay_words(
                &HostState::Connecting { attempt: 3 },
                Some(&relay),
                None,
                None
            ),
            "relay relay.example:4433 unreachable: retrying (attempt 3)"
        );
        assert_eq!(
            relay_words(
                &HostState::TokenRefused {
                    code: blindrelay_protocol::ErrorCode::TokenExpired,
                    reason: String::new()
                },
                Some(&relay),
                None,
                None
            ),
            "registration refused: token expired"
        );
        assert_eq!(
            relay_words(
                &HostState::Connecting { attempt: 2 },
                Some(&relay),
                None,
                Some(std::time::Duration::from_millis(7200))
            ),
            "relay relay.example:4433 unreachable: retrying in 8 s"
        );
        assert_eq!(
            relay_words(&HostState::Disabled, None, None, None),
            "no relay: reachable only directly"
        );
    }
}
