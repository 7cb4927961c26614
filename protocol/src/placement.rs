//! Placement in a pool of relays: which member holds a host, as a pure function of
//! the host id and the member list, so every relay and client computes the same
//! answer without asking anyone (PROTOCOL.md section 18).
//!
//! Rendezvous (highest-random-weight) hashing: each member scores the host,
//!
//! ```text
//! score(m, H) = first 8 bytes, big-endian, of
//!               SHA-256("blindrelay/1 placement" ‖ u8 len(name(m)) ‖ name(m) ‖ H)
//! ```
//!
//! and the members ranked by score, highest first (equal scores by name, bytewise),
//! are the host's owner followed by its fallbacks. A member joining takes from each
//! other member about its share of hosts and moves nobody else; a member leaving
//! moves only its own hosts, each to its next in rank.
//!
//! A member's *name* is its stable name (a Kubernetes pod's DNS name, say), not an
//! address that can change under it.

use crate::keys::HostId;

/// What every score hashes first: the protocol version and the purpose.
pub const PLACEMENT_CONTEXT: &[u8] = b"blindrelay/1 placement";

/// The longest member name, in bytes: a DNS name.
pub const MAX_MEMBER_NAME_LEN: usize = 253;

/// How many redirects a client follows before it tries the fallbacks itself, and
/// past which a relay no longer redirects (PROTOCOL.md section 18.4).
pub const MAX_REDIRECTS: u8 = 2;

/// How many members a `Redirect` or `Move` names at most: the owner and the next two.
pub const MAX_REDIRECT_MEMBERS: usize = 3;

/// Why a member name cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The name is empty or longer than [`MAX_MEMBER_NAME_LEN`] bytes.
    #[error("a pool member's name must be 1 to {MAX_MEMBER_NAME_LEN} bytes, not {0}")]
    NameLength(usize),
    /// The name is not `host:port` in canonical form.
    #[error("a pool member's name must be host:port in canonical form (lower case, IPv6 in brackets, no leading zeros)")]
    NotCanonical,
}

/// Checks that `name` is a member name: `host:port` in canonical form, at most
/// [`MAX_MEMBER_NAME_LEN`] bytes (PROTOCOL.md section 18.1).
pub fn check_member_name(name: &str) -> Result<(), PlacementError> {
    if name.is_empty() || name.len() > MAX_MEMBER_NAME_LEN {
        return Err(PlacementError::NameLength(name.len()));
    }
    match crate::relay_url::canonical_authority(name) {
        Ok(canonical) if canonical == name => Ok(()),
        _ => Err(PlacementError::NotCanonical),
    }
}

/// `member`'s score for `host_id` (see the module documentation).
pub fn score(member: &str, host_id: &HostId) -> Result<u64, PlacementError> {
    let name = member.as_bytes();
    if name.is_empty() || name.len() > MAX_MEMBER_NAME_LEN {
        return Err(PlacementError::NameLength(name.len()));
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(PLACEMENT_CONTEXT);
    context.update(&[name.len() as u8]);
    context.update(name);
    context.update(host_id.as_bytes());
    let digest = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    Ok(u64::from_be_bytes(first))
}

/// The members ranked for `host_id`: its owner first, then its fallbacks in order.
/// Duplicate names count once.
pub fn rank<'a>(host_id: &HostId, members: &[&'a str]) -> Result<Vec<&'a str>, PlacementError> {
    let mut scored = Vec::with_capacity(members.len());
    for &member in members {
        scored.push((score(member, host_id)?, member));
    }
    scored.sort_unstable_by(|(a, a_name), (b, b_name)| {
        b.cmp(a)
            .then_with(|| a_name.as_bytes().cmp(b_name.as_bytes()))
    });
    scored.dedup_by(|(_, a), (_, b)| a == b);
    Ok(scored.into_iter().map(|(_, member)| member).collect())
}

/// The member that holds `host_id`: the first of [`rank`]; `None` for no members.
pub fn owner<'a>(host_id: &HostId, members: &[&'a str]) -> Result<Option<&'a str>, PlacementError> {
    Ok(rank(host_id, members)?.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(i: u32) -> HostId {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        bytes[31] = 0x5a;
        HostId::from_bytes(bytes)
    }

    const THREE: [&str; 3] = [
        "relay-0.relay.example.net",
        "relay-1.relay.example.net",
        "relay-2.relay.example.net",
    ];

    #[test]
    fn the_scores_are_pinned() {
        // PROTOCOL.md section 18 quotes these: a second implementation checks its
        // hash input against them.
        let h = HostId::from_bytes([0x11; 32]);
        let scores: Vec<String> = THREE
            .iter()
            .map(|m| format!("{:016x}", score(m, &h).expect("valid name")))
            .collect();
        assert_eq!(scores, PINNED_SCORES);
        assert_eq!(rank(&h, &THREE).expect("valid"), PINNED_RANK);
    }

    /// Also computed with Python's hashlib from the formula in PROTOCOL.md 18.2.
    const PINNED_SCORES: [&str; 3] = ["7d44d0331d0668b0", "211ed7d218fbcdb3", "6b032656766ebf83"];
    const PINNED_RANK: [&str; 3] = [THREE[0], THREE[2], THREE[1]];

    #[test]
    fn the_order_of_the_list_does_not_matter_and_duplicates_count_once() {
        for i in 0..50 {
            let forward = rank(&host(i), &THREE).expect("valid");
            let mut reversed = THREE;
            reversed.reverse();
            assert_eq!(rank(&host(i), &reversed).expect("valid"), forward);
            let doubled = [THREE[0], THREE[1], THREE[0], THREE[2]];
            assert_eq!(rank(&host(i), &doubled).expect("valid"), forward);
        }
    }

    #[test]
    fn hosts_spread_evenly_over_the_members() {
        let mut held = [0u32; 3];
        for i in 0..600 {
            let owner = owner(&host(i), &THREE).expect("valid").expect("members");
            held[THREE.iter().position(|m| *m == owner).expect("a member")] += 1;
        }
        for count in held {
            assert!((150..=250).contains(&count), "{held:?}");
        }
    }

    #[test]
    fn a_joining_member_moves_about_its_share_and_nothing_else() {
        let four = [THREE[0], THREE[1], THREE[2], "relay-3.relay.example.net"];
        let mut moved = 0;
        for i in 0..1000 {
            let before = owner(&host(i), &THREE).expect("valid").expect("members");
            let after = owner(&host(i), &four).expect("valid").expect("members");
            if before != after {
                // Only ever to the new member.
                assert_eq!(after, four[3]);
                moved += 1;
            }
        }
        assert!((180..=320).contains(&moved), "{moved} of 1000 moved");
    }

    #[test]
    fn a_leaving_member_moves_only_its_hosts_to_their_next_in_rank() {
        let two = [THREE[0], THREE[2]];
        for i in 0..300 {
            let ranked = rank(&host(i), &THREE).expect("valid");
            let after = owner(&host(i), &two).expect("valid").expect("members");
            if ranked[0] == THREE[1] {
                assert_eq!(after, ranked[1], "the next in rank takes it");
            } else {
                assert_eq!(after, ranked[0], "hosts of the others stay");
            }
        }
    }

    #[test]
    fn names_are_bounded() {
        let h = host(1);
        assert_eq!(score("", &h), Err(PlacementError::NameLength(0)));
        let long = "a".repeat(MAX_MEMBER_NAME_LEN + 1);
        assert_eq!(score(&long, &h), Err(PlacementError::NameLength(254)));
        assert!(score(&"a".repeat(MAX_MEMBER_NAME_LEN), &h).is_ok());
        assert_eq!(owner(&h, &[]), Ok(None));
    }
}
