//! What survives: save/resurrect with the `.bak` fallback (PM2 case 33), and an agent
//! killed with SIGKILL bringing its apps back on the next command without running
//! two copies, which PM2's fresh empty daemon does not do (#1611); first commands racing
//! start exactly one agent.

use std::time::Duration;

use crate::harness::*;

const SETTLE: Duration = Duration::from_secs(15);

#[test]
fn save_and_resurrect_with_corrupt_dump_fallback() {
    let fleet = Fleet::new();
    let err = fleet.fails(&["save"], 1);
    assert!(
        err.contains("--force"),
        "an empty save is refused with a hint: {err}"
    );

    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh", "--name", "one"]);
    fleet.ok(&["start", "app.sh", "--name", "two", "-i", "2"]);
    fleet.ok(&["save"]);
    let dump = fleet.home.path().join("dump.json");
    let backup = fleet.home.path().join("dump.json.bak");
    assert!(dump.is_file());
    assert!(!backup.exists());
    fleet.ok(&["save"]);
    assert!(backup.is_file(), "the second save keeps the previous dump");

    fleet.ok(&["kill"]);
    fleet.ok(&["resurrect"]);
    let list = fleet.wait_list("three instances online", SETTLE, |l| {
        l.len() == 3 && all_status(l, "online")
    });
    assert_eq!(by_name(&list, "two").len(), 2);

    // Resurrect only adds apps that are not there already.
    fleet.ok(&["resurrect"]);
    assert_eq!(fleet.list().len(), 3);

    // A corrupt dump falls back to the backup.
    fleet.ok(&["kill"]);
    std::fs::write(&dump, "{ this is not json").unwrap();
    let output = fleet.run(&["resurrect"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("dump.json.bak"),
        "says it used the backup: {stderr}"
    );
    fleet.wait_list("three instances online again", SETTLE, |l| {
        l.len() == 3 && all_status(l, "online")
    });
}

#[test]
fn sigkilled_agent_brings_the_same_apps_back_on_the_next_command() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh", "--name", "web", "-i", "2"]);
    fleet.ok(&["start", "app.sh", "--name", "worker"]);
    fleet.ok(&["start", "app.sh", "--name", "idle"]);
    fleet.ok(&["stop", "idle"]);
    let before = fleet.list();
    let old_pids: Vec<i32> = before
        .iter()
        .filter_map(|p| p["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    assert_eq!(old_pids.len(), 3);
    let agent = fleet.agent_pid().unwrap();
    // Let the agent flush its state file (it batches writes over 50 ms).
    std::thread::sleep(Duration::from_millis(200));

    kill(agent, nix::sys::signal::Signal::SIGKILL);
    wait_until("the agent to die", SETTLE, || dead(agent));

    let after = fleet.wait_list("the same apps back", SETTLE, |l| {
        l.len() == 4
            && status_of(l, "web") == ["online", "online"]
            && status_of(l, "worker") == ["online"]
    });
    assert_ne!(fleet.agent_pid(), Some(agent), "a new agent");
    assert_eq!(
        status_of(&after, "idle"),
        ["stopped"],
        "a stopped app stays stopped"
    );
    let ids = |l: &[serde_json::Value]| {
        l.iter()
            .map(|p| (p["id"].clone(), p["name"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&before), ids(&after), "same ids and names");
    // The previous agent's processes were stopped, not duplicated.
    wait_until("the old instances to be gone", SETTLE, || {
        old_pids.iter().all(|&p| dead(p))
    });
    for p in after.iter().filter_map(|p| p["pid"].as_i64()) {
        assert!(!old_pids.contains(&(p as i32)));
    }
}

#[test]
fn the_agent_socket_and_state_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let fleet = Fleet::new();
    fleet.ok(&["ping"]);
    let mode = |name: &str| {
        std::fs::metadata(fleet.home.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("agent.sock"), 0o600);
    assert_eq!(mode("agent.pid"), 0o600);
    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh"]);
    wait_until("the state file", SETTLE, || {
        fleet.home.path().join("state.json").exists()
    });
    assert_eq!(mode("state.json"), 0o600);
    fleet.ok(&["save"]);
    assert_eq!(mode("dump.json"), 0o600);
}

#[test]
fn kill_stops_every_app_and_the_agent() {
    let fleet = Fleet::new();
    fleet.script("app.sh", SLEEPER);
    fleet.ok(&["start", "app.sh", "-i", "3"]);
    let pids: Vec<i32> = fleet
        .list()
        .iter()
        .filter_map(|p| p["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    let agent = fleet.agent_pid().unwrap();
    let out = fleet.ok(&["kill"]);
    assert!(out.contains("stopped 3"), "{out}");
    wait_until("agent and apps gone", SETTLE, || {
        dead(agent) && pids.iter().all(|&p| dead(p))
    });
    assert!(!fleet.home.path().join("agent.sock").exists());
    // The next command starts a fresh, empty agent.
    assert!(fleet.list().is_empty());
}

#[test]
fn first_commands_racing_start_exactly_one_agent() {
    let fleet = Fleet::new();
    let children: Vec<_> = (0..8)
        .map(|_| {
            fleet
                .command(&["list", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn fleet")
        })
        .collect();
    for child in children {
        let output = wait_output(child, Duration::from_secs(30));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // No second agent serves, and none lingers waiting for the home's lock.
    let agents = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(format!(
            "fleet-agent --daemon --home {}",
            fleet.home.path().display()
        ))
        .output()
        .expect("pgrep");
    let pids = String::from_utf8_lossy(&agents.stdout);
    assert_eq!(pids.lines().count(), 1, "agents: {pids}");
    assert_eq!(
        pids.trim().parse::<i32>().ok(),
        fleet.agent_pid(),
        "the one running holds the home"
    );
    fleet.ok(&["kill"]);
}
