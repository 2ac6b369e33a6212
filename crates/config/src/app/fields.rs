//! Readers of the app keys with a shape of their own (instances, exec mode, health
//! check, cron and time zone, exit codes, watch and log paths, env names), each
//! reporting its own errors with the key's line.

use std::path::{Path, PathBuf};

use crate::reader::{self, Ctx, Field, MapReader};
use crate::resolve::absolute;
use crate::spec::{
    DEFAULT_HEALTH_FAIL_COUNT, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_TIMEOUT_MS, ExecMode,
    HealthCheck, Instances,
};
use crate::tree::Node;

use super::{DEV_NULL, MAX_INSTANCES};

pub(super) enum EnvFilter {
    None,
    All,
    Containing(Vec<String>),
}

pub(super) fn take_bool(
    ctx: &mut Ctx<'_>,
    r: &mut MapReader<'_>,
    names: &[&'static str],
) -> Option<bool> {
    r.take(ctx, names).and_then(|f| reader::as_bool(ctx, &f))
}

pub(super) fn take_duration(
    ctx: &mut Ctx<'_>,
    r: &mut MapReader<'_>,
    names: &[&'static str],
) -> Option<u64> {
    r.take(ctx, names)
        .and_then(|f| reader::as_duration_ms(ctx, &f))
}

/// A number, a numeric string, `"max"`, 0 (= max) or negative (CPUs minus n).
pub(super) fn read_instances(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<Instances> {
    let number = match &field.value.value {
        Node::Int(n) => Some(*n),
        Node::Float(f) if f.fract() == 0.0 && f.abs() <= MAX_INSTANCES as f64 => Some(*f as i64),
        Node::Str(s) if s.trim().eq_ignore_ascii_case("max") => return Some(Instances::Max),
        Node::Str(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    let Some(number) = number else {
        let got = reader::describe(ctx, &field.value.value);
        ctx.error(
            field.line,
            &field.path,
            format!("expected a number, \"max\" or a negative number (CPUs minus n), got {got}"),
        );
        return None;
    };
    if number.abs() > i64::from(MAX_INSTANCES) {
        ctx.error(
            field.line,
            &field.path,
            format!("expected at most {MAX_INSTANCES} instances, got {number}"),
        );
        return None;
    }
    let count = u32::try_from(number.unsigned_abs()).ok()?;
    Some(match number {
        0 => Instances::Max,
        n if n < 0 => Instances::MaxMinus(count),
        _ => Instances::Count(count),
    })
}

pub(super) fn read_exec_mode(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<ExecMode> {
    match reader::as_string(ctx, field)?.as_str() {
        "fork" | "fork_mode" => Some(ExecMode::Fork),
        "cluster" | "cluster_mode" => Some(ExecMode::Cluster),
        "proxy" => Some(ExecMode::Proxy),
        other => {
            ctx.error(
                field.line,
                &field.path,
                format!("expected \"fork\", \"cluster\" or \"proxy\", got {other:?}"),
            );
            None
        }
    }
}

/// `health_check = { path = "/health", interval = "1s", timeout = "2s" }`; a bare
/// string is the path.
pub(super) fn read_health_check(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<HealthCheck> {
    let (path, interval, timeout) = match &field.value.value {
        Node::Str(path) => (Some(path.clone()), None, None),
        Node::Map(entries) => {
            let mut r = MapReader::new(&field.path, entries);
            let path = r
                .take(ctx, &["path"])
                .and_then(|f| reader::as_string(ctx, &f));
            let interval = r
                .take(ctx, &["interval"])
                .and_then(|f| reader::as_duration_ms(ctx, &f));
            let timeout = r
                .take(ctx, &["timeout"])
                .and_then(|f| reader::as_duration_ms(ctx, &f));
            r.finish(ctx);
            (path, interval, timeout)
        }
        other => {
            let got = ctx.type_name(other);
            ctx.error(
                field.line,
                &field.path,
                format!("expected a path or {{ path, interval, timeout }}, got {got}"),
            );
            return None;
        }
    };
    let path = path.unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        ctx.error_hint(
            field.line,
            &field.path,
            format!("{path:?} is not a URL path"),
            "use a path such as \"/health\"",
        );
        return None;
    }
    Some(HealthCheck {
        path,
        interval_ms: interval.unwrap_or(DEFAULT_HEALTH_INTERVAL_MS).max(1),
        timeout_ms: timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT_MS).max(1),
        fail_count: DEFAULT_HEALTH_FAIL_COUNT,
    })
}

/// `health_check` with `health_fail_count`, and `watchdog`: what says an instance is
/// ready, and when a running one is to be restarted.
pub(super) fn read_liveness(
    ctx: &mut Ctx<'_>,
    r: &mut MapReader<'_>,
) -> (Option<HealthCheck>, Option<u64>) {
    let mut health_check = r
        .take(ctx, &["health_check"])
        .and_then(|f| read_health_check(ctx, &f));
    if let Some(f) = r.take(ctx, &["health_fail_count"])
        && let Some(count) = reader::as_ranged(ctx, &f, 1, 1000)
    {
        match &mut health_check {
            Some(check) => check.fail_count = count as u32,
            None => ctx.error_hint(
                f.line,
                &f.path,
                "counts failed health checks, and there is no `health_check`",
                "add health_check = \"/health\" (or remove health_fail_count)",
            ),
        }
    }
    let watchdog = r.take(ctx, &["watchdog"]).and_then(|f| {
        let ms = reader::as_duration_ms(ctx, &f)?;
        if ms < 100 {
            ctx.error(f.line, &f.path, "must be at least 100ms");
            return None;
        }
        Some(ms)
    });
    (health_check, watchdog)
}

/// An IANA zone name such as `Europe/Paris` or `UTC`; the agent checks it exists.
pub(super) fn read_timezone(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<String> {
    let zone = reader::as_string(ctx, field)?;
    let valid = !zone.is_empty()
        && !zone.starts_with('/')
        && !zone.contains("..")
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    if valid {
        Some(zone)
    } else {
        ctx.error_hint(
            field.line,
            &field.path,
            format!("{zone:?} is not a time zone name"),
            "use an IANA name such as \"Europe/Paris\" or \"UTC\"",
        );
        None
    }
}

/// `Some(None)` is PM2's explicit "no cron" (`0` or `false`).
pub(super) fn read_cron(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<Option<String>> {
    match &field.value.value {
        Node::Bool(false) | Node::Int(0) => return Some(None),
        Node::Str(s) if s.trim() == "0" => return Some(None),
        Node::Str(_) => {}
        other => {
            let got = ctx.type_name(other);
            ctx.error(
                field.line,
                &field.path,
                format!("expected a cron pattern like \"0 3 * * *\", got {got}"),
            );
            return None;
        }
    }
    let pattern = reader::as_string(ctx, field)?.trim().to_string();
    const NICKNAMES: &[&str] = &[
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    let fields = pattern.split_whitespace().count();
    if NICKNAMES.contains(&pattern.as_str()) || fields == 5 || fields == 6 {
        return Some(Some(pattern));
    }
    ctx.error_hint(
        field.line,
        &field.path,
        format!("a cron pattern has 5 or 6 fields, got {fields} in {pattern:?}"),
        "minute hour day-of-month month day-of-week, with an optional leading seconds field",
    );
    None
}

pub(super) fn read_exit_codes(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<Vec<i32>> {
    let items: Vec<(Option<u32>, String, &Node)> = match &field.value.value {
        Node::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                (
                    item.line.or(field.line),
                    format!("{}[{i}]", field.path),
                    &item.value,
                )
            })
            .collect(),
        other => vec![(field.line, field.path.clone(), other)],
    };
    let mut codes = Vec::with_capacity(items.len());
    let mut ok = true;
    for (line, path, node) in items {
        let code = match node {
            Node::Int(n) => Some(*n),
            Node::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        match code.filter(|c| (0..=255).contains(c)) {
            Some(code) => codes.push(i32::try_from(code).unwrap_or_default()),
            None => {
                let got = reader::describe(ctx, node);
                ctx.error(
                    line,
                    &path,
                    format!("expected an exit code from 0 to 255, got {got}"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(codes)
}

/// `true` watches the cwd, a string or list names paths relative to it.
pub(super) fn read_watch(ctx: &mut Ctx<'_>, field: &Field<'_>, cwd: &Path) -> Option<Vec<PathBuf>> {
    match &field.value.value {
        Node::Bool(true) => Some(vec![cwd.to_path_buf()]),
        Node::Bool(false) => Some(Vec::new()),
        Node::Str(_) | Node::Seq(_) => {
            let paths = reader::as_string_list(ctx, field, false)?;
            Some(paths.iter().map(|p| absolute(&cwd.join(p))).collect())
        }
        _ => {
            ctx.wrong_type(field, "true, a path or a list of paths");
            None
        }
    }
}

/// A log path: relative to the cwd as in PM2; `null`/`"NULL"` disable the stream.
/// `log_file: true` is `Some("")`, the default combined path; `false` is none.
pub(super) fn read_log_path(
    ctx: &mut Ctx<'_>,
    field: &Field<'_>,
    cwd: &Path,
    home: Option<&str>,
    combined: bool,
) -> Option<Option<String>> {
    match &field.value.value {
        Node::Bool(true) if combined => Some(Some(String::new())),
        Node::Bool(false) if combined => Some(None),
        Node::Null => Some(Some(DEV_NULL.to_string())),
        Node::Str(s) if s == "NULL" || s == DEV_NULL => Some(Some(DEV_NULL.to_string())),
        Node::Str(s) if s.trim().is_empty() => {
            ctx.error_hint(
                field.line,
                &field.path,
                "a log path cannot be empty",
                "remove the key for the default path",
            );
            None
        }
        Node::Str(s) => Some(Some(
            absolute(&cwd.join(expand_home(s, home)))
                .to_string_lossy()
                .into_owned(),
        )),
        _ => {
            ctx.wrong_type(field, if combined { "a path or true" } else { "a path" });
            None
        }
    }
}

pub(super) fn read_env_name(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<String> {
    let name = reader::as_string(ctx, field)?;
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        ctx.error(
            field.line,
            &field.path,
            format!("{name:?} is not an environment variable name (letters, digits and `_`)"),
        );
        return None;
    }
    Some(name)
}

pub(super) fn expand_home(path: &str, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ if path == "~" && home.is_some() => PathBuf::from(home.unwrap_or_default()),
        _ => PathBuf::from(path),
    }
}
