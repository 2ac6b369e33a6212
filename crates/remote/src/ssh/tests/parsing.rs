//! Parsing without sshd: destinations, ssh_config (first value wins, patterns,
//! Include, Match), the precedence of settings, quoting and wildcards.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::ssh::SshSettings;
use crate::ssh::options::{self, Destination, Role, SshConfig, StrictHostKeyChecking};

#[test]
fn destinations_parse_like_ssh() {
    let parse = |s| Destination::parse(s).unwrap();
    assert_eq!(
        parse("deploy@web1:2222"),
        Destination {
            user: Some("deploy".into()),
            host: "web1".into(),
            port: Some(2222)
        }
    );
    assert_eq!(parse("ssh://web1").host, "web1");
    assert_eq!(parse("[::1]:22").host, "::1");
    assert_eq!(parse("fe80::1").port, None);
    assert!(Destination::parse("-oProxyCommand=x").is_err());
    assert!(Destination::parse("web1:0").is_err());
    assert!(Destination::parse("@web1").is_err());
}

#[test]
fn ssh_config_first_value_wins_with_patterns_includes_and_match() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/10-web.conf"),
        "Host web*\n  User included\n",
    )
    .unwrap();
    let config = format!(
        "# global options come first\nConnectTimeout=7\n\
         Host web? !web9\n  HostName %h.example.com\n  Port 2200\n  IdentityFile ~/.ssh/web_key\n\
         Include {}/conf.d/*.conf\n\
         Host *\n  User everyone\n  Port 22\n  IdentityFile \"/keys/with space\"\n\
         \tStrictHostKeyChecking accept-new # trailing comment\n\
         Match exec \"true\"\n  User never\n",
        dir.path().display()
    );
    let mut warnings = Vec::new();
    let config = SshConfig::parse(&config, &mut warnings);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Match exec"), "{warnings:?}");
    let settings = SshSettings::default();
    let resolve = |host: &str| {
        options::resolve(host, Role::Target, &settings, &Default::default(), &config).unwrap()
    };
    let web1 = resolve("web1");
    assert_eq!(web1.hostname, "web1.example.com");
    assert_eq!(web1.port, 2200);
    assert_eq!(web1.user, "included");
    assert_eq!(web1.connect_timeout, Duration::from_secs(7));
    assert_eq!(web1.strict, StrictHostKeyChecking::AcceptNew);
    let home = std::env::home_dir().unwrap();
    assert_eq!(
        web1.identity_files,
        vec![home.join(".ssh/web_key"), PathBuf::from("/keys/with space")]
    );
    let web9 = resolve("web9");
    assert_eq!(web9.hostname, "web9");
    assert_eq!((web9.port, web9.user.as_str()), (22, "included"));
    let db = resolve("deploy@db:2022");
    assert_eq!((db.user.as_str(), db.port), ("deploy", 2022));
}

#[test]
fn empty_values_and_open_quotes_are_warned_about_and_never_resolve() {
    let mut warnings = Vec::new();
    let config = SshConfig::parse(
        "Host web\n  HostName \"\n  Port \"\"\n  User \"ops\n\
         Host \"db\n  User intruder\n",
        &mut warnings,
    );
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings[0].contains("line 2") || warnings[0].contains(":2:"),
        "{warnings:?}"
    );
    let settings = SshSettings::default();
    let web =
        options::resolve("web", Role::Target, &settings, &Default::default(), &config).unwrap();
    assert_eq!((web.hostname.as_str(), web.port), ("web", 22));
    // The unreadable `Host "db` line opens a block that matches nothing: `User intruder`
    // never falls into the `Host web` block.
    assert_ne!(web.user, "intruder");
}

#[test]
fn explicit_settings_beat_ssh_options_which_beat_the_config() {
    let mut warnings = Vec::new();
    let config = SshConfig::parse(
        "Host *\n User fromconfig\n Port 2000\n ProxyJump cfgjump\n StrictHostKeyChecking no\n",
        &mut warnings,
    );
    let options_layer = options::parse_ssh_options(
        &["Port=3000".to_string(), "User optuser".to_string()],
        &mut warnings,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let settings = SshSettings {
        user: Some("stageuser".into()),
        accept_new_host_keys: true,
        ..SshSettings::default()
    };
    let host = options::resolve("web", Role::Target, &settings, &options_layer, &config).unwrap();
    assert_eq!((host.user.as_str(), host.port), ("stageuser", 3000));
    assert_eq!(host.jumps, vec!["cfgjump".to_string()]);
    // The user wrote `no`: --accept-new-host-keys does not make it stricter or laxer.
    assert_eq!(host.strict, StrictHostKeyChecking::No);
    // A jump host takes neither the stage's user nor its -o Port.
    let jump = options::resolve(
        "cfgjump",
        Role::Jump { jumps: None },
        &settings,
        &options_layer,
        &config,
    )
    .unwrap();
    assert_eq!((jump.user.as_str(), jump.port), ("fromconfig", 2000));
    // The config's ProxyJump applies to a first hop too (here: itself, which the
    // pool skips).
    assert_eq!(jump.jumps, vec!["cfgjump".to_string()]);
    assert!(jump.identity_files.is_empty());

    // A per-host key replaces the stage's key for that host only.
    let settings = SshSettings {
        key: Some("/keys/stage".into()),
        host_keys: [("web2".to_string(), PathBuf::from("/keys/web2"))].into(),
        ..SshSettings::default()
    };
    let key_of = |host| {
        options::resolve(host, Role::Target, &settings, &options_layer, &config)
            .unwrap()
            .identity_files
    };
    assert_eq!(key_of("web2"), vec![PathBuf::from("/keys/web2")]);
    assert_eq!(key_of("web3"), vec![PathBuf::from("/keys/stage")]);
}

#[test]
fn remote_commands_take_their_script_on_stdin() {
    use std::io::Write;
    assert_eq!(crate::ssh::quote("it's"), r"'it'\''s'");
    let script = r#"printf '%s|' "$0" 'x'\''y' "a  b" "$SECRET"; cat"#;
    let line = crate::ssh::remote_command(script.len(), Duration::from_secs(5));
    // Nothing of the script, so no secret, is on the command line.
    assert_eq!(
        line,
        format!(
            r#"exec timeout -k 5 6 sh -c 'S=$(dd bs=1 count={} 2>/dev/null) && eval "$S"'"#,
            script.len()
        )
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .env("SECRET", "s3")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = crate::ssh::remote_stdin(script, b"the input after it");
    child.stdin.take().unwrap().write_all(&stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    // The script ran, and its own input (read by `cat`) lost no byte to the reader.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "sh|x'y|a  b|s3|the input after it"
    );
}

#[test]
fn wildcards_match_like_ssh() {
    use options::{pattern_list_matches, wildcard_match};
    assert!(wildcard_match("*.example.com", "a.b.example.com"));
    assert!(wildcard_match("web?", "web1"));
    assert!(!wildcard_match("web?", "web10"));
    assert!(wildcard_match("*", ""));
    assert!(pattern_list_matches(
        "[10.0.0.1]:2222",
        "[10.0.0.*]:2222,other"
    ));
    assert!(!pattern_list_matches(
        "bad.example.com",
        "*.example.com,!bad.*"
    ));
}

#[test]
fn security_options_fleet_cannot_honour_are_refused_where_they_apply() {
    let config = "Host legacy\n  KexAlgorithms +diffie-hellman-group1-sha1\n\
                  Host relaxed\n  VerifyHostKeyDNS no\n  CanonicalizeHostname no\n  ForwardAgent yes\n\
                  Host dns\n  VerifyHostKeyDNS yes\n";
    let mut warnings = Vec::new();
    let config = SshConfig::parse(config, &mut warnings);
    assert!(warnings.is_empty(), "{warnings:?}");
    let settings = SshSettings::default();
    let resolve =
        |host: &str| options::resolve(host, Role::Target, &settings, &Default::default(), &config);
    let refused = resolve("legacy").unwrap_err();
    assert!(
        refused.starts_with("`KexAlgorithms` (config:2) applies to this host"),
        "{refused}"
    );
    assert!(
        resolve("dns")
            .unwrap_err()
            .contains("`VerifyHostKeyDNS` (config:8)")
    );
    // Set to what asks for nothing, or to what fleet does anyway: fine.
    resolve("relaxed").unwrap();
    // Not in a block that applies: fine.
    resolve("other").unwrap();
    // From the stage's ssh_options, too.
    let mut warnings = Vec::new();
    let options = options::parse_ssh_options(&["Ciphers=aes128-cbc".into()], &mut warnings);
    let refused = options::resolve(
        "web1",
        Role::Target,
        &settings,
        &options,
        &SshConfig::default(),
    )
    .unwrap_err();
    assert!(
        refused.contains("`Ciphers` (the stage's ssh_options)"),
        "{refused}"
    );
}

#[test]
fn proxy_command_and_proxy_jump_first_one_wins_and_tokens_stay_out_of_the_shell() {
    let config = "Host via-command\n  ProxyCommand ssh -W %h:%p \"bastion host\"\n  ProxyJump ignored\n\
                  Host via-jump\n  ProxyJump bastion\n  ProxyCommand ignored\n\
                  Host none\n  ProxyCommand none\n\
                  Host aliased\n  HostName 10.0.0.5\n  HostKeyAlias web-prod\n  HashKnownHosts yes\n\
                  Host *\n  ProxyCommand nc %h %p\n";
    let mut warnings = Vec::new();
    let config = SshConfig::parse(config, &mut warnings);
    assert!(warnings.is_empty(), "{warnings:?}");
    let settings = SshSettings::default();
    let resolve =
        |host: &str| options::resolve(host, Role::Target, &settings, &Default::default(), &config);
    let command = resolve("via-command").unwrap();
    assert_eq!(
        command.proxy_command.as_deref(),
        Some("ssh -W via-command:22 \"bastion host\""),
        "the whole rest of the line, quotes kept, tokens expanded"
    );
    assert!(command.jumps.is_empty());
    let jump = resolve("via-jump").unwrap();
    assert_eq!(jump.jumps, ["bastion"]);
    assert_eq!(jump.proxy_command, None);
    assert_eq!(resolve("none").unwrap().proxy_command, None);
    let aliased = resolve("aliased").unwrap();
    assert_eq!(aliased.hostname, "10.0.0.5");
    assert_eq!(aliased.host_key_name, "web-prod");
    assert!(aliased.hash_known_hosts);
    assert_eq!(aliased.proxy_command.as_deref(), Some("nc 10.0.0.5 22"));
    // A host name that would be shell code never reaches `sh -c`.
    let refused = resolve("x;touch${IFS}pwned").unwrap_err();
    assert!(
        refused.starts_with("ProxyCommand: %h would put"),
        "{refused}"
    );
}
