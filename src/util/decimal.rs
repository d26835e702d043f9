//! Decimal digits without `fmt`: the lookup path writes netstring
//! lengths, ports and rule numbers this way.

/// The decimal digits of a number, on the stack.
pub struct Decimal {
    /// Digits right-aligned: a `u64` has at most 20.
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut n = n;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_at_every_boundary() {
        let mut n: u64 = 1;
        let mut values = vec![0, u64::MAX, u64::MAX - 1];
        for _ in 0..19 {
            values.extend([n - 1, n, n + 1]);
            n *= 10;
        }
        for v in values {
            assert_eq!(Decimal::new(v).as_str(), v.to_string());
            assert_eq!(Decimal::new(v).as_bytes(), v.to_string().as_bytes());
        }
    }
}
