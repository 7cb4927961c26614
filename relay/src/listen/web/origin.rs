//! One web origin per host: which origin a request's `Host` header names.
//!
//! The web player runs a host's media server's pages in the browser. Were every
//! host's player served from one origin, a malicious media server's page could read
//! another host's sessions, keys and storage in the same browser (same-origin
//! policy). So the relay serves the player only at `<host id>.<relay name>`: each
//! host gets an origin of its own, and the relay's bare name serves no page at all.

use blindrelay_protocol::HostId;

/// What a request's `Host` header names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `<host id>.<relay name>[:port]`: the origin of one host's player. `authority`
    /// is the header, lower-cased (checked, so it is safe to repeat in answers).
    Host { host_id: HostId, authority: String },
    /// `<relay name>[:port]`: the relay itself, which serves no page.
    Relay,
    /// Anything else: a name this relay does not answer for.
    Elsewhere,
}

/// Classifies the `Host` header `authority` against the relay's DNS names.
/// DNS names are case-insensitive; `names` are compared lower-cased.
pub(crate) fn classify(authority: &str, names: &[String]) -> Origin {
    let authority = authority.to_ascii_lowercase();
    let name = match authority.rsplit_once(':') {
        Some((name, port)) => {
            // An IPv6 literal has colons of its own; it is never a host's origin.
            let is_port = !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok();
            if !is_port || name.contains([':', '[', ']']) {
                return Origin::Elsewhere;
            }
            name
        }
        None => authority.as_str(),
    };
    for relay_name in names {
        let relay_name = relay_name.to_ascii_lowercase();
        if name == relay_name {
            return Origin::Relay;
        }
        let Some(label) = name
            .strip_suffix(relay_name.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
        else {
            continue;
        };
        if let Some(host_id) = host_id_label(label) {
            return Origin::Host {
                host_id,
                authority: authority.clone(),
            };
        }
    }
    Origin::Elsewhere
}

/// The host id whose canonical text form (PROTOCOL.md 3.2) is `label`, in either
/// case. A label that decodes but is not canonical (other trailing bits) is refused,
/// so that one host has exactly one origin.
fn host_id_label(label: &str) -> Option<HostId> {
    if !label.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let host_id: HostId = label.parse().ok()?;
    (host_id.to_string() == label).then_some(host_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "z2gtvuomwyz6y63qyf4bjjohn3gqffufaugtir2fxicyodsypvmq";

    fn names() -> Vec<String> {
        vec!["relay.example".to_owned()]
    }

    #[test]
    fn a_host_id_under_the_relay_name_is_that_hosts_origin() {
        for header in [
            format!("{ID}.relay.example"),
            format!("{ID}.relay.example:4433"),
            format!("{}.Relay.Example:443", ID.to_uppercase()),
        ] {
            match classify(&header, &names()) {
                Origin::Host { host_id, authority } => {
                    assert_eq!(host_id.to_string(), ID);
                    assert_eq!(authority, header.to_ascii_lowercase());
                }
                other => panic!("{header}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_bare_relay_name_is_the_relay() {
        assert_eq!(classify("relay.example", &names()), Origin::Relay);
        assert_eq!(classify("RELAY.example:8443", &names()), Origin::Relay);
    }

    #[test]
    fn anything_else_is_elsewhere() {
        let short = &ID[..51];
        let not_canonical = format!("{}r", &ID[..51]);
        for header in [
            "other.example".to_owned(),
            "127.0.0.1:4433".to_owned(),
            "[::1]:4433".to_owned(),
            format!("{ID}.other.example"),
            format!("{short}.relay.example"),
            format!("{not_canonical}.relay.example"),
            format!("a.{ID}.relay.example"),
            format!("{ID}.relay.example:"),
            format!("{ID}.relay.example:99999"),
            format!("{ID}.relay.example:44x"),
            format!("{ID}relay.example"),
            format!(" {ID}.relay.example"),
            String::new(),
        ] {
            assert_eq!(classify(&header, &names()), Origin::Elsewhere, "{header:?}");
        }
    }
}
