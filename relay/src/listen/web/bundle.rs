//! The web player's files, built into the relay binary, and the headers they are
//! served with.
//!
//! The files come from `web/dist/` at build time: the relay serves exactly the
//! bytes it was built with, never a file from disk, so what a browser runs is
//! fixed by the binary (and its published hash), not by whoever can write to the
//! relay's disk.

/// The folder every file of the player is served under.
pub(crate) const PREFIX: &str = "/.blindrelay/";

/// Where the page learns how to reach the relay over WebTransport.
pub(crate) const WEBTRANSPORT_INFO: &str = "/.blindrelay/webtransport.json";

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// The Service Worker: it may control the whole origin, not only
    /// [`PREFIX`], since the media server's pages it carries live at `/`.
    pub service_worker: bool,
}

static INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../web/dist/index.html"
    )),
    service_worker: false,
};

static STYLESHEET: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../web/dist/player.css"
    )),
    service_worker: false,
};

static PLAYER: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../web/dist/player.js"
    )),
    service_worker: false,
};

static SERVICE_WORKER: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/dist/sw.js")),
    service_worker: true,
};

static WEBSOCKET_SHIM: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/dist/ws.js")),
    service_worker: false,
};

/// The file at `path`, if the player has one there.
pub(crate) fn find(path: &str) -> Option<&'static Asset> {
    match path.strip_prefix(PREFIX)? {
        "" | "index.html" => Some(&INDEX),
        "player.css" => Some(&STYLESHEET),
        "player.js" => Some(&PLAYER),
        "sw.js" => Some(&SERVICE_WORKER),
        // The Service Worker puts it in the host's pages: it carries their WebSockets.
        "ws.js" => Some(&WEBSOCKET_SHIM),
        _ => None,
    }
}

/// The Content-Security-Policy of the player's origin `authority` (a checked
/// `Host` header): its own files only, no inline script, no other origin; it may
/// connect to its own origin, which is where the relay's WebSocket and WebTransport
/// endpoints are (named explicitly, as `'self'` has not always covered `wss:`), and
/// to the pool `members` the page may follow a redirect to (checked member names,
/// `host:port`), where their endpoints are.
pub(crate) fn content_security_policy(authority: &str, members: &[String]) -> String {
    let members: String = members
        .iter()
        .map(|member| format!(" https://{member} wss://{member}"))
        .collect();
    format!(
        "default-src 'self'; script-src 'self'; \
         connect-src 'self' https://{authority} wss://{authority}{members}; \
         worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; \
         form-action 'self'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_five_files_are_found_and_nothing_else() {
        assert!(std::ptr::eq(find("/.blindrelay/").unwrap(), &INDEX));
        assert!(std::ptr::eq(
            find("/.blindrelay/index.html").unwrap(),
            &INDEX
        ));
        assert!(find("/.blindrelay/sw.js").unwrap().service_worker);
        assert!(!find("/.blindrelay/player.js").unwrap().service_worker);
        assert!(!find("/.blindrelay/ws.js").unwrap().service_worker);
        assert_eq!(
            find("/.blindrelay/ws.js").unwrap().content_type,
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            find("/.blindrelay/player.css").unwrap().content_type,
            "text/css; charset=utf-8"
        );
        for path in [
            "/",
            "/.blindrelay",
            "/.blindrelay/../Cargo.toml",
            "/.blindrelay/x.js",
            "/player.js",
            "/player.css",
            "/ws.js",
        ] {
            assert!(find(path).is_none(), "{path}");
        }
    }

    #[test]
    fn the_policy_names_no_other_origin_and_no_inline_script() {
        let csp = content_security_policy("h.relay.example:4433", &[]);
        assert!(!csp.contains("unsafe"));
        assert!(csp.contains(
            "connect-src 'self' https://h.relay.example:4433 wss://h.relay.example:4433;"
        ));
        for directive in [
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{directive}");
        }
    }
}
