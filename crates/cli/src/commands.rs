//! The process commands: turn arguments into agent requests (resolving config files
//! and scripts here, as PM2's CLI does) and print the results.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use fleet_config::{AppSpec, ConfigFile, LoadOptions};
use fleet_proto::agent::v1 as pb;

use crate::client::{self, Client};
use crate::output;
use crate::{Command, Failure, fleet, status_error};

type Result<T> = std::result::Result<T, Failure>;

pub async fn run(command: Command, ssh: fleet_remote::ssh::SshChoices) -> Result<()> {
    if let Some(result) = fleet::route(&command, &ssh).await {
        return result;
    }
    let home = client::home()?;
    match command {
        Command::Deploy(args) => crate::deploy::run(args, ssh).await,
        Command::Controller(args) => crate::trust::run(args.command).await,
        Command::Status(args) => list_command(&home, args.json).await,
        Command::List(args) => list_command(&home, args.json).await,
        Command::Jlist(args) => {
            let mut client = agent(&home).await?;
            let processes = list(&mut client, Vec::new(), false).await?;
            let value = crate::pm2::jlist(&processes);
            if args.pretty {
                println!("{value:#}");
            } else {
                println!("{value}");
            }
            Ok(())
        }
        Command::Startup(args) => crate::startup::startup(crate::startup::Startup {
            platform: args.platform,
            user_unit: args.user,
            print: args.print,
            run_as: args.unit_user,
        })
        .map_err(Failure::from),
        Command::Unstartup(args) => {
            crate::startup::unstartup(args.user, args.unit_user).map_err(Failure::from)
        }
        Command::Init(args) => crate::init::run(args.force).map_err(Failure::from),
        Command::InstallPm2(args) => {
            let link = crate::pm2::install(args.dir, args.force).map_err(Failure::failed)?;
            println!(
                "{} now runs fleet: PM2's command lines work through it",
                link.display()
            );
            Ok(())
        }
        Command::Ping => ping(&home).await,
        Command::Update(args) => crate::update::run(&home, args.agent)
            .await
            .map_err(Failure::from),
        Command::Kill => kill(&home).await,
        Command::Describe(args) => {
            let mut client = agent(&home).await?;
            let targets = expand_config_targets(&args.targets, &[])?;
            let processes = list(&mut client, targets, true).await?;
            if args.json {
                output::print_json(&processes, true);
            } else {
                output::print_description(&processes);
            }
            Ok(())
        }
        Command::Start(args) => start(&home, args).await,
        Command::Monit(_) => crate::monit::run(&home).await,
        Command::Reload(args) => reload(&home, args).await,
        Command::Scale(args) => {
            let mut client = agent(&home).await?;
            let request = pb::ScaleRequest {
                app: args.app,
                count: args.count,
            };
            let response = client.scale(request).await.map_err(status_error)?;
            report(&mut client, response.into_inner()).await
        }
        Command::Restart(args) => restart(&home, args).await,
        Command::Stop(args) => target_action(&home, args, TargetAction::Stop).await,
        Command::Delete(args) => target_action(&home, args, TargetAction::Delete).await,
        Command::Reset(args) => target_action(&home, args, TargetAction::Reset).await,
        Command::SendSignal(args) => send_signal(&home, args).await,
        Command::Send(args) => send_message(&home, args).await,
        Command::Save(args) => {
            let mut client = agent(&home).await?;
            let saved = client
                .save(pb::SaveRequest { force: args.force })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("saved {} instance(s) to {}", saved.apps, saved.path);
            Ok(())
        }
        Command::Logs(args) => logs(&home, args).await,
        Command::Flush(args) => flush(&home, args).await,
        Command::ReloadLogs => {
            let mut client = agent(&home).await?;
            let request = pb::ReloadLogsRequest {};
            let response = client.reload_logs(request).await.map_err(status_error)?;
            println!("reopened {} log file(s)", response.into_inner().files);
            Ok(())
        }
        Command::Resurrect => {
            let mut client = agent(&home).await?;
            let request = pb::ResurrectRequest {};
            let response = client.resurrect(request).await.map_err(status_error)?;
            report(&mut client, response.into_inner()).await
        }
    }
}

/// `fleet list` (and `status` without a stage): every instance of this host.
async fn list_command(home: &Path, json: bool) -> Result<()> {
    let mut client = agent(home).await?;
    let processes = list(&mut client, Vec::new(), false).await?;
    if json {
        output::print_json(&processes, false);
    } else {
        output::print_table(&processes);
    }
    Ok(())
}

async fn ping(home: &Path) -> Result<()> {
    let mut client = agent(home).await?;
    let hello = client
        .hello(fleet_proto::ops::hello_request())
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "pong: agent {} (pid {}) at {}",
        hello.agent_version, hello.agent_pid, hello.home
    );
    Ok(())
}

async fn kill(home: &Path) -> Result<()> {
    let Some(mut client) = client::connect(home, false).await? else {
        println!("the agent is not running");
        return Ok(());
    };
    let pid = client
        .hello(fleet_proto::ops::hello_request())
        .await
        .map_err(status_error)?
        .into_inner()
        .agent_pid;
    let stopped = client
        .kill(pb::KillRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .stopped;
    // Return only once the agent is gone, so the next command starts a new one
    // instead of reaching one that is shutting down.
    client::wait_exit(pid as i32).await?;
    println!("stopped {stopped} instance(s) and the agent");
    Ok(())
}

async fn reload(home: &Path, args: crate::ReloadArgs) -> Result<()> {
    let mut client = agent(home).await?;
    let (targets, apps) = targets_and_apps(&args.targets, &args.env_stage, &args.only)?;
    let response = client
        .reload(pb::ReloadRequest {
            targets,
            apps,
            update_env: args.update_env,
            cli_env: cli_env(),
            parallel: args.parallel,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    report(&mut client, response).await
}

async fn restart(home: &Path, args: crate::RestartArgs) -> Result<()> {
    let mut client = agent(home).await?;
    let (targets, apps) = targets_and_apps(&args.targets, &args.env_stage, &args.only)?;
    let response = client
        .restart(pb::RestartRequest {
            targets,
            apps,
            update_env: args.update_env,
            cli_env: cli_env(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    report(&mut client, response).await
}

async fn send_signal(home: &Path, args: crate::SignalArgs) -> Result<()> {
    fleet_config::parse_signal(&args.signal).map_err(Failure::usage)?;
    let mut client = agent(home).await?;
    let response = client
        .send_signal(pb::SendSignalRequest {
            targets: args.targets,
            signal: args.signal.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_warnings(&response.warnings);
    for process in &response.processes {
        println!(
            "sent {} to {} (id {}, pid {})",
            args.signal,
            process.name,
            process.id,
            process.pid.map_or("-".into(), |p| p.to_string())
        );
    }
    Ok(())
}

async fn send_message(home: &Path, args: crate::SendArgs) -> Result<()> {
    // JSON as written; anything else is sent as a JSON string, as `process.send` would.
    let json = match serde_json::from_str::<serde_json::Value>(&args.message) {
        Ok(_) => args.message.clone(),
        Err(_) => serde_json::Value::String(args.message.clone()).to_string(),
    };
    let mut client = agent(home).await?;
    let response = client
        .send_message(pb::SendMessageRequest {
            targets: vec![args.target],
            json,
            wait_ms: args.wait.unwrap_or(0),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    output::print_warnings(&response.warnings);
    if args.json {
        let replies: Vec<serde_json::Value> = (response.replies.iter())
            .map(|r| {
                let message = serde_json::from_str(&r.json).unwrap_or(serde_json::Value::Null);
                serde_json::json!({"id": r.id, "name": r.name, "instance": r.instance, "message": message})
            })
            .collect();
        let sent: Vec<u32> = response.delivered.iter().map(|p| p.id).collect();
        println!("{}", serde_json::json!({"sent": sent, "replies": replies}));
    } else {
        for process in &response.delivered {
            println!(
                "sent to {}#{} (id {})",
                process.name, process.instance, process.id
            );
        }
        for reply in &response.replies {
            println!(
                "{}#{} (id {}): {}",
                reply.name, reply.instance, reply.id, reply.json
            );
        }
    }
    if response.delivered.is_empty() {
        return Err(Failure::failed("the message reached no instance"));
    }
    Ok(())
}

async fn flush(home: &Path, args: crate::FlushArgs) -> Result<()> {
    let mut client = agent(home).await?;
    let targets = expand_config_targets(&args.targets, &[])?;
    let flushed = client
        .flush(pb::TargetRequest { targets })
        .await
        .map_err(status_error)?
        .into_inner()
        .files;
    for file in &flushed {
        println!("flushed {file}");
    }
    if flushed.is_empty() {
        println!("no log file to flush");
    }
    Ok(())
}

async fn logs(home: &Path, args: crate::LogsArgs) -> Result<()> {
    let since_unix_ms = match &args.since {
        Some(since) => {
            let ms = fleet_config::parse_duration_ms(since)
                .map_err(|e| Failure::usage(format!("invalid --since {since:?}: {e}")))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            Some(now.saturating_sub(ms))
        }
        None => None,
    };
    let mut client = agent(home).await?;
    let targets = expand_config_targets(&args.targets, &[])?;
    let stream = if args.out {
        pb::LogStream::Out
    } else if args.err {
        pb::LogStream::Err
    } else {
        pb::LogStream::Unspecified
    };
    let mut entries = client
        .logs(pb::LogsRequest {
            targets,
            lines: args.lines,
            follow: args.follow,
            stream: stream as i32,
            since_unix_ms,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let style = output::LogStyle::from_flags(args.json, args.raw);
    let mut printer = output::LogPrinter::new(style);
    loop {
        let next = tokio::select! {
            next = entries.message() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match next {
            Ok(Some(entry)) => {
                if !printer.print(&entry) {
                    // stdout closed (`fleet logs | head`): a normal end.
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(status_error(status).into()),
        }
    }
}

/// The actions that take only targets.
enum TargetAction {
    Stop,
    Delete,
    Reset,
}

async fn target_action(home: &Path, args: crate::TargetArgs, action: TargetAction) -> Result<()> {
    let mut client = agent(home).await?;
    let request = pb::TargetRequest {
        targets: expand_config_targets(&args.targets, &args.only)?,
    };
    let response = match action {
        TargetAction::Stop => client.stop(request).await,
        TargetAction::Delete => client.delete(request).await,
        TargetAction::Reset => client.reset(request).await,
    }
    .map_err(status_error)?
    .into_inner();
    report(&mut client, response).await
}

async fn agent(home: &Path) -> Result<Client> {
    Ok(client::connect(home, true)
        .await?
        .expect("connect starts the agent when asked to"))
}

async fn list(
    client: &mut Client,
    targets: Vec<String>,
    details: bool,
) -> Result<Vec<pb::ProcessInfo>> {
    Ok(client
        .list(pb::ListRequest { targets, details })
        .await
        .map_err(status_error)?
        .into_inner()
        .processes)
}

/// After an action, PM2 prints the whole list; so does fleet, with any warnings first.
async fn report(client: &mut Client, response: pb::OperationResponse) -> Result<()> {
    output::print_warnings(&response.warnings);
    let all = list(client, Vec::new(), false).await?;
    output::print_table(&all);
    Ok(())
}

/// `fleet start`: config files start their apps; a name, id, namespace or regex of a
/// known app restarts it (smart start); anything else is a script or a command.
async fn start(home: &Path, mut args: crate::StartArgs) -> Result<()> {
    if args.targets.is_empty() {
        let here = std::env::current_dir().unwrap_or_default();
        let Some(file) = fleet_config::discover(&here) else {
            return Err(Failure::usage(format!(
                "nothing to start: no {} in {}\nhint: `fleet init` writes a fleet.toml for the apps here",
                fleet_config::CONFIG_NAMES.join(", "),
                here.display()
            )));
        };
        args.targets.push(file.display().to_string());
    }
    let mut client = agent(home).await?;
    let options = load_options(args.env_stage.clone(), args.only.clone())?;
    let (files, words) = split_config_files(&args.targets);

    let mut from_files = Vec::new();
    for file in &files {
        from_files.extend(load_config(file, &options)?.apps);
    }

    let mut existing = Vec::new();
    let mut scripts = Vec::new();
    for word in words {
        let known = client
            .list(pb::ListRequest {
                targets: vec![word.clone()],
                details: false,
            })
            .await;
        match known {
            Ok(found) if !found.get_ref().processes.is_empty() => existing.push(word),
            Ok(_) => scripts.push(word),
            Err(status) if status.code() == tonic::Code::NotFound => scripts.push(word),
            Err(status) => return Err(status_error(status).into()),
        }
    }

    let mut new_apps = Vec::new();
    for script in &scripts {
        new_apps.push(script_spec(script, &args, &options)?);
    }

    let mut warnings = Vec::new();
    if !from_files.is_empty() {
        let response = client
            .start(pb::StartRequest {
                apps: encode(&from_files)?,
                from_config: true,
                update_env: args.update_env,
                cli_env: cli_env(),
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        warnings.extend(response.warnings);
    }
    if !existing.is_empty() || !new_apps.is_empty() {
        let response = client
            .start(pb::StartRequest {
                targets: existing,
                apps: encode(&new_apps)?,
                force: args.force,
                from_config: false,
                update_env: args.update_env,
                cli_env: cli_env(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        warnings.extend(response.warnings);
    }
    report(
        &mut client,
        pb::OperationResponse {
            processes: Vec::new(),
            warnings,
        },
    )
    .await
}

/// Builds the spec of `fleet start <script>` from the command line.
fn script_spec(script: &str, args: &crate::StartArgs, options: &LoadOptions) -> Result<AppSpec> {
    let script_options = fleet_config::ScriptOptions {
        name: args.name.clone(),
        interpreter: args.interpreter.clone(),
        args: args.args.clone(),
        instances: args.instances.clone(),
        namespace: args.namespace.clone(),
        no_autorestart: args.no_autorestart,
    };
    let path = std::env::var_os("PATH");
    fleet_config::script_app(script, &script_options, options, path.as_deref()).map_err(|e| match e
    {
        fleet_config::ScriptError::Usage(message) => Failure::usage(message),
        fleet_config::ScriptError::Resolve(message) => Failure::failed(message),
    })
}

fn load_options(env_stage: Option<String>, only: Vec<String>) -> Result<LoadOptions> {
    Ok(LoadOptions {
        env_stage,
        only,
        inherited_env: std::sync::Arc::new(cli_env().into_iter().collect()),
        cwd: std::env::current_dir()
            .map_err(|e| Failure::failed(format!("cannot read the current directory: {e}")))?,
    })
}

fn load_config(path: &Path, options: &LoadOptions) -> Result<ConfigFile> {
    let file =
        fleet_config::load(path, options).map_err(|errors| Failure::usage(errors.to_string()))?;
    output::print_warnings(&file.warnings);
    if file.apps.is_empty() {
        return Err(Failure::usage(format!(
            "{}: no app to start{}",
            path.display(),
            if options.only.is_empty() {
                String::new()
            } else {
                format!(" (--only {})", options.only.join(","))
            }
        )));
    }
    Ok(file)
}

/// Targets that are not config files, and the apps the config files among them
/// resolve to (restart and reload send both).
fn targets_and_apps(
    arguments: &[String],
    env_stage: &Option<String>,
    only: &[String],
) -> Result<(Vec<String>, Vec<pb::AppConfig>)> {
    let (files, targets) = split_config_files(arguments);
    let options = load_options(env_stage.clone(), only.to_vec())?;
    let mut apps = Vec::new();
    for file in &files {
        apps.extend(load_config(file, &options)?.apps);
    }
    Ok((targets, encode(&apps)?))
}

/// Splits arguments into config files and other targets.
fn split_config_files(targets: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut rest = Vec::new();
    for target in targets {
        let path = PathBuf::from(target);
        if path.is_file() && fleet_config::is_config_file(&path) {
            files.push(path);
        } else {
            rest.push(target.clone());
        }
    }
    (files, rest)
}

/// A config file as a target means the names of its apps.
fn expand_config_targets(targets: &[String], only: &[String]) -> Result<Vec<String>> {
    let (files, mut rest) = split_config_files(targets);
    let options = load_options(None, only.to_vec())?;
    for file in files {
        rest.extend(
            load_config(&file, &options)?
                .apps
                .into_iter()
                .map(|a| a.name),
        );
    }
    Ok(rest)
}

fn encode(apps: &[AppSpec]) -> Result<Vec<pb::AppConfig>> {
    apps.iter()
        .map(|app| {
            serde_json::to_string(app)
                .map(|json| pb::AppConfig { json })
                .map_err(|e| Failure::failed(format!("cannot encode app {}: {e}", app.name)))
        })
        .collect()
}

/// The CLI's whole environment, which reaches an app when it starts.
fn cli_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| fleet_config::inheritable(k))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect()
}
