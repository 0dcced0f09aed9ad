//! Just enough DER to read a certificate's validity dates and its subject's common name:
//! rustls checks dates only during a handshake, and a node should say at start that its
//! certificate expired, naming the file and the date. (A full X.509 parser would be a
//! dependency several times the size of this.)

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::TlsError;

/// When a certificate is valid, seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// A certificate used outside its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateError {
    Expired(String),
    NotYetValid(String),
}

impl DateError {
    pub fn into_error(self, path: &Path) -> TlsError {
        match self {
            DateError::Expired(not_after) => TlsError::Expired {
                path: path.to_path_buf(),
                not_after,
            },
            DateError::NotYetValid(not_before) => TlsError::NotYetValid {
                path: path.to_path_buf(),
                not_before,
            },
        }
    }
}

impl Validity {
    /// The validity of a DER certificate.
    pub fn of(cert: &[u8]) -> Result<Validity, String> {
        let validity = tbs_field(cert, 4)?;
        let (t, before, rest) = tlv(validity).ok_or("truncated validity")?;
        let not_before = time(t, before)?;
        let (t, after, _) = tlv(rest).ok_or("truncated validity")?;
        let not_after = time(t, after)?;
        Ok(Validity {
            not_before,
            not_after,
        })
    }

    pub fn check(&self, now: SystemTime) -> Result<(), DateError> {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        if now > self.not_after {
            return Err(DateError::Expired(format_time(self.not_after)));
        }
        if now < self.not_before {
            return Err(DateError::NotYetValid(format_time(self.not_before)));
        }
        Ok(())
    }
}

/// The subject's common name (the first one), if it has one.
pub fn subject_common_name(cert: &[u8]) -> Result<Option<String>, String> {
    let mut rdns = tbs_field(cert, 5)?;
    // SEQUENCE OF SET OF SEQUENCE { OID, value }
    while let Some((_, set, rest)) = tlv(rdns) {
        rdns = rest;
        let mut atvs = set;
        while let Some((_, atv, rest)) = tlv(atvs) {
            atvs = rest;
            let (t, oid, value) = tlv(atv).ok_or("truncated name")?;
            if t == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (_, v, _) = tlv(value).ok_or("truncated common name")?;
                return Ok(Some(String::from_utf8_lossy(v).into_owned()));
            }
        }
    }
    Ok(None)
}

/// Whether the subject holds anything beside one common name (a name `queryd ca issue`
/// could not reproduce as an issuer).
pub fn subject_is_common_name_only(cert: &[u8]) -> Result<bool, String> {
    let rdns = tbs_field(cert, 5)?;
    let mut n = 0;
    let mut rest = rdns;
    while let Some((_, _, r)) = tlv(rest) {
        n += 1;
        rest = r;
    }
    Ok(n == 1 && subject_common_name(cert)?.is_some())
}

/// The public key bits of the certificate's SubjectPublicKeyInfo (for ECDSA, the point).
pub fn public_key_bits(cert: &[u8]) -> Result<&[u8], String> {
    let spki = tbs_field(cert, 6)?;
    let (_, _, rest) = tlv(spki).ok_or("truncated public key")?;
    let (t, bits, _) = tlv(rest).ok_or("truncated public key")?;
    match bits.split_first() {
        Some((0, key)) if t == 0x03 => Ok(key),
        _ => Err("bad public key bit string".into()),
    }
}

/// The `index`th field of the TBSCertificate counting from the serial number as 1 (the
/// optional version is skipped): 4 is validity, 5 the subject.
fn tbs_field(cert: &[u8], index: usize) -> Result<&[u8], String> {
    let (_, certificate, _) = tlv(cert).ok_or("not a DER certificate")?;
    let (_, tbs, _) = tlv(certificate).ok_or("no TBSCertificate")?;
    let mut rest = tbs;
    let (t, _, after) = tlv(rest).ok_or("empty TBSCertificate")?;
    if t == 0xA0 {
        rest = after;
    }
    for _ in 1..index {
        let (_, _, after) = tlv(rest).ok_or("truncated TBSCertificate")?;
        rest = after;
    }
    let (_, field, _) = tlv(rest).ok_or("truncated TBSCertificate")?;
    Ok(field)
}

/// One tag-length-value: (tag, content, what follows). Definite lengths only, as DER has.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, v: &[u8]) -> Result<i64, String> {
    let s = std::str::from_utf8(v).map_err(|_| "a date is not ASCII")?;
    let digits = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("bad date '{s}'"))
    };
    let (year, at) = match tag {
        0x17 if s.len() == 13 => {
            let yy = digits(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        0x18 if s.len() == 15 => (digits(0..4)?, 4),
        _ => return Err(format!("unsupported date '{s}'")),
    };
    if !s.ends_with('Z') {
        return Err(format!("date '{s}' is not UTC"));
    }
    let (month, day) = (digits(at..at + 2)?, digits(at + 2..at + 4)?);
    let (h, m, sec) = (
        digits(at + 4..at + 6)?,
        digits(at + 6..at + 8)?,
        digits(at + 8..at + 10)?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(format!("bad date '{s}'"));
    }
    Ok(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn format_time(secs: i64) -> String {
    if secs < 0 {
        return format!("{secs} s before 1970");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(time(0x17, b"491231235959Z"), Ok(2_524_607_999));
        assert_eq!(time(0x18, b"20000301000000Z"), Ok(11_017 * 86_400));
        assert!(time(0x17, b"001301000000Z").is_err());
        assert!(time(0x17, b"0001010000+0100").is_err());
    }

    #[test]
    fn tlv_refuses_truncation() {
        assert_eq!(tlv(&[0x30, 0x01, 0xff]), Some((0x30, &[0xff][..], &[][..])));
        assert_eq!(tlv(&[0x30, 0x02, 0xff]), None);
        assert_eq!(tlv(&[0x30, 0x81]), None);
        assert!(Validity::of(b"not a certificate").is_err());
    }
}
