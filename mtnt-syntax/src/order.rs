//! [`Order`]: the `YYYY_MM_DD_NNNN` order of a migration.

use std::fmt;
use std::str::FromStr;

/// The accepted form, as the error messages spell it.
const FORM: &str = "write it as YYYY_MM_DD_NNNN, for example 2024_01_01_0001";

/// The largest value with 12 digits.
const MAX: i64 = 9999_99_99_9999;

/// The order of a migration: 12 decimal digits `YYYYMMDDNNNN`, a date that exists followed
/// by a 4-digit sequence number, written `2024_01_01_0001` in the attribute and on the
/// command line.
///
/// Orders sort as their integers do, which is by date and then by sequence number.
///
/// ```
/// use mtnt_syntax::Order;
///
/// let order: Order = "2024_01_01_0001".parse().unwrap();
/// assert_eq!(order.get(), 202401010001);
/// assert_eq!(order.to_string(), "2024_01_01_0001");
/// assert_eq!("202401010001".parse::<Order>(), Ok(order));
/// assert_eq!(Order::new(202401010001), Ok(order));
///
/// let error = "2024_02_30_0001".parse::<Order>().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "2024_02_30_0001 does not start with a real date YYYY_MM_DD: 2024-02 has 29 days, not 30"
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Order(i64);

impl Order {
    /// The order `value` (`2024_01_01_0001` is `202401010001`), if it has at most 12
    /// digits, is not negative, and its first 8 digits are a date that exists.
    ///
    /// The year may be 0000 to 9999 (with the proleptic Gregorian calendar's leap years);
    /// the sequence number `NNNN` may be anything, `0000` included.
    pub fn new(value: i64) -> Result<Order, OrderError> {
        if value < 0 {
            return Err(OrderError::NotAnOrder {
                input: value.to_string(),
            });
        }
        if value > MAX {
            let input = value.to_string();
            let digits = input.len();
            return Err(OrderError::DigitCount { input, digits });
        }
        check_date(value).map_err(|(year, month, day)| OrderError::NoSuchDate {
            input: format_order(value),
            year,
            month,
            day,
        })?;
        Ok(Order(value))
    }

    /// The order as the integer `YYYYMMDDNNNN`.
    pub const fn get(self) -> i64 {
        self.0
    }
}

/// Parses `2024_01_01_0001` or `202401010001`: 12 decimal digits, with underscores
/// anywhere between them (they are ignored), and surrounding whitespace ignored. The date
/// must exist, as for [`Order::new`].
impl FromStr for Order {
    type Err = OrderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let mut digits = 0;
        let mut value: i64 = 0;
        for c in text.chars() {
            match c {
                '_' => {}
                '0'..='9' => {
                    digits += 1;
                    if digits <= 12 {
                        value = value * 10 + i64::from(c as u8 - b'0');
                    }
                }
                _ => {
                    return Err(OrderError::NotAnOrder {
                        input: s.to_owned(),
                    })
                }
            }
        }
        if digits == 0 {
            return Err(OrderError::NotAnOrder {
                input: s.to_owned(),
            });
        }
        if digits != 12 {
            return Err(OrderError::DigitCount {
                input: text.to_owned(),
                digits,
            });
        }
        check_date(value).map_err(|(year, month, day)| OrderError::NoSuchDate {
            input: text.to_owned(),
            year,
            month,
            day,
        })?;
        Ok(Order(value))
    }
}

/// `2024_01_01_0001`; honours width, fill and alignment (`{:<20}`).
impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format_order(self.0))
    }
}

impl TryFrom<i64> for Order {
    type Error = OrderError;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Order::new(value)
    }
}

impl From<Order> for i64 {
    fn from(order: Order) -> i64 {
        order.get()
    }
}

/// Formats any integer the way orders are written: `YYYY_MM_DD_NNNN` (zero-padded) when it
/// is between 0 and 12 nines, whether or not its date exists, and plain digits otherwise.
///
/// For showing an order that comes from elsewhere (a database row) and may not be valid;
/// a valid [`Order`] prints the same with `Display`.
///
/// ```
/// assert_eq!(mtnt_syntax::format_order(202401010001), "2024_01_01_0001");
/// assert_eq!(mtnt_syntax::format_order(1), "0000_00_00_0001");
/// assert_eq!(mtnt_syntax::format_order(-1), "-1");
/// ```
pub fn format_order(order: i64) -> String {
    struct Shown(i64);
    impl fmt::Display for Shown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_order(self.0, f)
        }
    }
    Shown(order).to_string()
}

fn write_order(order: i64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if (0..=MAX).contains(&order) {
        let date = order / 10_000;
        write!(
            f,
            "{:04}_{:02}_{:02}_{:04}",
            date / 10_000,
            date / 100 % 100,
            date % 100,
            order % 10_000
        )
    } else {
        write!(f, "{order}")
    }
}

/// Checks that the `YYYYMMDD` of a 12-digit order is a date that exists; on failure
/// returns the year, month and day.
fn check_date(order: i64) -> Result<(), (u32, u32, u32)> {
    let date = order / 10_000;
    // At most 12 digits: each field fits.
    let (year, month, day) = (
        (date / 10_000) as u32,
        (date / 100 % 100) as u32,
        (date % 100) as u32,
    );
    if (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month) {
        Ok(())
    } else {
        Err((year, month, day))
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Why a text or an integer is not an [`Order`].
///
/// Its `Display` names the bad input and the accepted form.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrderError {
    /// Not made of decimal digits and underscores (or a negative integer).
    NotAnOrder {
        /// The text as given.
        input: String,
    },
    /// Decimal digits, but not 12 of them.
    DigitCount {
        /// The text as given.
        input: String,
        /// How many digits it has.
        digits: usize,
    },
    /// 12 digits whose first 8 are not a date that exists.
    NoSuchDate {
        /// The text as given (an integer is shown as `YYYY_MM_DD_NNNN`).
        input: String,
        /// The `YYYY` digits.
        year: u32,
        /// The `MM` digits.
        month: u32,
        /// The `DD` digits.
        day: u32,
    },
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderError::NotAnOrder { input } => write!(f, "{input:?} is not an order; {FORM}"),
            OrderError::DigitCount { input, digits } => write!(
                f,
                "{input} has {digits} digit{}, but an order has 12; {FORM}",
                if *digits == 1 { "" } else { "s" }
            ),
            OrderError::NoSuchDate {
                input,
                year,
                month,
                day,
            } => {
                write!(f, "{input} does not start with a real date YYYY_MM_DD: ")?;
                if !(1..=12).contains(month) {
                    write!(f, "there is no month {month}")
                } else if *day == 0 {
                    write!(f, "there is no day 0")
                } else {
                    write!(
                        f,
                        "{year:04}-{month:02} has {} days, not {day}",
                        days_in_month(*year, *month)
                    )
                }
            }
        }
    }
}

impl std::error::Error for OrderError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_honours_width_and_alignment() {
        let order = Order::new(2024_01_01_0001).unwrap();
        assert_eq!(format!("{order}"), "2024_01_01_0001");
        assert_eq!(format!("{order:<17}|"), "2024_01_01_0001  |");
        assert_eq!(format!("{order:>17}|"), "  2024_01_01_0001|");
    }

    fn parse(s: &str) -> Result<i64, String> {
        s.parse::<Order>()
            .map(Order::get)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_valid_orders() {
        assert_eq!(parse("2024_01_01_0001"), Ok(202401010001));
        assert_eq!(parse("202401010002"), Ok(202401010002));
        assert_eq!(parse("2024_02_29_9999"), Ok(202402299999));
        assert_eq!(parse("2000_02_29_0001"), Ok(200002290001));
        assert_eq!(parse("1999_12_31_0000"), Ok(199912310000));
        assert_eq!(parse("20_24_01_01_00_01"), Ok(202401010001));
        assert_eq!(parse(" 2024_01_01_0001\n"), Ok(202401010001));
        assert_eq!(parse("_2024_01_01_0001_"), Ok(202401010001));
        assert_eq!(parse("0000_01_01_0000"), Ok(101_0000));
        assert_eq!(parse("9999_12_31_9999"), Ok(9999_12_31_9999));
    }

    #[test]
    fn rejects_wrong_digit_count() {
        assert_eq!(
            parse("2024_01_01_001").unwrap_err(),
            "2024_01_01_001 has 11 digits, but an order has 12; write it as YYYY_MM_DD_NNNN, for example 2024_01_01_0001"
        );
        assert!(parse("2024_01_01_00001")
            .unwrap_err()
            .contains("has 13 digits"));
        assert!(parse("1").unwrap_err().starts_with("1 has 1 digit,"));
        assert!(parse("99999999999999999999999")
            .unwrap_err()
            .contains("has 23 digits"));
    }

    #[test]
    fn rejects_what_is_not_digits() {
        for bad in [
            "",
            "_",
            "yesterday",
            "2024-01-01-0001",
            "0x2024_0101_0001",
            "-202401010001",
            "+202401010001",
            "2024_01_01_000١",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                e,
                format!("{bad:?} is not an order; write it as YYYY_MM_DD_NNNN, for example 2024_01_01_0001")
            );
        }
    }

    #[test]
    fn rejects_impossible_dates() {
        let cases = [
            ("2024_02_30_0001", "2024-02 has 29 days, not 30"),
            ("2023_02_29_0001", "2023-02 has 28 days, not 29"),
            ("1900_02_29_0001", "1900-02 has 28 days, not 29"),
            ("2024_13_01_0001", "there is no month 13"),
            ("2024_00_01_0001", "there is no month 0"),
            ("2024_04_31_0001", "2024-04 has 30 days, not 31"),
            ("2024_12_00_0001", "there is no day 0"),
            ("2024_12_32_0001", "2024-12 has 31 days, not 32"),
        ];
        for (input, why) in cases {
            assert_eq!(
                parse(input).unwrap_err(),
                format!("{input} does not start with a real date YYYY_MM_DD: {why}")
            );
        }
    }

    #[test]
    fn new_checks_the_same_rules() {
        assert_eq!(Order::new(202401010001).map(Order::get), Ok(202401010001));
        assert_eq!(
            Order::new(202402300001).unwrap_err().to_string(),
            "2024_02_30_0001 does not start with a real date YYYY_MM_DD: 2024-02 has 29 days, not 30"
        );
        assert_eq!(
            Order::new(1).unwrap_err().to_string(),
            "0000_00_00_0001 does not start with a real date YYYY_MM_DD: there is no month 0"
        );
        assert_eq!(
            Order::new(-5).unwrap_err(),
            OrderError::NotAnOrder { input: "-5".into() }
        );
        assert_eq!(
            Order::new(1_0000_00_00_0000).unwrap_err(),
            OrderError::DigitCount {
                input: "1000000000000".into(),
                digits: 13
            }
        );
        assert!(Order::new(i64::MAX).is_err());
        assert!(Order::new(i64::MIN).is_err());
        assert_eq!(Order::try_from(202401010001), Order::new(202401010001));
        assert_eq!(i64::from(Order::new(202401010001).unwrap()), 202401010001);
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "2024_01_01_0001",
            "0000_01_01_0000",
            "9999_12_31_9999",
            "2024_02_29_0042",
        ] {
            let order: Order = input.parse().unwrap();
            assert_eq!(order.to_string(), input);
            assert_eq!(order.to_string().parse::<Order>(), Ok(order));
            assert_eq!(Order::new(order.get()), Ok(order));
        }
    }

    #[test]
    fn orders_sort_by_date_then_sequence() {
        let a = Order::new(2023_12_31_9999).unwrap();
        let b = Order::new(2024_01_01_0001).unwrap();
        let c = Order::new(2024_01_01_0002).unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn format_order_is_total() {
        assert_eq!(format_order(202401010001), "2024_01_01_0001");
        assert_eq!(format_order(202402300001), "2024_02_30_0001");
        assert_eq!(format_order(0), "0000_00_00_0000");
        assert_eq!(format_order(9999_99_99_9999), "9999_99_99_9999");
        assert_eq!(format_order(1_0000_00_00_0000), "1000000000000");
        assert_eq!(format_order(-1), "-1");
    }
}
