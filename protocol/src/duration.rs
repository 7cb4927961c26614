//! Durations as people write them for blindrelay: every duration flag of
//! `blindrelayd` and `blindrelay`, and every duration in the relay's config file,
//! goes through [`parse_duration`], so `250ms`, `30s`, `5m`, `1h`, `7d` and
//! `1h 30m` mean the same everywhere.
//!
//! The units are deliberately few and lower-case: `ms`, `s`, `m`, `h`, `d`. Units
//! that read two ways are refused rather than guessed: `10M` is months to one reader
//! and minutes to another, a `week` or `year` has no place in a timeout, and a bare
//! number could be seconds or milliseconds (only `0`, which is the same in every
//! unit, goes without one).

use std::fmt;
use std::time::Duration;

/// The units [`parse_duration`] accepts, as its errors name them.
pub const UNITS: &str = "ms, s, m, h or d (such as 250ms, 30s, 5m, 1h, 7d or 1h 30m)";

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Where a number was expected there was something else (or nothing).
    #[error("{text:?} is not a duration: write numbers with units {UNITS}")]
    NotANumber {
        /// The text that was refused.
        text: String,
    },
    /// A number came without a unit.
    #[error("{text:?} has no unit: use {UNITS}")]
    MissingUnit {
        /// The text that was refused.
        text: String,
    },
    /// A unit this syntax does not have, or one that reads two ways.
    #[error("unknown unit {unit:?} in {text:?}: use {UNITS}")]
    UnknownUnit {
        /// The text that was refused.
        text: String,
        /// The unit as written.
        unit: String,
    },
    /// The duration does not fit in a `Duration`.
    #[error("{text:?} is too long a duration")]
    TooLong {
        /// The text that was refused.
        text: String,
    },
}

/// Reads `text` as one or more numbers with units (`250ms`, `30s`, `1h 30m`,
/// `1h30m`), or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let owned = || text.to_owned();
    let mut rest = trimmed;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(DurationError::NotANumber { text: owned() });
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::NotANumber { text: owned() });
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLong { text: owned() })?;
        rest = rest[digits..].trim_start();
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..letters];
        let part = match unit {
            "" => return Err(DurationError::MissingUnit { text: owned() }),
            "ms" => Some(Duration::from_millis(number)),
            "s" => Some(Duration::from_secs(number)),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            "d" => number.checked_mul(86_400).map(Duration::from_secs),
            other => {
                return Err(DurationError::UnknownUnit {
                    text: owned(),
                    unit: other.to_owned(),
                })
            }
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| DurationError::TooLong { text: owned() })?;
        rest = rest[letters..].trim_start();
    }
    Ok(total)
}

/// Writes a duration in the syntax [`parse_duration`] reads, largest units first
/// (`1h 30m`, `250ms`, `0`). Parts under a millisecond are left out.
pub fn format_duration(duration: Duration) -> impl fmt::Display {
    Written(duration)
}

struct Written(Duration);

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u128, &str); 5] = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
            (1, "ms"),
        ];
        let mut millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0");
        }
        let mut first = true;
        for (size, unit) in UNITS {
            let count = millis / size;
            if count == 0 {
                continue;
            }
            millis %= size;
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{count}{unit}")?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_forms_are_read() {
        let ok = |text: &str| parse_duration(text).expect(text);
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("7d"), Duration::from_secs(7 * 86_400));
        assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok(" 2 s "), Duration::from_secs(2));
        assert_eq!(ok("1s 500ms"), Duration::from_millis(1500));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn ambiguous_and_unknown_units_are_refused_naming_the_accepted_ones() {
        for (text, unit) in [
            ("10M", "M"),
            ("2 weeks", "weeks"),
            ("1w", "w"),
            ("1y", "y"),
            ("30S", "S"),
            ("5min", "min"),
            ("100us", "us"),
        ] {
            let err = parse_duration(text).expect_err(text);
            assert_eq!(
                err,
                DurationError::UnknownUnit {
                    text: text.to_owned(),
                    unit: unit.to_owned()
                }
            );
            assert!(err.to_string().contains("ms, s, m, h or d"), "{err}");
        }
    }

    #[test]
    fn a_number_needs_a_unit_and_a_unit_a_number() {
        assert!(matches!(
            parse_duration("250"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1h 30"),
            Err(DurationError::MissingUnit { .. })
        ));
        for text in ["", "  ", "s", "soon", "-1s", "1.5s", "1h,30m"] {
            assert!(parse_duration(text).is_err(), "{text:?}");
        }
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse_duration("18446744073709551615d"),
            Err(DurationError::TooLong { .. })
        ));
    }

    #[test]
    fn what_is_written_reads_back() {
        for millis in [
            0, 1, 250, 1000, 1500, 90_000, 5_400_000, 86_400_000, 90_061_001,
        ] {
            let duration = Duration::from_millis(millis);
            let text = format_duration(duration).to_string();
            assert_eq!(parse_duration(&text), Ok(duration), "{text}");
        }
        assert_eq!(
            format_duration(Duration::from_secs(5400)).to_string(),
            "1h 30m"
        );
        assert_eq!(
            format_duration(Duration::from_secs(7 * 86_400)).to_string(),
            "7d"
        );
        assert_eq!(format_duration(Duration::ZERO).to_string(), "0");
    }
}
