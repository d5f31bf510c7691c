//! Licence plates: parse, normalise, correct by layout, format, and fold into a match key.
//!
//! A camera's read is a string with confusions typical of OCR (`8` for `B`, `0` for `O`). Each
//! region has a layout that says which positions hold letters and which hold digits, so a read
//! can be corrected position by position before it is validated. What cannot be corrected is
//! tolerated later by the match key, which folds every confusable group into one character.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a plate was issued; each region has its own layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// Mainland China: 7 characters, or 8 for green new-energy plates.
    Cn,
    /// Germany (the EU layout we support first).
    De,
    /// United Kingdom, current format `AB12CDE`.
    Uk,
    /// Anything alphanumeric we cannot place in a known layout.
    Generic,
}

impl Region {
    pub const ALL: [Region; 4] = [Region::Cn, Region::De, Region::Uk, Region::Generic];

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Cn => "cn",
            Region::De => "de",
            Region::Uk => "uk",
            Region::Generic => "generic",
        }
    }
}

/// Background colour of the plate; in China it encodes the vehicle class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlateColour {
    #[default]
    Blue,
    Yellow,
    Green,
    Black,
    White,
    /// Any plate outside China, or a colour the camera could not tell.
    Other,
}

impl PlateColour {
    pub fn as_str(self) -> &'static str {
        match self {
            PlateColour::Blue => "blue",
            PlateColour::Yellow => "yellow",
            PlateColour::Green => "green",
            PlateColour::Black => "black",
            PlateColour::White => "white",
            PlateColour::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<PlateColour> {
        Some(match s.to_ascii_lowercase().as_str() {
            "blue" => PlateColour::Blue,
            "yellow" => PlateColour::Yellow,
            "green" => PlateColour::Green,
            "black" => PlateColour::Black,
            "white" => PlateColour::White,
            "other" => PlateColour::Other,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlateError {
    #[error("plate is empty")]
    Empty,
    #[error("plate {0:?} contains a character no plate uses")]
    BadCharacter(String),
    #[error("plate {raw:?} does not fit the {region} layout")]
    Layout { raw: String, region: &'static str },
}

/// The province (and special-issue) characters that open a mainland Chinese plate.
pub const CN_PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领";
/// Characters that may close a special-purpose Chinese plate (learner, police, trailer, HK, Macau).
pub const CN_SUFFIXES: &str = "学警挂港澳领";

/// A validated, normalised licence plate.
///
/// The text is canonical for its region: upper case, no separators except the single space
/// between the parts of a German plate (`B AB 1234`), which cannot be split again once lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Plate {
    text: String,
    region: Region,
}

impl Plate {
    /// Parses a raw read in whichever region it fits, trying the most specific layouts first.
    pub fn parse(raw: &str) -> Result<Plate, PlateError> {
        let cleaned = clean(raw)?;
        let first = cleaned.chars().next().ok_or(PlateError::Empty)?;
        if !first.is_ascii() {
            return Plate::parse_in(raw, Region::Cn);
        }
        if let Ok(p) = Plate::parse_in(raw, Region::Uk) {
            return Ok(p);
        }
        if raw.contains([' ', '-']) {
            if let Ok(p) = Plate::parse_in(raw, Region::De) {
                return Ok(p);
            }
        }
        Plate::parse_in(raw, Region::Generic)
    }

    /// Parses a raw read in one region, correcting confusable characters by position.
    pub fn parse_in(raw: &str, region: Region) -> Result<Plate, PlateError> {
        let text = match region {
            Region::Cn => parse_cn(&clean(raw)?),
            Region::Uk => parse_uk(&clean(raw)?),
            Region::De => parse_de(raw),
            Region::Generic => parse_generic(&clean(raw)?),
        }
        .ok_or_else(|| PlateError::Layout {
            raw: raw.to_string(),
            region: region.as_str(),
        })?;
        Ok(Plate { text, region })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn region(&self) -> Region {
        self.region
    }

    /// The confusable-folded key two reads of the same plate share.
    pub fn match_key(&self) -> String {
        match_key(&self.text)
    }

    /// The plate as printed: `京A·12345`, `B AB 1234`, `AB12 CDE`.
    pub fn display(&self) -> String {
        match self.region {
            Region::Cn => {
                let mut s = String::new();
                for (i, c) in self.text.chars().enumerate() {
                    if i == 2 {
                        s.push('·');
                    }
                    s.push(c);
                }
                s
            }
            Region::Uk => format!("{} {}", &self.text[..4], &self.text[4..]),
            Region::De | Region::Generic => self.text.clone(),
        }
    }
}

impl fmt::Display for Plate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Plate {
    type Err = PlateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Plate::parse(s)
    }
}

impl TryFrom<String> for Plate {
    type Error = PlateError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Plate::parse(&s)
    }
}

impl From<Plate> for String {
    fn from(p: Plate) -> String {
        p.text
    }
}

/// Upper-cases and strips the separators people and cameras put into plates.
fn clean(raw: &str) -> Result<String, PlateError> {
    let mut out = String::with_capacity(raw.len());
    for c in raw.trim().chars() {
        match c {
            ' ' | '-' | '·' | '.' | '•' | '_' => {}
            c if c.is_ascii_alphanumeric() => out.push(c.to_ascii_uppercase()),
            c if CN_PROVINCES.contains(c) || CN_SUFFIXES.contains(c) => out.push(c),
            'Ä' | 'Ö' | 'Ü' | 'ä' | 'ö' | 'ü' => out.extend(c.to_uppercase()),
            _ => return Err(PlateError::BadCharacter(raw.to_string())),
        }
    }
    if out.is_empty() {
        return Err(PlateError::Empty);
    }
    Ok(out)
}

/// The character a digit was most likely mistaken for, where a letter must stand.
fn as_letter(c: char) -> char {
    match c {
        '0' => 'O',
        '1' => 'I',
        '2' => 'Z',
        '4' => 'A',
        '5' => 'S',
        '6' => 'G',
        '8' => 'B',
        _ => c,
    }
}

/// The digit a letter was most likely mistaken for, where a digit must stand.
fn as_digit(c: char) -> char {
    match c {
        'O' | 'D' | 'Q' => '0',
        'I' | 'J' | 'L' => '1',
        'Z' => '2',
        'A' => '4',
        'S' => '5',
        'G' => '6',
        'B' => '8',
        _ => c,
    }
}

/// Chinese plates never carry I or O outside the first letter's slot: read them as 1 and 0.
fn cn_alnum(c: char) -> char {
    match c {
        'O' => '0',
        'I' => '1',
        _ => c,
    }
}

/// The letter after the province: I and O are never issued, digits are misreads.
fn cn_letter(c: char) -> char {
    match c {
        '0' | 'O' => 'D',
        _ => as_letter(c),
    }
}

fn is_cn_letter(c: char) -> bool {
    c.is_ascii_uppercase() && c != 'I' && c != 'O'
}

fn is_cn_alnum(c: char) -> bool {
    c.is_ascii_digit() || is_cn_letter(c)
}

fn parse_cn(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let province = *chars.first()?;
    if !CN_PROVINCES.contains(province) {
        return None;
    }
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    out.push(province);
    out.push(cn_letter(*chars.get(1)?));
    if !is_cn_letter(out[1]) {
        return None;
    }
    let rest = &chars[2..];
    match rest.len() {
        5 => {
            // Standard plate; a special-purpose suffix may close it.
            for (i, &c) in rest.iter().enumerate() {
                if i == 4 && CN_SUFFIXES.contains(c) {
                    out.push(c);
                } else {
                    out.push(cn_alnum(c));
                }
            }
            let body = &out[2..];
            let ok = body
                .iter()
                .enumerate()
                .all(|(i, &c)| is_cn_alnum(c) || (i == 4 && CN_SUFFIXES.contains(c)));
            ok.then(|| out.into_iter().collect())
        }
        6 => {
            // New energy: small cars D/F + letter-or-digit + 4 digits; large cars 5 digits + D/F.
            let first = rest[0];
            let last = rest[5];
            let small = matches!(first, 'D' | 'F' | '0') && !matches!(last, 'D' | 'F');
            if small {
                out.push(if first == '0' { 'D' } else { first });
                out.push(cn_alnum(rest[1]));
                out.extend(rest[2..].iter().map(|&c| as_digit(c)));
                let ok = is_cn_alnum(out[3]) && out[4..].iter().all(char::is_ascii_digit);
                ok.then(|| out.into_iter().collect())
            } else {
                out.extend(rest[..5].iter().map(|&c| as_digit(c)));
                out.push(if last == '0' { 'D' } else { last });
                let ok = out[2..7].iter().all(char::is_ascii_digit) && matches!(out[7], 'D' | 'F');
                ok.then(|| out.into_iter().collect())
            }
        }
        _ => None,
    }
}

fn parse_uk(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() != 7 || !chars.iter().all(char::is_ascii_alphanumeric) {
        return None;
    }
    let out: Vec<char> = chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (2..4).contains(&i) {
                as_digit(c)
            } else {
                as_letter(c)
            }
        })
        .collect();
    let ok = out.iter().enumerate().all(|(i, c)| {
        if (2..4).contains(&i) {
            c.is_ascii_digit()
        } else {
            c.is_ascii_uppercase()
        }
    });
    ok.then(|| out.into_iter().collect())
}

fn is_de_letter(c: char) -> bool {
    c.is_ascii_uppercase() || matches!(c, 'Ä' | 'Ö' | 'Ü')
}

/// German plates: district (1-3 letters), a separator, 1-2 letters, 1-4 digits. The separator is
/// required: without it `BAB1234` could be `B AB` or `BA B`.
fn parse_de(raw: &str) -> Option<String> {
    let upper: String = raw.trim().to_uppercase();
    let (district, rest) = upper.split_once([' ', '-', ':'])?;
    let district: Vec<char> = district.chars().map(as_letter).collect();
    let rest: Vec<char> = rest.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !(1..=3).contains(&district.len()) || !district.iter().all(|&c| is_de_letter(c)) {
        return None;
    }
    // Prefer the split the characters themselves suggest (the run of real letters); fall back
    // to reading digit-like letters as digits or letter-like digits as letters.
    let leading = rest
        .iter()
        .take(2)
        .take_while(|c| is_de_letter(**c))
        .count();
    let fits = |n: usize| {
        let digits = &rest[n..];
        n >= 1
            && (1..=4).contains(&digits.len())
            && digits.iter().all(|&c| as_digit(c).is_ascii_digit())
    };
    let split = std::iter::once(leading)
        .chain(1..=2)
        .find(|&n| n <= rest.len() && fits(n))?;
    let letters: String = rest[..split].iter().map(|&c| as_letter(c)).collect();
    let digits: String = rest[split..].iter().map(|&c| as_digit(c)).collect();
    if !letters.chars().all(is_de_letter) || digits.starts_with('0') {
        return None;
    }
    Some(format!(
        "{} {} {}",
        district.iter().collect::<String>(),
        letters,
        digits
    ))
}

fn parse_generic(s: &str) -> Option<String> {
    let ok = (2..=10).contains(&s.chars().count()) && s.chars().all(|c| c.is_ascii_alphanumeric());
    ok.then(|| s.to_string())
}

/// Folds one character into its confusable group's representative.
pub fn fold_char(c: char) -> char {
    match c.to_ascii_uppercase() {
        '0' | 'O' | 'D' | 'Q' => '0',
        '1' | 'I' | 'J' | 'L' | '7' => '1',
        '2' | 'Z' => '2',
        '5' | 'S' => '5',
        '8' | 'B' | '3' => '8',
        '6' | 'G' => '6',
        '4' | 'A' => '4',
        'M' | 'N' => 'M',
        other => other,
    }
}

/// The confusable-folded key of any plate text: separators dropped, groups folded.
pub fn match_key(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .map(fold_char)
        .collect()
}

/// Levenshtein distance between two keys, counted in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cn_standard_plates_are_corrected_by_position() {
        let p = Plate::parse("京a·1234o").unwrap();
        assert_eq!(p.as_str(), "京A12340");
        assert_eq!(p.region(), Region::Cn);
        assert_eq!(p.display(), "京A·12340");
        // A digit where the letter must stand is read as the letter it resembles.
        assert_eq!(Plate::parse("沪8 12345").unwrap().as_str(), "沪B12345");
        assert_eq!(Plate::parse("粤B1234学").unwrap().as_str(), "粤B1234学");
    }

    #[test]
    fn cn_new_energy_plates_have_eight_characters() {
        assert_eq!(Plate::parse("京AD12345").unwrap().as_str(), "京AD12345");
        assert_eq!(Plate::parse("京AFB834S").unwrap().as_str(), "京AFB8345");
        assert_eq!(Plate::parse("苏E12345F").unwrap().as_str(), "苏E12345F");
        assert_eq!(Plate::parse("苏E1234SD").unwrap().as_str(), "苏E12345D");
    }

    #[test]
    fn cn_rejects_reads_that_fit_no_layout() {
        assert!(Plate::parse("京A123").is_err());
        assert!(Plate::parse("京A1234567").is_err());
        assert!(Plate::parse("A京12345").is_err());
    }

    #[test]
    fn uk_and_de_layouts() {
        let uk = Plate::parse("ab12 cde").unwrap();
        assert_eq!((uk.as_str(), uk.region()), ("AB12CDE", Region::Uk));
        assert_eq!(uk.display(), "AB12 CDE");
        assert_eq!(Plate::parse("A812CDE").unwrap().as_str(), "AB12CDE");
        assert_eq!(Plate::parse("AB1Z C0E").unwrap().as_str(), "AB12COE");
        let de = Plate::parse("B-AB 1234").unwrap();
        assert_eq!((de.as_str(), de.region()), ("B AB 1234", Region::De));
        assert_eq!(Plate::parse("M-X 12").unwrap().as_str(), "M X 12");
        assert_eq!(Plate::parse("HH 8C 1O1").unwrap().as_str(), "HH BC 101");
        assert_eq!(Plate::parse_in("BAB1234", Region::De).ok(), None);
    }

    #[test]
    fn generic_fallback_and_errors() {
        assert_eq!(Plate::parse("XYZ123").unwrap().region(), Region::Generic);
        assert_eq!(Plate::parse("  "), Err(PlateError::Empty));
        assert!(matches!(
            Plate::parse("AB$12"),
            Err(PlateError::BadCharacter(_))
        ));
    }

    #[test]
    fn match_key_folds_confusables() {
        assert_eq!(match_key("沪B12345"), match_key("沪812345"));
        assert_eq!(match_key("AB12 CDE"), match_key("A8I2C0E"));
        assert_ne!(match_key("沪B12345"), match_key("沪B12349"));
        assert_eq!(edit_distance("京A12345", "京A12349"), 1);
        assert_eq!(edit_distance("京A12345", "京A1234"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn cn_plate() -> impl Strategy<Value = String> {
            let provinces: Vec<char> = CN_PROVINCES.chars().collect();
            (
                proptest::sample::select(provinces),
                "[A-HJ-NP-Z]",
                "[0-9A-HJ-NP-Z]{5}",
            )
                .prop_map(|(p, l, rest)| format!("{p}{l}{rest}"))
        }

        proptest! {
            #[test]
            fn valid_cn_plates_round_trip(s in cn_plate()) {
                let p = Plate::parse(&s).unwrap();
                prop_assert_eq!(p.as_str(), s.as_str());
                prop_assert_eq!(Plate::parse(p.as_str()).unwrap(), p.clone());
                prop_assert_eq!(Plate::parse(&p.display()).unwrap(), p);
            }

            #[test]
            fn uk_plates_round_trip(s in "[A-Z]{2}[0-9]{2}[A-Z]{3}") {
                let p = Plate::parse(&s).unwrap();
                prop_assert_eq!(p.as_str(), s.as_str());
                prop_assert_eq!(Plate::parse(&p.display()).unwrap(), p);
            }

            #[test]
            fn de_plates_round_trip(d in "[A-Z]{1,3}", l in "[A-Z]{1,2}", n in 1u32..10000) {
                let s = format!("{d} {l} {n}");
                let p = Plate::parse_in(&s, Region::De).unwrap();
                prop_assert_eq!(p.as_str(), s.as_str());
            }

            #[test]
            fn key_is_invariant_under_confusable_swaps(s in cn_plate(), idx in 2usize..7) {
                let swapped: String = s.chars().enumerate().map(|(i, c)| {
                    if i != idx { return c; }
                    match c { '8' => 'B', 'B' => '8', '0' => 'D', 'D' => '0', '5' => 'S', 'S' => '5', '2' => 'Z', 'Z' => '2', other => other }
                }).collect();
                prop_assert_eq!(match_key(&s), match_key(&swapped));
            }

            #[test]
            fn key_is_idempotent_and_never_longer(s in "[ -~]{0,16}") {
                let k = match_key(&s);
                prop_assert_eq!(match_key(&k), k.clone());
                prop_assert!(k.chars().count() <= s.chars().count());
            }

            #[test]
            fn parse_never_panics(s in "\\PC{0,20}") {
                let _ = Plate::parse(&s);
            }

            #[test]
            fn edit_distance_is_a_metric(a in "[A-C0-2]{0,8}", b in "[A-C0-2]{0,8}") {
                prop_assert_eq!(edit_distance(&a, &b), edit_distance(&b, &a));
                prop_assert_eq!(edit_distance(&a, &a), 0);
                prop_assert!(edit_distance(&a, &b) <= a.len().max(b.len()));
            }
        }
    }
}
