//! `fleet deploy <stage>` with a controller in use: `update` and `revert` are prepared
//! here and run by the controller (`fleet_remote::deploy::submit`), their progress drawn
//! as a local deploy's; Ctrl-C detaches (the deploy goes on), a second one within a few
//! seconds asks whether to cancel it. `attach [id]`, `cancel` and `history [--json]`.

use std::io::IsTerminal as _;
use std::time::Duration;

use fleet_remote::deploy::submit::{self, Control, Followed};
use fleet_remote::deploy::{Action, Events, Options, Outcome};
use fleet_remote::stage::Stage;
use tokio::sync::mpsc;

use crate::Failure;
use crate::progress::Progress;

type Result<T> = std::result::Result<T, Failure>;

/// After a first Ctrl-C, how long a second one has to ask for a cancel.
const SECOND_CTRL_C: Duration = Duration::from_secs(3);
/// `history` prints this many deploys.
const HISTORY_LIMIT: u32 = 20;

pub async fn submit(stage: Stage, action: Action, options: Options, json: bool) -> Result<()> {
    follow(&stage, json, |events, control| {
        submit::submit(stage.clone(), action, options, events, control)
    })
    .await
}

/// `attach [id]`, `cancel`, `history` (the words after the stage).
pub async fn run_word(stage: &Stage, words: &[String], json: bool) -> Result<()> {
    if stage.controller.is_none() {
        return Err(Failure::usage(format!(
            "`fleet deploy {} {}` needs a controller\nhint: set FLEET_CONTROLLER and FLEET_TOKEN, or [controller] url in fleet.toml",
            stage.name, words[0]
        )));
    }
    match (words[0].as_str(), &words[1..]) {
        ("attach", rest) => {
            let id = match rest {
                [] => 0,
                [id] => id.trim_start_matches('#').parse::<u64>().map_err(|_| {
                    Failure::usage(format!("attach takes a deploy id (a number), got {id:?}"))
                })?,
                _ => return Err(Failure::usage("attach takes at most one deploy id")),
            };
            follow(stage, json, |events, control| {
                submit::attach(stage.clone(), id, events, control)
            })
            .await
        }
        ("cancel", []) => {
            let id = submit::cancel(stage).await.map_err(Failure::from)?;
            eprintln!(
                "cancelling deploy #{id} of {}: the steps in progress finish, switched hosts go back\nhint: `fleet deploy {} attach` follows it to its end",
                stage.name, stage.name
            );
            Ok(())
        }
        ("history", []) => {
            let runs = submit::history(stage, HISTORY_LIMIT)
                .await
                .map_err(Failure::from)?;
            if json {
                println!("{:#}", serde_json::Value::Array(runs));
            } else {
                print!("{}", history_table(&runs));
            }
            Ok(())
        }
        (word, _) => Err(Failure::usage(format!("`{word}` takes no arguments"))),
    }
}

/// Draws a controller-run deploy's progress until it ends or Ctrl-C detaches.
async fn follow<F, Fut>(stage: &Stage, json: bool, start: F) -> Result<()>
where
    F: FnOnce(Events, mpsc::Receiver<Control>) -> Fut,
    Fut: std::future::Future<Output = Followed>,
{
    let hosts = stage.config.targets().into_iter().map(|t| t.host).collect();
    let progress = Progress::new(hosts);
    let (events, stream) = Events::channel();
    let drawing = tokio::spawn(progress.draw(stream));
    let (control, orders) = mpsc::channel(4);
    let watcher = tokio::spawn(watch_ctrl_c(control, stage.name.clone()));
    let followed = start(events, orders).await;
    watcher.abort();
    if let Ok(progress) = drawing.await {
        progress.finish();
    }
    let id = followed
        .deploy_id
        .map_or(String::new(), |id| format!(" #{id}"));
    match followed.outcome {
        None => {
            eprintln!(
                "detached from deploy{id} of {0}: it goes on in the controller\n  fleet deploy {0} attach   follows it again\n  fleet deploy {0} cancel   stops it and puts switched hosts back",
                stage.name
            );
            std::process::exit(130);
        }
        Some(Ok(Outcome::Report(report))) => crate::deploy::print_report(&report, json),
        Some(Ok(_)) => Ok(()),
        Some(Err(error)) => Err(Failure::from(error)),
    }
}

/// Ctrl-C detaches; a second one within `SECOND_CTRL_C` asks whether to cancel (on a
/// terminal; without one it cancels).
async fn watch_ctrl_c(control: mpsc::Sender<Control>, stage: String) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!(
        "Ctrl-C: detaching in {}s; the deploy goes on in the controller (Ctrl-C again to cancel it instead)",
        SECOND_CTRL_C.as_secs()
    );
    tokio::select! {
        _ = tokio::time::sleep(SECOND_CTRL_C) => {
            let _ = control.send(Control::Detach).await;
        }
        second = tokio::signal::ctrl_c() => {
            if second.is_err() {
                return;
            }
            let cancel = match std::io::stdin().is_terminal() {
                true => ask(&format!("cancel the deploy of {stage} and put switched hosts back? [y/N] ")).await,
                false => true,
            };
            let order = if cancel { Control::Cancel } else { Control::Detach };
            let _ = control.send(order).await;
        }
    }
}

async fn ask(question: &str) -> bool {
    eprint!("{question}");
    tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok() && answer.trim().eq_ignore_ascii_case("y")
    })
    .await
    .unwrap_or(false)
}

/// `history`: id, when, who, ref, commit, state, duration and hosts per line.
fn history_table(runs: &[serde_json::Value]) -> String {
    if runs.is_empty() {
        return "no deploy was run by the controller for this stage\n".to_owned();
    }
    let text = |v: &serde_json::Value| crate::output::printable(v.as_str().unwrap_or("-"));
    let mut out = String::from(
        "id     started                   state        took     who / ref / commit / hosts\n",
    );
    for run in runs {
        let started = (run["created_unix_ms"].as_u64())
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms as i64).ok())
            .map_or("-".into(), |at| {
                at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
            });
        let took = run["duration_ms"]
            .as_u64()
            .map_or("running".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let hosts: Vec<String> = (run["hosts"].as_array().into_iter().flatten())
            .map(|h| format!("{}:{}", text(&h["host"]), text(&h["result"])))
            .collect();
        let commit: String = text(&run["commit"]).chars().take(7).collect();
        out.push_str(&format!(
            "#{:<5} {:<25} {:<12} {:<8} {} / {} / {} / {}\n",
            run["id"],
            started,
            text(&run["state"]),
            took,
            text(&run["who"]),
            text(&run["ref"]),
            commit,
            if hosts.is_empty() {
                "-".to_owned()
            } else {
                hosts.join(" ")
            },
        ));
    }
    out
}
