//! Target selection, PM2's rules: `all`, `/regex/` on names, then a bare word as a
//! name, a namespace, and finally an id (so an app named `455` wins over id 455,
//! PM2 regression #1937). `#<id>` is an exact id, used by the agent itself.

use crate::error::AgentError;

/// The ids among `procs` (id, name, namespace) that `target` selects, in id order.
pub fn select<'a>(
    target: &str,
    procs: impl Iterator<Item = (u32, &'a str, &'a str)> + Clone,
) -> Result<Vec<u32>, AgentError> {
    if target == "all" {
        return Ok(procs.map(|(id, _, _)| id).collect());
    }
    if let Some(id) = target.strip_prefix('#').and_then(|s| s.parse::<u32>().ok()) {
        return Ok(procs.filter(|p| p.0 == id).map(|p| p.0).collect());
    }
    if let Some(pattern) = target
        .strip_prefix('/')
        .and_then(|rest| rest.strip_suffix('/'))
        .filter(|p| !p.is_empty())
    {
        let regex = regex_lite::Regex::new(pattern).map_err(|e| {
            AgentError::InvalidArgument(format!("bad regular expression {target}: {e}"))
        })?;
        return Ok(procs
            .filter(|(_, name, _)| regex.is_match(name))
            .map(|p| p.0)
            .collect());
    }
    let by_name: Vec<u32> = procs
        .clone()
        .filter(|(_, name, _)| *name == target)
        .map(|p| p.0)
        .collect();
    if !by_name.is_empty() {
        return Ok(by_name);
    }
    let by_namespace: Vec<u32> = procs
        .clone()
        .filter(|(_, _, namespace)| *namespace == target)
        .map(|p| p.0)
        .collect();
    if !by_namespace.is_empty() {
        return Ok(by_namespace);
    }
    match target.parse::<u32>() {
        Ok(id) => Ok(procs.filter(|p| p.0 == id).map(|p| p.0).collect()),
        Err(_) => Ok(Vec::new()),
    }
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
}
