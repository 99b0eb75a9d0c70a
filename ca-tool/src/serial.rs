//! Certificate serial numbers, written the way openssl writes them wherever it shows one
//! (`openssl x509 -serial`, `openssl crl -text`, the CA database `index.txt`, the `.srl` and
//! `serial` files): the positive integer in upper-case hex, two digits a byte, without leading zero
//! bytes, `00` for zero. So `A9A654...` and never `00A9A654...`: the `00` in front of a serial
//! whose top bit is set is DER's sign byte, not part of the number, and openssl does not print it;
//! a serial whose first byte is below 0x10 keeps its `0` (`0A11`), as in openssl.
//!
//! Older ca-tool versions printed and stored the DER content bytes, sign byte included, so their
//! `index.toml` may hold `00A9A654...`. [`Serial`] reads either spelling (and `a9:a6:54:...` as
//! `openssl x509 -text` shows long serials), compares numbers, and always writes openssl's form.

use std::fmt;
use std::str::FromStr;

/// A certificate's serial number: a non-negative integer. Two serials are equal when their
/// numbers are, whichever spelling they were read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial {
    /// Big-endian, without leading zero bytes; `[0]` for zero (never empty).
    bytes: Vec<u8>,
}

/// A serial number that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("{0:?} is not a serial number: hex digits expected, as `openssl x509 -serial` prints them (e.g. 7231404F7097A27F)")]
    NotHex(String),
    #[error(
        "a negative serial number ({0}); RFC 5280 requires a positive one and ca-tool's CRL cannot list it"
    )]
    Negative(String),
}

impl Serial {
    /// The unsigned big-endian integer `bytes` (leading zero bytes allowed).
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let bytes = if start == bytes.len() { vec![0] } else { bytes[start..].to_vec() };
        Self { bytes }
    }

    /// The serial of a DER INTEGER's content bytes, as x509-parser's `raw_serial()` gives them: a
    /// leading `00` sign byte is dropped; a negative serial (top bit set with no sign byte) is
    /// refused, since a CRL entry for it could not be written.
    pub fn from_der(content: &[u8]) -> Result<Self, SerialError> {
        if is_negative(content) {
            return Err(SerialError::Negative(der_text(content)));
        }
        Ok(Self::from_be_bytes(content))
    }

    /// Big-endian bytes without leading zeros (`[0]` for zero), e.g. for rcgen's `SerialNumber`,
    /// which adds DER's sign byte itself where the top bit is set.
    pub fn to_be_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.bytes.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

/// Reads hex in any case, with or without leading zeros (`00A9...` as older ca-tool versions
/// wrote it), an odd number of digits, a `0x` prefix or colons between bytes (`a9:a6:...`).
impl FromStr for Serial {
    type Err = SerialError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let not_hex = || SerialError::NotHex(text.to_owned());
        let trimmed = text.trim();
        let digits = trimmed.strip_prefix("0x").or_else(|| trimmed.strip_prefix("0X")).unwrap_or(trimmed);
        if digits.starts_with(':') || digits.ends_with(':') || digits.contains("::") {
            return Err(not_hex());
        }
        let digits: Vec<u8> = digits
            .bytes()
            .filter(|b| *b != b':')
            .map(|b| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(not_hex)?;
        if digits.is_empty() {
            return Err(not_hex());
        }
        // An odd count: the first digit is a byte of its own (`A11` is 0x0A11), as BN_hex2bn reads it.
        let (head, pairs) = digits.split_at(digits.len() % 2);
        let bytes: Vec<u8> = head.iter().copied().chain(pairs.chunks(2).map(|p| p[0] << 4 | p[1])).collect();
        Ok(Self::from_be_bytes(&bytes))
    }
}

impl serde::Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What openssl prints for the DER INTEGER content `content` (`openssl x509 -serial`,
/// `openssl crl -text`): [`Serial`]'s form, and for a negative serial, which RFC 5280 forbids but
/// which exists, `-` and the magnitude.
pub fn der_text(content: &[u8]) -> String {
    if !is_negative(content) {
        return Serial::from_be_bytes(content).to_string();
    }
    // Two's complement: the magnitude is the inverted bytes plus one.
    let mut magnitude: Vec<u8> = content.iter().map(|b| !b).collect();
    for byte in magnitude.iter_mut().rev() {
        let (sum, carry) = byte.overflowing_add(1);
        *byte = sum;
        if !carry {
            break;
        }
    }
    format!("-{}", Serial::from_be_bytes(&magnitude))
}

/// A DER INTEGER is negative when the top bit of its first content byte is set.
fn is_negative(content: &[u8]) -> bool {
    content.first().is_some_and(|b| b & 0x80 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(text: &str) -> Serial {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_serial_is_written_as_openssl_writes_it() {
        // (DER content bytes, what `openssl x509 -serial` printed for them with OpenSSL 3.0)
        for (der, openssl) in [
            (&[0x01][..], "01"),
            (&[0x0A, 0x11], "0A11"),
            (&[0x00, 0x80], "80"),
            (&[0x00], "00"),
            (&[0x00, 0xA9, 0xA6, 0x54, 0x01], "A9A65401"),
            (&[0x7F, 0xFF], "7FFF"),
        ] {
            assert_eq!(Serial::from_der(der).expect("positive").to_string(), openssl, "{der:02X?}");
            assert_eq!(der_text(der), openssl, "{der:02X?}");
        }
    }

    #[test]
    fn both_spellings_of_a_top_bit_serial_are_the_same_number() {
        let new = serial("A9A6540102030405060708090A0B0C0D0E0F1011");
        for other in [
            "00A9A6540102030405060708090A0B0C0D0E0F1011",
            "a9a6540102030405060708090a0b0c0d0e0f1011",
            "a9:a6:54:01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10:11",
            "0xA9A6540102030405060708090A0B0C0D0E0F1011",
            " 0000A9A6540102030405060708090A0B0C0D0E0F1011\n",
        ] {
            assert_eq!(serial(other), new, "{other}");
            assert_eq!(serial(other).to_string(), "A9A6540102030405060708090A0B0C0D0E0F1011");
        }
        assert_ne!(serial("A9A6"), serial("A9A7"));
        assert_eq!(serial("A11"), serial("0A11"));
        assert_eq!(serial("0").to_string(), "00");
    }

    #[test]
    fn what_is_not_hex_is_refused_with_the_text() {
        for bad in ["", "0x", "XYZ", "A9 A6", ":A9", "A9:", "A9::A6", "-01", "serial=01"] {
            let err = bad.parse::<Serial>().expect_err(bad);
            assert_eq!(err, SerialError::NotHex(bad.to_owned()));
        }
    }

    #[test]
    fn a_negative_serial_is_printed_as_openssl_does_and_refused_for_the_index() {
        assert_eq!(der_text(&[0xFF]), "-01");
        assert_eq!(der_text(&[0x80]), "-80");
        assert_eq!(der_text(&[0xFF, 0x00]), "-0100");
        assert!(matches!(Serial::from_der(&[0xA9, 0xA6]), Err(SerialError::Negative(t)) if t == "-565A"));
    }

    #[test]
    fn the_index_reads_the_old_form_and_writes_the_new_one() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Row {
            serial: Serial,
        }
        let row: Row = toml::from_str("serial = \"00A9A654\"").expect("old form");
        assert_eq!(row.serial, serial("A9A654"));
        assert_eq!(toml::to_string(&row).expect("toml").trim(), "serial = \"A9A654\"");
        assert!(toml::from_str::<Row>("serial = \"nope\"").is_err());
    }
}
