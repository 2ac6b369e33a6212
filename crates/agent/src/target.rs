//! Target selection, PM2's rules: `all`, `/regex/` on names, then a bare word as a
//! name, a namespace, and finally an id (so an app named `455` wins over id 455,
//! PM2 regression #1937). `#<id>` is an exact id, used by the agent itself.

use crate::error::AgentError;

/// Longer targets are refused: no name is this long (names are at most 64 characters)
/// and a regular expression this long is not a target.
const MAX_TARGET_LEN: usize = 256;

/// A target parsed once (its regular expression compiled once), for matching many
/// processes or many log chunks.
#[derive(Debug, Clone)]
pub enum Target {
    All,
    /// `#<id>`: exactly this id.
    Id(u32),
    Regex(regex_lite::Regex),
    /// A name, else a namespace, else an id.
    Word(String),
}

impl Target {
    pub fn parse(target: &str) -> Result<Target, AgentError> {
        if target.len() > MAX_TARGET_LEN {
            return Err(AgentError::InvalidArgument(format!(
                "a target is at most {MAX_TARGET_LEN} characters"
            )));
        }
        if target == "all" {
            return Ok(Target::All);
        }
        if let Some(id) = target.strip_prefix('#').and_then(|s| s.parse::<u32>().ok()) {
            return Ok(Target::Id(id));
        }
        if let Some(pattern) = target
            .strip_prefix('/')
            .and_then(|rest| rest.strip_suffix('/'))
            .filter(|p| !p.is_empty())
        {
            let regex = regex_lite::Regex::new(pattern).map_err(|e| {
                AgentError::InvalidArgument(format!("bad regular expression {target}: {e}"))
            })?;
            return Ok(Target::Regex(regex));
        }
        Ok(Target::Word(target.to_string()))
    }

    /// The ids among `procs` (id, name, namespace) this target selects, in their order.
    pub fn select<'a>(
        &self,
        procs: impl Iterator<Item = (u32, &'a str, &'a str)> + Clone,
    ) -> Vec<u32> {
        let word = match self {
            Target::All => return procs.map(|(id, _, _)| id).collect(),
            Target::Id(id) => return procs.filter(|p| p.0 == *id).map(|p| p.0).collect(),
            Target::Regex(regex) => {
                return procs
                    .filter(|(_, name, _)| regex.is_match(name))
                    .map(|p| p.0)
                    .collect();
            }
            Target::Word(word) => word.as_str(),
        };
        let by_name: Vec<u32> = procs
            .clone()
            .filter(|(_, name, _)| *name == word)
            .map(|p| p.0)
            .collect();
        if !by_name.is_empty() {
            return by_name;
        }
        let by_namespace: Vec<u32> = procs
            .clone()
            .filter(|(_, _, namespace)| *namespace == word)
            .map(|p| p.0)
            .collect();
        if !by_namespace.is_empty() {
            return by_namespace;
        }
        match word.parse::<u32>() {
            Ok(id) => procs.filter(|p| p.0 == id).map(|p| p.0).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The ids among `procs` (id, name, namespace) that `target` selects, in id order.
pub fn select<'a>(
    target: &str,
    procs: impl Iterator<Item = (u32, &'a str, &'a str)> + Clone,
) -> Result<Vec<u32>, AgentError> {
    Ok(Target::parse(target)?.select(procs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCS: &[(u32, &str, &str)] = &[
        (0, "echo-1", "default"),
        (1, "echo-2", "web"),
        (2, "echo-3", "web"),
        (3, "455", "default"),
        (4, "api", "default"),
    ];

    fn pick(target: &str) -> Vec<u32> {
        select(target, PROCS.iter().copied()).unwrap()
    }

    #[test]
    fn pm2_selection_rules() {
        assert_eq!(pick("all"), vec![0, 1, 2, 3, 4]);
        assert_eq!(pick("/echo-[12]/"), vec![0, 1]);
        assert_eq!(pick("web"), vec![1, 2]);
        assert_eq!(pick("api"), vec![4]);
        assert_eq!(pick("455"), vec![3], "a numeric name wins over an id");
        assert_eq!(pick("2"), vec![2]);
        assert_eq!(pick("#4"), vec![4]);
        assert!(pick("nope").is_empty());
        assert!(pick("99").is_empty());
    }

    #[test]
    fn a_bad_regex_is_an_argument_error() {
        assert!(matches!(
            select("/(/", PROCS.iter().copied()),
            Err(AgentError::InvalidArgument(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Any target, regular expression characters included, parses or is refused
        /// without a panic, and selects only ids that exist.
        #[test]
        fn any_target_is_parsed_or_refused(
            target in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::char::range(' ', '~'),
                    proptest::strategy::Just('/'),
                    proptest::strategy::Just('#'),
                    proptest::strategy::Just('('),
                    proptest::strategy::Just('*'),
                ],
                0..300,
            )
        ) {
            let target: String = target.into_iter().collect();
            if let Ok(ids) = select(&target, PROCS.iter().copied()) {
                proptest::prop_assert!(ids.iter().all(|id| PROCS.iter().any(|p| p.0 == *id)));
            }
            if target.len() > MAX_TARGET_LEN {
                proptest::prop_assert!(Target::parse(&target).is_err());
            }
        }
    }
}
