//! What to execute for a script: interpreter detection by extension (PM2's table),
//! direct execution of binaries and `#!` scripts, `PATH` lookup and command strings.
//! Used by config loading and by `fleet start <script>`; the agent only runs the result.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// What `fleet start` runs for a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Program and leading arguments, without the app's `args` (the agent appends them).
    pub command: Vec<String>,
    /// `None` when the script is executed directly or through `sh -c`.
    pub interpreter: Option<String>,
    /// The absolute path of the script or program, or the command string as given.
    pub script: String,
}

/// PM2's interpreter for each extension (`lib/API/schema.json`, `Common.js`); `.ts`
/// goes to bun as in PM2 7.
const INTERPRETERS_BY_EXTENSION: &[(&str, &str)] = &[
    ("js", "node"),
    ("cjs", "node"),
    ("mjs", "node"),
    ("py", "python3"),
    ("sh", "bash"),
    ("rb", "ruby"),
    ("php", "php"),
    ("pl", "perl"),
    ("ts", "bun"),
    ("tsx", "bun"),
    ("coffee", "coffee"),
    ("ls", "lsc"),
];

/// PM2 runs a file it cannot classify with node.
const FALLBACK_INTERPRETER: &str = "node";

/// PM2's `interpreter: "none"`: execute the script itself.
const NO_INTERPRETER: &str = "none";

/// A problem with a script or interpreter, before the caller adds file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    /// `script` or `interpreter`: the key at fault.
    pub key: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    fn new(key: &'static str, message: String, hint: impl Into<String>) -> Problem {
        Problem {
            key,
            message,
            hint: Some(hint.into()),
        }
    }
}

/// `fleet start <script> [-- args]` without a config file: resolves what to execute.
/// `interpreter` `Some("none")` executes the script directly; `args` only decide the
/// shape of a command string (they reach it through `"$@"`).
pub fn resolve_command(
    script: &str,
    interpreter: Option<&str>,
    interpreter_args: &[String],
    args: &[String],
    cwd: &Path,
    path_env: Option<&OsStr>,
) -> Result<Resolved, ConfigError> {
    resolve(script, interpreter, interpreter_args, args, cwd, path_env).map_err(|problem| {
        let error = ConfigError::new(PathBuf::new(), None, problem.key, problem.message);
        match problem.hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    })
}

pub(crate) fn resolve(
    script: &str,
    interpreter: Option<&str>,
    interpreter_args: &[String],
    args: &[String],
    cwd: &Path,
    path_env: Option<&OsStr>,
) -> Result<Resolved, Problem> {
    if script.trim().is_empty() {
        return Err(Problem::new(
            "script",
            "script is empty".to_string(),
            "set it to a file, a program on PATH or a command",
        ));
    }
    let file = cwd.join(script);
    let file = file.is_file().then(|| absolute(&file));
    let interpreter = interpreter.map(str::trim).filter(|i| !i.is_empty());

    match (interpreter, file) {
        (Some(NO_INTERPRETER), Some(file)) => direct(&file),
        (Some(NO_INTERPRETER), None) => program_or_command(script, args, cwd, path_env),
        (Some(interpreter), Some(file)) => {
            with_interpreter(interpreter, interpreter_args, &file, cwd, path_env, true)
        }
        (Some(_), None) => Err(Problem::new(
            "script",
            format!("script not found: {script}"),
            format!(
                "with `interpreter` set, `script` must be a file (looked for {})",
                cwd.join(script).display()
            ),
        )),
        (None, Some(file)) => by_file_type(&file, interpreter_args, cwd, path_env),
        (None, None) => program_or_command(script, args, cwd, path_env),
    }
}

/// Not a file: a command string (`npm run start`) or a program on `PATH` (`redis-server`).
fn program_or_command(
    script: &str,
    args: &[String],
    cwd: &Path,
    path_env: Option<&OsStr>,
) -> Result<Resolved, Problem> {
    if script.trim().contains(char::is_whitespace) {
        // PM2 runs a script with spaces through a shell. `"$@"` passes `args` on, since
        // the agent appends them after the command (they become `$1`, `$2`, ...).
        let command = if args.is_empty() {
            vec!["sh".to_string(), "-c".to_string(), script.to_string()]
        } else {
            vec![
                "sh".to_string(),
                "-c".to_string(),
                format!("{script} \"$@\""),
                "sh".to_string(),
            ]
        };
        return Ok(Resolved {
            command,
            interpreter: None,
            script: script.to_string(),
        });
    }
    if !script.contains('/')
        && let Some(found) = find_on_path(script, path_env)
    {
        let found = found.to_string_lossy().into_owned();
        return Ok(Resolved {
            command: vec![found.clone()],
            interpreter: None,
            script: found,
        });
    }
    let hint = if script.contains('/') {
        format!("the path is relative to cwd ({})", cwd.display())
    } else {
        format!(
            "it is neither a file in {} nor a program on PATH",
            cwd.display()
        )
    };
    Err(Problem::new(
        "script",
        format!("script not found: {script}"),
        hint,
    ))
}

/// An existing file with no interpreter given: PM2's extension table, then binaries
/// and `#!` scripts run directly, then node.
fn by_file_type(
    file: &Path,
    interpreter_args: &[String],
    cwd: &Path,
    path_env: Option<&OsStr>,
) -> Result<Resolved, Problem> {
    let extension = file
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    if let Some(extension) = extension
        && let Some((_, interpreter)) = INTERPRETERS_BY_EXTENSION
            .iter()
            .find(|(known, _)| *known == extension)
    {
        let interpreter = if *interpreter == "python3"
            && find_on_path("python3", path_env).is_none()
            && find_on_path("python", path_env).is_some()
        {
            "python"
        } else {
            interpreter
        };
        return with_interpreter(interpreter, interpreter_args, file, cwd, path_env, false);
    }
    if starts_like_executable(file) {
        return direct(file);
    }
    with_interpreter(
        FALLBACK_INTERPRETER,
        interpreter_args,
        file,
        cwd,
        path_env,
        false,
    )
}

fn with_interpreter(
    interpreter: &str,
    interpreter_args: &[String],
    file: &Path,
    cwd: &Path,
    path_env: Option<&OsStr>,
    explicit: bool,
) -> Result<Resolved, Problem> {
    let interpreter = if interpreter.contains('/') {
        let path = absolute(&cwd.join(interpreter));
        if !is_executable_file(&path) {
            return Err(Problem::new(
                "interpreter",
                format!(
                    "interpreter not found or not executable: {}",
                    path.display()
                ),
                "set `interpreter` to an executable file, or a program on PATH",
            ));
        }
        path.to_string_lossy().into_owned()
    } else {
        if find_on_path(interpreter, path_env).is_none() {
            let hint = if explicit {
                format!("install {interpreter}, or set `interpreter` to one that is installed")
            } else {
                format!(
                    "install {interpreter}, or set `interpreter` (\"none\" runs the script itself)"
                )
            };
            return Err(Problem::new(
                "interpreter",
                format!("interpreter not found on PATH: {interpreter}"),
                hint,
            ));
        }
        interpreter.to_string()
    };
    let script = file.to_string_lossy().into_owned();
    let mut command = Vec::with_capacity(interpreter_args.len() + 2);
    command.push(interpreter.clone());
    command.extend(interpreter_args.iter().cloned());
    command.push(script.clone());
    Ok(Resolved {
        command,
        interpreter: Some(interpreter),
        script,
    })
}

fn direct(file: &Path) -> Result<Resolved, Problem> {
    if !is_executable_file(file) {
        return Err(Problem::new(
            "script",
            format!("script is not executable: {}", file.display()),
            format!("run `chmod +x {}`, or set `interpreter`", file.display()),
        ));
    }
    let script = file.to_string_lossy().into_owned();
    Ok(Resolved {
        command: vec![script.clone()],
        interpreter: None,
        script,
    })
}

/// An ELF binary or a `#!` script: PM2 treats both as "binary" and runs them directly.
fn starts_like_executable(file: &Path) -> bool {
    let mut head = [0u8; 4];
    let Ok(mut handle) = std::fs::File::open(file) else {
        return false;
    };
    let mut read = 0;
    while read < head.len() {
        match handle.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    head.starts_with(b"\x7fELF") || (read >= 2 && head.starts_with(b"#!"))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The first executable `program` in `path_env`'s directories.
pub(crate) fn find_on_path(program: &str, path_env: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_env?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
}

/// An absolute path without touching the file system beyond the current directory
/// (symlinks are kept, so `current/` release links still work after a deploy).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// PM2's default name: the script's file name without its extension; for a command
/// string, that of its first word (`npm run start` is `npm`).
pub fn default_name(script: &str) -> String {
    let script = script.trim();
    let first = script.split_whitespace().next().unwrap_or(script);
    Path::new(first)
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .filter(|stem| !stem.is_empty())
        .unwrap_or_else(|| first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A temp dir with a `bin/` holding fake interpreters, and a PATH of just that.
    struct Sandbox {
        dir: tempfile::TempDir,
    }

    impl Sandbox {
        fn new(programs: &[&str]) -> Sandbox {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("bin")).unwrap();
            let sandbox = Sandbox { dir };
            for program in programs {
                sandbox.executable(&format!("bin/{program}"), "#!/bin/sh\n");
            }
            sandbox
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn path_env(&self) -> std::ffi::OsString {
            self.path().join("bin").into_os_string()
        }

        fn file(&self, name: &str, content: &str) -> PathBuf {
            let path = self.path().join(name);
            fs::write(&path, content).unwrap();
            path
        }

        fn executable(&self, name: &str, content: &str) -> PathBuf {
            let path = self.file(name, content);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            path
        }

        fn resolve(
            &self,
            script: &str,
            interpreter: Option<&str>,
            args: &[&str],
        ) -> Result<Resolved, Problem> {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let path_env = self.path_env();
            resolve(
                script,
                interpreter,
                &[],
                &args,
                self.path(),
                Some(&path_env),
            )
        }
    }

    fn display(path: &Path) -> String {
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn interpreters_by_extension() {
        let sandbox = Sandbox::new(&["node", "python3", "bash", "ruby", "bun"]);
        for (file, interpreter) in [
            ("app.js", "node"),
            ("app.mjs", "node"),
            ("worker.py", "python3"),
            ("run.sh", "bash"),
            ("task.rb", "ruby"),
            ("server.ts", "bun"),
        ] {
            let path = sandbox.file(file, "");
            let resolved = sandbox.resolve(file, None, &[]).unwrap();
            assert_eq!(resolved.interpreter.as_deref(), Some(interpreter), "{file}");
            assert_eq!(
                resolved.command,
                [interpreter.to_string(), display(&path)],
                "{file}"
            );
            assert_eq!(resolved.script, display(&path));
        }
    }

    #[test]
    fn python_falls_back_to_python_when_python3_is_missing() {
        let sandbox = Sandbox::new(&["python"]);
        sandbox.file("worker.py", "print(1)\n");
        let resolved = sandbox.resolve("worker.py", None, &[]).unwrap();
        assert_eq!(resolved.interpreter.as_deref(), Some("python"));
    }

    #[test]
    fn missing_interpreter_is_an_error_with_hint() {
        let sandbox = Sandbox::new(&[]);
        sandbox.file("server.ts", "");
        let problem = sandbox.resolve("server.ts", None, &[]).unwrap_err();
        assert_eq!(problem.key, "interpreter");
        assert_eq!(problem.message, "interpreter not found on PATH: bun");
        assert!(problem.hint.unwrap().contains("install bun"));
    }

    #[test]
    fn interpreter_args_come_before_the_script() {
        let sandbox = Sandbox::new(&["node"]);
        let path = sandbox.file("app.js", "");
        let path_env = sandbox.path_env();
        let resolved = resolve(
            "app.js",
            None,
            &["--max-old-space-size=512".to_string()],
            &["--port".to_string()],
            sandbox.path(),
            Some(&path_env),
        )
        .unwrap();
        assert_eq!(
            resolved.command,
            [
                "node".to_string(),
                "--max-old-space-size=512".to_string(),
                display(&path)
            ]
        );
    }

    #[test]
    fn elf_binaries_run_directly() {
        let sandbox = Sandbox::new(&[]);
        let path = sandbox.path().join("true-copy");
        fs::copy("/bin/true", &path).unwrap();
        let resolved = sandbox.resolve("true-copy", None, &[]).unwrap();
        assert_eq!(resolved.command, [display(&path)]);
        assert_eq!(resolved.interpreter, None);
    }

    #[test]
    fn shebang_scripts_run_directly() {
        let sandbox = Sandbox::new(&[]);
        let path = sandbox.executable("tool", "#!/bin/sh\necho hi\n");
        let resolved = sandbox.resolve("tool", None, &[]).unwrap();
        assert_eq!(resolved.command, [display(&path)]);
    }

    #[test]
    fn shebang_script_without_execute_bit_is_an_error() {
        let sandbox = Sandbox::new(&[]);
        sandbox.file("tool", "#!/bin/sh\necho hi\n");
        let problem = sandbox.resolve("tool", None, &[]).unwrap_err();
        assert!(problem.message.starts_with("script is not executable"));
        assert!(problem.hint.unwrap().contains("chmod +x"));
    }

    #[test]
    fn extensionless_text_falls_back_to_node_like_pm2() {
        let sandbox = Sandbox::new(&["node"]);
        let path = sandbox.file("server", "console.log(1)\n");
        let resolved = sandbox.resolve("server", None, &[]).unwrap();
        assert_eq!(resolved.command, ["node".to_string(), display(&path)]);
    }

    #[test]
    fn explicit_interpreter_wins_over_extension() {
        let sandbox = Sandbox::new(&["node", "deno"]);
        let path = sandbox.file("app.js", "");
        let resolved = sandbox.resolve("app.js", Some("deno"), &[]).unwrap();
        assert_eq!(resolved.command, ["deno".to_string(), display(&path)]);
        let local = sandbox.executable("venv-python", "#!/bin/sh\n");
        let resolved = sandbox
            .resolve("app.js", Some("./venv-python"), &[])
            .unwrap();
        assert_eq!(resolved.command, [display(&local), display(&path)]);
    }

    #[test]
    fn interpreter_none_runs_the_file_or_program() {
        let sandbox = Sandbox::new(&["npm"]);
        let resolved = sandbox.resolve("npm", Some("none"), &[]).unwrap();
        assert_eq!(resolved.command, [display(&sandbox.path().join("bin/npm"))]);
        let script = sandbox.executable("start.js", "#!/usr/bin/env node\n");
        let resolved = sandbox.resolve("start.js", Some("none"), &[]).unwrap();
        assert_eq!(resolved.command, [display(&script)]);
    }

    #[test]
    fn programs_are_found_on_path() {
        let sandbox = Sandbox::new(&["redis-server"]);
        let resolved = sandbox.resolve("redis-server", None, &[]).unwrap();
        let expected = display(&sandbox.path().join("bin/redis-server"));
        assert_eq!(resolved.script, expected);
        assert_eq!(resolved.command, [expected]);
        assert_eq!(resolved.interpreter, None);
    }

    #[test]
    fn command_strings_go_through_sh() {
        let sandbox = Sandbox::new(&[]);
        let resolved = sandbox.resolve("npm run start", None, &[]).unwrap();
        assert_eq!(resolved.command, ["sh", "-c", "npm run start"]);
        assert_eq!(resolved.script, "npm run start");
        let resolved = sandbox
            .resolve("npm run start", None, &["--", "--port"])
            .unwrap();
        assert_eq!(resolved.command, ["sh", "-c", "npm run start \"$@\"", "sh"]);
    }

    #[test]
    fn a_file_with_spaces_in_its_name_is_still_a_file() {
        let sandbox = Sandbox::new(&["node"]);
        let path = sandbox.file("my app.js", "");
        let resolved = sandbox.resolve("my app.js", None, &[]).unwrap();
        assert_eq!(resolved.command, ["node".to_string(), display(&path)]);
    }

    #[test]
    fn missing_scripts_are_errors() {
        let sandbox = Sandbox::new(&[]);
        let problem = sandbox.resolve("nope", None, &[]).unwrap_err();
        assert_eq!(problem.key, "script");
        assert_eq!(problem.message, "script not found: nope");
        assert!(problem.hint.unwrap().contains("nor a program on PATH"));
        let problem = sandbox.resolve("dist/server.js", None, &[]).unwrap_err();
        assert!(problem.hint.unwrap().contains("relative to cwd"));
        let error = resolve_command("nope", None, &[], &[], sandbox.path(), None).unwrap_err();
        assert_eq!(error.key, "script");
        assert!(
            error
                .to_string()
                .starts_with("script: script not found: nope\n  hint: ")
        );
    }

    #[test]
    fn default_names() {
        assert_eq!(default_name("app.js"), "app");
        assert_eq!(default_name("./dist/server.mjs"), "server");
        assert_eq!(default_name("/usr/bin/redis-server"), "redis-server");
        assert_eq!(default_name("npm run start"), "npm");
        assert_eq!(default_name("ecosystem.config.js"), "ecosystem.config");
        assert_eq!(default_name("worker"), "worker");
    }
}
