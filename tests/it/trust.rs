//! The CLI and a controller's CA: with no `FLEET_CA` and nothing pinned it refuses to
//! connect (never the public web PKI); `fleet controller trust` pins the CA only when
//! the fingerprint given matches the one presented; then the CLI talks to the
//! controller without `FLEET_CA`. A real `fleet-controller` on loopback.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::testbed::agent_binary;

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_cli_verifies_a_controller_only_against_a_confirmed_ca() {
    let bin = agent_binary().with_file_name("fleet-controller");
    let data = tempfile::tempdir().unwrap();
    let config_home = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let offline = |args: &[&str]| {
        let child = Command::new(&bin)
            .args(args)
            .arg("--data")
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = wait_output(child, Duration::from_secs(30));
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let token = offline(&["token", "create", "--name", "cli", "--role", "read"]);
    let _controller = Running(
        Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The port is bound before the CA is made: wait for both, or a loaded machine runs
    // openssl on a `ca.pem` not yet written.
    wait_until("the controller to listen", Duration::from_secs(20), || {
        data.path().join("server.pem").exists() && TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("https://127.0.0.1:{port}");
    let fleet = Fleet::new();
    fleet.file(
        "fleet.toml",
        "[deploy.prod]\nhost = [\"web-1\"]\nuser = \"deploy\"\nrepo = \".\"\nref = \"main\"\npath = \"/srv/app\"\n",
    );
    let run = |args: &[&str]| {
        let mut command = fleet.command(args);
        command
            .env_remove("FLEET_CA")
            .env("XDG_CONFIG_HOME", config_home.path())
            .env("FLEET_CONTROLLER", &url)
            .env("FLEET_TOKEN", &token);
        fleet.run_with(command)
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    // Nothing to verify the controller with: refused, with what to do.
    let refused = run(&["status", "prod", "--json"]);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        text(&refused.stderr).contains("fleet controller trust"),
        "{}",
        text(&refused.stderr)
    );

    // The fingerprint as openssl shows it on the controller's machine.
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(data.path().join("ca.pem"))
        .output()
        .unwrap();
    assert!(openssl.status.success(), "openssl: {openssl:?}");
    let expected = text(&openssl.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(expected.len(), 95, "{expected}");

    let wrong = run(&[
        "controller",
        "trust",
        "--fingerprint",
        &"00:".repeat(31).to_string(),
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong.stderr).contains(&expected), "shows what it saw");
    assert!(text(&wrong.stderr).contains("nothing was pinned"));
    let unconfirmed = run(&["controller", "trust"]);
    assert_eq!(
        unconfirmed.status.code(),
        Some(2),
        "no terminal, no fingerprint"
    );

    let pinned = run(&[
        "controller",
        "trust",
        "--fingerprint",
        &expected.to_lowercase(),
    ]);
    assert_eq!(pinned.status.code(), Some(0), "{}", text(&pinned.stderr));
    let file = config_home
        .path()
        .join(format!("fleet/controllers/127.0.0.1_{port}.pem"));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Verified against the pinned CA: the call reaches the controller, which
    // reports the never-joined host.
    let status = run(&["status", "prod", "--json"]);
    let stdout = text(&status.stdout);
    assert!(
        stdout.contains("web-1") && stdout.contains("never connected"),
        "{stdout}\n{}",
        text(&status.stderr)
    );
}
