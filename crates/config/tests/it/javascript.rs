//! JavaScript ecosystem files through node: CommonJS, ES modules, failures, a missing
//! node, and line numbers found in the JavaScript source. Skipped without node.

use std::collections::BTreeMap;

use crate::harness::{Project, expect_errors, expect_ok, node_available, summary};

macro_rules! require_node {
    () => {
        if !node_available() {
            eprintln!("node is not on PATH: skipping");
            return;
        }
    };
}

#[test]
fn commonjs_configs_are_evaluated_with_the_clis_environment() {
    require_node!();
    let project = Project::new();
    project.file("app.js", "");
    let text = "// computed values work, as in PM2\nconst port = 3000 + 1;\nconsole.log('noise on stdout is ignored');\nmodule.exports = {\n  apps: [{\n    name: 'api',\n    script: 'app.js',\n    port,\n    env: { HOME_SEEN: process.env.HOME },\n  }],\n};\n";
    let file = expect_ok(project.load_file("ecosystem.config.js", text));
    let app = &file.apps[0];
    assert_eq!(app.port, Some(3001));
    assert_eq!(
        app.env,
        BTreeMap::from([("HOME_SEEN".to_string(), crate::harness::HOME.to_string())])
    );
}

#[test]
fn es_modules_are_imported() {
    require_node!();
    let project = Project::new();
    let text = "export default {\n  apps: [{ name: 'api', script: 'sleep 1' }],\n};\n";
    let file = expect_ok(project.load_file("ecosystem.config.mjs", text));
    assert_eq!(file.apps[0].name, "api");
    let file = expect_ok(project.load_file(
        "pm2.config.cjs",
        "module.exports = { apps: [{ name: 'w', script: 'sleep 1' }] };\n",
    ));
    assert_eq!(file.apps[0].name, "w");
}

#[test]
fn errors_point_at_lines_in_the_javascript_source() {
    require_node!();
    let project = Project::new();
    let text = "module.exports = {\n  apps: [\n    {\n      name: 'web',\n      script: 'sleep 1',\n    },\n    {\n      name: 'api',\n      script: 'sleep 1',\n      instancs: 2,\n      \"kill_timeout\": '5x',\n    },\n  ],\n};\n";
    let errors = expect_errors(project.load_file("ecosystem.config.js", text));
    assert_eq!(
        summary(&errors),
        [
            (
                Some(10),
                "apps.api.instancs".to_string(),
                "unknown key".to_string()
            ),
            (
                Some(11),
                "apps.api.kill_timeout".to_string(),
                "expected a number of milliseconds or a duration like \"5s\", got \"5x\""
                    .to_string()
            ),
        ]
    );
    assert!(errors.to_string().starts_with(
        "ecosystem.config.js:10: apps.api.instancs: unknown key\n  hint: did you mean `instances`?"
    ));
}

#[test]
fn keys_node_cannot_place_have_no_line() {
    require_node!();
    let project = Project::new();
    let text = "const key = 'inst' + 'ancs';\nmodule.exports = { apps: [{ name: 'a', script: 'sleep 1', [key]: 2 }] };\n";
    let errors = expect_errors(project.load_file("ecosystem.config.js", text));
    assert_eq!(
        summary(&errors),
        [(
            None,
            "apps.a.instancs".to_string(),
            "unknown key".to_string()
        )]
    );
}

#[test]
fn node_failures_show_its_stderr() {
    require_node!();
    let project = Project::new();
    let errors = expect_errors(
        project.load_file("ecosystem.config.js", "throw new Error('broken config');\n"),
    );
    let message = &errors.errors[0].message;
    assert!(
        message.starts_with("node failed to evaluate the file"),
        "{message}"
    );
    assert!(message.contains("broken config"), "{message}");
}

#[test]
fn missing_node_is_explained() {
    let mut project = Project::new();
    let empty = project.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    std::sync::Arc::make_mut(&mut project.opts.inherited_env)
        .insert("PATH".to_string(), empty.display().to_string());
    let errors = expect_errors(project.load_file("ecosystem.config.js", "module.exports = {};\n"));
    assert_eq!(
        errors.to_string(),
        "ecosystem.config.js: node is needed to read a JavaScript config file and is not on PATH\n  hint: install node, or convert it to fleet.toml / ecosystem.json"
    );
}
