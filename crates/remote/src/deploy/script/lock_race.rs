//! Two deployers racing for a stale lock, with the real lock script run by `sh` on a
//! temp directory (the script is what runs on a host): exactly one takes it, every
//! time. Before the lock's guard, both could see the lock stale, and the second
//! one's `rm` removed the first one's fresh lock.

use std::process::{Command, Stdio};

use super::{LOCKED_STATUS, LOST_STATUS, LockInfo, RemotePath, lock, still_locked};

const ROUNDS: usize = 50;

fn script(path: &RemotePath, token: &str) -> String {
    fenced(path, token, 0)
}

fn fenced(path: &RemotePath, token: &str, fence: u64) -> String {
    let info = LockInfo {
        token,
        fence,
        owner: token,
        pid: 1,
        since: "2026-01-01T00:00:00Z",
        reason: "race",
        release: "r1",
    };
    lock(path, &info, 60)
}

#[test]
fn two_deployers_racing_for_a_stale_lock_never_both_hold_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("app");
    let path = RemotePath::new(root.to_str().unwrap()).unwrap();
    let lock_file = root.join(".fleet/lock");
    for round in 0..ROUNDS {
        // A stale lock: written two hours ago by a deployer long gone.
        std::fs::create_dir_all(root.join(".fleet")).unwrap();
        std::fs::write(&lock_file, "token=gone\nowner=gone\nrelease=r0\n").unwrap();
        let stale = Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(&lock_file)
            .status()
            .unwrap();
        assert!(stale.success());
        let racers: Vec<_> = ["a", "b"]
            .iter()
            .map(|token| {
                let child = Command::new("sh")
                    .arg("-c")
                    .arg(script(&path, &format!("{token}{round}")))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                (token, child)
            })
            .collect();
        let mut won = Vec::new();
        for (token, mut child) in racers {
            let status = child.wait().unwrap();
            match status.code() {
                Some(0) => won.push(format!("{token}{round}")),
                Some(code) if code == LOCKED_STATUS as i32 => {}
                other => panic!("round {round}: {token} ended with {other:?}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: {won:?} both took the lock");
        let holder = std::fs::read_to_string(&lock_file).unwrap();
        assert!(
            holder.contains(&format!("token={}\n", won[0])),
            "round {round}: the lock is {holder:?}, the winner {}",
            won[0]
        );
        // The winner's watchdog exits once its lock is gone.
        std::fs::remove_file(&lock_file).unwrap();
    }
}

#[test]
fn a_step_changes_nothing_once_the_lock_is_someone_elses() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("app");
    let path = RemotePath::new(root.to_str().unwrap()).unwrap();
    std::fs::create_dir_all(root.join(".fleet")).unwrap();
    std::fs::write(root.join(".fleet/lock"), "token=theirs\nowner=b\n").unwrap();
    let marker = root.join("changed");
    let step = format!(
        "{}touch '{}'\n",
        still_locked(&path, "mine"),
        marker.display()
    );
    let status = Command::new("sh").arg("-c").arg(&step).status().unwrap();
    assert_eq!(status.code(), Some(LOST_STATUS as i32));
    assert!(!marker.exists(), "the step ran without the lock");
    std::fs::write(root.join(".fleet/lock"), "token=mine\nowner=a\n").unwrap();
    let status = Command::new("sh").arg("-c").arg(&step).status().unwrap();
    assert!(status.success() && marker.exists());
}

/// A controller's deploy takes over a fresh lock held under a lower fencing number (its
/// deployer lost the stage's lease), never a lock taken without one (a CLI's deploy over
/// SSH), and a host that saw a higher number refuses a lower one.
#[test]
fn a_higher_fence_takes_over_a_lower_one_and_a_lower_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("app");
    let path = RemotePath::new(root.to_str().unwrap()).unwrap();
    let run = |script: String| {
        let output = Command::new("sh").arg("-c").arg(script).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let holds = |token: &str| {
        std::fs::read_to_string(root.join(".fleet/lock"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == format!("token={token}"))
    };
    assert_eq!(run(fenced(&path, "cli", 0)).0, Some(0));
    let (code, _) = run(fenced(&path, "ctl3", 3));
    assert_eq!(
        code,
        Some(LOCKED_STATUS as i32),
        "a CLI's lock is never taken over"
    );
    assert!(holds("cli"));
    std::fs::remove_file(root.join(".fleet/lock")).unwrap();
    assert_eq!(run(fenced(&path, "ctl3", 3)).0, Some(0));
    let (code, out) = run(fenced(&path, "ctl5", 5));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("fleet:stale_lock="), "{out}");
    assert!(holds("ctl5"));
    let (code, out) = run(fenced(&path, "ctl4", 4));
    assert_eq!(code, Some(LOCKED_STATUS as i32));
    assert!(out.contains("fleet:fenced=5"), "{out}");
    assert!(holds("ctl5"));
    assert_eq!(run(still_locked(&path, "ctl3")).0, Some(LOST_STATUS as i32));
}
