//! Property tests of the SSH parsers that read files a user (or anyone who can write
//! them) controls: `~/.ssh/config` with its `Host`/`Match` blocks, known_hosts lines,
//! destinations and `ssh_options`. Generated and mutated inputs: none may panic or
//! hang, and whatever resolves names a host and a port.

use proptest::prelude::*;

use crate::ssh::SshSettings;
use crate::ssh::known_hosts;
use crate::ssh::options::{self, Destination, Role, SshConfig};

const CASES: u32 = 512;

/// A config in the shapes people write, for the mutations to start from.
const CONFIG: &str = "Host *.prod !bastion.prod\n  User deploy\n  Port 2222\n  ProxyJump bastion.prod\n\
Host bastion.prod\n  HostName 203.0.113.7\n  IdentityFile ~/.ssh/bastion\n  IdentitiesOnly yes\n\
Match host *.internal originalhost db*\n  ProxyCommand ssh -W %h:%p jump\n  HostKeyAlias db-%n\n\
Host *\n  StrictHostKeyChecking accept-new\n  ServerAliveInterval=15\n  ConnectTimeout 5 # comment\n";

/// known_hosts lines of every kind fleet reads.
const KNOWN_HOSTS: &str = "web1,192.0.2.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n\
[web2]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n\
|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n\
@revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n\
@cert-authority *.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n\
*.prod,!bad.prod ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC0\n";

fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(at, op, byte) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % bytes.len()
        };
        match op % 3 {
            0 if !bytes.is_empty() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..12)
}

/// Resolves a few hosts against `config`: each either resolves to a host and a port
/// or says why not.
fn resolve_all(config: &SshConfig) {
    let settings = SshSettings::default();
    for host in [
        "web.prod",
        "bastion.prod",
        "db1",
        "x.internal",
        "plain",
        "[::1]:22",
    ] {
        if let Ok(resolved) =
            options::resolve(host, Role::Target, &settings, &Default::default(), config)
        {
            assert!(!resolved.hostname.is_empty() && resolved.port > 0);
        }
    }
}

fn key() -> russh::keys::PublicKey {
    russh::keys::PublicKey::from_openssh(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_ssh_config_never_panics(edits in edits()) {
        let text = mutate(CONFIG, &edits);
        let mut warnings = Vec::new();
        let config = SshConfig::parse(&text, &mut warnings);
        resolve_all(&config);
    }

    #[test]
    fn generated_ssh_config_lines_never_panic(
        lines in proptest::collection::vec(
            (prop_oneof![
                Just("Host"), Just("Match"), Just("HostName"), Just("Port"), Just("User"),
                Just("ProxyJump"), Just("ProxyCommand"), Just("HostKeyAlias"), Just("Include"),
                Just("IdentityFile"), Just("StrictHostKeyChecking"), Just("KexAlgorithms"),
                Just("ServerAliveCountMax"), Just("UserKnownHostsFile"),
            ], "[ -~]{0,40}"),
            0..24,
        )
    ) {
        let text: String = lines.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        let mut warnings = Vec::new();
        let config = SshConfig::parse(&text, &mut warnings);
        resolve_all(&config);
    }

    #[test]
    fn mutated_known_hosts_never_panic(edits in edits()) {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, mutate(KNOWN_HOSTS, &edits)).unwrap();
        let files = [file];
        for (host, port) in [("web1", 22), ("web2", 2222), ("a.prod", 22), ("192.0.2.1", 22)] {
            let _ = known_hosts::check(&files, host, port, &key());
            let _ = known_hosts::known_algorithms(&files, host, port);
            let _ = known_hosts::cert_authorities(&files, host, port);
            let _ = known_hosts::revoked(&files, key().key_data());
        }
    }

    #[test]
    fn destinations_and_ssh_options_never_panic(
        spec in "[ -~]{0,40}",
        option in "[ -~]{0,60}",
    ) {
        if let Ok(destination) = Destination::parse(&spec) {
            prop_assert!(!destination.host.is_empty());
        }
        let mut warnings = Vec::new();
        let layer = options::parse_ssh_options(&[option], &mut warnings);
        let _ = options::resolve("web1", Role::Target, &SshSettings::default(), &layer, &SshConfig::default());
    }
}
