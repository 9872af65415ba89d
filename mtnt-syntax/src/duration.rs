//! Durations as the attribute (`lock_timeout = "5s"`) and the CLI (`--lock-timeout 5s`)
//! write them.

use std::fmt;
use std::time::Duration;

/// The accepted form, as the error messages spell it.
const FORM: &str = "write a duration such as 500ms, 5s, 1.5s, 2m or 1h, or 0 for no limit";

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The units, with how many nanoseconds each is.
const UNITS: [(&str, u128); 6] = [
    ("ms", 1_000_000),
    ("s", NANOS_PER_SEC),
    ("sec", NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("min", 60 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
];

/// Parses a duration: a number and a unit, or `0` for none.
///
/// - The number is a whole number (`5`) or a decimal fraction with digits on both sides of
///   the point (`1.5`, `0.25`); no sign, no exponent.
/// - The unit is `ms`, `s` (or `sec`), `m` (or `min`) or `h`; spaces may stand between the
///   number and the unit.
/// - `0`, `off` and `none` are [`Duration::ZERO`], which the timeouts and deadlines that
///   take a duration read as "no limit".
/// - Surrounding whitespace is ignored; a fraction finer than a nanosecond is dropped.
///
/// ```
/// use std::time::Duration;
/// use mtnt_syntax::parse_duration;
///
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
/// assert_eq!(
///     parse_duration("5").unwrap_err().to_string(),
///     "\"5\" has no unit; write a duration such as 500ms, 5s, 1.5s, 2m or 1h, or 0 for no limit"
/// );
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    if matches!(text, "0" | "off" | "none") {
        return Ok(Duration::ZERO);
    }
    let input = || s.to_owned();
    let number_end = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(whole) || fraction.is_some_and(|f| !is_digits(f)) {
        return Err(DurationError::NotANumber { input: input() });
    }
    let unit = unit.trim_start();
    if unit.is_empty() {
        return Err(DurationError::NoUnit { input: input() });
    }
    let Some(&(_, unit_nanos)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(DurationError::UnknownUnit {
            input: input(),
            unit: unit.to_owned(),
        });
    };

    let too_long = || DurationError::TooLong { input: input() };
    let mut nanos: u128 = 0;
    for b in whole.bytes() {
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(b - b'0') * unit_nanos))
            .ok_or_else(too_long)?;
        // `nanos` already holds `whole` so far times the unit: the check below keeps
        // every step within u128.
        if nanos > u128::from(u64::MAX) * NANOS_PER_SEC {
            return Err(too_long());
        }
    }
    let mut scale = unit_nanos;
    for b in fraction.unwrap_or("").bytes() {
        scale /= 10;
        nanos += u128::from(b - b'0') * scale;
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// Formats a duration for people, in the syntax [`parse_duration`] reads: `0`, `250ms`,
/// `1.5s`, `90s`, `2m`, `1h`, in the largest unit that shows it whole.
///
/// It is shown to the millisecond (rounded; a duration below half a millisecond, to the
/// microsecond), so [`parse_duration`] reads back exactly any duration of whole
/// milliseconds, and others rounded.
///
/// ```
/// use std::time::Duration;
/// use mtnt_syntax::format_duration;
///
/// assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
/// assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
/// assert_eq!(format_duration(Duration::from_secs(120)), "2m");
/// assert_eq!(format_duration(Duration::from_secs(90)), "90s");
/// assert_eq!(format_duration(Duration::from_nanos(1_234_567_890)), "1.235s");
/// assert_eq!(format_duration(Duration::ZERO), "0");
/// ```
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0".to_owned();
    }
    let ms = (nanos + 500_000) / 1_000_000;
    if ms == 0 {
        // Below half a millisecond: 0.001ms to 0.5ms.
        let micros = ((nanos + 500) / 1_000).max(1);
        let fraction = format!("{micros:03}");
        return format!("0.{}ms", fraction.trim_end_matches('0'));
    }
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms < 1_000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        let fraction = format!("{:03}", ms % 1_000);
        format!("{}.{}s", ms / 1_000, fraction.trim_end_matches('0'))
    }
}

/// Why a text is not a duration.
///
/// Its `Display` names the bad input and the accepted form.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DurationError {
    /// It does not start with a number (`s`, `-5s`, `.5s`, `five seconds`).
    NotANumber {
        /// The text as given.
        input: String,
    },
    /// A number without a unit (`5`).
    NoUnit {
        /// The text as given.
        input: String,
    },
    /// A number and something that is not one of the units (`5d`).
    UnknownUnit {
        /// The text as given.
        input: String,
        /// What follows the number.
        unit: String,
    },
    /// Longer than a [`Duration`] holds.
    TooLong {
        /// The text as given.
        input: String,
    },
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::NotANumber { input } => {
                write!(f, "{input:?} does not start with a number; {FORM}")
            }
            DurationError::NoUnit { input } => write!(f, "{input:?} has no unit; {FORM}"),
            DurationError::UnknownUnit { input, unit } => write!(
                f,
                "{input:?} has the unknown unit {unit:?}; {FORM} (units: ms, s or sec, m or min, h)"
            ),
            DurationError::TooLong { input } => {
                write!(f, "{input:?} is too long to be a duration; {FORM}")
            }
        }
    }
}

impl std::error::Error for DurationError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Result<Duration, DurationError> {
        Ok(Duration::from_millis(ms))
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("500ms"), ms(500));
        assert_eq!(parse_duration("5s"), ms(5_000));
        assert_eq!(parse_duration("5sec"), ms(5_000));
        assert_eq!(parse_duration("2m"), ms(120_000));
        assert_eq!(parse_duration("2min"), ms(120_000));
        assert_eq!(parse_duration("1h"), ms(3_600_000));
        assert_eq!(parse_duration(" 5 s "), ms(5_000));
        assert_eq!(parse_duration("007s"), ms(7_000));
    }

    #[test]
    fn zero_is_no_limit() {
        for zero in ["0", "off", "none", " 0 ", "0s", "0ms", "0.0h"] {
            assert_eq!(parse_duration(zero), Ok(Duration::ZERO), "{zero}");
        }
    }

    #[test]
    fn parses_fractions_exactly() {
        assert_eq!(parse_duration("1.5s"), ms(1_500));
        assert_eq!(parse_duration("0.25m"), ms(15_000));
        assert_eq!(parse_duration("1.5h"), ms(5_400_000));
        assert_eq!(parse_duration("0.1s"), ms(100));
        assert_eq!(parse_duration("1.001s"), ms(1_001));
        assert_eq!(parse_duration("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(
            parse_duration("1.0000000019s"),
            Ok(Duration::new(1, 1)),
            "finer than a nanosecond is dropped"
        );
    }

    #[test]
    fn errors_name_the_input_and_the_form() {
        let form = "write a duration such as 500ms, 5s, 1.5s, 2m or 1h, or 0 for no limit";
        let cases = [
            ("5", format!("\"5\" has no unit; {form}")),
            ("1.5", format!("\"1.5\" has no unit; {form}")),
            (
                "5d",
                format!("\"5d\" has the unknown unit \"d\"; {form} (units: ms, s or sec, m or min, h)"),
            ),
            (
                "5 seconds",
                format!("\"5 seconds\" has the unknown unit \"seconds\"; {form} (units: ms, s or sec, m or min, h)"),
            ),
            ("s", format!("\"s\" does not start with a number; {form}")),
            ("", format!("\"\" does not start with a number; {form}")),
            ("-5s", format!("\"-5s\" does not start with a number; {form}")),
            (".5s", format!("\".5s\" does not start with a number; {form}")),
            ("5.s", format!("\"5.s\" does not start with a number; {form}")),
            ("1.2.3s", format!("\"1.2.3s\" does not start with a number; {form}")),
            ("1e3s", format!("\"1e3s\" has the unknown unit \"e3s\"; {form} (units: ms, s or sec, m or min, h)")),
        ];
        for (input, message) in cases {
            assert_eq!(parse_duration(input).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn rejects_what_a_duration_cannot_hold() {
        let max = u64::MAX.to_string();
        assert_eq!(
            parse_duration(&format!("{max}s")),
            Ok(Duration::from_secs(u64::MAX))
        );
        for long in [
            format!("{max}0s"),
            format!("{max}h"),
            "99999999999999999999999999999999999999999999999h".to_owned(),
        ] {
            assert!(
                matches!(parse_duration(&long), Err(DurationError::TooLong { .. })),
                "{long}"
            );
        }
        assert!(parse_duration(&format!("{max}s"))
            .unwrap()
            .checked_add(Duration::from_secs(1))
            .is_none());
    }

    #[test]
    fn formats_in_the_largest_whole_unit() {
        let cases = [
            (Duration::ZERO, "0"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_millis(1_234), "1.234s"),
            (Duration::from_millis(1_230), "1.23s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(5_400), "90m"),
            (Duration::from_secs(7_200), "2h"),
            (Duration::from_secs(3_600 * 24 * 365), "8760h"),
            // Rounded to the millisecond.
            (Duration::from_nanos(1_234_567_890), "1.235s"),
            (Duration::from_nanos(59_999_999_999), "1m"),
            (Duration::from_micros(999_700), "1s"),
            (Duration::from_micros(1_500), "2ms"),
            (Duration::from_micros(500), "1ms"),
            // Below half a millisecond, to the microsecond.
            (Duration::from_micros(499), "0.499ms"),
            (Duration::from_micros(250), "0.25ms"),
            (Duration::from_nanos(1), "0.001ms"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_duration(duration), text, "{duration:?}");
        }
    }

    #[test]
    fn parse_reads_back_what_format_shows() {
        let mut n: u64 = 1;
        while let Some(next) = n.checked_mul(7) {
            // Whole milliseconds come back exactly.
            for d in [
                Duration::from_millis(n % 100_000_000_000),
                Duration::from_secs(n % 10_000_000_000),
            ] {
                assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
            }
            // Others come back rounded to the millisecond.
            let d = Duration::from_nanos(n);
            let back = parse_duration(&format_duration(d)).unwrap();
            let error = back.abs_diff(d);
            assert!(
                error <= Duration::from_micros(500),
                "{d:?} came back as {back:?}"
            );
            n = next + 3;
        }
        let max = Duration::from_secs(u64::MAX / 1_000);
        assert_eq!(parse_duration(&format_duration(max)), Ok(max));
    }
}
