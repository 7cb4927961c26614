//! `blindrelay host`: the host agent, its panel and signals, and every session
//! forwarded to the local service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use blindrelay_client::Abandon;
use blindrelay_client::{
    AuthorizedPlayers, HostAgent, HostConfig, HostState, PlayerAuthorization, SecretKey,
    SecureStream, Ticket,
};
use blindrelay_protocol::codes;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::cli::{HostArgs, Role};
use crate::host_file;
use crate::host_settings::{check_panel_addr, HostSettings};
use crate::keys::{key_file, read_key_as, write_private};
use crate::panel;
use crate::splice::{splice_tcp, Ended};
use crate::stop::{PidFile, Stop};
use crate::token::{TokenWatch, TOKEN_POLL};

/// `blindrelay host`: its settings from the command line, the environment and the
/// config file; printed and checked with `--check-config`, run otherwise.
pub(crate) async fn run(args: HostArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => host_file::HostFile::load(path)?,
        None => host_file::HostFile::default(),
    };
    let settings = HostSettings::merge(args.flags, file)?;
    if args.check_config {
        return settings.check();
    }
    run_host(settings).await
}

/// Runs `blindrelay host` with `settings`.
pub(crate) async fn run_host(settings: HostSettings) -> Result<()> {
    let HostSettings {
        key,
        make_key,
        relay,
        forward,
        direct,
        advertise,
        enable_relay,
        token,
        token_file,
        authorized_players,
        pid_file,
        panel,
        panel_allow_remote,
        relay_state,
        transport,
        resume_window,
        replay_window,
        punch,
    } = settings;
    if let Some(addr) = panel {
        check_panel_addr(addr, panel_allow_remote)?;
    }
    if make_key && !key.exists() {
        if let Some(folder) = key.parent().filter(|folder| !folder.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot make the key's folder {}", folder.display()))?;
        }
        let made = SecretKey::generate()?;
        write_private(&key, key_file(&made, Role::Host).as_bytes(), false)?;
        println!("key: made {}", key.display());
    }
    let relay_state = relay_state.or_else(|| {
        panel.map(|_| {
            let mut path = key.clone().into_os_string();
            path.push(".relay-state");
            PathBuf::from(path)
        })
    });
    let key = read_key_as(&key, Role::Host)?;
    let has_relay = relay.is_some();
    let mut config = match (relay, direct) {
        (Some(relay), _) => HostConfig::new(key, relay),
        (None, Some(direct)) => HostConfig::direct_only(key, direct),
        (None, None) => {
            bail!("give --relay, --direct or both: nothing could reach this host")
        }
    };
    config.direct = direct;
    config.advertise = advertise;
    config.transport = transport;
    config.resume_window = resume_window;
    config.replay_window = replay_window;
    config.punch = punch;
    config.enable_relay = enable_relay;
    if let Some(path) = &relay_state {
        let kept = panel::load_relay_state(path)?;
        if let (Some(enabled), true) = (kept, enable_relay) {
            info!(enabled, file = %path.display(), "Enable Relay as last switched");
            config.enable_relay = enabled;
        }
    }
    let token_watch = TokenWatch::open(token_file)?;
    if let (Some(path), None) = (&token_watch.path, token_watch.current()) {
        println!(
            "token: none in {} yet; read as soon as it is there (a relay that requires \
             one refuses this host until then)",
            path.display()
        );
    }
    config.token = token.or_else(|| token_watch.current().cloned());
    let mut players = None;
    if let Some(path) = authorized_players {
        if !path.exists() {
            // A new host's list: made empty, to fill from the panel or by hand.
            write_private(&path, AUTHORIZED_PLAYERS_HEADER.as_bytes(), false)?;
            println!(
                "authorized players: made {} (empty: every player is refused until \
                 its key is added, here or in the panel)",
                path.display()
            );
        }
        let list = AuthorizedPlayers::open(&path)?;
        info!(path = %path.display(), players = list.len(), "serving only authorized players");
        players = Some(list.clone());
        config.players = PlayerAuthorization::File(list);
    }
    let _pid_file = pid_file.map(PidFile::create).transpose()?;
    // Listened for before anything is printed: a script that acts on our first lines
    // may send it at once.
    let stop = Stop::interrupt()?;
    host(
        config,
        HostRun {
            forward,
            has_relay,
            token_watch,
            panel,
            relay_state,
            players,
            registered: None,
        },
        stop,
    )
    .await
}

/// What a list of authorized players made by `blindrelay host` starts with.
pub(crate) const AUTHORIZED_PLAYERS_HEADER: &str = "\
# The players this host serves: one player key per line (as `blindrelay connect`
# or the browser page prints it), then an optional `# note`. Re-read when it changes.
";

/// How `blindrelay host` runs, beside the agent's own config.
pub(crate) struct HostRun {
    /// The local service sessions are forwarded to.
    pub(crate) forward: String,
    /// Whether a relay was given at all.
    pub(crate) has_relay: bool,
    /// The registration token file.
    pub(crate) token_watch: TokenWatch,
    /// Where to serve the panel, if anywhere.
    pub(crate) panel: Option<SocketAddr>,
    /// Where Enable Relay is kept across restarts, if anywhere.
    pub(crate) relay_state: Option<PathBuf>,
    /// The authorized players file, if the host has one.
    pub(crate) players: Option<AuthorizedPlayers>,
    /// Told the ticket once the host is first registered with its relay.
    pub(crate) registered: Option<tokio::sync::oneshot::Sender<Ticket>>,
}

pub(crate) async fn host(config: HostConfig, run: HostRun, mut stop: Stop) -> Result<()> {
    let HostRun {
        forward,
        has_relay,
        mut token_watch,
        panel: panel_addr,
        relay_state,
        players,
        mut registered,
    } = run;
    // Listened for before anything is printed: a script that acts on our first
    // lines may send it at once.
    let mut switch = RelaySwitch::new()?;
    let forward: std::sync::Arc<str> = forward.into();
    check_service(&forward).await;
    let token = config.token.clone();
    let relay = config.relay.clone();
    let mut agent = HostAgent::start(config)?;
    println!("host id: {}", agent.host_id());
    println!("ticket: {}", agent.ticket());
    let mut web = None;
    if let Some(relay) = &relay {
        // Once, at start: a link is printed only where the relay was seen to serve
        // the player on this host's origin. The ticket goes in the fragment, which
        // browsers never send to the relay.
        match blindrelay_client::web_link(relay, agent.host_id()).await {
            Ok(link) => {
                let shared = link.with_ticket(agent.ticket());
                println!("web: {shared}");
                web = Some(shared);
                // A relay trusted by pin has a certificate no browser trusts.
                if let Some(command) = link.chromium_command(agent.ticket()) {
                    println!("browser: {command}");
                }
            }
            Err(err) => info!("no link for browsers: {err}"),
        }
    }
    if let Some(direct) = agent.direct_addr() {
        println!("direct: {direct}");
    }
    let sessions_open = panel::SessionTable::default();
    let (relay_enabled, relay_enabled_rx) = tokio::sync::watch::channel(agent.relay_enabled());
    // Without a panel the sender stays here, so the loop's receiver just waits.
    let (panel_tx, mut panel_commands) = tokio::sync::mpsc::channel(8);
    let _panel = match panel_addr {
        Some(addr) => {
            let view = panel::HostView {
                host_id: agent.host_id().to_string(),
                ticket: agent.ticket().to_string(),
                web,
                relay,
                direct: agent.ticket().direct_addrs().to_vec(),
                state: agent.watch_state(),
                retry_at: agent.watch_retry(),
                relay_transport: agent.watch_relay_transport(),
                relay_enabled: relay_enabled_rx,
                players,
                sessions: sessions_open.clone(),
                commands: panel_tx.clone(),
            };
            let panel = panel::Panel::start(addr, view).await?;
            println!("panel: {}", panel.url());
            Some(panel)
        }
        None => None,
    };
    if let Some(token) = &token {
        token_watch.announce(token);
    }
    let mut state = agent.watch_state();
    let mut sessions = JoinSet::new();
    let mut shown = None;
    // Not at once: the first lines a script reads are the host's and its state's.
    let mut token_poll =
        tokio::time::interval_at(tokio::time::Instant::now() + TOKEN_POLL, TOKEN_POLL);
    let stopped = loop {
        let now = state.borrow_and_update().clone();
        if shown.as_ref() != Some(&now) {
            // `relay: connecting (attempt 3)`, `relay: registered`, `relay: disabled`
            // (scripts match these lines; the transport is in the log).
            println!("relay: {now}");
            shown = Some(now.clone());
            match &now {
                HostState::Registered => {
                    if let Some(registered) = registered.take() {
                        let _ = registered.send(agent.ticket().clone());
                    }
                    let transport = agent.relay_transport().map(|t| t.to_string());
                    info!(
                        transport,
                        "relay state: registered; reachable through the relay"
                    )
                }
                HostState::Connecting { attempt } => info!(attempt, "relay state: connecting"),
                HostState::Disabled if agent.direct_addr().is_some() => {
                    info!("relay state: disabled; reachable only directly")
                }
                HostState::Disabled => warn!(
                    "relay state: disabled, and no direct listener: unreachable until Enable \
                     Relay is on again (the panel's switch, or SIGUSR2)"
                ),
                HostState::Stopped { .. } => break now,
                _ => {}
            }
        }
        tokio::select! {
            session = agent.accept() => match session {
                Some(session) => {
                    let local_id = next_local_id();
                    info!(local_id, session = relay_session(&session), path = %session.route(), player = %session.peer().short(), "session open");
                    let open = sessions_open.open(local_id, session.path(), session.peer().short());
                    sessions.spawn(forward_to_service(session, forward.clone(), open, local_id));
                }
                None => break agent.state(),
            },
            changed = state.changed() => {
                if changed.is_err() {
                    break agent.state();
                }
            }
            enable = switch.next() => {
                info!(enable, "Enable Relay switched by signal");
                switch_relay(&agent, enable, has_relay, relay_state.as_deref(), &relay_enabled);
            }
            Some(command) = panel_commands.recv() => match command {
                panel::PanelCommand::SetRelay { enabled, done } => {
                    info!(enable = enabled, "Enable Relay switched from the panel");
                    switch_relay(&agent, enabled, has_relay, relay_state.as_deref(), &relay_enabled);
                    let _ = done.send(());
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = token_poll.tick() => {
                if let Some(token) = token_watch.check() {
                    agent.set_token(token);
                }
            }
            () = &mut stop => {
                info!("shutting down");
                agent.shutdown().await;
                return Ok(());
            }
        }
    };
    // The agent may stop between two looks at its state (its session channel closes
    // first): still tell scripts how it ended.
    if shown.as_ref() != Some(&stopped) {
        println!("relay: {stopped}");
    }
    match stopped {
        HostState::Stopped { reason } => bail!("host stopped: {reason}"),
        other => bail!("host stopped unexpectedly in state {other:?}"),
    }
}

/// Switches Enable Relay, whoever asked (a signal or the panel): one path, so the
/// two cannot disagree. The new state is kept in `relay_state`, if given, and shown
/// to the panel through `shown`.
pub(crate) fn switch_relay(
    agent: &HostAgent,
    enable: bool,
    has_relay: bool,
    relay_state: Option<&Path>,
    shown: &tokio::sync::watch::Sender<bool>,
) {
    if enable && !has_relay {
        warn!(
            "this host was started without --relay: there is no relay to \
             enable; restart it with --relay URL to be reachable through one"
        );
    }
    agent.set_relay_enabled(enable);
    shown.send_replace(agent.relay_enabled());
    if let Some(path) = relay_state {
        if let Err(err) = panel::save_relay_state(path, enable) {
            warn!(%err, file = %path.display(), "cannot keep Enable Relay for the next start");
        }
    }
}

pub(crate) async fn forward_to_service(
    session: SecureStream,
    service: std::sync::Arc<str>,
    open: panel::OpenSession,
    local_id: u64,
) {
    let tcp = match TcpStream::connect(&*service).await {
        Ok(tcp) => tcp,
        Err(err) => {
            warn!(local_id, %err, "cannot reach the local service; telling the player");
            // Said to the player with the session's end, rather than an empty
            // session it would take for an empty reply.
            let (mut reader, mut writer) = session.into_inner();
            writer.abandon(codes::stream::SERVICE_UNAVAILABLE);
            reader.abandon(codes::stream::SERVICE_UNAVAILABLE);
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    // A session cut short resets the service's connection, as below for players.
    let socket = socket2::SockRef::from(&tcp).try_clone().ok();
    let mut tcp = open.count(tcp);
    let mut session = open.watch(session);
    if splice_tcp(local_id, &mut session, &mut tcp).await == Ended::CutShort {
        if let Some(socket) = socket {
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    }
}

/// Warns at start when the local service does not take a connection: every player
/// would otherwise get an empty reply, and nothing would say why.
pub(crate) async fn check_service(service: &str) {
    let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(service));
    match connect.await {
        Ok(Ok(_)) => info!(service, "the local service answers"),
        Ok(Err(err)) => warn!(
            service,
            %err,
            "the local service does not answer: players get empty replies until it does"
        ),
        Err(_) => warn!(
            service,
            "the local service did not answer within 2 s: players get empty replies until it does"
        ),
    }
}

/// A number for each session this process opens, for its log lines: the relay's
/// session id exists only on relayed sessions (a direct one has none), and
/// "session=0" on every direct session told the reader nothing.
pub(crate) fn next_local_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The relay's id for a relayed session, to match the relay's log; `None` (no
/// field in the log line) for a direct one.
pub(crate) fn relay_session(session: &SecureStream) -> Option<u64> {
    (session.path() == blindrelay_client::SessionPath::Relayed).then(|| session.session_id())
}

/// Enable Relay switched by signals: SIGUSR1 off, SIGUSR2 on (Unix only).
pub(crate) struct RelaySwitch {
    #[cfg(unix)]
    off: tokio::signal::unix::Signal,
    #[cfg(unix)]
    on: tokio::signal::unix::Signal,
}

impl RelaySwitch {
    pub(crate) fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                off: signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?,
                on: signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next switch: `false` for off, `true` for on.
    pub(crate) async fn next(&mut self) -> bool {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.off.recv() => false,
                _ = self.on.recv() => true,
            }
        }
        #[cfg(not(unix))]
        std::future::pending().await
    }
}
