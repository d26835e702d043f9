//! Netstring framing (`<length>:<bytes>,`), as Postfix's socketmap client
//! speaks it. Pure and incremental: [`decode`] looks at whatever bytes have
//! arrived and says "need more", "here is one request", or "this can never
//! become a valid request" as early as that is certain.

use std::ops::Range;

use crate::util::decimal::Decimal;

/// Largest socketmap query accepted (`NAME KEY`), in bytes. Postfix keys
/// are domain names or `[host]:port`, far below this.
pub const MAX_QUERY_LEN: usize = 10_000;

/// Why a byte stream is not a netstring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetstringError {
    /// `:` with no digits before it.
    #[error("netstring has no length before ':'")]
    EmptyLength,
    /// A length written with a leading zero (`007:`), which netstrings forbid.
    #[error("netstring length has a leading zero")]
    LeadingZero,
    /// A byte other than a digit or `:` in the length.
    #[error("netstring length contains byte 0x{0:02x}")]
    BadLengthByte(u8),
    /// The declared length is over the limit (the value seen so far).
    #[error("netstring length {declared} is over the limit of {max} bytes")]
    TooLong { declared: usize, max: usize },
    /// The byte after the payload is not `,`.
    #[error("netstring payload is followed by byte 0x{0:02x}, not ','")]
    MissingComma(u8),
}

/// One complete netstring found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the payload sits in the buffer.
    pub payload: Range<usize>,
    /// How many bytes the whole netstring took.
    pub consumed: usize,
}

/// Decode the netstring at the start of `buf`, allowing payloads of at
/// most `max` bytes. `Ok(None)` means more bytes are needed.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<Frame>, NetstringError> {
    let mut len: usize = 0;
    let mut digits = 0usize;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                if digits == 1 && len == 0 {
                    return Err(NetstringError::LeadingZero);
                }
                // A length past usize is over any limit (and must not
                // overflow: `max` may be usize::MAX).
                let Some(next) = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(usize::from(b - b'0')))
                else {
                    return Err(NetstringError::TooLong {
                        declared: usize::MAX,
                        max,
                    });
                };
                len = next;
                digits += 1;
                if len > max {
                    return Err(NetstringError::TooLong { declared: len, max });
                }
            }
            b':' => {
                if digits == 0 {
                    return Err(NetstringError::EmptyLength);
                }
                let start = i + 1;
                // `start + len` past usize: the bytes can never all arrive.
                let Some(end) = start.checked_add(len) else {
                    return Err(NetstringError::TooLong {
                        declared: len,
                        max: usize::MAX - start,
                    });
                };
                return match buf.get(end) {
                    None => Ok(None),
                    Some(b',') => Ok(Some(Frame {
                        payload: start..end,
                        consumed: end + 1,
                    })),
                    Some(&other) => Err(NetstringError::MissingComma(other)),
                };
            }
            other => return Err(NetstringError::BadLengthByte(other)),
        }
    }
    Ok(None)
}

/// Append `payload` as a netstring to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    encode_parts(&[payload], out);
}

/// Append the concatenation of `parts` as one netstring to `out`, without
/// building the payload first.
pub fn encode_parts(parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let digits = Decimal::new(len as u64);
    let digits = digits.as_bytes();
    out.reserve(digits.len() + 1 + len + 1);
    out.extend_from_slice(digits);
    out.push(b':');
    for p in parts {
        out.extend_from_slice(p);
    }
    out.push(b',');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(p: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(p, &mut v);
        v
    }

    #[test]
    fn round_trip() {
        for p in [&b""[..], b"x", b"tls_policy example.com", &[b'a'; 12345]] {
            let e = enc(p);
            let f = decode(&e, usize::MAX).unwrap().unwrap();
            assert_eq!(&e[f.payload.clone()], p);
            assert_eq!(f.consumed, e.len());
        }
        assert_eq!(enc(b"OK may"), b"6:OK may,");
        assert_eq!(enc(b""), b"0:,");
    }

    /// The length prefix at each decimal boundary, and split over parts.
    #[test]
    fn length_digits_at_boundaries() {
        for len in [0usize, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 100_000] {
            let p = vec![b'x'; len];
            let mut want = format!("{len}:").into_bytes();
            want.extend_from_slice(&p);
            want.push(b',');
            assert_eq!(enc(&p), want, "length {len}");
            let (a, b) = p.split_at(len / 2);
            let mut v = b"kept".to_vec();
            encode_parts(&[a, b, b""], &mut v);
            assert_eq!(&v[..4], b"kept");
            assert_eq!(&v[4..], &want[..], "length {len} in parts");
        }
    }

    /// Every prefix of a valid netstring asks for more; the whole decodes.
    #[test]
    fn split_down_to_single_bytes() {
        let whole = b"26:tls_policy [mx.example]:25,";
        for cut in 0..whole.len() {
            assert_eq!(
                decode(&whole[..cut], MAX_QUERY_LEN),
                Ok(None),
                "cut at {cut}"
            );
        }
        let f = decode(whole, MAX_QUERY_LEN).unwrap().unwrap();
        assert_eq!(&whole[f.payload], b"tls_policy [mx.example]:25");
    }

    /// Found by fuzzing (fuzz/regressions/netstring/): with no limit, a
    /// length past usize overflowed instead of being refused.
    #[test]
    fn length_past_usize_is_too_long() {
        let digits = "9".repeat(20);
        let e = decode(format!("{digits}:x").as_bytes(), usize::MAX);
        assert!(matches!(e, Err(NetstringError::TooLong { .. })), "{e:?}");
        // The largest length: its bytes cannot follow the header.
        let e = decode(format!("{}:", usize::MAX).as_bytes(), usize::MAX);
        assert!(matches!(e, Err(NetstringError::TooLong { .. })), "{e:?}");
        // One digit short of overflowing: still waiting for bytes.
        let just = format!("{}:", usize::MAX / 10);
        assert_eq!(decode(just.as_bytes(), usize::MAX), Ok(None));
    }

    #[test]
    fn two_in_one_buffer() {
        let buf = b"1:a,2:bc,";
        let f = decode(buf, 10).unwrap().unwrap();
        assert_eq!(f.consumed, 4);
        let g = decode(&buf[f.consumed..], 10).unwrap().unwrap();
        assert_eq!(&buf[f.consumed..][g.payload], b"bc");
    }

    #[test]
    fn exact_size_boundary() {
        let at = enc(&vec![b'x'; MAX_QUERY_LEN]);
        let f = decode(&at, MAX_QUERY_LEN).unwrap().unwrap();
        assert_eq!(f.payload.len(), MAX_QUERY_LEN);
        let over = enc(&vec![b'x'; MAX_QUERY_LEN + 1]);
        assert_eq!(
            decode(&over, MAX_QUERY_LEN),
            Err(NetstringError::TooLong {
                declared: MAX_QUERY_LEN + 1,
                max: MAX_QUERY_LEN
            })
        );
        // Refused as soon as the length is known to be too big, before
        // any payload arrives.
        assert!(matches!(
            decode(b"10001", MAX_QUERY_LEN),
            Err(NetstringError::TooLong { .. })
        ));
        assert!(matches!(
            decode(b"99999999999999999999999", MAX_QUERY_LEN),
            Err(NetstringError::TooLong { .. })
        ));
        assert_eq!(decode(b"10000", MAX_QUERY_LEN), Ok(None));
    }

    #[test]
    fn garbage_is_refused_early() {
        assert_eq!(decode(b":", 10), Err(NetstringError::EmptyLength));
        assert_eq!(decode(b"01:a,", 10), Err(NetstringError::LeadingZero));
        assert_eq!(
            decode(b"GET / HTTP/1.0", 10),
            Err(NetstringError::BadLengthByte(b'G'))
        );
        assert_eq!(
            decode(b"1 :a,", 10),
            Err(NetstringError::BadLengthByte(b' '))
        );
        assert_eq!(decode(b"-1:", 10), Err(NetstringError::BadLengthByte(b'-')));
        assert_eq!(decode(b"1:ab", 10), Err(NetstringError::MissingComma(b'b')));
        assert_eq!(decode(b"0:;", 10), Err(NetstringError::MissingComma(b';')));
        assert_eq!(decode(b"0:,", 10).unwrap().unwrap().payload, 2..2);
    }
}
