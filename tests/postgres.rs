//! A PostgreSQL server of the test's own, from Debian's `postgresql` package: `initdb` in
//! a temporary directory, a loopback port and a unix socket there, password
//! authentication (SCRAM) for the role `fleet`, stopped (and its files removed) when
//! dropped. As root the server runs as the `postgres` user, as PostgreSQL insists.
//! Absent, tests skip with a note unless `FLEET_REQUIRE_POSTGRES` is set (CI sets it).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The role the tests' controllers log in as.
pub const USER: &str = "fleet";
/// Its password: a test's own server on loopback, never a real secret.
pub const PASSWORD: &str = "fleet-test-password";

/// How long the server may take to start or stop: seconds on these machines.
const DEADLINE: Duration = Duration::from_secs(60);

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// uid and gid the server runs as (root's tests), else the test's own.
    owner: Option<(u32, u32)>,
}

impl Postgres {
    /// Starts a server, or `None` (with a note) when PostgreSQL is not installed.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            if std::env::var_os("FLEET_REQUIRE_POSTGRES").is_some() {
                panic!("PostgreSQL is not installed (Debian: apt-get install postgresql)");
            }
            eprintln!("PostgreSQL is not installed: the test is skipped");
            return None;
        };
        let owner = nix::unistd::geteuid().is_root().then(postgres_user);
        let dir = tempfile::Builder::new()
            .prefix("fleet-pg.")
            .tempdir()
            .expect("a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into())).unwrap();
            nix::unistd::chown(&pwfile, Some(uid.into()), Some(gid.into())).unwrap();
        }
        let server = Postgres {
            port: free_port(),
            dir,
            bin,
            owner,
        };
        let data = server.data_dir();
        let output = server
            .command("initdb")
            .args(["--auth=scram-sha-256", "--username", USER, "--pwfile"])
            .arg(&pwfile)
            .args(["--encoding=UTF8", "--locale=C", "-D"])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(output.status.success(), "initdb: {}", said(&output));
        server.start_again();
        Some(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` over loopback TCP, with the password.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (owned by `fleet`).
    pub fn create_database(&self, name: &str) {
        let output = self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        assert!(
            output.status.success(),
            "create database: {}",
            said(&output)
        );
    }

    /// Runs `sql` in `db` with psql; its output.
    pub fn psql(&self, db: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("psql runs")
    }

    /// Stops the server (fast: open sessions are ended), as a database going away.
    pub fn stop(&self) {
        let output = self
            .command("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .output()
            .expect("pg_ctl runs");
        assert!(output.status.success(), "pg_ctl stop: {}", said(&output));
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let output = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &options])
            .stdout(Stdio::piped())
            .output()
            .expect("pg_ctl runs");
        assert!(
            output.status.success(),
            "pg_ctl start: {}\n{}",
            said(&output),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        let deadline = Instant::now() + DEADLINE;
        while !self.psql("postgres", "SELECT 1").status.success() {
            assert!(
                Instant::now() < deadline,
                "the test PostgreSQL never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's main process (`postmaster.pid`'s first line).
    pub fn postmaster_pid(&self) -> u32 {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.stdin(Stdio::null()).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data_dir())
            .output();
    }
}

/// Debian's newest `/usr/lib/postgresql/<major>/bin` with a `postgres` in it.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The `postgres` user Debian's package creates.
fn postgres_user() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("the postgres user Debian's package creates");
    (user.uid.as_raw(), user.gid.as_raw())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
