//! The web dashboard in a real headless Chromium (Debian's `chromium`, driven over the
//! DevTools protocol by `fleet_tests::browser`), served over HTTPS by a real controller
//! whose agents run on the test bed and were set up and deployed to by `fleet deploy`:
//! sign in with a token, see every host with its release and apps, watch a line written
//! on a host reach the live log view (as text: its HTML and terminal escapes inert),
//! restart an app from the page and see its restarts rise, and be refused an action
//! with a `read` token. Screenshots of each page go to `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleet_tests::browser::{Browser, spki_hash};

use crate::controller::Controller;
use crate::deploy::{
    DeployBed, ThroughController, a_deploy_shows_in_the_controllers_status, setup_joins_each_agent,
};
use crate::harness::*;
use crate::testbed::{HOST_FLEET_HOME, agent_binary};

/// Set (CI sets it) to fail instead of skipping when Chromium is missing.
const REQUIRE_ENV: &str = "FLEET_REQUIRE_CHROMIUM";
/// A page showing what the controller knows, under a loaded runner.
const PAGE: Duration = Duration::from_secs(30);
/// The bound for a line written on a host to show in the live view.
const LOG_LINE_WITHIN: Duration = Duration::from_secs(2);

fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = Browser::find();
    if found.is_none() {
        let why = "the dashboard test needs Chromium (Debian's chromium package)";
        assert!(std::env::var_os(REQUIRE_ENV).is_none(), "{test}: {why}");
        eprintln!("skipping {test}: {why}");
    }
    found
}

fn screenshots() -> PathBuf {
    let target = agent_binary();
    target
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("dashboard-screenshots")
}

fn sign_in(browser: &mut Browser, base: &str, token: &str) {
    browser.navigate(base);
    browser.wait_for(
        "the sign-in form",
        PAGE,
        "!!document.getElementById('login')",
    );
    browser.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('login').requestSubmit(); true",
        serde_json::to_string(token).unwrap()
    ));
    browser.wait_for("signed in", PAGE, "!document.getElementById('nav').hidden");
}

/// A screenshot of the page, after checking it shows no leaked JavaScript value.
fn shoot(browser: &mut Browser, name: &str) {
    let text = browser.eval("document.getElementById('main').innerText");
    let text = text.as_str().unwrap_or("");
    assert!(
        !text.contains("[object ")
            && !text.contains("undefined")
            && !text.lines().any(|l| l.trim() == "null"),
        "{name} shows a stray value:\n{text}"
    );
    browser.screenshot(&screenshots().join(name));
}

fn go(browser: &mut Browser, hash: &str) {
    browser.eval(&format!(
        "location.hash = {}; true",
        serde_json::to_string(hash).unwrap()
    ));
}

/// The bed, its controller with the dashboard on HTTPS, and a browser trusting it.
struct Dash<'a> {
    d: &'a DeployBed,
    controller: Controller,
    browser: Browser,
    base: String,
    addresses: Vec<String>,
    release: String,
    /// What the echoer on the first host prints, line by line.
    input: PathBuf,
}

#[test]
fn the_dashboard_in_chromium_shows_the_fleet_follows_logs_and_restarts_an_app() {
    let test = "the_dashboard_in_chromium_shows_the_fleet_follows_logs_and_restarts_an_app";
    let Some(chromium) = chromium_or_skip(test) else {
        return;
    };
    let Some(d) = DeployBed::up(test, 3, "") else {
        return;
    };
    let mut dash = Dash::up(&d, &chromium);
    let operator = dash.controller.token("dash-operator", "operate");
    let reader = dash.controller.token("dash-reader", "read");
    dash.overview(&operator);
    dash.live_logs();
    dash.restart_from_the_app_page();
    dash.host_and_deploys();
    dash.read_only(&reader);
    dash.audited();
}

impl<'a> Dash<'a> {
    /// Sets up and deploys the bed through a controller serving the dashboard, and
    /// starts the echoer; then opens the browser.
    fn up(d: &'a DeployBed, chromium: &std::path::Path) -> Dash<'a> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let controller =
            Controller::start_with(&d.bed, &["--http".to_owned(), format!("127.0.0.1:{port}")]);
        wait_until("the dashboard to listen", PAGE, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let via = ThroughController {
            d,
            env: controller.env(),
        };
        let hosts = d.names();
        let addresses: Vec<String> = d.bed.hosts.iter().map(|h| h.address.clone()).collect();
        setup_joins_each_agent(d, &via, &controller.url, &hosts);
        let release = a_deploy_shows_in_the_controllers_status(d, &via, &hosts, &addresses);

        // An app on the first host that prints what the test appends to a file.
        let input = d.fleet.file("echo-input", "");
        let echoer = d.fleet.script(
            "echoer.sh",
            &format!("#!/bin/sh\nexec tail -n0 -F '{}'\n", input.display()),
        );
        let cli = d.fleet.command(&[]).get_program().to_owned();
        let out = d.bed.exec_with_env(
            &hosts[0],
            &[
                cli.to_str().unwrap(),
                "start",
                echoer.to_str().unwrap(),
                "--name",
                "echoer",
            ],
            &[("FLEET_HOME", HOST_FLEET_HOME)],
        );
        assert!(
            out.status.success(),
            "start echoer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let spki = spki_hash(&controller.data.path().join("server.pem"));
        let browser = Browser::launch(
            chromium,
            &[format!("--ignore-certificate-errors-spki-list={spki}")],
        );
        Dash {
            d,
            controller,
            browser,
            base: format!("https://127.0.0.1:{port}/"),
            addresses,
            release,
            input,
        }
    }

    /// Sign in: the overview shows every host reachable, on the release, web 2/2.
    fn overview(&mut self, operator: &str) {
        let (browser, base, release) = (&mut self.browser, &self.base, &self.release);
        browser.navigate(base);
        browser.wait_for(
            "the sign-in form",
            PAGE,
            "!!document.getElementById('login')",
        );
        shoot(browser, "0-sign-in.png");
        sign_in(browser, base, operator);
        let every_host = format!(
            "(() => {{ const rows = [...document.querySelectorAll('section[data-stage=bed] tr[data-host]')];
                return rows.length === 3 && rows.every(r => r.dataset.reachable === 'true'
                  && (r.querySelector('[data-app=web]')?.textContent ?? '').includes('2/2')
                  && r.textContent.includes({release:?})); }})()"
        );
        browser.wait_for("every host on the overview", PAGE, &every_host);
        browser.wait_for(
            "the echoer on the first host",
            PAGE,
            &format!(
                "!!document.querySelector('tr[data-host=\"{}\"] [data-app=echoer]')",
                self.addresses[0]
            ),
        );
        shoot(browser, "1-overview.png");
    }

    /// Live logs of the echoer: a warm-up line says the stream is live, then a line
    /// with HTML and terminal escapes is timed from its write to its display.
    fn live_logs(&mut self) {
        let (browser, input) = (&mut self.browser, &self.input);
        go(browser, "#/logs?app=echoer");
        let has_line = |text: &str| {
            format!(
                "[...document.querySelectorAll('#log .ln[data-app=echoer] .txt')].some(n => n.textContent.includes({text:?}))"
            )
        };
        let append = |line: &str| {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(input)
                .unwrap();
            writeln!(file, "{line}").unwrap();
        };
        let until = Instant::now() + PAGE;
        loop {
            append("warm-up");
            if browser.eval(&has_line("warm-up")) == serde_json::Value::Bool(true) {
                break;
            }
            assert!(
                Instant::now() < until,
                "the live log view never showed the echoer's lines"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let hostile =
            "<img src=x onerror=\"window.pwned=1\"><b>bold</b>\u{1b}[31mred\u{1b}[0m MARK-7391";
        let written = Instant::now();
        append(hostile);
        browser.wait_for("the marked line", PAGE, &has_line("MARK-7391"));
        let took = written.elapsed();
        assert!(
            took <= LOG_LINE_WITHIN,
            "the line took {took:?} to show (bound {LOG_LINE_WITHIN:?})"
        );
        let inert = browser.eval(&format!(
            "document.querySelector('#log img') === null && document.querySelector('#log b') === null
             && window.pwned === undefined && {}",
            has_line("<img src=x onerror=")
        ));
        assert_eq!(
            inert,
            serde_json::Value::Bool(true),
            "the line was rendered as text"
        );
        let source =
            browser.eval("document.querySelector('#log .ln[data-app=echoer] .src').textContent");
        assert!(
            source.as_str().unwrap().starts_with(&self.addresses[0]),
            "{source}"
        );
        shoot(browser, "2-logs.png");
    }

    /// The app page: restart web on the stage from the page, behind the confirmation.
    fn restart_from_the_app_page(&mut self) {
        let browser = &mut self.browser;
        go(browser, "#/app/bed/web");
        let restarts = "[...document.querySelectorAll('table.instances tr[data-restarts]')].reduce((a, r) => a + Number(r.dataset.restarts), 0)";
        browser.wait_for(
            "web's six instances",
            PAGE,
            "document.querySelectorAll('table.instances tr[data-restarts]').length === 6",
        );
        let before = browser.eval(restarts).as_u64().unwrap();
        browser.eval("document.getElementById('action-restart').click(); true");
        browser.wait_for(
            "the confirmation",
            PAGE,
            "document.getElementById('confirm').open",
        );
        shoot(browser, "3-confirm.png");
        browser.eval("document.getElementById('confirm-ok').click(); true");
        browser.wait_for(
            "the restart's result",
            Duration::from_secs(90),
            "document.getElementById('action-result')?.dataset.ok === 'true'",
        );
        browser.wait_for(
            "restarts up by six",
            PAGE,
            &format!("{restarts} === {}", before + 6),
        );
        shoot(browser, "4-app.png");
    }

    /// The host page and the deploys page.
    fn host_and_deploys(&mut self) {
        let (browser, release) = (&mut self.browser, &self.release);
        go(browser, &format!("#/host/{}", self.addresses[1]));
        browser.wait_for(
            "the host page",
            PAGE,
            &format!(
                "(document.getElementById('host-facts')?.textContent ?? '').includes({release:?})
             && document.querySelectorAll('table.instances tr[data-restarts]').length === 2"
            ),
        );
        shoot(browser, "5-host.png");
        go(browser, "#/deploys");
        browser.wait_for("the deploys", PAGE, &format!(
            "[...document.querySelectorAll('#deploys tr[data-deploy]')].some(r => r.textContent.includes({release:?}) && r.dataset.result === 'ok')"
        ));
        browser.eval(
            "document.querySelectorAll('#deploys details').forEach(d => d.open = true); true",
        );
        let steps = browser.eval("document.getElementById('deploys').textContent");
        assert!(
            steps.as_str().unwrap().contains(" ms"),
            "step timings shown: {steps}"
        );
        shoot(browser, "6-deploys.png");
    }

    /// A read token sees no action and is refused one forced through the API.
    fn read_only(&mut self, reader: &str) {
        let (browser, base) = (&mut self.browser, &self.base);
        browser.eval("document.getElementById('logout').click(); true");
        browser.wait_for("signed out", PAGE, "!!document.getElementById('login')");
        sign_in(browser, base, reader);
        go(browser, "#/app/bed/web");
        browser.wait_for(
            "web's instances for the reader",
            PAGE,
            "document.querySelectorAll('table.instances tr[data-restarts]').length === 6",
        );
        assert_eq!(
            browser.eval("document.getElementById('actions') === null"),
            serde_json::Value::Bool(true)
        );
        let forced = browser.eval(
            "fetch('/api/session').then(r => r.json()).then(me => fetch('/api/action', {method: 'POST',
               headers: {'content-type': 'application/json', 'x-csrf-token': me.csrf},
               body: JSON.stringify({stage: 'bed', app: 'web', action: 'stop'})})).then(r => r.status)",
        );
        assert_eq!(forced, serde_json::json!(403));
        shoot(browser, "7-read-only.png");
    }

    /// The operator's restart and the reader's refusal are in the audit log; the
    /// refused stop never reached a host.
    fn audited(&self) {
        let (d, controller) = (self.d, &self.controller);
        let hosts = d.names();
        let via = ThroughController {
            d,
            env: controller.env(),
        };
        let audit = controller.audit();
        let by = |who: &str, action: &str| {
            audit
                .iter()
                .filter(|e| e["who"] == who && e["action"] == action)
                .cloned()
                .collect::<Vec<_>>()
        };
        let restart = by("token:dash-operator (dashboard)", "restart");
        assert_eq!(restart.len(), 1, "{audit:#?}");
        assert_eq!(
            (&restart[0]["stage"], &restart[0]["result"]),
            (&"bed".into(), &"ok".into())
        );
        let refused = by("token:dash-reader (dashboard)", "stop");
        assert_eq!(refused.len(), 1, "{audit:#?}");
        assert!(
            refused[0]["result"]
                .as_str()
                .unwrap()
                .starts_with("refused")
        );
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == "login" && e["result"] == "ok")
        );
        // The stop never reached a host.
        assert!(d.sh(&hosts[0], "true").0);
        let (code, status, _) = via.run(&["status", "bed", "--json"]);
        assert_eq!(code, Some(0));
        let stopped = status
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "stopped")
            .count();
        assert_eq!(stopped, 0, "{status:#}");
    }
}
