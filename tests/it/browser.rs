//! The console in a real browser: Debian's Chromium, headless, driven over WebDriver by
//! its chromedriver. Without Chromium these tests say so and pass (`cargo test` on a bare
//! machine); `HOOKRELAY_REQUIRE_BROWSER=1` (CI) makes its absence a failure. Accessibility is
//! checked with axe-core from npm (`target/browser-deps`, installed by `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::binary::free_port;
use crate::support::{Relay, TestSink};

const TOKEN: &str = "console-t0ken";
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

fn required() -> bool {
    std::env::var("HOOKRELAY_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

fn program(variable: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
    path.exists().then_some(path)
}

/// Chromium with its driver, both stopped when dropped.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium outlives a killed driver: end every process of this test's profile.
        let _ = Command::new("pkill").args(["-f", "--"]).arg(format!("--user-data-dir={}", self._profile.path().display())).status();
    }
}

async fn browser() -> Option<Browser> {
    let (Some(chromium), Some(chromedriver)) =
        (program("HOOKRELAY_CHROMIUM", "/usr/bin/chromium"), program("HOOKRELAY_CHROMEDRIVER", "/usr/bin/chromedriver"))
    else {
        assert!(!required(), "HOOKRELAY_REQUIRE_BROWSER=1 but /usr/bin/chromium or /usr/bin/chromedriver is missing");
        eprintln!("SKIPPED: console browser test: Debian's chromium and chromium-driver are not installed (.ci/run installs them)");
        return None;
    };
    let port = free_port();
    let driver = Command::new(chromedriver).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            // The flags keep Chromium off the network it has no business on (this machine's
            // closed network refuses it) and out of the sandbox root cannot use.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let client = loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => break client,
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "chromedriver did not start a session: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    Some(Browser { client, driver, _profile: profile })
}

fn config(sink: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0, token: {TOKEN} }}
routes:
  - name: codeup-push
    source: codeup
    match: {{ path: /hooks/codeup, headers: {{ Codeup-Event: Push Hook }} }}
    forward:
      - name: robot
        url: {sink}/robot
        body:
          msgtype: text
          text: {{ content: "{{{{body.ref}}}} by {{{{body.user_name}}}}" }}
"#
    )
}

/// A webhook whose payload tries to run script in the page.
async fn send_push(relay: &Relay, user: &str) -> String {
    let body = json!({ "ref": "refs/heads/main", "user_name": user }).to_string();
    let reply = relay.client.post_json(&relay.url("/hooks/codeup"), &[("codeup-event", "Push Hook")], body).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_string()
}

async fn find(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{css} never appeared: {err}"))
}

/// Waits (bounded) until the page's text under `css` contains `text`.
async fn wait_text(client: &Client, css: &str, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if seen.contains(text) {
            return seen;
        }
        assert!(tokio::time::Instant::now() < deadline, "{css} never showed {text:?}; it shows {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn script(client: &Client, source: &str) -> Value {
    client.execute(source, Vec::new()).await.unwrap_or_else(|err| panic!("script failed: {err}\n{source}"))
}

/// Presses Tab (bounded) until the focused element matches `css`, then returns it.
async fn tab_to(client: &Client, css: &str) -> fantoccini::elements::Element {
    for _ in 0..80 {
        let focused = script(client, &format!("return !!document.activeElement && document.activeElement.matches({css:?});")).await;
        if focused == json!(true) {
            return client.active_element().await.unwrap();
        }
        client.active_element().await.unwrap().send_keys(TAB).await.unwrap();
    }
    panic!("Tab never reached {css}");
}

fn axe_source() -> Option<String> {
    let path = std::env::var_os("HOOKRELAY_AXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-deps/node_modules/axe-core/axe.min.js"));
    match std::fs::read_to_string(&path) {
        Ok(source) => Some(source),
        Err(_) => {
            assert!(!required(), "HOOKRELAY_REQUIRE_BROWSER=1 but axe-core is missing at {}", path.display());
            eprintln!(
                "SKIPPED: accessibility check: axe-core is not at {} (npm install --prefix target/browser-deps axe-core@4)",
                path.display()
            );
            None
        }
    }
}

/// axe-core's serious and critical findings on the page as it is now.
async fn accessibility_problems(client: &Client, axe: &str, view: &str) -> Vec<String> {
    script(client, &format!("if (!window.axe) {{ {axe} }} return true;")).await;
    let result = client
        .execute_async("const done = arguments[arguments.length - 1]; axe.run(document).then(r => done(r.violations), e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));", Vec::new())
        .await
        .unwrap();
    result
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .map(|v| format!("{view}: {} ({}): {}", v["id"], v["help"], v["nodes"].as_array().map_or(0, Vec::len)))
        .collect()
}

/// Whether the page scrolls sideways.
async fn scrolls_sideways(client: &Client) -> bool {
    script(client, "return document.documentElement.scrollWidth > document.documentElement.clientWidth;").await == json!(true)
}

async fn screenshot(client: &Client, name: &str) {
    if let Some(folder) = std::env::var_os("HOOKRELAY_SCREENSHOTS") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(Path::new(&folder).join(format!("{name}.png")), png).unwrap();
    }
}

/// The story an operator lives: sign in, see an event that just arrived, open it, replay it
/// after the dry run, see the new delivery; pause a target; try a route in the playground.
#[tokio::test]
async fn an_operator_signs_in_sees_an_event_arrive_and_replays_it() {
    let Some(browser) = browser().await else { return };
    let client = &browser.client;
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url())).await;
    client.goto(&relay.admin_url("/")).await.unwrap();
    let token = find(client, "#token-input").await;
    token.send_keys(TOKEN).await.unwrap();
    token.send_keys(ENTER).await.unwrap();
    wait_text(client, "#events-results", "No events yet").await;

    // An event that arrives now shows up without a reload; its hostile text stays text.
    let hostile = "<img src=x onerror=document.title=`pwned`>";
    let id = send_push(&relay, hostile).await;
    sink.wait_for(1).await;
    wait_text(client, "#events-results", &id).await;
    screenshot(client, "events").await;
    find(client, &format!("a.event-link[href='#/events/{id}']")).await.click().await.unwrap();
    wait_text(client, "main", "succeeded").await;
    let shown = wait_text(client, "main", hostile).await;
    assert!(shown.contains(hostile), "the payload is shown as text");
    assert_ne!(client.title().await.unwrap(), "pwned");
    assert_eq!(script(client, "return document.querySelectorAll('main img').length;").await, json!(0));
    screenshot(client, "event").await;

    // Replay: the dry run first, then the real one, which delivers again.
    find(client, "#replay-button").await.click().await.unwrap();
    wait_text(client, "#replay-preview", "robot").await;
    screenshot(client, "replay").await;
    find(client, "#replay-confirm").await.click().await.unwrap();
    let new_event = find(client, "#replay-new-event").await;
    new_event.click().await.unwrap();
    let seen = sink.wait_for(2).await;
    assert_eq!(seen[1].body, seen[0].body, "the replay sent the same message");
    wait_text(client, "main", "succeeded").await;
    wait_text(client, "main", &id).await; // replay_of links back

    // The token stays in this tab: no cookie, never in the address.
    assert_eq!(script(client, "return document.cookie;").await, json!(""));
    assert_eq!(script(client, "return sessionStorage.getItem('hookrelay.token');").await, json!(TOKEN));
    assert!(!client.current_url().await.unwrap().as_str().contains(TOKEN));

    // Targets: pause by hand, resume.
    client.goto(&relay.admin_url("/#/targets")).await.unwrap();
    find(client, "#targets-table .pause-button").await.click().await.unwrap();
    wait_text(client, "#targets-table", "paused").await;
    screenshot(client, "targets").await;
    let api = relay.client.get(&relay.admin_url("/api/targets"), &[("authorization", &format!("Bearer {TOKEN}"))]).await.json();
    assert_eq!(api["items"][0]["state"], "paused", "{api}");
    find(client, "#targets-table .resume-button").await.click().await.unwrap();
    wait_text(client, "#targets-table", "closed").await;

    // Routes: the playground renders what would be sent, and says why a sample does not match.
    client.goto(&relay.admin_url("/#/routes")).await.unwrap();
    find(client, "#render-headers").await.send_keys("Codeup-Event: Push Hook").await.unwrap();
    find(client, "#render-body").await.send_keys(r#"{"ref":"refs/heads/dev","user_name":"ana"}"#).await.unwrap();
    find(client, "#render-form button[type=submit]").await.click().await.unwrap();
    wait_text(client, "#render-result", "refs/heads/dev by ana").await;
    screenshot(client, "routes").await;
    let headers = find(client, "#render-headers").await;
    headers.clear().await.unwrap();
    headers.send_keys("Codeup-Event: Tag Push Hook").await.unwrap();
    find(client, "#render-form button[type=submit]").await.click().await.unwrap();
    wait_text(client, "#render-result", "Tag Push Hook").await;
}

/// The same pages for everyone: no serious axe-core finding, the replay done from the
/// keyboard alone, and no sideways scrolling on a 390 px wide phone.
#[tokio::test]
async fn the_console_passes_axe_works_from_the_keyboard_and_fits_a_phone() {
    let Some(browser) = browser().await else { return };
    let client = &browser.client;
    let sink = TestSink::start().await;
    let relay = Relay::start(&config(&sink.url())).await;
    let id = send_push(&relay, "a-very-long-user-name-without-any-place-to-break-it-0123456789-0123456789-0123456789").await;
    sink.wait_for(1).await;

    // A #token= link signs in, and the token leaves the address at once.
    client.goto(&relay.admin_url(&format!("/#token={TOKEN}"))).await.unwrap();
    wait_text(client, "#events-table", &id).await;
    assert!(!client.current_url().await.unwrap().as_str().contains(TOKEN));

    let axe = axe_source();
    let mut problems = Vec::new();
    let views = [
        ("events", "/#/events".to_string()),
        ("event", format!("/#/events/{id}")),
        ("targets", "/#/targets".into()),
        ("routes", "/#/routes".into()),
    ];
    for (name, path) in &views {
        client.goto(&relay.admin_url(path)).await.unwrap();
        find(client, "main h2").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(axe) = &axe {
            problems.extend(accessibility_problems(client, axe, name).await);
        }
    }
    assert!(problems.is_empty(), "axe-core found serious problems:\n{}", problems.join("\n"));

    // Keyboard only: from the list to the event, the dry run, the replay, the new event.
    client.goto(&relay.admin_url("/#/events")).await.unwrap();
    wait_text(client, "#events-table", &id).await;
    tab_to(client, "a.event-link").await.send_keys(ENTER).await.unwrap();
    wait_text(client, "main", "succeeded").await;
    tab_to(client, "#replay-button").await.send_keys(ENTER).await.unwrap();
    find(client, "#replay-confirm").await;
    tab_to(client, "#replay-confirm").await.send_keys(ENTER).await.unwrap();
    find(client, "#replay-new-event").await;
    tab_to(client, "#replay-new-event").await.send_keys(ENTER).await.unwrap();
    sink.wait_for(2).await;
    wait_text(client, "main", &id).await;

    // A phone: every view fits its width.
    client.set_window_size(390, 844).await.unwrap();
    for (name, path) in &views {
        client.goto(&relay.admin_url(path)).await.unwrap();
        find(client, "main h2").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!scrolls_sideways(client).await, "{name} scrolls sideways at 390 px");
        screenshot(client, &format!("{name}-phone")).await;
    }
}
