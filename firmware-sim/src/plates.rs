//! Plates the simulated cars carry, and the mistakes a camera makes reading them.
//!
//! Generated plates are valid mainland Chinese plates (blue, or green new-energy with eight
//! characters), never contain I or O, and are unique per car *after confusable folding*, so a
//! misread of one car's plate can never be mistaken for another car: the server's fuzzy matcher
//! is exercised, not tricked.

use std::collections::HashSet;

use parkpay_protocol::plate::match_key;
use parkpay_protocol::{Plate, PlateColour, Region};
use rand::Rng;

/// Provinces the simulated cars come from.
const PROVINCES: &[char] = &['京', '沪', '粤', '苏', '浙', '川', '鄂', '津', '鲁', '湘'];
/// Letters issued on Chinese plates: I and O never are.
const CN_LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";

/// Characters a camera confuses, both ways. Every pair sits inside one confusable group of the
/// protocol's match key, so a misread folds to the same key as the plate it came from.
const CONFUSABLE_PAIRS: &[(char, char)] = &[
    ('8', 'B'),
    ('0', 'D'),
    ('5', 'S'),
    ('2', 'Z'),
    ('1', 'I'),
    ('6', 'G'),
    ('4', 'A'),
    ('0', 'Q'),
    ('8', '3'),
    ('1', '7'),
    ('1', 'J'),
    ('M', 'N'),
];

fn pick(rng: &mut impl Rng, set: &[u8]) -> char {
    char::from(set[rng.gen_range(0..set.len())])
}

/// True when `s` is exactly how the protocol writes a valid Chinese plate: it parses, and
/// parsing changes nothing (no confusable was silently corrected).
pub fn is_canonical_cn(s: &str) -> bool {
    Plate::parse_in(s, Region::Cn).is_ok_and(|p| p.as_str() == s)
}

/// One random plate of the given colour (blue or green; anything else is treated as blue).
pub fn random_plate(rng: &mut impl Rng, colour: PlateColour) -> String {
    let mut s = String::with_capacity(12);
    s.push(PROVINCES[rng.gen_range(0..PROVINCES.len())]);
    s.push(pick(rng, CN_LETTERS));
    match colour {
        PlateColour::Green => {
            if rng.gen_bool(0.8) {
                // Small new-energy car: D/F, a letter or digit, four digits.
                s.push(if rng.gen_bool(0.5) { 'D' } else { 'F' });
                s.push(if rng.gen_bool(0.5) {
                    pick(rng, DIGITS)
                } else {
                    pick(rng, CN_LETTERS)
                });
                (0..4).for_each(|_| s.push(pick(rng, DIGITS)));
            } else {
                // Large new-energy vehicle: five digits, then D/F.
                (0..5).for_each(|_| s.push(pick(rng, DIGITS)));
                s.push(if rng.gen_bool(0.5) { 'D' } else { 'F' });
            }
        }
        _ => {
            // Mostly digits, now and then a letter, as issued series are.
            for _ in 0..5 {
                s.push(if rng.gen_bool(0.8) {
                    pick(rng, DIGITS)
                } else {
                    pick(rng, CN_LETTERS)
                });
            }
        }
    }
    s
}

/// Hands out plates that are unique per car, even after confusable folding.
#[derive(Debug, Default)]
pub struct PlateBook {
    keys: HashSet<String>,
}

impl PlateBook {
    pub fn new() -> PlateBook {
        PlateBook::default()
    }

    pub fn issue(&mut self, rng: &mut impl Rng, colour: PlateColour) -> Plate {
        loop {
            let s = random_plate(rng, colour);
            // Generated plates are canonical by construction; the check guards the generator.
            let Ok(plate) = Plate::parse_in(&s, Region::Cn) else {
                continue;
            };
            if plate.as_str() == s && self.keys.insert(match_key(&s)) {
                return plate;
            }
        }
    }
}

/// The plate with exactly one character swapped for a confusable one, chosen so the result is
/// still a canonical valid plate (a camera's confident misread, not garbage). `None` when the
/// plate has no character that can be confused that way.
pub fn misread(rng: &mut impl Rng, plate: &str) -> Option<String> {
    let chars: Vec<char> = plate.chars().collect();
    let mut options: Vec<String> = Vec::new();
    // Position 0 is the province character; nothing there is confusable with ASCII.
    for (i, &c) in chars.iter().enumerate().skip(1) {
        for &(a, b) in CONFUSABLE_PAIRS {
            let other = if c == a {
                b
            } else if c == b {
                a
            } else {
                continue;
            };
            let mut swapped = chars.clone();
            swapped[i] = other;
            let s: String = swapped.into_iter().collect();
            if is_canonical_cn(&s) {
                options.push(s);
            }
        }
    }
    if options.is_empty() {
        return None;
    }
    Some(options.swap_remove(rng.gen_range(0..options.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn differing_positions(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn plates_are_valid_unique_and_never_use_i_or_o() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut book = PlateBook::new();
        let mut seen = HashSet::new();
        for n in 0..2000 {
            let colour = if n % 4 == 0 {
                PlateColour::Green
            } else {
                PlateColour::Blue
            };
            let p = book.issue(&mut rng, colour);
            let s = p.as_str();
            assert!(is_canonical_cn(s), "{s} is not a canonical plate");
            assert!(!s.contains(['I', 'O']), "{s} uses I or O");
            let len = s.chars().count();
            assert_eq!(len, if colour == PlateColour::Green { 8 } else { 7 }, "{s}");
            assert!(seen.insert(match_key(s)), "{s} repeats a folded plate");
        }
    }

    #[test]
    fn misread_swaps_exactly_one_confusable_and_stays_valid() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut book = PlateBook::new();
        let mut swapped = 0;
        for n in 0..2000 {
            let colour = if n % 3 == 0 {
                PlateColour::Green
            } else {
                PlateColour::Blue
            };
            let plate = book.issue(&mut rng, colour);
            let Some(bad) = misread(&mut rng, plate.as_str()) else {
                continue;
            };
            swapped += 1;
            assert_eq!(
                differing_positions(plate.as_str(), &bad),
                1,
                "{plate} -> {bad}"
            );
            assert!(is_canonical_cn(&bad), "{bad} is not a valid plate");
            assert_eq!(match_key(&bad), plate.match_key(), "{plate} -> {bad}");
            let (orig, new) = plate
                .as_str()
                .chars()
                .zip(bad.chars())
                .find(|(a, b)| a != b)
                .expect("exactly one position differs, checked above");
            assert!(
                CONFUSABLE_PAIRS
                    .iter()
                    .any(|&(a, b)| (a, b) == (orig, new) || (b, a) == (orig, new)),
                "{orig}->{new} is not a confusable swap"
            );
        }
        // Nearly every plate has a digit with a confusable partner.
        assert!(swapped > 1900, "only {swapped} plates could be misread");
    }

    #[test]
    fn misread_of_a_plate_without_confusables_is_none() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(misread(&mut rng, "京K99999"), None);
        let bad = misread(&mut rng, "京K99989");
        assert!(
            matches!(bad.as_deref(), Some("京K99939" | "京K999B9")),
            "{bad:?}"
        );
    }
}
