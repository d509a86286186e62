//! The demo as the crate's README and the presets page
//! (`policies/README.md`) show it: the page's copies of the platform policy
//! files are the files, and the commands of both, run with `bash` and
//! `curl` against the demo server on real sockets and in real time, print
//! what they claim.
//!
//! Each preset section's `sh` block starts the demo
//! (`cargo run -p voice-api -- --preset NAME`; here the same server code,
//! in process, on a free port) and then runs commands, some with a claim in
//! a trailing `# comment`. A claim is one of:
//!
//! * `ten 200s, then 429`: the status codes printed, in that order;
//! * `Header-Name: value`: a header of the response, exactly;
//! * `[label: ]NNN[, text]`: the response's status, and a part of its body;
//! * `[label: ]waits ~S s for a slot, then NNN`: the command takes S s
//!   (± 1 s) and prints the status code NNN.
//!
//! The README's first section's `console` block shows commands (`$ …`) and
//! their output, `…` standing for lines left out.

#[path = "../src/server.rs"]
mod server;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tower_ratelimit::{Policy, RateLimitLayer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The presets the presets page shows, one section each.
const PRESETS: [&str; 4] = ["flireo", "nixflex", "talkpilot", "exotel"];

/// Where the README's commands expect the demo.
const README_ADDR: &str = "127.0.0.1:3000";

/// The crate's README.
fn readme() -> String {
    std::fs::read_to_string(format!("{ROOT}/../README.md")).unwrap()
}

/// The presets page, beside the policy files.
fn presets_page() -> String {
    std::fs::read_to_string(format!("{ROOT}/policies/README.md")).unwrap()
}

/// A policy file without its leading comment block (the page it reads).
fn without_header(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap_or(lines.len());
    lines[start..].join("\n").trim_end().to_owned()
}

#[test]
fn every_preset_in_the_readme_is_its_file() {
    let readme = presets_page();
    for name in PRESETS {
        let file = std::fs::read_to_string(format!("{ROOT}/policies/{name}.toml")).unwrap();
        let marker = format!("`{name}.toml`:\n\n```toml\n");
        let start = readme
            .find(&marker)
            .unwrap_or_else(|| panic!("the presets page shows {name}.toml"))
            + marker.len();
        let end = start + readme[start..].find("\n```").unwrap();
        assert_eq!(
            &readme[start..end],
            without_header(&file),
            "the presets page's copy of {name}.toml"
        );
        tower_ratelimit::Policy::from_toml(&file).unwrap();
    }
}

#[test]
fn the_readme_has_a_section_for_each_preset_and_no_other() {
    let readme = presets_page();
    let shown: Vec<&str> = readme
        .lines()
        .filter(|line| line.starts_with("## "))
        .filter_map(|line| line.split("(`--preset ").nth(1)?.strip_suffix("`)"))
        .collect();
    assert_eq!(shown, PRESETS);
}

/// A demo server on a free loopback port, on its own runtime: dropping it
/// stops the server and closes its connections.
struct Demo {
    _runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
}

impl Demo {
    fn start(policy_toml: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let policy = Policy::from_toml(policy_toml).unwrap();
        let app = server::app(|router| router.layer(RateLimitLayer::new(policy)));
        let guards = server::Guards {
            header_timeout: Duration::from_secs(10),
            max_connections: 1_000,
        };
        runtime.spawn(server::serve(listener, app, guards, std::future::pending()));
        Demo {
            _runtime: runtime,
            addr,
        }
    }

    /// Runs a README command with `bash`, against this server. Commands it
    /// sends to the background (`&`) keep running after it returns.
    fn run(&self, command: &str) -> Ran {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let command = command.replace(README_ADDR, &self.addr.to_string());
        // Files rather than pipes: background commands keep their output
        // open, and only the command itself is waited for.
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let path = |stream: &str| {
            let name = format!(
                "tower-ratelimit-readme-{}-{run}.{stream}",
                std::process::id()
            );
            std::env::temp_dir().join(name)
        };
        let (out, err) = (path("out"), path("err"));
        let started = Instant::now();
        let status = Command::new("bash")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .expect("bash runs");
        let elapsed = started.elapsed();
        let ran = Ran {
            command,
            stdout: std::fs::read_to_string(&out).unwrap(),
            stderr: std::fs::read_to_string(&err).unwrap(),
            elapsed,
        };
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        assert!(status.success(), "{} failed: {status}", ran.describe());
        ran
    }
}

/// A command that ran, and what it printed.
struct Ran {
    command: String,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "`{}` (took {:?})\nstdout:\n{}\nstderr:\n{}",
            self.command, self.elapsed, self.stdout, self.stderr
        )
    }

    /// The status code: of the response `curl -i` printed, or the one code
    /// `-w '%{http_code}'` printed.
    fn status(&self) -> u16 {
        let first = self.stdout.split_whitespace().nth(1);
        let code = if self.stdout.starts_with("HTTP/") {
            first
        } else {
            Some(self.stdout.trim())
        };
        code.and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status code: {}", self.describe()))
    }

    /// The value of a header of the response `curl -i` printed.
    fn header(&self, name: &str) -> Option<&str> {
        let head = self.stdout.split("\r\n\r\n").next().unwrap_or_default();
        head.lines().skip(1).find_map(|line| {
            let (n, value) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn body(&self) -> &str {
        self.stdout
            .split_once("\r\n\r\n")
            .map_or(self.stdout.as_str(), |(_, body)| body)
    }
}

/// The command's lines of an `sh` block, continuations joined, each with
/// its claim.
fn commands(block: &str) -> Vec<(String, Option<String>)> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                let command = std::mem::take(&mut current);
                let (command, claim) = match command.split_once(" # ") {
                    Some((command, claim)) => (command, Some(claim.trim().to_owned())),
                    None => (command.as_str(), None),
                };
                commands.push((command.trim().to_owned(), claim));
            }
        }
    }
    commands
}

/// The README section under the heading that contains `heading`, up to
/// the next heading.
fn section(readme: &str, heading: &str) -> String {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("the page has a heading with {heading}"));
    let rest = &readme[start + heading.len()..];
    let end = ["\n## ", "\n### "]
        .iter()
        .filter_map(|heading| rest.find(heading))
        .min()
        .unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The contents of the fenced blocks of `lang` in `text`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    text.split(&fence)
        .skip(1)
        .map(|rest| rest[..rest.find("```").unwrap()].to_owned())
        .collect()
}

fn number(word: &str) -> usize {
    match word {
        "ten" => 10,
        "sixty" => 60,
        other => panic!("no number for `{other}`"),
    }
}

/// Checks a README claim against what its command printed.
fn check(claim: &str, ran: &Ran) {
    if let Some((count, rest)) = claim.split_once(" 200s, then ") {
        let mut expected = vec!["200"; number(count)];
        expected.push(rest);
        let printed: Vec<&str> = ran.stdout.split_whitespace().collect();
        assert_eq!(printed, expected, "`{claim}`: {}", ran.describe());
        return;
    }
    let (label, fact) = claim.split_once(": ").unwrap_or(("", claim));
    let is_header = !label.is_empty()
        && label.contains('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if is_header {
        assert_eq!(
            ran.header(label),
            Some(fact),
            "`{claim}`: {}",
            ran.describe()
        );
    } else if let Some(rest) = fact.strip_prefix("waits ~") {
        let (secs, status) = rest
            .split_once(" s for a slot, then ")
            .unwrap_or_else(|| panic!("cannot check the README's claim `{claim}`"));
        let secs: f64 = secs.parse().unwrap();
        let took = ran.elapsed.as_secs_f64();
        assert!((took - secs).abs() <= 1.0, "`{claim}`: took {took} s");
        assert_eq!(
            ran.status().to_string(),
            status,
            "`{claim}`: {}",
            ran.describe()
        );
    } else {
        let (status, text) = fact.split_once(", ").unwrap_or((fact, ""));
        if status.len() != 3 || !status.bytes().all(|b| b.is_ascii_digit()) {
            panic!("cannot check the README's claim `{claim}`");
        }
        assert_eq!(
            ran.status().to_string(),
            status,
            "`{claim}`: {}",
            ran.describe()
        );
        assert!(ran.body().contains(text), "`{claim}`: {}", ran.describe());
    }
}

/// Waits, if needed, until at least 10 s are left in the current minute:
/// fixed windows reset at each minute, and a claim such as "ten 200s,
/// then 429" holds within one.
fn clear_of_a_minute_boundary() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into_minute = Duration::from_millis((now.as_millis() % 60_000) as u64);
    if into_minute > Duration::from_secs(50) {
        std::thread::sleep(Duration::from_secs(60) - into_minute + Duration::from_millis(50));
    }
}

fn bash_and_curl_or_panic() {
    let found = Command::new("bash")
        .args(["-c", "curl --version"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "these tests run the README's commands: they need `bash` and `curl` on PATH"
    );
}

/// Runs the `sh` block of a preset's section and checks every claim in it.
fn run_preset_section(name: &str) {
    bash_and_curl_or_panic();
    let readme = presets_page();
    let text = section(&readme, &format!("(`--preset {name}`)"));
    let block = blocks(&text, "sh");
    assert_eq!(block.len(), 1, "one sh block in the {name} section");
    let commands = commands(&block[0]);
    assert_eq!(
        commands[0],
        (format!("cargo run -p voice-api -- --preset {name}"), None),
        "the {name} section starts the demo"
    );
    let policy = std::fs::read_to_string(format!("{ROOT}/policies/{name}.toml")).unwrap();
    let demo = Demo::start(&policy);
    if policy.contains("\"fixed_window\"") {
        clear_of_a_minute_boundary();
    }
    let mut claims = 0;
    for (command, claim) in &commands[1..] {
        let ran = demo.run(command);
        if let Some(claim) = claim {
            check(claim, &ran);
            claims += 1;
        }
    }
    assert!(claims > 0, "the {name} section claims nothing");
}

#[test]
fn flireo_commands_print_what_the_readme_says() {
    run_preset_section("flireo");
}

#[test]
fn nixflex_commands_print_what_the_readme_says() {
    run_preset_section("nixflex");
}

#[test]
fn talkpilot_commands_print_what_the_readme_says() {
    run_preset_section("talkpilot");
}

#[test]
fn exotel_commands_print_what_the_readme_says() {
    run_preset_section("exotel");
}

/// Whether a line of the README's console output matches a printed one.
/// `x-ratelimit-reset` shows an example Unix time: the printed one must be
/// a Unix time within the next minute.
fn line_matches(shown: &str, printed: &str, now: u64) -> bool {
    match (
        shown.strip_prefix("x-ratelimit-reset: "),
        printed.strip_prefix("x-ratelimit-reset: "),
    ) {
        (Some(example), Some(value)) => {
            example.parse::<u64>().is_ok()
                && value
                    .parse::<u64>()
                    .is_ok_and(|t| (now..=now + 60).contains(&t))
        }
        _ => shown == printed,
    }
}

/// Whether `printed` shows `shown`'s lines in order, adjacent unless a `…`
/// line stands between them, and nothing before or after unless a `…`
/// stands there.
fn output_matches(shown: &[&str], printed: &[&str], now: u64) -> bool {
    match shown.split_first() {
        None => printed.is_empty(),
        Some((&"…", rest)) => {
            (0..=printed.len()).any(|skip| output_matches(rest, &printed[skip..], now))
        }
        Some((line, rest)) => printed.split_first().is_some_and(|(first, more)| {
            line_matches(line, first, now) && output_matches(rest, more, now)
        }),
    }
}

#[test]
fn the_first_sections_commands_print_what_the_readme_shows() {
    bash_and_curl_or_panic();
    let readme = readme();
    let first = &readme[..readme.find("\n## ").unwrap()];
    let block = blocks(first, "console");
    assert_eq!(block.len(), 1, "one console block in the first section");
    let demo = Demo::start(include_str!("../policies/default.toml"));
    let mut shown_commands = 0;
    for part in format!("\n{}", block[0]).split("\n$ ").skip(1) {
        let (command, output) = part.split_once('\n').unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ran = demo.run(command);
        let shown: Vec<&str> = output.lines().collect();
        let printed: Vec<&str> = ran.stdout.lines().collect();
        assert!(
            output_matches(&shown, &printed, now),
            "`{command}` printed\n{}\nthe README shows\n{output}",
            ran.stdout
        );
        shown_commands += 1;
    }
    assert_eq!(shown_commands, 2);
}
