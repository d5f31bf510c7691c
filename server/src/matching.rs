//! Finding the open session an exit read belongs to.
//!
//! Exact plate first, then the confusable-folded key, then one edit away on the key. At every
//! stage exactly one session must qualify: between two equally close sessions we never guess,
//! because charging the wrong driver is far worse than asking an operator.

use parkpay_protocol::plate::edit_distance;
use uuid::Uuid;

use crate::store::OpenSession;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Folded,
    OneEdit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Found {
        session: Uuid,
        plate: String,
        kind: MatchKind,
    },
    /// Several sessions are equally close: an operator must decide.
    Ambiguous(Vec<Uuid>),
    NotFound,
}

fn unique(found: Vec<&OpenSession>, kind: MatchKind) -> Option<Match> {
    match found.as_slice() {
        [] => None,
        [one] => Some(Match::Found {
            session: one.id,
            plate: one.plate.clone(),
            kind,
        }),
        many => Some(Match::Ambiguous(many.iter().map(|s| s.id).collect())),
    }
}

/// Matches a read (its plate and key, best candidate first) against open sessions in one lot.
pub fn find(reads: &[(String, String)], open: &[OpenSession]) -> Match {
    for (plate, _) in reads {
        if let Some(m) = unique(
            open.iter().filter(|s| &s.plate == plate).collect(),
            MatchKind::Exact,
        ) {
            return m;
        }
    }
    for (_, key) in reads {
        if let Some(m) = unique(
            open.iter().filter(|s| &s.plate_key == key).collect(),
            MatchKind::Folded,
        ) {
            return m;
        }
    }
    // One edit is only tried for the best candidate: lesser candidates one edit away from
    // somebody else's plate are how wrong charges happen.
    if let Some((_, key)) = reads.first() {
        if key.chars().count() >= 5 {
            let near: Vec<&OpenSession> = open
                .iter()
                .filter(|s| edit_distance(&s.plate_key, key) == 1)
                .collect();
            if let Some(m) = unique(near, MatchKind::OneEdit) {
                return m;
            }
        }
    }
    Match::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkpay_protocol::plate::match_key;
    use proptest::prelude::*;

    fn open(plates: &[&str]) -> Vec<OpenSession> {
        plates
            .iter()
            .map(|p| OpenSession {
                id: Uuid::new_v4(),
                plate: p.to_string(),
                plate_key: match_key(p),
            })
            .collect()
    }

    fn read(p: &str) -> Vec<(String, String)> {
        vec![(p.to_string(), match_key(p))]
    }

    #[test]
    fn exact_then_folded_then_one_edit() {
        let s = open(&["沪B12345", "京A88888", "苏E54321"]);
        assert!(matches!(
            find(&read("沪B12345"), &s),
            Match::Found {
                kind: MatchKind::Exact,
                ..
            }
        ));
        match find(&read("沪812345"), &s) {
            Match::Found { plate, kind, .. } => {
                assert_eq!((plate.as_str(), kind), ("沪B12345", MatchKind::Folded))
            }
            other => panic!("{other:?}"),
        }
        match find(&read("苏E54329"), &s) {
            Match::Found { plate, kind, .. } => {
                assert_eq!((plate.as_str(), kind), ("苏E54321", MatchKind::OneEdit))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(find(&read("粤Z99999"), &s), Match::NotFound);
    }

    #[test]
    fn never_guesses_between_equals() {
        let s = open(&["沪B12345", "沪B12346"]);
        assert!(matches!(find(&read("沪B12347"), &s), Match::Ambiguous(ids) if ids.len() == 2));
        // Exact wins even when a fold would be ambiguous.
        let s = open(&["沪B12345", "沪812345"]);
        assert!(matches!(
            find(&read("沪812345"), &s),
            Match::Found {
                kind: MatchKind::Exact,
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn a_match_is_never_farther_than_one_edit(
            plates in proptest::collection::hash_set("[A-C0-3]{6}", 1..20),
            probe in "[A-C0-3]{6}",
        ) {
            let plates: Vec<String> = plates.into_iter().collect();
            let s: Vec<OpenSession> = plates.iter().map(|p| OpenSession { id: Uuid::new_v4(), plate: p.clone(), plate_key: match_key(p) }).collect();
            match find(&read(&probe), &s) {
                Match::Found { session, .. } => {
                    let hit = s.iter().find(|x| x.id == session).unwrap();
                    let d = edit_distance(&hit.plate_key, &match_key(&probe));
                    prop_assert!(d <= 1);
                    // Nothing else is as close.
                    let rivals = s.iter().filter(|x| x.id != session && edit_distance(&x.plate_key, &match_key(&probe)) <= d).count();
                    prop_assert!(rivals == 0 || hit.plate == probe);
                }
                Match::Ambiguous(ids) => prop_assert!(ids.len() >= 2),
                Match::NotFound => {
                    prop_assert!(s.iter().all(|x| edit_distance(&x.plate_key, &match_key(&probe)) > 1));
                }
            }
        }
    }
}
