//! Sizes, rates and durations as operators write them in the config file and on the
//! command line: `"64KiB"`, `"40Mbit"`, `"30s"`. Zero turns a limit off.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use blindrelay_protocol::duration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes: a plain integer, or a number with a unit (`B`, `KB`, `MB`,
/// `GB` in powers of 1000; `KiB`, `MiB`, `GiB` in powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// A rate in bytes per second, written with a bit or byte unit per second:
/// `"40Mbit"`, `"40 Mbit/s"`, `"5MB/s"`, `"5MiB"`, or a plain integer of bytes per
/// second. Bit units are decimal (`kbit`, `Mbit`, `Gbit`), as network rates are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rate(pub u64);

/// A duration: `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`, or `"0"` for none; the syntax
/// of [`blindrelay_protocol::duration`], shared by every duration flag of both
/// programs. In the config file a bare integer is seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span(pub Duration);

/// Why a size, rate or duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: {reason}")]
pub struct UnitError {
    what: &'static str,
    text: String,
    reason: String,
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| UnitError {
            what: "size",
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (number, unit) = split_number(text).ok_or_else(|| error("expected a number"))?;
        let factor: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1_000,
            "mb" | "m" => 1_000_000,
            "gb" | "g" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            _ => return Err(error("unknown unit (use B, KB, MB, GB, KiB, MiB or GiB)")),
        };
        scale(number, factor)
            .map(Self)
            .ok_or_else(|| error("out of range"))
    }
}

impl FromStr for Rate {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| UnitError {
            what: "rate",
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (number, unit) = split_number(text).ok_or_else(|| error("expected a number"))?;
        let unit = unit.strip_suffix("/s").unwrap_or(unit).trim_end();
        // Bits per second in eighths of a byte: scale first, then divide by 8.
        let bits: Option<u64> = match unit {
            "bit" => Some(1),
            "kbit" | "Kbit" => Some(1_000),
            "Mbit" | "mbit" => Some(1_000_000),
            "Gbit" | "gbit" => Some(1_000_000_000),
            _ => None,
        };
        if let Some(factor) = bits {
            return scale(number, factor)
                .map(|bits| Self(bits / 8))
                .ok_or_else(|| error("out of range"));
        }
        let size = ByteSize::from_str(&format!("{number}{unit}"))
            .map_err(|_| error("unknown unit (use bit, kbit, Mbit, Gbit, or a byte unit)"))?;
        Ok(Self(size.0))
    }
}

impl FromStr for Span {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        duration::parse_duration(text)
            .map(Self)
            .map_err(|err| UnitError {
                what: "duration",
                text: text.to_owned(),
                reason: err.to_string(),
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (factor, unit) in UNITS {
            if self.0 >= factor && self.0 % factor == 0 {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let bits = self.0.saturating_mul(8);
        const UNITS: [(u64, &str); 3] = [
            (1_000_000_000, "Gbit"),
            (1_000_000, "Mbit"),
            (1_000, "kbit"),
        ];
        for (factor, unit) in UNITS {
            if bits >= factor && bits % factor == 0 {
                return write!(f, "{}{unit}", bits / factor);
            }
        }
        write!(f, "{}B/s", self.0)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        duration::format_duration(self.0).fmt(f)
    }
}

macro_rules! deserialize_from_str_or_int {
    ($ty:ty, $expecting:literal, $from_int:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$ty, E> {
                        text.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<$ty, E> {
                        let n = u64::try_from(n).map_err(|_| E::custom("must not be negative"))?;
                        Ok($from_int(n))
                    }
                    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<$ty, E> {
                        Ok($from_int(n))
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }
    };
}

deserialize_from_str_or_int!(
    ByteSize,
    "a size such as \"64KiB\" or a number of bytes",
    ByteSize
);
deserialize_from_str_or_int!(Rate, "a rate such as \"40Mbit\" or bytes per second", Rate);
deserialize_from_str_or_int!(Span, "a duration such as \"30s\", or seconds", |secs| {
    Span(Duration::from_secs(secs))
});

macro_rules! serialize_as_display {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}

serialize_as_display!(ByteSize, Rate, Span);

/// Splits `"1.5 MiB"` into `(1.5, "MiB")`.
fn split_number(text: &str) -> Option<(f64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..end].parse().ok()?;
    Some((number, text[end..].trim()))
}

fn scale(number: f64, factor: u64) -> Option<u64> {
    let value = number * factor as f64;
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then(|| value.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("64KiB".parse(), Ok(ByteSize(64 * 1024)));
        assert_eq!("1 GiB".parse(), Ok(ByteSize(1 << 30)));
        assert_eq!("1.5MB".parse(), Ok(ByteSize(1_500_000)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("0".parse(), Ok(ByteSize(0)));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        assert!("KiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(64 * 1024).to_string(), "64KiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn rates() {
        assert_eq!("40Mbit".parse(), Ok(Rate(5_000_000)));
        assert_eq!("40 Mbit/s".parse(), Ok(Rate(5_000_000)));
        assert_eq!("2Mbit".parse(), Ok(Rate(250_000)));
        assert_eq!("1Gbit/s".parse(), Ok(Rate(125_000_000)));
        assert_eq!("5MB/s".parse(), Ok(Rate(5_000_000)));
        assert_eq!("1MiB".parse(), Ok(Rate(1 << 20)));
        assert_eq!("125000".parse(), Ok(Rate(125_000)));
        assert_eq!("0".parse(), Ok(Rate(0)));
        assert!("fast".parse::<Rate>().is_err());
        assert_eq!(Rate(5_000_000).to_string(), "40Mbit");
    }

    #[test]
    fn spans() {
        assert_eq!("30s".parse(), Ok(Span(Duration::from_secs(30))));
        assert_eq!("1h 30m".parse(), Ok(Span(Duration::from_secs(5400))));
        assert_eq!("250ms".parse(), Ok(Span(Duration::from_millis(250))));
        assert_eq!("0".parse(), Ok(Span(Duration::ZERO)));
        assert!("soon".parse::<Span>().is_err());
        let ambiguous = "10M".parse::<Span>().expect_err("months or minutes?");
        assert!(
            ambiguous.to_string().contains("ms, s, m, h or d"),
            "{ambiguous}"
        );
        assert_eq!(Span(Duration::from_secs(7 * 86_400)).to_string(), "7d");
        assert_eq!(Span(Duration::from_secs(90)).to_string(), "1m 30s");
    }

    #[test]
    fn toml_accepts_strings_and_integers() {
        #[derive(Debug, Deserialize)]
        struct Sample {
            size: ByteSize,
            rate: Rate,
            span: Span,
        }
        let sample: Sample =
            toml::from_str("size = \"1MiB\"\nrate = 1000\nspan = 30").expect("valid");
        assert_eq!(sample.size, ByteSize(1 << 20));
        assert_eq!(sample.rate, Rate(1000));
        assert_eq!(sample.span, Span(Duration::from_secs(30)));
        let err = toml::from_str::<Sample>("size = \"1 parsec\"\nrate = 1\nspan = 1")
            .expect_err("refused");
        assert!(err.to_string().contains("invalid size"), "{err}");
    }
}
