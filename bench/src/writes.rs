//! Counting a server's write-family syscalls over the measured window with `perf stat` on the
//! syscall tracepoints: how many `write`, `writev`, `sendto` and `sendmsg` calls a server makes
//! per delivered message says how well it batches (one write per message per connection, or
//! many messages per write).
//!
//! Everything here fails soft: without `perf`, without permission for the tracepoints, or
//! with an unreadable result, the count is simply not there and the reason says why.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// The tracepoints counted.
pub const EVENTS: [&str; 4] = [
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_sendmsg",
];

/// Time allowed for perf to start (it parses the tracepoint formats first: ~0.2 s on a
/// loaded 2-core VM) and to answer a control command.
const PERF_READY: Duration = Duration::from_secs(10);

/// A `perf stat` attached to the server with its counters disabled, switched on and off
/// through its control FIFO, so that the count covers exactly the measured window (perf's own
/// start-up is not in it).
#[derive(Debug)]
pub struct WriteCounter {
    child: Child,
    dir: PathBuf,
    ctl: File,
    acks: mpsc::Receiver<String>,
}

/// Attaches `perf stat` to the processes `pids`, leaving out the threads `exclude` (`(pid,
/// tid)`, e.g. the gateway's feed thread), and waits until it is ready with its counters
/// off. Threads that start later are counted only when nothing is excluded (then perf follows
/// whole processes).
pub fn start(pids: &[u32], exclude: &[(u32, u32)]) -> Result<WriteCounter, String> {
    if pids.is_empty() {
        return Err("no server process to count".into());
    }
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let (flag, targets) = if exclude.is_empty() {
        ("-p", list(pids))
    } else {
        let mut tids = Vec::new();
        for &pid in pids {
            tids.extend(threads(pid)?.into_iter().filter(|tid| !exclude.contains(&(pid, *tid))));
        }
        ("-t", list(&tids))
    };
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bench-writes-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (ctl, ack) = (dir.join("ctl"), dir.join("ack"));
    let mkfifo = Command::new("mkfifo").arg(&ctl).arg(&ack).status();
    if !mkfifo.is_ok_and(|s| s.success()) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err("cannot make perf's control FIFOs (mkfifo)".into());
    }
    let spawned = Command::new("perf")
        .args(["stat", "-x,", "-o"])
        .arg(dir.join("out.csv"))
        .args(["-D", "-1", "--control"])
        .arg(format!("fifo:{},{}", ctl.display(), ack.display()))
        .args(["-e", &EVENTS.join(","), flag, &targets])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound => "perf is not installed".to_owned(),
                _ => format!("cannot run perf: {e}"),
            });
        }
    };
    // Opened read-write, a FIFO opens at once on Linux, whether or not perf has opened its end.
    let open = |path: &PathBuf| OpenOptions::new().read(true).write(true).open(path);
    let (ctl, ack) = match (open(&ctl), open(&ack)) {
        (Ok(c), Ok(a)) => (c, a),
        _ => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            return Err("cannot open perf's control FIFOs".into());
        }
    };
    let (tx, acks) = mpsc::channel();
    // Reads perf's acks. It ends with this process: it holds a write end of the FIFO itself.
    std::thread::spawn(move || {
        for line in BufReader::new(ack).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut counter = WriteCounter { child, dir, ctl, acks };
    // Ready once it answers.
    counter.command("disable")?;
    Ok(counter)
}

/// The thread ids of process `pid` now (`/proc/PID/task`).
fn threads(pid: u32) -> Result<Vec<u32>, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("cannot list the threads of {pid}: {e}"))?;
    Ok(tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect())
}

impl WriteCounter {
    /// Sends a control command and waits for perf's `ack`.
    fn command(&mut self, cmd: &str) -> Result<(), String> {
        self.ctl.write_all(format!("{cmd}\n").as_bytes()).map_err(|e| format!("perf: {e}"))?;
        match self.acks.recv_timeout(PERF_READY) {
            Ok(_) => Ok(()),
            Err(_) => Err(self.failure()),
        }
    }

    /// Why perf did not answer: its exit and first line of stderr, if it ended.
    fn failure(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                let why = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
                format!("perf failed ({status}): {}", why.trim())
            }
            _ => format!("perf did not answer within {PERF_READY:?}"),
        }
    }

    /// Starts counting.
    pub fn enable(&mut self) -> Result<(), String> {
        self.command("enable")
    }

    /// Stops counting, ends perf (SIGINT makes it write its counts) and returns the total.
    pub fn finish(mut self) -> Result<u64, String> {
        self.command("disable")?;
        let pid = self.child.id().to_string();
        let interrupted = Command::new("kill").args(["-INT", &pid]).status();
        if !interrupted.is_ok_and(|s| s.success()) {
            return Err("cannot interrupt perf (kill -INT)".into());
        }
        let status = self.child.wait().map_err(|e| format!("perf: {e}"))?;
        let text = std::fs::read_to_string(self.dir.join("out.csv")).unwrap_or_default();
        if text.is_empty() {
            return Err(format!("perf wrote no counts ({status})"));
        }
        parse(&text)
    }
}

impl Drop for WriteCounter {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sums the counts of `perf stat -x,` output. A tracepoint that was `<not counted>` (its
/// threads never ran) counts 0; one `<not supported>` makes the whole count unusable.
pub fn parse(text: &str) -> Result<u64, String> {
    let mut total = 0u64;
    let mut seen = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let mut fields = line.split(',');
        let (count, event) = (fields.next().unwrap_or(""), fields.nth(1).unwrap_or(""));
        if !EVENTS.contains(&event) {
            continue;
        }
        seen += 1;
        total += match count {
            "<not counted>" => 0,
            "<not supported>" => return Err(format!("perf cannot count {event} here")),
            n => n.parse::<u64>().map_err(|_| format!("unreadable perf output: {line}"))?,
        };
    }
    if seen == 0 {
        return Err("perf counted nothing".into());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_stat_csv() {
        let text = "# started on Thu\n\n\
            14560,,syscalls:sys_enter_write,2145,100.00,,\n\
            3,,syscalls:sys_enter_writev,2145,100.00,,\n\
            <not counted>,,syscalls:sys_enter_sendto,0,100.00,,\n\
            0,,syscalls:sys_enter_sendmsg,2145,100.00,,\n";
        assert_eq!(parse(text), Ok(14563));
        assert!(parse("").is_err());
        assert!(parse("<not supported>,,syscalls:sys_enter_write,0,100.00,,\n").is_err());
        assert!(parse("x,,syscalls:sys_enter_write,0,100.00,,\n").is_err());
    }

    #[test]
    fn counts_exactly_the_enabled_window_or_says_why_not() {
        // The writes come from one thread of this process and perf counts that thread only:
        // the other tests running meanwhile write too, tens of thousands of times.
        let me = std::process::id();
        let path = std::env::temp_dir().join(format!("bench-w-{me}"));
        let (go, orders) = mpsc::channel::<usize>();
        let (done, finished) = mpsc::channel::<u32>();
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                // "/proc/thread-self" links to "<pid>/task/<tid>".
                let link = std::fs::read_link("/proc/thread-self").unwrap();
                let tid = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
                done.send(tid).unwrap();
                for n in orders {
                    for _ in 0..n {
                        std::fs::write(&path, b"x").unwrap();
                    }
                    done.send(tid).unwrap();
                }
            }
        });
        let tid = finished.recv().unwrap();
        let others: Vec<(u32, u32)> =
            threads(me).unwrap().into_iter().filter(|&t| t != tid).map(|t| (me, t)).collect();
        let write = |n: usize| {
            go.send(n).unwrap();
            finished.recv().unwrap();
        };
        // perf may be missing or refused on a developer's machine: then only the reason.
        let mut counter = match start(&[me], &others) {
            Ok(c) => c,
            Err(why) => return assert!(why.contains("perf"), "{why}"),
        };
        write(500); // before the window: not counted
        counter.enable().unwrap();
        write(300);
        let n = counter.finish().unwrap();
        drop(go);
        writer.join().unwrap();
        let _ = std::fs::remove_file(&path);
        // std::fs::write is one write(2) a call.
        assert_eq!(n, 300);
    }
}
