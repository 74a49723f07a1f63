//! The options a variant's fragments require, and the check that a built `.config` honours them all (the build
//! script checks the same before it compiles; this side re-checks cached builds and serves the tests).

use super::{inputs, Variant};
use std::fmt;

/// One line of a fragment: an option with a value, or an option that must stay off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `CONFIG_X=value`.
    Set {
        /// The option, with its `CONFIG_` prefix.
        name: String,
        /// Its value as Kconfig writes it (`y`, `64`, `"text"`).
        value: String,
    },
    /// `# CONFIG_X is not set`: absent from `.config` or written as not set.
    Unset {
        /// The option, with its `CONFIG_` prefix.
        name: String,
    },
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Set { name, value } => write!(f, "{name}={value}"),
            Requirement::Unset { name } => write!(f, "# {name} is not set"),
        }
    }
}

/// The fragments merged for `variant`, in order, as (file name, text).
pub fn fragments(variant: Variant) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![("mvrun.config", inputs::file("mvrun.config"))];
    if variant == Variant::Emulated {
        out.push(("emulated.config", inputs::file("emulated.config")));
    }
    out
}

/// Every option `variant`'s fragments name.
pub fn required(variant: Variant) -> Vec<Requirement> {
    fragments(variant)
        .into_iter()
        .flat_map(|(_, text)| parse(text))
        .collect()
}

fn parse(text: &str) -> Vec<Requirement> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest.strip_suffix(" is not set")?;
                is_option(name).then(|| Requirement::Unset {
                    name: name.to_string(),
                })
            } else {
                let (name, value) = line.split_once('=')?;
                is_option(name).then(|| Requirement::Set {
                    name: name.to_string(),
                    value: value.to_string(),
                })
            }
        })
        .collect()
}

fn is_option(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// The requirements of `variant` that the `.config` text `dot_config` does not meet.
pub fn unmet(variant: Variant, dot_config: &str) -> Vec<Requirement> {
    let actual = parse(dot_config);
    let value_of = |name: &str| {
        actual.iter().find_map(|r| match r {
            Requirement::Set { name: n, value } if n == name => Some(value.as_str()),
            _ => None,
        })
    };
    required(variant)
        .into_iter()
        .filter(|req| match req {
            Requirement::Set { name, value } => value_of(name) != Some(value.as_str()),
            Requirement::Unset { name } => value_of(name).is_some(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_lines_parse() {
        let reqs = parse("# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=64\n\n# CONFIG_ is not set\nX=y\n");
        assert_eq!(
            reqs,
            vec![
                Requirement::Set {
                    name: "CONFIG_A".into(),
                    value: "y".into()
                },
                Requirement::Unset {
                    name: "CONFIG_B".into()
                },
                Requirement::Set {
                    name: "CONFIG_N".into(),
                    value: "64".into()
                },
            ]
        );
    }

    #[test]
    fn the_emulated_variant_adds_its_fragment() {
        let normal = required(Variant::Normal);
        let emulated = required(Variant::Emulated);
        assert!(
            normal.len() > 80,
            "mvrun.config names {} options",
            normal.len()
        );
        assert!(emulated.starts_with(&normal));
        let on = Requirement::Set {
            name: "CONFIG_MVRUN_EMULATED_KVM_SYSCALL_FIXUP".into(),
            value: "y".into(),
        };
        assert!(emulated.contains(&on) && !normal.contains(&on));
    }

    #[test]
    fn unmet_names_missing_wrong_and_forbidden_options() {
        let mut config: String = required(Variant::Normal)
            .iter()
            .filter(|r| matches!(r, Requirement::Set { .. }))
            .map(|r| format!("{r}\n"))
            .collect();
        assert_eq!(unmet(Variant::Normal, &config), vec![]);
        config = config
            .replace("CONFIG_EROFS_FS=y\n", "")
            .replace("CONFIG_NR_CPUS=64", "CONFIG_NR_CPUS=2");
        config.push_str("CONFIG_IPV6=y\n");
        let names: Vec<String> = unmet(Variant::Normal, &config)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "CONFIG_NR_CPUS=64",
                "CONFIG_EROFS_FS=y",
                "# CONFIG_IPV6 is not set"
            ]
        );
    }
}
