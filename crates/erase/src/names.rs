//! One place for the spelling of each named enum of the erase (phases, record and state kinds,
//! outcomes, backends, config keys): [`named_enum!`] declares the variants and their names
//! together, and derives from that one table `ALL`, `as_str`, `from_name`, `Display` and, when
//! asked, serde (the journal and config spelling), so no second table can drift from the first.

/// Declares an enum whose variants each have a name, and derives from that one list:
///
/// - `ALL`: every variant, in declaration order;
/// - `as_str()`: the variant's name; `from_name()`: the variant with that name;
/// - `Display`, writing the name;
/// - with `serde` after the enum name (`enum Phase: serde { … }`), `Serialize` and
///   `Deserialize` by the same names (an unknown name is serde's "unknown variant" error,
///   listing the names).
///
/// Names are constant expressions (string literals or `&'static str` constants).
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident $(: $serde:ident)? {
            $( $(#[$vmeta:meta])* $variant:ident => $text:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; { [$(stringify!($variant)),+].len() }] = [$($name::$variant),+];

            /// Every name, in declaration order.
            pub const NAMES: [&'static str; { [$(stringify!($variant)),+].len() }] = [$($text),+];

            /// The name, as written in logs, the journal and config.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value called `name`, if any.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|value| value.as_str() == name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        $( $crate::names::named_enum!(@$serde $name); )?
    };
    (@serde $name:ident) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <String as serde::Deserialize>::deserialize(deserializer)?;
                $name::from_name(&name)
                    .ok_or_else(|| serde::de::Error::unknown_variant(&name, &$name::NAMES))
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    named_enum! {
        /// A test enum.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Colour: serde {
            /// Red.
            Red => "red",
            /// Light blue.
            LightBlue => "light-blue",
        }
    }

    #[test]
    fn one_table_gives_every_spelling() {
        assert_eq!(Colour::ALL, [Colour::Red, Colour::LightBlue]);
        assert_eq!(Colour::NAMES, ["red", "light-blue"]);
        assert_eq!(Colour::LightBlue.as_str(), "light-blue");
        assert_eq!(Colour::LightBlue.to_string(), "light-blue");
        assert_eq!(Colour::from_name("red"), Some(Colour::Red));
        assert_eq!(Colour::from_name("Red"), None);
        for colour in Colour::ALL {
            let json = serde_json::to_value(colour).unwrap();
            assert_eq!(json, serde_json::Value::String(colour.as_str().to_owned()));
            assert_eq!(serde_json::from_value::<Colour>(json).unwrap(), colour);
        }
        let err = serde_json::from_str::<Colour>("\"green\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant `green`") && err.contains("`light-blue`"),
            "{err}"
        );
    }
}
