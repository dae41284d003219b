//! Container names and IDs: docker-style random `adjective_surname` names, name
//! validation, and 64-hex-digit random IDs.

use rand::Rng;
use rand::seq::IndexedRandom;

const ADJECTIVES: &[&str] = &[
    "admiring",
    "adoring",
    "affectionate",
    "agitated",
    "amazing",
    "angry",
    "awesome",
    "beautiful",
    "blissful",
    "bold",
    "boring",
    "brave",
    "busy",
    "charming",
    "clever",
    "compassionate",
    "competent",
    "condescending",
    "confident",
    "cool",
    "cranky",
    "crazy",
    "dazzling",
    "determined",
    "distracted",
    "dreamy",
    "eager",
    "ecstatic",
    "elastic",
    "elated",
    "elegant",
    "eloquent",
    "epic",
    "exciting",
    "fervent",
    "festive",
    "flamboyant",
    "focused",
    "friendly",
    "frosty",
    "funny",
    "gallant",
    "gifted",
    "goofy",
    "gracious",
    "great",
    "happy",
    "hardcore",
    "heuristic",
    "hopeful",
    "hungry",
    "infallible",
    "inspiring",
    "intelligent",
    "interesting",
    "jolly",
    "jovial",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "magical",
    "modest",
    "musing",
    "mystifying",
    "naughty",
    "nervous",
    "nice",
    "nifty",
    "nostalgic",
    "objective",
    "optimistic",
    "peaceful",
    "pedantic",
    "pensive",
    "practical",
    "priceless",
    "quirky",
    "quizzical",
    "relaxed",
    "reverent",
    "romantic",
    "sad",
    "serene",
    "sharp",
    "silly",
    "sleepy",
    "stoic",
    "strange",
    "stupefied",
    "suspicious",
    "sweet",
    "tender",
    "thirsty",
    "trusting",
    "upbeat",
    "vibrant",
    "vigilant",
    "vigorous",
    "wizardly",
    "wonderful",
    "xenodochial",
    "youthful",
    "zealous",
    "zen",
];

const SURNAMES: &[&str] = &[
    "agnesi",
    "albattani",
    "allen",
    "archimedes",
    "babbage",
    "bardeen",
    "bartik",
    "bell",
    "blackwell",
    "bohr",
    "boole",
    "borg",
    "bose",
    "brahmagupta",
    "brattain",
    "cannon",
    "carson",
    "chandrasekhar",
    "clarke",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euclid",
    "euler",
    "faraday",
    "fermat",
    "fermi",
    "feynman",
    "franklin",
    "galileo",
    "gauss",
    "goldberg",
    "goodall",
    "hamilton",
    "hawking",
    "heisenberg",
    "hodgkin",
    "hopper",
    "hypatia",
    "jemison",
    "johnson",
    "kepler",
    "knuth",
    "lamarr",
    "leakey",
    "lovelace",
    "mayer",
    "mcclintock",
    "meitner",
    "mendel",
    "newton",
    "nobel",
    "noether",
    "pasteur",
    "perlman",
    "planck",
    "ritchie",
    "shannon",
    "thompson",
    "tesla",
    "torvalds",
    "turing",
    "wozniak",
    "yalow",
];

const FIRST_TRY_ATTEMPTS: usize = 200;
const LONG_SUFFIX_ATTEMPTS: usize = 1000;

fn random_base(rng: &mut impl Rng) -> String {
    loop {
        let adj = ADJECTIVES.choose(rng).copied().unwrap_or("brave");
        let sur = SURNAMES.choose(rng).copied().unwrap_or("turing");
        // Docker's own exception: Steve Wozniak is not boring.
        if adj == "boring" && sur == "wozniak" {
            continue;
        }
        return format!("{adj}_{sur}");
    }
}

/// Returns a name for which `taken` is false. Like docker, the first attempt is a
/// bare `adjective_surname` and retries append a digit. Should the namespace be
/// absurdly full, longer numeric suffixes are tried, and as a last resort a name with a
/// random 12-hex suffix is returned without asking `taken` (collision odds ~2^-48) so
/// that this function always terminates.
pub fn generate_name(taken: &dyn Fn(&str) -> bool) -> String {
    let mut rng = rand::rng();
    for attempt in 0..FIRST_TRY_ATTEMPTS {
        let mut name = random_base(&mut rng);
        if attempt > 0 {
            name.push(char::from(b'0' + rng.random_range(0..10u8)));
        }
        if !taken(&name) {
            return name;
        }
    }
    for _ in 0..LONG_SUFFIX_ATTEMPTS {
        let name = format!("{}{}", random_base(&mut rng), rng.random_range(10..1_000_000u32));
        if !taken(&name) {
            return name;
        }
    }
    format!("{}_{}", random_base(&mut rng), short_id(&new_id()))
}

/// Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]+`: at least two characters.
pub fn validate_name(s: &str) -> Result<(), String> {
    let bytes = s.as_bytes();
    let ok = bytes.len() >= 2
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..].iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(format!("invalid container name {s:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")) }
}

/// Network names: docker accepts a single character too.
pub fn validate_network_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(format!("invalid network name {s:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")) }
}

/// 64 lowercase hex characters. As in docker, IDs whose 12-character short form is all
/// digits are regenerated, because such a prefix could be mistaken for a number.
pub fn new_id() -> String {
    let mut rng = rand::rng();
    loop {
        let bytes: [u8; 32] = rng.random();
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if !short_id(&id).bytes().all(|b| b.is_ascii_digit()) {
            return id;
        }
    }
}

/// The first 12 characters (the whole string if shorter).
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    fn well_formed(name: &str) -> bool {
        let Some((adj, rest)) = name.split_once('_') else {
            return false;
        };
        let sur = rest.trim_end_matches(|c: char| c.is_ascii_digit());
        ADJECTIVES.contains(&adj) && SURNAMES.contains(&sur)
    }

    #[test]
    fn word_lists_are_sane() {
        assert!(ADJECTIVES.len() >= 50 && SURNAMES.len() >= 50);
        for w in ADJECTIVES.iter().chain(SURNAMES) {
            assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        }
        let adj: HashSet<_> = ADJECTIVES.iter().collect();
        let sur: HashSet<_> = SURNAMES.iter().collect();
        assert_eq!(adj.len(), ADJECTIVES.len(), "duplicate adjective");
        assert_eq!(sur.len(), SURNAMES.len(), "duplicate surname");
    }

    #[test]
    fn generated_names_are_valid_and_plain_first() {
        for _ in 0..200 {
            let n = generate_name(&|_| false);
            assert!(well_formed(&n), "{n}");
            assert!(!n.ends_with(|c: char| c.is_ascii_digit()), "first try has no digit: {n}");
            assert_ne!(n, "boring_wozniak");
            assert!(validate_name(&n).is_ok());
        }
    }

    #[test]
    fn taken_names_get_a_digit() {
        let asked = RefCell::new(Vec::new());
        let n = generate_name(&|s| {
            asked.borrow_mut().push(s.to_string());
            asked.borrow().len() == 1
        });
        assert_eq!(asked.borrow().len(), 2);
        assert!(n.chars().last().is_some_and(|c| c.is_ascii_digit()), "{n}");
        assert!(well_formed(&n), "{n}");
    }

    #[test]
    fn avoids_every_taken_name() {
        let taken = RefCell::new(HashSet::new());
        for _ in 0..500 {
            let n = generate_name(&|s| taken.borrow().contains(s));
            assert!(taken.borrow_mut().insert(n));
        }
    }

    #[test]
    fn terminates_when_everything_is_taken() {
        let n = generate_name(&|_| true);
        assert!(validate_name(&n).is_ok(), "{n}");
        let (_, suffix) = n.rsplit_once('_').unwrap();
        assert_eq!(suffix.len(), 12);
    }

    #[test]
    fn validate_accepts_docker_names() {
        for ok in ["ab", "web", "my-app_1.2", "A1", "0abc", "x-", "a.b", "web_1"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn validate_rejects_bad_names() {
        for bad in ["", "a", "_ab", "-ab", ".ab", "a b", "a/b", "/ab", "ab!", "é1", "ab\n"] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e, format!("invalid container name {bad:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"));
        }
        assert_eq!(
            validate_name("x").unwrap_err(),
            "invalid container name \"x\": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        );
    }

    #[test]
    fn ids_are_random_hex() {
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let id = new_id();
            assert_eq!(id.len(), 64);
            assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
            assert!(!short_id(&id).bytes().all(|b| b.is_ascii_digit()));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn short_ids() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(short_id(id), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id(""), "");
        assert_eq!(short_id("0123456789ab"), "0123456789ab");
        // Never panics on a multi-byte boundary.
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé");
    }
}
