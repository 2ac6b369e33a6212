//! The transport against a real sshd: the agent reached over direct-streamlocal,
//! remote commands with their output, status and timeout, ProxyJump, and many
//! parallel calls sharing one connection.

use std::time::Duration;

use super::*;
use crate::ssh::{Pool, SshError, SshSettings};

#[tokio::test]
async fn agent_channel_reaches_the_agent_over_direct_streamlocal() {
    let world = World::new();
    let home = world.path("fleet-home");
    let agent = Agent::start(&home);
    // sshd gives sessions FLEET_HOME, so the pool can ask for it.
    let sshd = world.sshd("sshd", &format!("SetEnv FLEET_HOME={}", home.display()));
    world.trust(&sshd);
    let pool = Pool::new(world.settings(), crate::ssh::DEFAULT_MAX_HANDSHAKES);

    let explicit = pool
        .agent_channel(&sshd.host(), Some(home.to_str().unwrap()))
        .await
        .expect("agent channel with fleet_home");
    let answer = hello(explicit).await;
    assert_eq!(answer.agent_version, env!("CARGO_PKG_VERSION"));

    // Without fleet_home the host is asked for ${FLEET_HOME:-$HOME/.fleet}.
    let asked = pool
        .agent_channel(&sshd.host(), None)
        .await
        .expect("agent channel with the host's FLEET_HOME");
    hello(asked.clone()).await;

    // The agent dies and starts again: the same tonic channel reconnects over a new
    // SSH channel.
    agent.kill();
    let agent = Agent::start(&home);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Err(status) = try_hello(asked.clone()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Hello after the agent restarted: {status}"
        );
        tokio::time::sleep(POLL).await;
    }

    // No agent there: the error names the socket and says what to do.
    let error = pool
        .agent_channel(&sshd.host(), Some(world.path("nowhere").to_str().unwrap()))
        .await
        .expect_err("no agent in that home");
    let message = error.to_string();
    assert!(matches!(error, SshError::Channel { .. }), "{message}");
    assert!(message.contains("nowhere/agent.sock"), "{message}");
    assert!(
        message.contains("hint: is fleet-agent running there?"),
        "{message}"
    );
    assert!(pool.take_warnings().is_empty());
    // The agent waits for its clients before it exits on SIGTERM: end the SSH
    // connection (and with it the forwarded socket) first.
    pool.close().await;
    drop(agent);
}

/// Whether a process with exactly this argv is alive on this machine.
fn process_running(argv: &[&str]) -> bool {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .any(|cmdline| cmdline == wanted)
}

#[tokio::test]
async fn exec_returns_output_and_status_and_a_timeout_kills_the_command() {
    let world = World::new();
    let sshd = world.sshd("sshd", "");
    world.trust(&sshd);
    let pool = Pool::new(world.settings(), 4);

    let output = pool
        .exec(
            &sshd.host(),
            r#"printf '%s\n' "it's quoted"; echo oops >&2; exit 7"#,
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "it's quoted\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "oops\n");
    assert_eq!(output.exit_status, Some(7));
    assert!(!output.success());

    // A command that outlives its timeout: the caller hears Timeout, and the remote
    // `timeout` wrapper kills it (closing the channel alone would orphan it).
    let sleeper = ["sleep", "100.4242"];
    let started = Instant::now();
    let host = sshd.host();
    let exec = pool.exec(&host, "sleep 100.4242", Duration::from_secs(2));
    let watch = async {
        wait_for("the remote sleep to start", || process_running(&sleeper)).await;
        std::future::pending::<()>().await
    };
    let error = tokio::select! {
        result = exec => result.expect_err("timed out"),
        () = watch => unreachable!(),
    };
    assert!(
        matches!(
            error,
            SshError::Timeout {
                step: "command",
                ..
            }
        ),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    wait_for("the remote sleep to be killed", || {
        !process_running(&sleeper)
    })
    .await;

    // The connection is still good after a timeout.
    let output = pool
        .exec(&sshd.host(), "echo still here", Duration::from_secs(10))
        .await
        .expect("exec after a timeout");
    assert_eq!(output.stdout, b"still here\n");
}

#[tokio::test]
async fn proxy_jump_goes_through_a_second_sshd() {
    let world = World::new();
    let target = world.sshd("target", "");
    let bastion = world.sshd("bastion", "");
    world.trust(&target);
    world.trust(&bastion);
    let user = crate::ssh::options::local_user();
    let jumping = Pool::new(
        SshSettings {
            proxy_jump: Some(format!("{user}@127.0.0.1:{}", bastion.port)),
            ..world.settings()
        },
        4,
    );
    let output = jumping
        .exec(&target.host(), "echo through", Duration::from_secs(10))
        .await
        .expect("exec through the jump host");
    assert_eq!(output.stdout, b"through\n");
    let forwarded = format!("target 127.0.0.1 port {}", target.port);
    assert!(
        bastion.log().contains(&forwarded),
        "the bastion did not forward to the target:\n{}",
        bastion.log()
    );

    // The same route from ~/.ssh/config: an alias, HostName, Port and ProxyJump.
    std::fs::write(
        world.path("ssh_config"),
        format!(
            "Host web1\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump jumpbox\n\n\
             Host jumpbox\n  HostName 127.0.0.1\n  Port {}\n",
            target.port, bastion.port
        ),
    )
    .unwrap();
    let pool = Pool::new(world.settings(), 4);
    let output = pool
        .exec("web1", "echo alias", Duration::from_secs(10))
        .await
        .expect("exec through the configured jump host");
    assert_eq!(output.stdout, b"alias\n");
    assert!(pool.take_warnings().is_empty());

    // A jump host that cannot reach the target says so.
    let closed = free_port();
    let error = jumping
        .exec(
            &format!("127.0.0.1:{closed}"),
            "true",
            Duration::from_secs(10),
        )
        .await
        .expect_err("nothing listens there");
    let message = error.to_string();
    assert!(matches!(error, SshError::Connect { .. }), "{message}");
    assert!(message.contains("cannot reach"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_parallel_calls_share_one_connection_within_max_sessions() {
    let world = World::new();
    let home = world.path("fleet-home");
    let _agent = Agent::start(&home);
    // More listening addresses make distinct hosts for the handshake cap below.
    let sshd = world.sshd(
        "sshd",
        "ListenAddress 127.0.0.1\nListenAddress 127.0.0.2\nListenAddress 127.0.0.3\n\
         ListenAddress 127.0.0.4\nListenAddress 127.0.0.5\nListenAddress 127.0.0.6",
    );
    world.trust(&sshd);
    let pool = std::sync::Arc::new(Pool::new(
        world.settings(),
        crate::ssh::DEFAULT_MAX_HANDSHAKES,
    ));
    let home_text = home.to_str().unwrap().to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let exec_pool = pool.clone();
        let host = sshd.host();
        tasks.spawn(async move {
            let output = exec_pool
                .exec(
                    &host,
                    &format!("sleep 0.2; echo {i}"),
                    Duration::from_secs(20),
                )
                .await?;
            assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{i}\n"));
            Ok::<_, SshError>(())
        });
        let agent_pool = pool.clone();
        let host = sshd.host();
        let home = home_text.clone();
        tasks.spawn(async move {
            let channel = agent_pool.agent_channel(&host, Some(&home)).await?;
            hello(channel).await;
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task").expect("every call succeeds");
    }
    assert_eq!(pool.peak_handshakes(), 1, "one connection for one host");
    pool.close().await;

    // Six distinct hosts, at most two handshakes at a time.
    let pool = std::sync::Arc::new(Pool::new(
        SshSettings {
            accept_new_host_keys: true,
            known_hosts: Some(world.path("known_hosts_6")),
            ..world.settings()
        },
        2,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 1..=6 {
        let pool = pool.clone();
        let host = format!("127.0.0.{n}:{}", sshd.port);
        tasks.spawn(async move { pool.exec(&host, "true", Duration::from_secs(20)).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task").expect("every host answers");
    }
    assert!(pool.peak_handshakes() <= 2, "{}", pool.peak_handshakes());
    assert!(pool.peak_handshakes() >= 1);
}
