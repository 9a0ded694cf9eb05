//! Every message a test's [`Client`](super::Client) receives is checked against the protocol's
//! machine-readable form, docs/asyncapi.yaml, by `node docs/asyncapi/validate.mjs --serve` (one
//! process per test binary, started as the first client connects): so a message the suite sees
//! that the document does not describe fails the test that saw it. The first [`PER_SHAPE`]
//! messages of each shape (channel kind or op, book type, set of fields) are sent to the
//! validator, which covers every variant the suite provokes without a round trip per message of
//! a flood.
//!
//! Nothing waits for Node.js to start: messages that come before the validator says `ready`
//! are kept and checked at the first message after it, or when their client is dropped (which
//! waits for the validator then). So the check never stalls a test's runtime while its
//! gateway streams, which would skew what timing-minded tests measure.
//!
//! Without Node.js or the validator's packages (`npm ci` at the repository root) the check is
//! skipped with a note, unless TICKFAN_REQUIRE_TOOLS is set (CI), where that fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// Messages of one shape checked per test process.
const PER_SHAPE: u32 = 3;

/// The packages validate.mjs needs in its --serve mode.
const PACKAGES: [&str; 2] = ["ajv", "js-yaml"];

/// Longest wait for the validator to start, when a client is dropped before it did.
const BOOT_WAIT: Duration = Duration::from_secs(30);

struct Validator {
    _child: Child,
    input: ChildStdin,
    /// The validator's answers, once it said `ready` (a thread waits for that meanwhile).
    answers: Option<BufReader<ChildStdout>>,
    booting: Option<Receiver<BufReader<ChildStdout>>>,
    /// Messages that came before `ready`.
    pending: Vec<Vec<u8>>,
    seen: HashMap<String, u32>,
}

enum State {
    Unstarted,
    Running(Validator),
    Unavailable,
}

static STATE: Mutex<State> = Mutex::new(State::Unstarted);

/// Starts the validator if it is not running yet, without waiting for it: called as a client
/// connects, so that Node.js boots while the test goes on.
pub fn warm_up() {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if let State::Unstarted = *state {
        *state = start();
    }
}

/// Checks `raw` (parsed: `v`), a message the gateway sent; panics, naming what is wrong, when
/// docs/asyncapi.yaml does not allow it (or an earlier message kept for the validator's start).
pub fn check(raw: &[u8], v: &Value) {
    let verdict = {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if let State::Unstarted = *state {
            *state = start();
        }
        let State::Running(validator) = &mut *state else { return };
        let seen = validator.seen.entry(shape(v)).or_default();
        if *seen >= PER_SHAPE {
            return;
        }
        *seen += 1;
        // One message per line: re-encode the (never seen) message with a raw newline in it.
        let line = if raw.contains(&b'\n') { v.to_string().into_bytes() } else { raw.to_vec() };
        validator.pending.push(line);
        validator.drain(None)
    };
    fail_on(verdict);
}

/// Checks the messages kept while the validator started, waiting for it (up to
/// [`BOOT_WAIT`]): a client calls it when dropped.
pub fn flush() {
    let verdict = {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let State::Running(validator) = &mut *state else { return };
        if validator.pending.is_empty() {
            return;
        }
        validator.drain(Some(BOOT_WAIT))
    };
    if !std::thread::panicking() {
        fail_on(verdict);
    }
}

fn fail_on(verdict: Result<(), (Vec<u8>, String)>) {
    if let Err((message, why)) = verdict {
        panic!(
            "the gateway sent a message docs/asyncapi.yaml does not allow:\n{}\n{why}",
            String::from_utf8_lossy(&message)
        );
    }
}

/// `trades.<SYM> op= type= fields`: what makes two messages the same variant.
fn shape(v: &Value) -> String {
    let channel = v["ch"].as_str().map(|ch| match ch.split_once('.') {
        Some((kind, rest)) => {
            let suffix = rest.find(['.', '@']).map_or("", |i| &rest[i..]);
            format!("{kind}.<SYM>{suffix}")
        }
        None => ch.to_owned(),
    });
    let mut fields: Vec<&str> =
        v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    fields.sort_unstable();
    format!(
        "{} op={} type={} {}",
        channel.unwrap_or_default(),
        v["op"].as_str().unwrap_or(""),
        v["type"].as_str().unwrap_or(""),
        fields.join(",")
    )
}

fn start() -> State {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository");
    let required = std::env::var_os("TICKFAN_REQUIRE_TOOLS").is_some();
    let unavailable = |why: String| {
        assert!(!required, "messages cannot be checked against docs/asyncapi.yaml: {why}");
        eprintln!("NOTE: messages not checked against docs/asyncapi.yaml: {why}");
        State::Unavailable
    };
    let modules = root.join("node_modules");
    if let Some(missing) = PACKAGES.iter().find(|p| !modules.join(p).exists()) {
        return unavailable(format!("node_modules/{missing} is missing (npm ci at the root)"));
    }
    let spawned = Command::new("node")
        .args(["docs/asyncapi/validate.mjs", "--serve"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return unavailable(format!("node does not run ({e}; Node.js 20 is needed)")),
    };
    let mut answers = BufReader::new(child.stdout.take().expect("piped"));
    let (ready, booting) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        if answers.read_line(&mut first).is_ok() && first.trim_end() == "ready" {
            let _ = ready.send(answers);
        } // else: the sender is dropped, and the validator counts as ended
    });
    State::Running(Validator {
        input: child.stdin.take().expect("piped"),
        _child: child,
        answers: None,
        booting: Some(booting),
        pending: Vec::new(),
        seen: HashMap::new(),
    })
}

impl Validator {
    /// Checks the pending messages if the validator is ready (waiting up to `wait` for it, or
    /// not at all); the first one it refuses, with why.
    fn drain(&mut self, wait: Option<Duration>) -> Result<(), (Vec<u8>, String)> {
        if self.answers.is_none() {
            let booting = self.booting.as_ref().expect("booting until answers");
            let got = match wait {
                None => booting.try_recv().map_err(|e| e == TryRecvError::Disconnected),
                Some(wait) => booting.recv_timeout(wait).map_err(|_| true),
            };
            match got {
                Ok(answers) => self.answers = Some(answers),
                Err(false) => return Ok(()), // still starting: the messages wait
                Err(true) => {
                    let ended = "the validator (validate.mjs --serve) did not start".to_owned();
                    return Err((self.pending.pop().unwrap_or_default(), ended));
                }
            }
        }
        for message in std::mem::take(&mut self.pending) {
            if let Err(why) = self.ask(&message) {
                return Err((message, why));
            }
        }
        Ok(())
    }

    /// The validator's verdict on one message line.
    fn ask(&mut self, line: &[u8]) -> Result<(), String> {
        let answers = self.answers.as_mut().expect("ready");
        let mut answer = String::new();
        let asked = self.input.write_all(line).and_then(|()| self.input.write_all(b"\n"));
        let answered =
            asked.and_then(|()| self.input.flush()).and_then(|()| answers.read_line(&mut answer));
        match answered {
            Ok(0) | Err(_) => Err("the validator (validate.mjs --serve) ended".to_owned()),
            Ok(_) if answer.starts_with("ok ") => Ok(()),
            Ok(_) => Err(answer.trim_end().to_owned()),
        }
    }
}
