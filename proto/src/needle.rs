//! The address of a needle, as it appears in the store's and the cache's URLs:
//! `/v1/needles/{volume}/{key}/{alt}/{cookie}` (docs/API.md). Parsed by hand, once, here: actix's
//! router would run a regex per request for four dynamic segments, and every service must read
//! and write the same form.

use std::fmt;

use crate::{format_cookie, parse_cookie};

/// The path prefix of needle URLs on stores and caches.
pub const NEEDLES_PREFIX: &str = "/v1/needles/";

/// The path prefix of whole-video URLs (served by caches).
pub const VIDEOS_PREFIX: &str = "/v1/videos/";

/// The shape of a needle path, for error messages.
pub const NEEDLE_PATH_SHAPE: &str = "/v1/needles/{volume}/{key}/{alt}/{cookie}";

/// One needle: logical volume, key (the photo id), alternate key (the variant) and cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeedleAddr {
    pub volume: u32,
    pub key: u64,
    pub alt: u32,
    pub cookie: u64,
}

/// Why a path is not a needle address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NeedleAddrError {
    /// Not under `/v1/needles/`, or not exactly four segments after it.
    Shape,
    Volume(String),
    Key(String),
    Alt(String),
    Cookie(String),
}

impl fmt::Display for NeedleAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NeedleAddrError::Shape => write!(f, "expected {NEEDLE_PATH_SHAPE}"),
            NeedleAddrError::Volume(s) => {
                write!(f, "volume id {s:?} is not a 32-bit unsigned integer")
            }
            NeedleAddrError::Key(s) => write!(f, "key {s:?} is not a 64-bit unsigned integer"),
            NeedleAddrError::Alt(s) => {
                write!(f, "alternate key {s:?} is not a 32-bit unsigned integer")
            }
            NeedleAddrError::Cookie(s) => write!(f, "cookie {s:?} is not 1 to 16 hex digits"),
        }
    }
}

impl std::error::Error for NeedleAddrError {}

impl NeedleAddr {
    pub fn new(volume: u32, key: u64, alt: u32, cookie: u64) -> Self {
        NeedleAddr {
            volume,
            key,
            alt,
            cookie,
        }
    }

    /// Parses a whole path, `/v1/needles/{volume}/{key}/{alt}/{cookie}` (no query string).
    pub fn parse_path(path: &str) -> Result<Self, NeedleAddrError> {
        let rest = path
            .strip_prefix(NEEDLES_PREFIX)
            .ok_or(NeedleAddrError::Shape)?;
        let mut it = rest.split('/');
        let (Some(v), Some(k), Some(a), Some(c), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(NeedleAddrError::Shape);
        };
        Self::from_segments(v, k, a, c)
    }

    /// Parses the four segments (decimal volume, key and alternate key; hex cookie).
    pub fn from_segments(
        volume: &str,
        key: &str,
        alt: &str,
        cookie: &str,
    ) -> Result<Self, NeedleAddrError> {
        Ok(NeedleAddr {
            volume: volume
                .parse()
                .map_err(|_| NeedleAddrError::Volume(volume.into()))?,
            key: key.parse().map_err(|_| NeedleAddrError::Key(key.into()))?,
            alt: alt.parse().map_err(|_| NeedleAddrError::Alt(alt.into()))?,
            cookie: parse_cookie(cookie).ok_or_else(|| NeedleAddrError::Cookie(cookie.into()))?,
        })
    }

    /// The path, `/v1/needles/{volume}/{key}/{alt}/{cookie}` with the cookie in 16 hex digits.
    pub fn path(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for NeedleAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{NEEDLES_PREFIX}{}/{}/{}/{}",
            self.volume,
            self.key,
            self.alt,
            format_cookie(self.cookie)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_parses_to_its_parts_and_back() {
        let a =
            NeedleAddr::parse_path("/v1/needles/3/78716483502080513/4/9f86d081884c7d65").unwrap();
        assert_eq!(
            a,
            NeedleAddr::new(3, 78716483502080513, 4, 0x9f86d081884c7d65)
        );
        assert_eq!(
            a.path(),
            "/v1/needles/3/78716483502080513/4/9f86d081884c7d65"
        );
        // Short cookies parse; they are written back in 16 digits.
        let a = NeedleAddr::parse_path("/v1/needles/1/2/3/ab").unwrap();
        assert_eq!(a.path(), "/v1/needles/1/2/3/00000000000000ab");
    }

    #[test]
    fn malformed_paths_are_refused() {
        for p in [
            "/v1/needles/3/7/4",
            "/v1/needles/3/7/4/ab/x",
            "/v1/needles/x/7/4/ab",
            "/v1/needles/3/-7/4/ab",
            "/v1/needles/3/7/4/",
            "/v1/needles/3/7/4/zz",
            "/v1/needles/3/7/4/00000000000000000",
            "/v1/needles/4294967296/7/4/ab",
            "/v1/needles//7/4/ab",
            "/v1/videos/3/7/4/ab",
        ] {
            assert!(NeedleAddr::parse_path(p).is_err(), "{p}");
        }
        assert_eq!(
            NeedleAddr::parse_path("/v1/needles/3/7/4"),
            Err(NeedleAddrError::Shape)
        );
    }
}
