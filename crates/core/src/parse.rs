//! Parsing of human-written sizes (`64MiB`, `1g`) and durations (`500ms`, `2m`).

use std::time::Duration;

/// A size or duration that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} `{input}`: {reason}")]
pub struct ParseError {
    what: &'static str,
    input: String,
    reason: &'static str,
}

fn split_number(input: &str) -> Option<(u64, &str)> {
    let digits = input.bytes().take_while(u8::is_ascii_digit).count();
    let number = input[..digits].parse().ok()?;
    Some((number, input[digits..].trim()))
}

/// Parses a byte size: a whole number with an optional unit `B`, `K`/`KiB`/`KB`,
/// `M`/`MiB`/`MB`, `G`/`GiB`/`GB` (all binary, case-insensitive).
pub fn parse_size(input: &str) -> Result<u64, ParseError> {
    let err = |reason| ParseError {
        what: "size",
        input: input.to_owned(),
        reason,
    };
    let (number, unit) = split_number(input.trim()).ok_or_else(|| err("expected a number"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err("unknown unit (use B, KiB, MiB, GiB or TiB)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| err("too large"))
}

/// Parses a duration: a whole number with a unit `ms`, `s`, `m` or `h`; a bare
/// number means seconds.
pub fn parse_duration(input: &str) -> Result<Duration, ParseError> {
    let err = |reason| ParseError {
        what: "duration",
        input: input.to_owned(),
        reason,
    };
    let (number, unit) = split_number(input.trim()).ok_or_else(|| err("expected a number"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err("unknown unit (use ms, s, m or h)")),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| err("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("4096", 4096),
            ("64MiB", 64 << 20),
            ("64 mb", 64 << 20),
            ("1G", 1 << 30),
            ("16k", 16 << 10),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_size(input), Ok(expected), "{input}");
        }
        for bad in ["", "MiB", "12 parsecs", "-1", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("3s", Duration::from_secs(3)),
            ("3", Duration::from_secs(3)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_duration(input), Ok(expected), "{input}");
        }
        for bad in ["", "s", "5 fortnights", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
