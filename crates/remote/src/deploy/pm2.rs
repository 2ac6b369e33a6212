//! A PM2 ecosystem file's deploy section runs unchanged, hooks included, but not the
//! way PM2 runs it. What differs is said once, before the first host, so nobody
//! learns it from a surprise.

use std::path::Path;

use fleet_config::{DeployStage, DeployStrategy};

/// The note for a stage from a PM2 file (`None` for fleet.toml, whose user chose
/// fleet's ways).
pub fn differences(stage_name: &str, stage: &DeployStage, config_path: &Path) -> Option<String> {
    let is_toml = config_path.extension().is_some_and(|e| e == "toml");
    if is_toml {
        return None;
    }
    let mut lines = vec![format!(
        "PM2 deploy section `{stage_name}`, run by fleet; what differs from pm2 deploy:"
    )];
    let path = &stage.path;
    lines.push(match stage.strategy {
        DeployStrategy::Checkout => format!(
            "- each release is its own git checkout in {path}/releases/<id>, and {path}/current links the live one (pm2 resets one checkout, {path}/source, in place)"
        ),
        DeployStrategy::Clone => format!(
            "- each release is an export of the commit (no .git) in {path}/releases/<id>; {path}/current links the live one"
        ),
        DeployStrategy::Archive => format!(
            "- each release is an archive of the local commit, unpacked in {path}/releases/<id>; {path}/current links the live one"
        ),
    });
    lines.push(if stage.post_deploy_starts_apps() {
        "- post-deploy starts the apps itself, so fleet does not: its `pm2` is fleet (installed by `fleet deploy <stage> setup`), driving this host's fleet agent".to_string()
    } else {
        "- fleet reloads the release's apps itself and waits until they are online (pm2 runs `pm2 startOrRestart` without waiting)".to_string()
    });
    lines.push(
        "- a host that fails is switched back to its previous release, and so are the hosts before it (pm2 leaves them on the new one); --no-rollback keeps them".to_string(),
    );
    Some(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(strategy: DeployStrategy, post_deploy: Option<&str>) -> DeployStage {
        let mut stage: DeployStage = serde_json::from_value(serde_json::json!({
            "user": null, "host": ["h"], "port": null, "key": null, "ssh_options": [],
            "repo": "git@example.com:app.git", "ref": "origin/main", "path": "/srv/app",
            "env": {}, "pre_setup": null, "post_setup": null, "pre_deploy_local": null,
            "pre_deploy": null, "post_deploy": null, "fetch": null, "forward_agent": false,
            "needs_tty": false, "keep_releases": 5, "shared_dirs": [], "shared_files": [],
            "proxy_jump": null, "strategy": "archive", "batch": {"count": 1},
            "canary": false, "max_fail": 0, "hosts": {}
        }))
        .unwrap();
        stage.strategy = strategy;
        stage.post_deploy = post_deploy.map(str::to_string);
        stage
    }

    #[test]
    fn pm2_files_are_told_what_differs_and_fleet_toml_is_not() {
        let pm2 = stage(
            DeployStrategy::Checkout,
            Some("npm install && pm2 reload ecosystem.config.js --env production"),
        );
        let note = differences("production", &pm2, Path::new("/p/ecosystem.config.js")).unwrap();
        assert!(note.contains("its own git checkout"), "{note}");
        assert!(
            note.contains("post-deploy starts the apps itself"),
            "{note}"
        );
        let plain = stage(DeployStrategy::Archive, Some("npm run migrate"));
        let note = differences("production", &plain, Path::new("/p/ecosystem.json")).unwrap();
        assert!(
            note.contains("fleet reloads the release's apps itself"),
            "{note}"
        );
        assert_eq!(
            differences("production", &pm2, Path::new("/p/fleet.toml")),
            None
        );
    }
}
