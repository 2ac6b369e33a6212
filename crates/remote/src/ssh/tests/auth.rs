//! Authentication: ssh-agent identities first, RSA keys signing with SHA-2, and a
//! failure that lists what was tried without any secret.

use std::process::Command;
use std::time::Duration;

use super::*;
use crate::ssh::{Pool, SshError, SshSettings};

/// A real ssh-agent on a socket in `dir`, killed on drop.
struct SshAgent {
    child: Child,
    socket: PathBuf,
}

impl SshAgent {
    fn start(dir: &Path) -> SshAgent {
        let socket = dir.join("ssh-agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        wait_until("ssh-agent's socket", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        SshAgent { child, socket }
    }

    fn add(&self, key: &Path) {
        run(Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket));
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set by `agent_identities_are_tried_first` for its child process.
const CHILD_HOST: &str = "FLEET_SSH_TEST_HOST";
const CHILD_DIR: &str = "FLEET_SSH_TEST_DIR";

#[tokio::test]
async fn agent_identities_are_tried_first() {
    let world = World::new();
    // An RSA key, held by ssh-agent; the stage names an encrypted copy of it.
    let rsa = world.path("id_rsa");
    let rsa_public = keygen(&rsa, "rsa", "");
    let sshd = Sshd::start(&world.path("sshd"), &rsa_public, "");
    world.trust(&sshd);
    let agent = SshAgent::start(world.dir.path());
    agent.add(&rsa);
    std::fs::copy(&rsa, world.path("id_rsa_locked")).unwrap();
    run(Command::new("ssh-keygen")
        .args(["-q", "-p", "-N", "a passphrase", "-P", "", "-f"])
        .arg(world.path("id_rsa_locked")));

    // The pool reads SSH_AUTH_SOCK, which a test cannot set for itself without
    // `unsafe`; a child process of this test binary runs the pool instead.
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ssh::tests::auth::agent_identities_child",
            "--ignored",
            "--nocapture",
        ])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .env(CHILD_HOST, sshd.host())
        .env(CHILD_DIR, world.dir.path())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && printed.contains("1 passed"),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // rsa-sha2 through the agent: OpenSSH 8.8+ refuses SHA-1 signatures.
    assert!(
        sshd.log().contains("Accepted publickey for"),
        "{}",
        sshd.log()
    );
}

#[tokio::test]
#[ignore = "run by agent_identities_are_tried_first with SSH_AUTH_SOCK set"]
async fn agent_identities_child() {
    let Ok(host) = std::env::var(CHILD_HOST) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    let pool = Pool::new(
        SshSettings {
            key: Some(dir.join("id_rsa_locked")),
            known_hosts: Some(dir.join("known_hosts")),
            ssh_config: Some(dir.join("ssh_config")),
            ..SshSettings::default()
        },
        4,
    );
    let output = pool
        .exec(&host, "echo agent", Duration::from_secs(10))
        .await
        .expect("the agent's key opens the door");
    assert_eq!(output.stdout, b"agent\n");
}

#[tokio::test]
async fn rsa_key_files_sign_with_sha2() {
    let world = World::new();
    let rsa = world.path("id_rsa");
    let rsa_public = keygen(&rsa, "rsa", "");
    let sshd = Sshd::start(&world.path("sshd"), &rsa_public, "");
    world.trust(&sshd);
    let pool = Pool::new(
        SshSettings {
            key: Some(rsa),
            ..world.settings()
        },
        4,
    );
    let output = pool
        .exec(&sshd.host(), "echo rsa", Duration::from_secs(10))
        .await
        .expect("rsa key accepted");
    assert_eq!(output.stdout, b"rsa\n");
}

#[tokio::test]
async fn authentication_failure_lists_what_was_tried_without_secrets() {
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    world.trust(&sshd);
    let stranger = world.path("stranger");
    keygen(&stranger, "ed25519", "");
    let locked = world.path("locked");
    keygen(&locked, "ed25519", "a passphrase");
    let pool = Pool::new(
        SshSettings {
            key: Some(stranger.clone()),
            ssh_options: vec![
                format!("IdentityFile {}", locked.display()),
                "ForwardAgent yes".to_string(),
            ],
            ..world.settings()
        },
        4,
    );
    let warnings = pool.take_warnings();
    assert_eq!(
        warnings,
        vec!["ignored ssh option `ForwardAgent`: fleet's ssh client does not support it"]
    );
    let error = pool
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("no authorized key");
    let message = error.to_string();
    assert!(matches!(error, SshError::Auth { .. }), "{message}");
    assert!(message.contains(stranger.to_str().unwrap()), "{message}");
    assert!(message.contains("locked (encrypted, skipped"), "{message}");
    let secret = std::fs::read_to_string(&stranger).unwrap();
    let body = secret.lines().nth(1).unwrap();
    assert!(!message.contains(body), "key material in the message");
}

#[tokio::test]
async fn a_key_file_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    world.trust(&sshd);
    let settings = world.settings();
    let key = settings.key.clone().expect("the world's authorized key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Pool::new(settings.clone(), 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect_err("a readable key is not used");
    let message = error.to_string();
    assert!(matches!(error, SshError::Auth { .. }), "{message}");
    assert!(
        message.contains("permissions 0644 are too open") && message.contains("chmod 600"),
        "{message}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Pool::new(settings, 4)
        .exec(&sshd.host(), "true", Duration::from_secs(10))
        .await
        .expect("the same key, private again");
}
