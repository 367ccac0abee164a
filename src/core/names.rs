//! Nicknames and room names: parsed once at the edge, compared case-insensitively everywhere.
//!
//! Also the sanitiser that keeps terminal control sequences out of anything a user can send:
//! every string that reaches another client passes through [`sanitize`] first.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Why a name was refused; the text is shown to the user after `Error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} cannot be empty")]
    Empty { kind: &'static str },
    #[error("{kind} must be at most {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} may only contain letters, digits, '_' and '-'")]
    BadCharacter { kind: &'static str },
}

/// Removes C0 controls (except tab), DEL and C1 controls.
///
/// Dropping ESC (and the C1 CSI) is what defuses ANSI escape sequences: what remains of one is
/// printable text that cannot move a cursor or recolour another user's terminal.
pub fn sanitize(raw: &str) -> String {
    raw.chars()
        .filter(|&c| c == '\t' || !c.is_control())
        .collect()
}

fn validate(raw: &str, kind: &'static str, max: usize) -> Result<String, NameError> {
    let clean = sanitize(raw);
    let name = clean.trim();
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.chars().count() > max {
        return Err(NameError::TooLong { kind, max });
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(NameError::BadCharacter { kind });
    }
    Ok(name.to_owned())
}

macro_rules! case_insensitive_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, NameError> {
                validate(raw, $kind, Self::MAX_CHARS).map(Self)
            }

            /// A name from a structured request (a JSON field, a URL path): valid as it is, with
            /// nothing to trim or strip — what the API description promises.
            pub fn parse_exact(raw: &str) -> Result<Self, NameError> {
                let name = Self::parse(raw)?;
                if name.0 != raw {
                    return Err(NameError::BadCharacter { kind: $kind });
                }
                Ok(name)
            }

            /// The name as the user typed it; shown to others.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The lower-cased form: the identity used for uniqueness and lookups.
            pub fn key(&self) -> String {
                self.0.to_ascii_lowercase()
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.eq_ignore_ascii_case(&other.0)
            }
        }

        impl Eq for $name {}

        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                for b in self.0.bytes() {
                    state.write_u8(b.to_ascii_lowercase());
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(raw: String) -> Result<Self, NameError> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }
    };
}

case_insensitive_name!(
    /// A user's nickname: 1–32 of `[A-Za-z0-9_-]`, unique case-insensitively among online users.
    Nickname,
    "Nickname",
    32
);

case_insensitive_name!(
    /// A room's name: 1–64 of `[A-Za-z0-9_-]`, unique case-insensitively.
    RoomName,
    "Room name",
    64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_removes_ansi_escapes_c1_and_del_but_keeps_tab_and_unicode() {
        assert_eq!(sanitize("\x1b[31mred\x1b[0m"), "[31mred[0m");
        assert_eq!(sanitize("a\u{9b}2Jb\u{7f}c"), "a2Jbc");
        assert_eq!(sanitize("tab\there é ✓"), "tab\there é ✓");
        assert_eq!(sanitize("bell\x07 nul\0"), "bell nul");
    }

    #[test]
    fn nickname_accepts_the_allowed_alphabet_up_to_32_chars() {
        assert_eq!(Nickname::parse("alice_B-9").unwrap().as_str(), "alice_B-9");
        assert!(Nickname::parse(&"a".repeat(32)).is_ok());
        assert_eq!(
            Nickname::parse(&"a".repeat(33)),
            Err(NameError::TooLong {
                kind: "Nickname",
                max: 32
            })
        );
    }

    #[test]
    fn nickname_rejects_empty_spaces_and_punctuation() {
        assert!(matches!(
            Nickname::parse("   "),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            Nickname::parse("a b"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            Nickname::parse("bob!"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            Nickname::parse("é"),
            Err(NameError::BadCharacter { .. })
        ));
    }

    #[test]
    fn names_are_trimmed_and_stripped_of_controls_before_validation() {
        assert_eq!(Nickname::parse("  \x1b bob \r").unwrap().as_str(), "bob");
    }

    #[test]
    fn an_exact_name_has_nothing_to_trim_or_strip() {
        assert_eq!(
            RoomName::parse_exact("lobby-2").unwrap().as_str(),
            "lobby-2"
        );
        for raw in [" bob", "bob\n", "b\x1bob"] {
            assert!(matches!(
                Nickname::parse_exact(raw),
                Err(NameError::BadCharacter { .. })
            ));
        }
        assert!(matches!(
            Nickname::parse_exact(""),
            Err(NameError::Empty { .. })
        ));
    }

    #[test]
    fn names_compare_and_hash_case_insensitively() {
        use std::collections::HashSet;
        let a = RoomName::parse("General").unwrap();
        let b = RoomName::parse("gENERAL").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.key(), "general");
        assert_eq!(a.as_str(), "General");
        let set: HashSet<_> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn room_names_allow_64_chars() {
        assert!(RoomName::parse(&"r".repeat(64)).is_ok());
        assert!(RoomName::parse(&"r".repeat(65)).is_err());
    }
}
