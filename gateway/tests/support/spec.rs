//! Every message a test's [`Client`](super::Client) receives is checked against the protocol's
//! machine-readable form, docs/asyncapi.yaml, by `node docs/asyncapi/validate.mjs --serve` (one
//! process per test binary, started with its first message): so a message the suite sees that
//! the document does not describe fails the test that saw it. The first [`PER_SHAPE`] messages
//! of each shape (channel kind or op, book type, set of fields) are sent to the validator, which
//! covers every variant the suite provokes without a round trip per message of a flood.
//!
//! Without Node.js or the validator's packages (`npm ci` at the repository root) the check is
//! skipped with a note, unless TICKFAN_REQUIRE_TOOLS is set (CI), where that fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;

/// Messages of one shape checked per test process.
const PER_SHAPE: u32 = 3;

/// The packages validate.mjs needs in its --serve mode.
const PACKAGES: [&str; 2] = ["ajv", "js-yaml"];

struct Validator {
    _child: Child,
    input: ChildStdin,
    answers: BufReader<ChildStdout>,
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
/// docs/asyncapi.yaml does not allow it.
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
        validator.ask(raw, v)
    };
    if let Err(why) = verdict {
        panic!(
            "the gateway sent a message docs/asyncapi.yaml does not allow:\n{}\n{why}",
            String::from_utf8_lossy(raw)
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
    match spawned {
        Ok(mut child) => State::Running(Validator {
            input: child.stdin.take().expect("piped"),
            answers: BufReader::new(child.stdout.take().expect("piped")),
            _child: child,
            seen: HashMap::new(),
        }),
        Err(e) => unavailable(format!("node does not run ({e}; Node.js 20 is needed)")),
    }
}

impl Validator {
    /// The validator's verdict on one message.
    fn ask(&mut self, raw: &[u8], v: &Value) -> Result<(), String> {
        // One message per line: re-encode the (never seen) message with a raw newline in it.
        let line = if raw.contains(&b'\n') { v.to_string().into_bytes() } else { raw.to_vec() };
        let mut answer = String::new();
        let asked = self.input.write_all(&line).and_then(|()| self.input.write_all(b"\n"));
        let answered = asked
            .and_then(|()| self.input.flush())
            .and_then(|()| self.answers.read_line(&mut answer));
        match answered {
            Ok(0) | Err(_) => Err("the validator (validate.mjs --serve) ended".to_owned()),
            Ok(_) if answer.starts_with("ok ") => Ok(()),
            Ok(_) => Err(answer.trim_end().to_owned()),
        }
    }
}
