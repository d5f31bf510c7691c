//! Money as integer minor units (fen, cent, penny) with its currency. Never a float.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Currency {
    #[default]
    CNY,
    EUR,
    GBP,
}

impl Currency {
    pub fn as_str(self) -> &'static str {
        match self {
            Currency::CNY => "CNY",
            Currency::EUR => "EUR",
            Currency::GBP => "GBP",
        }
    }

    pub fn parse(s: &str) -> Option<Currency> {
        match s {
            "CNY" => Some(Currency::CNY),
            "EUR" => Some(Currency::EUR),
            "GBP" => Some(Currency::GBP),
            _ => None,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Currency::CNY => "¥",
            Currency::EUR => "€",
            Currency::GBP => "£",
        }
    }
}

/// An amount in minor units. Arithmetic is checked: an overflow is a bug, not a wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub const fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    pub const fn cny(fen: i64) -> Money {
        Money::new(fen, Currency::CNY)
    }

    pub fn zero(currency: Currency) -> Money {
        Money::new(0, currency)
    }

    pub fn is_zero(&self) -> bool {
        self.minor == 0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        write!(
            f,
            "{sign}{}{}.{:02}",
            self.currency.symbol(),
            abs / 100,
            abs % 100
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_minor_units_exactly() {
        assert_eq!(Money::cny(1250).to_string(), "¥12.50");
        assert_eq!(Money::cny(5).to_string(), "¥0.05");
        assert_eq!(Money::new(-199, Currency::EUR).to_string(), "-€1.99");
    }
}
