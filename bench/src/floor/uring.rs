//! The floor's writes submitted through io_uring instead of one `writev` system call each
//! (`bench floor --submit io-uring`): does handing the kernel a whole round of writes in one
//! `io_uring_enter` make a loopback write cheaper?
//!
//! One ring per measured point, made by the writer thread, set up as a single-issuer ring with
//! deferred task work where the kernel offers it (the setup a server's fan-out thread would
//! use). A round queues one `IORING_OP_WRITEV` of the k frames per socket, up to the ring's
//! size at a time, submits them with one `io_uring_enter` and reaps every completion before the
//! next round. A socket write the kernel can do at once is done inside that call, on the
//! writer's CPU; one that would block is retried by the kernel when the socket is writable
//! (possibly on an `iou-wrk` thread of this process). The CPU counted is the writer thread's
//! plus every `iou-` thread's of this process, so work moved off the writer still counts.

use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

/// Entries of the submission queue: a round of more sockets is submitted in chunks this big.
const RING_ENTRIES: u32 = 4096;

/// A ring for the writer thread that calls this: single-issuer with deferred task work, or a
/// default ring on kernels that refuse that setup (before 6.1).
pub(super) fn ring() -> io::Result<IoUring> {
    match IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(RING_ENTRIES) {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder().build(RING_ENTRIES),
        Err(e) => Err(io::Error::new(e.kind(), format!("io_uring_setup: {e}"))),
    }
}

/// One round: a writev of `iov` (`total` bytes) to every socket of `writers`, submitted in
/// chunks of the ring's size. Returns the io_uring_enter calls made and the short writes
/// (completed with a blocking writev, as the syscall floor does).
pub(super) fn write_round(
    ring: &mut IoUring,
    writers: &[TcpStream],
    iov: &[IoSlice<'_>],
    total: u64,
) -> io::Result<(u64, u64)> {
    let (mut enters, mut short) = (0, 0);
    let chunk = ring.params().sq_entries() as usize;
    for (c, socks) in writers.chunks(chunk).enumerate() {
        {
            let mut sq = ring.submission();
            for (i, w) in socks.iter().enumerate() {
                // IoSlice is guaranteed ABI-compatible with iovec on Unix.
                let entry = opcode::Writev::new(
                    types::Fd(w.as_raw_fd()),
                    iov.as_ptr().cast::<libc::iovec>(),
                    iov.len() as u32,
                )
                .build()
                .user_data((c * chunk + i) as u64);
                // SAFETY: the fd and the iovecs (and the frames they point to) outlive the
                // operation: every completion is reaped below, before this function returns.
                // The queue has room: at most sq_entries are pushed between submissions.
                unsafe { sq.push(&entry) }
                    .map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        let mut left = socks.len();
        while left > 0 {
            ring.submit_and_wait(1)?;
            enters += 1;
            // Reaped in place: nothing allocated per submission inside the measured loop.
            for cqe in ring.completion() {
                let (idx, res) = (cqe.user_data(), cqe.result());
                left -= 1;
                if res < 0 {
                    return Err(io::Error::from_raw_os_error(-res));
                }
                if res as u64 != total {
                    short += 1;
                    super::finish_write(&writers[idx as usize], iov, res as usize)?;
                }
            }
        }
    }
    Ok((enters, short))
}

/// CPU time so far of this process's io_uring kernel threads (`iou-wrk-*`, `iou-sqp-*`): work
/// the ring moved off the writer thread.
pub(super) fn helper_threads_cpu() -> io::Result<std::time::Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if !comm.starts_with("iou-") {
            continue;
        }
        // schedstat: time on the CPU (ns), time waiting, timeslices.
        if let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) {
            ns += stat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    Ok(std::time::Duration::from_nanos(ns))
}
