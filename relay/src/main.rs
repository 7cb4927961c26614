//! `blindrelayd`: the relay daemon.
//!
//! With no arguments it starts a development relay on 127.0.0.1:4433 with a
//! self-signed certificate made in memory, and prints `relay url: URL` on stdout.
//! Logs go to stderr (`RUST_LOG` filters them).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use blindrelay_relay::{Relay, RelayCertificate, RelayConfig, DEFAULT_LISTEN};
use clap::Parser;
use tracing::{info, warn};

/// The blindrelay relay: pairs hosts and players and forwards end-to-end encrypted
/// sessions it cannot read.
#[derive(Debug, Parser)]
#[command(name = "blindrelayd", version)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// PEM certificate chain (leaf first). Without it, a self-signed certificate is
    /// made in memory at start.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,

    /// DNS name in the relay URL, for a certificate a public CA issued for that name.
    /// Without it the URL names the listen address and pins the certificate.
    #[arg(long)]
    public_name: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();

    let certificate = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => RelayCertificate::from_pem_files(cert, key)?,
        _ => {
            let name = args
                .public_name
                .clone()
                .unwrap_or_else(|| "localhost".to_owned());
            info!("no --cert given: using a self-signed certificate made in memory");
            RelayCertificate::self_signed(&[name.as_str(), "localhost"])?
        }
    };
    let mut config = RelayConfig::new(args.listen, certificate);
    config.public_name = args.public_name.clone();
    if args.listen.ip().is_unspecified() && args.public_name.is_none() {
        warn!(
            "listening on all interfaces without --public-name: the printed URL uses \
             loopback; replace its address with one your hosts and players can reach"
        );
    }

    let relay = Relay::spawn(config).context("starting the relay")?;
    println!("relay url: {}", relay.url());

    shutdown_signal().await;
    info!("shutting down");
    relay.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
