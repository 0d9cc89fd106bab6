//! A small WebDriver client driving Debian's headless Chromium through chromedriver,
//! for end-to-end tests of the web pages. Screenshots go to `test-output/screenshots/`.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session. Dropping it ends the session and stops chromedriver.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: PathBuf,
    shots: PathBuf,
}

fn find_program(names: &[&str], fallbacks: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    fallbacks.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Where test artefacts (screenshots) are written.
pub fn output_dir() -> PathBuf {
    let dir = std::env::var_os("LEDGER_TEST_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-output"));
    std::fs::create_dir_all(&dir).ok();
    dir
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Fails with the install
    /// command when the Debian packages are missing (`scripts/test` installs them).
    pub async fn start(test_name: &str) -> anyhow::Result<Self> {
        let chromium = find_program(&["chromium", "chromium-browser"], &["/usr/bin/chromium"]).ok_or_else(|| {
            anyhow::anyhow!(
                "Chromium is not installed: run `apt-get install -y chromium chromium-driver` (scripts/test does)"
            )
        })?;
        let chromedriver = find_program(&["chromedriver"], &["/usr/bin/chromedriver"]).ok_or_else(|| {
            anyhow::anyhow!(
                "chromedriver is not installed: run `apt-get install -y chromium-driver` (scripts/test does)"
            )
        })?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(chromedriver)
            // Its own process group, so Drop can stop Chromium's processes with it.
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        // chromedriver is ready when /status says so.
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = std::env::temp_dir().join(format!("ledger-chromium-{}", uuid::Uuid::new_v4().simple()));
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.display()), "--window-size=1280,900"]
        }}}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = created["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("chromedriver refused the session: {created}"))?
            .to_owned();
        let shots = output_dir().join("screenshots").join(test_name);
        // One run's pages only, numbered from 01.
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots)?;
        Ok(Self {
            driver,
            base,
            session,
            http,
            profile,
            shots,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let value: Value = req.send().await?.json().await?;
        if let Some(error) = value["value"]["error"].as_str() {
            anyhow::bail!("webdriver {path}: {error}: {}", value["value"]["message"]);
        }
        Ok(value["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .call(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn source(&self) -> anyhow::Result<String> {
        Ok(self
            .call(reqwest::Method::GET, "/source", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Waits (up to 10 s) for an element matching `css`; returns its WebDriver id.
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            match self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({ "using": "css selector", "value": css })),
                )
                .await
            {
                Ok(v) => return Ok(v[ELEMENT].as_str().unwrap_or_default().to_owned()),
                Err(e) if started.elapsed() > Duration::from_secs(10) => {
                    return Err(e.context(format!("no element {css}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({})))
            .await
            .map(drop)
    }

    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({})))
            .await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css).await?;
        Ok(self
            .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Presses a key in the focused element (e.g. "\u{E007}" Enter, "\u{E004}" Tab).
    pub async fn keys(&self, css: &str, keys: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": keys })),
        )
        .await
        .map(drop)
    }

    /// Moves into the frame `css` points at (`None`: back to the top page).
    pub async fn frame(&self, css: Option<&str>) -> anyhow::Result<()> {
        let id = match css {
            Some(css) => json!({ ELEMENT: self.find(css).await? }),
            None => serde_json::Value::Null,
        };
        self.call(reqwest::Method::POST, "/frame", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// Waits until the current URL contains `fragment`.
    pub async fn wait_for_url(&self, fragment: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let url = self.url().await?;
            if url.contains(fragment) {
                return Ok(url);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "still at {url}, expected {fragment}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the page as `<n>-<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default())?;
        let n = std::fs::read_dir(&self.shots).map(|d| d.count()).unwrap_or(0) + 1;
        let path = self.shots.join(format!("{n:02}-{name}.png"));
        std::fs::write(&path, bytes)?;
        Ok(path)
    }
}

/// Ends a WebDriver session with a blocking request (Drop cannot await): chromedriver
/// then quits Chromium.
fn end_session(base: &str, session: &str) {
    use std::io::{Read as _, Write as _};
    let Some(addr) = base.strip_prefix("http://") else {
        return;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request =
        format!("DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing chromedriver alone leaves Chromium's processes running, loading the
        // machine for every later test: end the session, then stop the whole group.
        end_session(&self.base, &self.session);
        // Only while chromedriver still leads its group, and spelled so no `kill` can read
        // the group as a signal or as -1 (everything): a session died with every process on
        // the machine during this test, and this is the only kill that reaches beyond it.
        if let (Ok(None), Ok(pid)) = (self.driver.try_wait(), i32::try_from(self.driver.id()))
            && pid > 1
        {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
