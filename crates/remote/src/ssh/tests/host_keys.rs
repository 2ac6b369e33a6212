//! Host keys: unknown ones refused with their fingerprint (learned only when asked),
//! changed, other-algorithm and revoked ones always refused, hashed and wildcard
//! known_hosts entries understood, `StrictHostKeyChecking=no` only when written.

use std::process::Command;
use std::time::Duration;

use super::*;
use crate::ssh::{Pool, SshError, SshSettings};

#[tokio::test]
async fn unknown_host_key_is_refused_with_its_fingerprint_and_learned_when_asked() {
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    let expected = fingerprint_of(&sshd.host_public_path());

    let strict = Pool::new(world.settings(), 4);
    let error = strict
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("unknown key refused");
    let message = error.to_string();
    assert!(
        matches!(error, SshError::UnknownHostKey { .. }),
        "{message}"
    );
    assert!(message.contains(&expected), "{message} lacks {expected}");
    assert!(message.contains("--accept-new-host-keys"), "{message}");
    assert!(!world.known_hosts().exists(), "strict mode learned a key");

    let accepting = Pool::new(
        SshSettings {
            accept_new_host_keys: true,
            ..world.settings()
        },
        4,
    );
    let output = accepting
        .exec(&sshd.host(), "echo hi", Duration::from_secs(10))
        .await
        .expect("accept-new connects");
    assert_eq!(output.stdout, b"hi\n");
    let learned = std::fs::read_to_string(world.known_hosts()).unwrap();
    assert_eq!(
        learned,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_public)
    );

    // Now known: strict checking connects, and OpenSSH agrees with the learned line.
    let again = Pool::new(world.settings(), 4);
    again
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("learned key accepted");
    run(Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.1]:{}", sshd.port))
        .arg("-f")
        .arg(world.known_hosts()));

    // The same through ssh_options, as a PM2 config writes it.
    let world2 = World::new();
    let sshd2 = world2.sshd("sshd", "");
    let options = Pool::new(
        SshSettings {
            ssh_options: vec!["StrictHostKeyChecking=accept-new".to_string()],
            ..world2.settings()
        },
        4,
    );
    options
        .exec(&sshd2.host(), "true", Duration::from_secs(10))
        .await
        .expect("StrictHostKeyChecking=accept-new learns");
    assert!(
        std::fs::read_to_string(world2.known_hosts())
            .unwrap()
            .contains(&sshd2.host_public)
    );
}

#[tokio::test]
async fn changed_host_key_is_refused_even_with_accept_new() {
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    let impostor = keygen(&world.path("other_host_key"), "ed25519", "");
    let impostor = impostor.split_whitespace().take(2).collect::<Vec<_>>();
    append(&world.known_hosts(), "# a comment line");
    append(
        &world.known_hosts(),
        &format!(
            "[127.0.0.1]:{}\t{}  {}",
            sshd.port, impostor[0], impostor[1]
        ),
    );
    let accepting = Pool::new(
        SshSettings {
            accept_new_host_keys: true,
            ..world.settings()
        },
        4,
    );
    let error = accepting
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("changed key refused");
    let message = error.to_string();
    assert!(
        matches!(&error, SshError::ChangedHostKey { line: 2, .. }),
        "{message}"
    );
    assert!(
        message.contains(&fingerprint_of(&sshd.host_public_path())),
        "{message}"
    );
    assert!(message.contains("known_hosts:2"), "{message}");
    let before = std::fs::read_to_string(world.known_hosts()).unwrap();
    assert!(
        !before.contains(&sshd.host_public),
        "the new key was learned"
    );

    // A known key of another algorithm is a change too, not a new key to learn.
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    let rsa = keygen(&world.path("rsa_host_key"), "rsa", "");
    let rsa = rsa.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    append(
        &world.known_hosts(),
        &format!("[127.0.0.1]:{} {rsa}", sshd.port),
    );
    let error = Pool::new(
        SshSettings {
            accept_new_host_keys: true,
            ..world.settings()
        },
        4,
    )
    .exec(&sshd.host(), "true", Duration::from_secs(10))
    .await
    .expect_err("other algorithm refused");
    assert!(matches!(error, SshError::ChangedHostKey { .. }), "{error}");
}

#[tokio::test]
async fn hashed_and_pattern_entries_are_understood_and_revoked_keys_refused() {
    // Hashed entries (ssh-keygen -H) and wildcard patterns are understood.
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    world.trust(&sshd);
    let impostor = keygen(&world.path("other_host_key"), "ed25519", "");
    let impostor = impostor.split_whitespace().take(2).collect::<Vec<_>>();
    run(Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(world.known_hosts()));
    assert!(
        std::fs::read_to_string(world.known_hosts())
            .unwrap()
            .starts_with("|1|")
    );
    Pool::new(world.settings(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("hashed entry accepted");
    std::fs::write(
        world.known_hosts(),
        format!("[127.0.0.?]:{},!nothing {}\n", sshd.port, sshd.host_public),
    )
    .unwrap();
    Pool::new(world.settings(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("pattern entry accepted");

    // @revoked wins over everything.
    append(
        &world.known_hosts(),
        &format!("@revoked * {}", sshd.host_public),
    );
    let error = Pool::new(world.settings(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("revoked key refused");
    assert!(matches!(error, SshError::RevokedHostKey { .. }), "{error}");

    // A changed key is refused even with StrictHostKeyChecking=no ...
    let lax_settings = SshSettings {
        ssh_options: vec!["StrictHostKeyChecking no".to_string()],
        known_hosts: Some(world.path("other_known_hosts")),
        ..world.settings()
    };
    append(
        &world.path("other_known_hosts"),
        &format!("[127.0.0.1]:{} {}", sshd.port, impostor.join(" ")),
    );
    let error = Pool::new(lax_settings.clone(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("StrictHostKeyChecking=no does not accept a changed key");
    assert!(matches!(error, SshError::ChangedHostKey { .. }), "{error}");
    // ... and accepted, with a warning, only for a host named for this run.
    let named = Pool::new(
        SshSettings {
            accept_changed_host_keys: vec!["127.0.0.1".to_string()],
            ..lax_settings
        },
        4,
    );
    named
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("--accept-changed-host-key connects");
    let warnings = named.take_warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("changed") && w.contains("--accept-changed-host-key")),
        "{warnings:?}"
    );
}

#[test]
fn a_key_learned_hashed_is_known_and_does_not_name_its_host() {
    use crate::ssh::known_hosts::{self, Verdict};
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("known_hosts");
    let line = super::keygen(&dir.path().join("id"), "ed25519", "");
    let key = russh::keys::PublicKey::from_openssh(line.trim()).unwrap();
    known_hosts::learn(&file, "web-prod", 2222, &key, true).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("web-prod"),
        "{text}"
    );
    let files = [file];
    assert_eq!(
        known_hosts::check(&files, "web-prod", 2222, &key),
        Verdict::Known
    );
    assert_eq!(
        known_hosts::check(&files, "web-prod", 22, &key),
        Verdict::Unknown
    );
}

#[tokio::test]
async fn a_host_certificate_from_a_known_ca_is_trusted_and_others_refused() {
    let world = World::new();
    let dir = world.path("sshd");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = keygen(&dir.join("host_ca"), "ed25519", "");
    let ca = ca.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let sshd = world.sshd("sshd", "");
    // Only the CA is known: no line names the host's own key.
    append(
        &world.known_hosts(),
        &format!("@cert-authority [127.0.0.1]:{} {ca}", sshd.port),
    );
    let output = Pool::new(world.settings(), 4)
        .exec(&sshd.host(), "echo certified", Duration::from_secs(10))
        .await
        .expect("a certificate from the known CA is trusted");
    assert_eq!(output.stdout, b"certified\n");

    // Another CA for the host: the certificate is refused, not taken as a plain key.
    let other = World::new();
    let stranger = keygen(&other.path("stranger_ca"), "ed25519", "");
    let stranger = stranger
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    append(
        &other.known_hosts(),
        &format!("@cert-authority [127.0.0.1]:{} {stranger}", sshd.port),
    );
    let error = Pool::new(
        SshSettings {
            known_hosts: Some(other.known_hosts()),
            ..world.settings()
        },
        4,
    )
    .exec(&sshd.host(), "true", Duration::from_secs(10))
    .await
    .expect_err("another CA's trust does not cover it");
    assert!(
        error
            .to_string()
            .contains("does not validate against the @cert-authority keys"),
        "{error}"
    );

    // A certificate for other principals: refused.
    let world = World::new();
    let dir = world.path("sshd");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = keygen(&dir.join("host_ca"), "ed25519", "");
    let ca = ca.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    std::fs::write(dir.join("host_ca.principals"), "db.example").unwrap();
    let sshd = world.sshd("sshd", "");
    append(
        &world.known_hosts(),
        &format!("@cert-authority [127.0.0.1]:{} {ca}", sshd.port),
    );
    let error = Pool::new(world.settings(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("a certificate for another host");
    assert!(
        error
            .to_string()
            .contains("is for db.example, not 127.0.0.1"),
        "{error}"
    );
}
