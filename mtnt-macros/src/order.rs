//! The `order = YYYY_MM_DD_NNNN` literal, checked without any span so it can be unit tested.

use chrono::NaiveDate;

/// Checks the text of an `order` literal (as written, suffix removed) and returns its value.
///
/// The error is the message to show, without the span.
pub(crate) fn parse_order(text: &str) -> Result<i64, String> {
    const FORMAT: &str = "YYYY_MM_DD_NNNN, for example 2024_01_01_0001";

    let lower = text.to_ascii_lowercase();
    if lower.starts_with("0x") || lower.starts_with("0o") || lower.starts_with("0b") {
        return Err(format!(
            "`order` must be a decimal literal in the form {FORMAT}"
        ));
    }
    let digits: String = text.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`order` must be an integer literal in the form {FORMAT}"
        ));
    }
    if digits.len() != 12 {
        return Err(format!(
            "`order` must have 12 digits ({FORMAT}), but {text} has {}",
            digits.len()
        ));
    }

    let field = |range: std::ops::Range<usize>| -> u32 {
        digits[range].parse().expect("ascii digits checked above")
    };
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    if NaiveDate::from_ymd_opt(year as i32, month, day).is_none() {
        let why = if !(1..=12).contains(&month) {
            format!("there is no month {month}")
        } else if day == 0 {
            "there is no day 0".to_owned()
        } else {
            format!(
                "{year:04}-{month:02} has {} days, not {day}",
                days_in_month(year as i32, month)
            )
        };
        return Err(format!(
            "`order` {text} does not start with a real date YYYY_MM_DD: {why}"
        ));
    }

    Ok(digits.parse().expect("12 ascii digits fit in an i64"))
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let first = NaiveDate::from_ymd_opt(year, month, 1).expect("valid month");
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .expect("valid month");
    (next - first).num_days() as u32
}

#[cfg(test)]
mod tests {
    use super::parse_order;

    #[test]
    fn accepts_valid_orders() {
        assert_eq!(parse_order("2024_01_01_0001"), Ok(202401010001));
        assert_eq!(parse_order("202401010002"), Ok(202401010002));
        assert_eq!(parse_order("2024_02_29_9999"), Ok(202402299999));
        assert_eq!(parse_order("1999_12_31_0000"), Ok(199912310000));
        assert_eq!(parse_order("20_24_01_01_00_01"), Ok(202401010001));
    }

    #[test]
    fn rejects_wrong_digit_count() {
        let e = parse_order("2024_01_01_001").unwrap_err();
        assert!(e.contains("must have 12 digits"), "{e}");
        assert!(e.contains("has 11"), "{e}");
        let e = parse_order("2024_01_01_00001").unwrap_err();
        assert!(e.contains("has 13"), "{e}");
        assert!(parse_order("1").is_err());
    }

    #[test]
    fn rejects_impossible_dates() {
        let e = parse_order("2024_02_30_0001").unwrap_err();
        assert!(e.ends_with("2024-02 has 29 days, not 30"), "{e}");
        let e = parse_order("2023_02_29_0001").unwrap_err();
        assert!(e.ends_with("2023-02 has 28 days, not 29"), "{e}");
        let e = parse_order("2024_13_01_0001").unwrap_err();
        assert!(e.ends_with("there is no month 13"), "{e}");
        let e = parse_order("2024_00_01_0001").unwrap_err();
        assert!(e.ends_with("there is no month 0"), "{e}");
        let e = parse_order("2024_04_31_0001").unwrap_err();
        assert!(e.ends_with("2024-04 has 30 days, not 31"), "{e}");
        let e = parse_order("2024_12_00_0001").unwrap_err();
        assert!(e.ends_with("there is no day 0"), "{e}");
        assert!(parse_order("2024_12_32_0001").is_err());
    }

    #[test]
    fn rejects_non_decimal() {
        assert!(parse_order("0x2024_0101_0001")
            .unwrap_err()
            .contains("decimal"));
        assert!(parse_order("0b1").unwrap_err().contains("decimal"));
        assert!(parse_order("0o17").unwrap_err().contains("decimal"));
    }
}
