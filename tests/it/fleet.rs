//! Fleet commands across test-bed hosts (network namespaces with their own sshd and
//! agent): `fleet status|logs|reload <stage>`, over SSH and through a controller.
//! Host losses, partitions and a controller restart are real: a killed agent, a veth
//! taken down, a controller process stopped and started again.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::controller::Controller;
use crate::harness::*;
use crate::testbed::{HOST_FLEET_HOME, TestBed, agent_binary};

const SETTLE: Duration = Duration::from_secs(20);
const APP_PORT: u16 = 8080;

/// A bed with an app on every host and a work dir whose fleet.toml names the hosts as
/// stage `bed`.
struct Fleetbed {
    bed: TestBed,
    fleet: Fleet,
}

impl Fleetbed {
    fn up(hosts: usize) -> Option<Fleetbed> {
        if !TestBed::available_or_skip("fleet") {
            return None;
        }
        let bed = TestBed::up(hosts, Some(&agent_binary()));
        let fleet = Fleet::new();
        let addresses: Vec<String> = bed
            .hosts
            .iter()
            .map(|h| format!("\"{}\"", h.address))
            .collect();
        // `proxied`: the first host by a name nothing resolves, reachable only through
        // a ProxyCommand (bash's /dev/tcp), its key known by its address (HostKeyAlias).
        let first = &bed.hosts[0].address;
        let proxy = format!("bash -c 'exec 3<>/dev/tcp/{first}/22; cat <&3 & exec cat >&3'");
        fleet.file(
            "fleet.toml",
            &format!(
                "[deploy.bed]\nhost = [{}]\nuser = \"root\"\nkey = \"{}\"\nssh_options = [\"UserKnownHostsFile={}\", \"ConnectTimeout=3\"]\nfleet_home = \"{HOST_FLEET_HOME}\"\nrepo = \".\"\nref = \"main\"\npath = \"/srv/app\"\n\n\
                 [deploy.proxied]\nhost = [\"proxied-h1.invalid\"]\nuser = \"root\"\nkey = \"{}\"\nssh_options = [\"UserKnownHostsFile={}\", \"ConnectTimeout=3\", \"ProxyCommand={proxy}\", \"HostKeyAlias={first}\"]\nfleet_home = \"{HOST_FLEET_HOME}\"\nrepo = \".\"\nref = \"main\"\npath = \"/srv/app\"\n",
                addresses.join(", "),
                bed.client_key().display(),
                bed.known_hosts().display(),
                bed.client_key().display(),
                bed.known_hosts().display(),
            ),
        );
        // The app on each host: the test server sharing port 8080 in cluster mode.
        let app = fleet.file(
            "app.toml",
            &format!(
                "[apps.web]\nscript = \"{}\"\nexec_mode = \"cluster\"\nport = {APP_PORT}\ninstances = 2\nkill_timeout = 3000\n\n[apps.ticker]\nscript = \"{}\"\n",
                fleet.testapp().display(),
                fleet
                    .script("ticker.sh", "#!/bin/sh\nwhile true; do echo tick; sleep 0.2; done\n")
                    .display()
            ),
        );
        let cli = fleet.command(&[]).get_program().to_owned();
        for host in &bed.hosts {
            let out = bed.exec(
                &host.name,
                &[cli.to_str().unwrap(), "start", app.to_str().unwrap()],
            );
            assert!(
                out.status.success(),
                "start on {}: {}",
                host.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(Fleetbed { bed, fleet })
    }

    fn status(&self, extra_env: &[(&str, String)]) -> (Option<i32>, Vec<Value>, String) {
        let mut command = self.fleet.command(&["status", "bed", "--json"]);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let output = self.fleet.run_with(command);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let json: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (
            output.status.code(),
            json,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn agent_pid(&self, host: &str) -> i32 {
        let out = self
            .bed
            .exec(host, &["cat", &format!("{HOST_FLEET_HOME}/agent.pid")]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("agent.pid")
    }

    fn host(&self, i: usize) -> (&str, &str) {
        let h = &self.bed.hosts[i];
        (h.name.as_str(), h.address.as_str())
    }
}

fn reachable(status: &[Value], address: &str) -> Option<bool> {
    status
        .iter()
        .find(|v| v["host"] == address)
        .map(|v| v.get("reachable") != Some(&Value::Bool(false)))
}

/// Every instance of every reachable host carries its host's metrics: memory, CPUs,
/// and the filesystem holding the host's FLEET_HOME.
fn host_metrics_everywhere(status: &[Value]) -> bool {
    let instances: Vec<&Value> = status.iter().filter(|v| v["name"] == "web").collect();
    !instances.is_empty()
        && instances.iter().all(|v| {
            let m = &v["host_metrics"];
            m["memory_total_bytes"].as_u64() > Some(0)
                && m["cpus"].as_u64() >= Some(1)
                && m["disks"].as_array().is_some_and(|disks| {
                    disks.iter().any(|d| {
                        d["total_bytes"].as_u64() > Some(0)
                            && d["paths"]
                                .as_array()
                                .is_some_and(|p| p.iter().any(|p| p == HOST_FLEET_HOME))
                    })
                })
        })
}

fn instances_on(status: &[Value], address: &str) -> usize {
    status
        .iter()
        .filter(|v| v["host"] == address && v["name"] == "web")
        .count()
}

#[test]
fn status_over_ssh_across_five_hosts_with_a_lost_agent_and_a_partition() {
    let Some(fb) = Fleetbed::up(5) else { return };
    let (code, status, stderr) = fb.status(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    for host in &fb.bed.hosts {
        assert_eq!(instances_on(&status, &host.address), 2, "{status:#?}");
    }
    assert!(status.iter().all(|v| v["status"] == "online"));
    assert!(host_metrics_everywhere(&status), "{status:#?}");
    let output = fb.fleet.run(&["status", "bed"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("| load"), "a row of metrics per host: {text}");

    // A lost agent: the host answers SSH but nothing listens on the socket.
    let (h2, a2) = fb.host(1);
    kill(fb.agent_pid(h2), nix::sys::signal::Signal::SIGKILL);
    let (code, status, _) = fb.status(&[]);
    assert_eq!(code, Some(1));
    assert_eq!(reachable(&status, a2), Some(false));
    let entry = status.iter().find(|v| v["host"] == a2).unwrap();
    assert!(!entry["error"].as_str().unwrap().is_empty());
    assert_eq!(
        status.iter().filter(|v| v["name"] == "web").count(),
        8,
        "the others report"
    );

    // A partition: no answer at all; healed, the host is back with the same agent.
    let (h3, a3) = fb.host(2);
    let pid = fb.agent_pid(h3);
    fb.bed.partition(h3);
    let (code, status, _) = fb.status(&[]);
    assert_eq!(code, Some(1));
    assert_eq!(reachable(&status, a3), Some(false));
    fb.bed.heal(h3);
    let (_, status, _) = fb.status(&[]);
    assert_eq!(instances_on(&status, a3), 2);
    assert_eq!(fb.agent_pid(h3), pid, "not restarted");

    // Table output names unreachable hosts.
    let output = fb.fleet.run(&["status", "bed"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&format!("{a2}: unreachable")), "{text}");

    // A host reachable only through its ProxyCommand.
    let output = fb.fleet.run(&["status", "proxied", "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        instances_on(&status, "proxied-h1.invalid"),
        2,
        "{status:#?}"
    );
}

#[test]
fn logs_follow_three_hosts_and_reload_rolls_over_ssh() {
    let Some(fb) = Fleetbed::up(3) else { return };
    let mut follow = fb
        .fleet
        .command(&["logs", "bed", "ticker", "-f", "--lines", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = collect_lines(&mut follow);
    assert_lines_from_every_host(&fb, &lines);
    let _ = follow.kill();
    let _ = follow.wait();

    let output = fb.fleet.run(&["reload", "bed", "web"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, status, _) = fb.status(&[]);
    let web: Vec<&Value> = status.iter().filter(|v| v["name"] == "web").collect();
    assert_eq!(web.len(), 6);
    assert!(
        web.iter()
            .all(|v| v["restarts"] == 1 && v["status"] == "online"),
        "{status:#?}"
    );
}

/// Every host's lines arrive, prefixed with the host, each within a second of the
/// moment its agent captured it.
fn assert_lines_from_every_host(fb: &Fleetbed, lines: &Lines) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let seen = lines.lock().unwrap().clone();
        let mut hosts = std::collections::BTreeSet::new();
        for (received_ms, line) in &seen {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            assert_eq!(v["app"], "ticker");
            assert_eq!(v["line"], "tick");
            let captured = v["ts"].as_u64().unwrap();
            assert!(
                received_ms.saturating_sub(captured) < 1000,
                "a line took {} ms to show",
                received_ms - captured
            );
            hosts.insert(v["host"].as_str().unwrap_or("").to_string());
        }
        if fb.bed.hosts.iter().all(|h| hosts.contains(&h.address)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lines from every host, got {seen:?}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<(u64, String)>>>;

/// Reads a child's stdout lines on a thread, with the time each arrived.
fn collect_lines(child: &mut Child) -> Lines {
    let lines: Lines = std::sync::Arc::default();
    let stdout = child.stdout.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            sink.lock().unwrap().push((now, line));
        }
    });
    lines
}

/// Joins every host's agent and restarts it so it connects.
fn join(controller: &Controller, fb: &Fleetbed) {
    for host in &fb.bed.hosts {
        let out = agent_join(controller, fb, &host.name, &host.address, &[]);
        assert!(
            out.status.success(),
            "join on {}: {}",
            host.name,
            String::from_utf8_lossy(&out.stderr)
        );
        restart_agent(fb, &host.name);
    }
}

/// `fleet-agent join` on `host` with a new join token.
fn agent_join(
    controller: &Controller,
    fb: &Fleetbed,
    host: &str,
    address: &str,
    more: &[&str],
) -> std::process::Output {
    let join = controller.join_token(address);
    let agent = agent_binary();
    let mut args = vec![
        agent.to_str().unwrap(),
        "--home",
        HOST_FLEET_HOME,
        "join",
        &controller.url,
        "--host",
        address,
    ];
    let ca = controller.ca();
    args.extend(["--ca", ca.to_str().unwrap()]);
    args.extend(more);
    fb.bed
        .exec_with_env(host, &args, &[("FLEET_JOIN_TOKEN", join.as_str())])
}

/// Stops the host's agent (its apps stay in its state file) and starts it again, so it
/// reads its controller settings.
fn restart_agent(fb: &Fleetbed, host: &str) {
    let pid = fb.agent_pid(host);
    kill(pid, nix::sys::signal::Signal::SIGTERM);
    wait_until("the agent to stop", SETTLE, || dead(pid));
    start_agent(fb, host);
    wait_until("the agent to start", SETTLE, || {
        fb.bed
            .exec(
                host,
                &["test", "-S", &format!("{HOST_FLEET_HOME}/agent.sock")],
            )
            .status
            .success()
    });
}

/// Starts the host's agent the way a user does: any `fleet` command starts it detached.
fn start_agent(fb: &Fleetbed, host: &str) {
    let cli = fb.fleet.command(&[]).get_program().to_owned();
    let out = fb.bed.exec(host, &[cli.to_str().unwrap(), "ping"]);
    assert!(
        out.status.success(),
        "fleet ping on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_status(
    fb: &Fleetbed,
    env: &[(&str, String)],
    what: &str,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    loop {
        let (_, status, stderr) = fb.status(env);
        if done(&status) {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < timeout,
            "timed out waiting for {what}: {status:#?}\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn through_the_controller_status_survives_lost_agents_partitions_and_a_restart() {
    let Some(fb) = Fleetbed::up(5) else { return };
    let mut controller = Controller::start(&fb.bed);
    join(&controller, &fb);
    let env = controller.env();
    let all_up = |status: &[Value]| {
        fb.bed
            .hosts
            .iter()
            .all(|h| instances_on(status, &h.address) == 2)
    };
    wait_status(
        &fb,
        &env,
        "every host through the controller",
        SETTLE,
        all_up,
    );
    // Each agent sends its host's metrics at most every 10 s: the first right away.
    wait_status(&fb, &env, "every host's metrics", SETTLE, |s| {
        all_up(s) && host_metrics_everywhere(s)
    });

    // A lost agent: unreachable within the heartbeat window, the others still report.
    let (h2, a2) = fb.host(1);
    kill(fb.agent_pid(h2), nix::sys::signal::Signal::SIGKILL);
    let (status, took) = wait_status(&fb, &env, "h2 unreachable", SETTLE, |s| {
        reachable(s, a2) == Some(false)
    });
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    assert_eq!(status.iter().filter(|v| v["name"] == "web").count(), 8);
    assert_eq!(
        fb.status(&env).0,
        Some(1),
        "exit 1 while a host is unreachable"
    );

    // A partition: unreachable after missed heartbeats, back after the heal, same agent.
    let (h4, a4) = fb.host(3);
    let pid = fb.agent_pid(h4);
    fb.bed.partition(h4);
    wait_status(&fb, &env, "h4 unreachable", SETTLE, |s| {
        reachable(s, a4) == Some(false)
    });
    fb.bed.heal(h4);
    wait_status(&fb, &env, "h4 back", Duration::from_secs(40), |s| {
        instances_on(s, a4) == 2
    });
    assert_eq!(fb.agent_pid(h4), pid, "the agent was not restarted");

    // Revive h2's agent, then restart the controller: everyone is back within 10 s.
    start_agent(&fb, h2);
    wait_status(&fb, &env, "h2 back", SETTLE, all_up);
    controller.stop();
    controller.spawn();
    let (_, took) = wait_status(
        &fb,
        &env,
        "every host after a controller restart",
        SETTLE,
        all_up,
    );
    assert!(took <= Duration::from_secs(10), "took {took:?}");

    certificates_are_renewed_superseded_and_revoked(&fb, &mut controller, &env, all_up);

    // A bad token is refused with a message.
    let mut bad = env.clone();
    bad[1].1 = "fct_not-a-token".into();
    let mut command = fb.fleet.command(&["status", "bed"]);
    for (k, v) in &bad {
        command.env(k, v);
    }
    let output = fb.fleet.run_with(command);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("token"),
        "{output:?}"
    );
}

/// Real agents: a controller that wants certificates renewed gets them renewed over
/// the sessions (and the renewed ones work after a restart); a rejoin needs
/// `--rejoin`; a removed host is closed out and stays out.
fn certificates_are_renewed_superseded_and_revoked(
    fb: &Fleetbed,
    controller: &mut Controller,
    env: &[(&str, String)],
    all_up: impl Fn(&[Value]) -> bool,
) {
    let (h1, a1) = fb.host(0);
    let pem = format!("{HOST_FLEET_HOME}/controller/agent.pem");
    let read_pem = || String::from_utf8_lossy(&fb.bed.exec(h1, &["cat", &pem]).stdout).into_owned();
    let before = read_pem();
    controller.flags = [
        "--agent-cert-lifetime",
        "1h",
        "--agent-cert-renew-before",
        "100d",
    ]
    .map(String::from)
    .to_vec();
    controller.stop();
    controller.spawn();
    wait_until("h1's certificate renewed", SETTLE, || read_pem() != before);
    restart_agent(fb, h1);
    wait_status(
        fb,
        env,
        "h1 back with its renewed certificate",
        SETTLE,
        &all_up,
    );

    let again = agent_join(controller, fb, h1, a1, &[]);
    assert_eq!(again.status.code(), Some(1));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("has already joined") && said.contains("--rejoin"),
        "{said}"
    );
    let rejoined = agent_join(controller, fb, h1, a1, &["--rejoin"]);
    assert!(
        rejoined.status.success(),
        "{}",
        String::from_utf8_lossy(&rejoined.stderr)
    );
    restart_agent(fb, h1);
    wait_status(fb, env, "h1 back after its rejoin", SETTLE, &all_up);

    let (_, a5) = fb.host(4);
    controller.run(&["host", "remove", a5]);
    wait_status(fb, env, "h5 closed out", SETTLE, |s| {
        reachable(s, a5) == Some(false)
    });
    let listed = controller.run(&["host", "list"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with(a5))
        .unwrap_or_default();
    assert!(
        !row.trim_end().ends_with('-'),
        "h5 shows as removed: {listed}"
    );
    // Its agent keeps trying and keeps being refused.
    let (status, _) = wait_status(fb, env, "h5 still out", SETTLE, |s| {
        reachable(s, a5) == Some(false)
    });
    assert_eq!(reachable(&status, a1), Some(true));
    controller.flags.clear();
}

#[test]
fn through_the_controller_logs_follow_three_hosts_and_reload_keeps_answering() {
    let Some(fb) = Fleetbed::up(3) else { return };
    let controller = Controller::start(&fb.bed);
    join(&controller, &fb);
    let env = controller.env();
    wait_status(&fb, &env, "every host", SETTLE, |s| {
        fb.bed
            .hosts
            .iter()
            .all(|h| instances_on(s, &h.address) == 2)
    });

    let mut command = fb
        .fleet
        .command(&["logs", "bed", "ticker", "-f", "--lines", "0", "--json"]);
    for (k, v) in &env {
        command.env(k, v);
    }
    let mut follow = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = collect_lines(&mut follow);
    assert_lines_from_every_host(&fb, &lines);
    let _ = follow.kill();
    let _ = follow.wait();

    // Clients on every host while the stage reloads, host by host.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = fb
        .bed
        .hosts
        .iter()
        .map(|h| {
            let (address, stop, failures, served) = (
                h.address.clone(),
                stop.clone(),
                failures.clone(),
                served.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match get(&address) {
                        Ok(()) => {
                            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(format!("{address}: {e}")),
                    }
                }
            })
        })
        .collect();
    let mut reload = fb.fleet.command(&["reload", "bed", "web"]);
    for (k, v) in &env {
        reload.env(k, v);
    }
    let output = fb.fleet.run_with(reload);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    assert!(served.load(std::sync::atomic::Ordering::Relaxed) > 30);
}

fn get(address: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(
        &format!("{address}:{APP_PORT}").parse().unwrap(),
        Duration::from_secs(5),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    std::io::Write::write_all(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("bad response {response:?}")))
    }
}

/// `fleet monit <stage>` over SSH under tmux: every host's instances in one table with
/// their host; a partitioned host is marked unreachable, and back after the heal.
#[test]
fn monit_of_a_stage_shows_every_host_and_marks_a_partitioned_one() {
    let Some(fb) = Fleetbed::up(3) else { return };
    let monit = crate::monit::Monit::start_with(&fb.fleet, &["monit", "bed"]);
    // Table rows: `│  <host>  web ...` (`│> ` when selected).
    let rows_of = |screen: &str, address: &str| {
        let cell = format!("{address} ");
        (screen.lines())
            .filter(|line| {
                let row = line.trim_start_matches('│');
                let row = row.strip_prefix("> ").or_else(|| row.strip_prefix("  "));
                row.is_some_and(|row| row.starts_with(&cell) && row.contains(" web "))
            })
            .count()
    };
    let addresses: Vec<String> = fb.bed.hosts.iter().map(|h| h.address.clone()).collect();
    monit.wait_screen("both instances of every host", |screen| {
        screen.contains("fleet monit bed: 9 instances")
            && addresses.iter().all(|a| rows_of(screen, a) == 2)
    });
    let (h2, a2) = fb.host(1);
    fb.bed.partition(h2);
    let screen = monit.wait_screen("h2 marked unreachable", |screen| {
        screen.contains("1 unreachable")
            && screen
                .lines()
                .any(|line| line.contains(a2) && line.contains("unreachable"))
    });
    assert!(screen.contains("fleet monit bed: 6 instances"), "{screen}");
    fb.bed.heal(h2);
    monit.wait_screen("h2 back", |screen| {
        !screen.contains("unreachable") && rows_of(screen, a2) == 2
    });
    monit.quit();
}
