//! Newtypes for units and identifiers, so bytes never mix with MiB and a job
//! id never mixes with a sweep id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

impl Bytes {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    pub const fn from_mib(mib: u64) -> Self {
        Bytes(mib * Self::MIB)
    }
    pub const fn from_gib(gib: u64) -> Self {
        Bytes(gib * Self::GIB)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
    pub fn saturating_sub(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(other.0))
    }
    pub fn saturating_add(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(other.0))
    }
    /// Scales by a factor (e.g. 1.5 for a raised estimate), rounding up.
    pub fn scale(self, factor: f64) -> Bytes {
        Bytes((self.0 as f64 * factor).ceil() as u64)
    }
}

/// Error of [`Bytes::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid memory size `{input}`: expected a number followed by B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. 10GiB)"
)]
pub struct ParseBytesError {
    pub input: String,
}

impl FromStr for Bytes {
    type Err = ParseBytesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseBytesError {
            input: s.to_string(),
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| err())?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => Self::KIB,
            "MiB" => Self::MIB,
            "GiB" => Self::GIB,
            "TiB" => Self::GIB << 10,
            _ => return Err(err()),
        };
        let value = number * multiplier as f64;
        if !value.is_finite() || value < 0.0 || value > u64::MAX as f64 {
            return Err(err());
        }
        Ok(Bytes(value.round() as u64))
    }
}

impl fmt::Display for Bytes {
    /// Binary units with one decimal: `10.0 GiB`, `512.0 MiB`, `12 B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= Self::GIB {
            write!(f, "{:.1} GiB", b as f64 / Self::GIB as f64)
        } else if b >= Self::MIB {
            write!(f, "{:.1} MiB", b as f64 / Self::MIB as f64)
        } else if b >= Self::KIB {
            write!(f, "{:.1} KiB", b as f64 / Self::KIB as f64)
        } else {
            write!(f, "{b} B")
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    /// Accepts a plain integer (bytes) or a string with a unit ("10GiB").
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Int(n)) => Ok(Bytes(n)),
            Ok(Raw::Text(s)) => s.parse().map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected a memory size such as 10GiB or a number of bytes",
            )),
        }
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// Identifier of a sweep (assigned by the coordinator's store).
    SweepId
);
id_newtype!(
    /// Identifier of a job: one (configuration, fold) pair of a sweep.
    JobId
);

/// Attempt number of a job; every message about a job carries it, so updates
/// from a stale attempt can be rejected (a fencing token).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Attempt(pub u32);

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!("10GiB".parse::<Bytes>().unwrap(), Bytes(10 << 30));
        assert_eq!("10 GiB".parse::<Bytes>().unwrap(), Bytes(10 << 30));
        assert_eq!("1.5MiB".parse::<Bytes>().unwrap(), Bytes(3 << 19));
        assert_eq!("2GB".parse::<Bytes>().unwrap(), Bytes(2_000_000_000));
        assert_eq!("512".parse::<Bytes>().unwrap(), Bytes(512));
        assert!("10 gigs".parse::<Bytes>().is_err());
        assert!("GiB".parse::<Bytes>().is_err());
        assert!("-1GiB".parse::<Bytes>().is_err());
    }

    #[test]
    fn displays_in_binary_units() {
        assert_eq!(Bytes::from_gib(10).to_string(), "10.0 GiB");
        assert_eq!(Bytes::from_mib(512).to_string(), "512.0 MiB");
        assert_eq!(Bytes(12).to_string(), "12 B");
    }

    #[test]
    fn deserializes_from_int_or_string() {
        let b: Bytes = serde_json::from_str("\"16GiB\"").unwrap();
        assert_eq!(b, Bytes::from_gib(16));
        let b: Bytes = serde_json::from_str("1024").unwrap();
        assert_eq!(b, Bytes(1024));
        let e = serde_json::from_str::<Bytes>("\"lots\"").unwrap_err();
        assert!(e.to_string().contains("invalid memory size `lots`"), "{e}");
    }
}
