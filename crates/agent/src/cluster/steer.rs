//! Proxy mode without the copy: the kernel hands each new connection on the public port
//! straight to a ready instance's own listening socket, chosen round-robin by a BPF
//! `sk_lookup` program (Linux 5.9+, `CAP_BPF` and `CAP_NET_ADMIN`: an agent running as
//! root). Proxying a request costs two extra loopback TCP sends and a wake-up of the
//! proxy thread, which for a small HTTP app is as much CPU as the app itself
//! (`bench/cluster`); a steered connection costs nothing after its SYN.
//!
//! The agent keeps its own listener on the public port: when the program finds no
//! instance (none ready, an instance that just crashed), the kernel's ordinary lookup
//! delivers the connection to it and the user-space proxy waits for an instance as
//! before. So the steering is an accelerator with the same rules, never a second
//! balancer that could disagree: only instances the proxy would pick are in its table.
//!
//! The pieces, all owned by [`Steering`] and released when it drops:
//! - an array map with the number of instances and a round-robin counter;
//! - a `SOCKMAP` holding the instances' listening sockets at keys `0..n`. A socket
//!   leaves it by itself when its last descriptor closes (the instance exited), so a
//!   crash takes an instance out of rotation at once, before the agent notices;
//! - the program, and the link attaching it to the agent's network namespace.
//!
//! The instances' listeners are the sockets their programs bound on the private `PORT`;
//! the agent copies each one out of the instance with `pidfd_getfd(2)`, stores it in the
//! map and closes its copy, so an exiting instance still closes its listener.
//!
//! No crate covers this: aya and libbpf-rs load compiled BPF objects, which needs clang
//! or bpf-linker at build time. The program is 37 instructions, assembled below, and the
//! few `bpf(2)` calls are made directly.

#![allow(unsafe_code)] // bpf(2) and pidfd_getfd(2) have no safe wrapper here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Most instances an app can have steered; more take the user-space path.
const MAX_INSTANCES: u32 = 1024;

/// Whether this agent may try to steer connections in the kernel: unless the operator
/// turned it off with `FLEET_PROXY_STEERING=0` (the user-space proxy then carries every
/// connection, as it does where the kernel or the agent's privileges do not allow it).
pub fn allowed() -> bool {
    !matches!(
        std::env::var("FLEET_PROXY_STEERING").as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

/// The kernel-side balancer of one public port; dropping it detaches the program.
pub struct Steering {
    state: OwnedFd,
    sockets: OwnedFd,
    _program: OwnedFd,
    _link: OwnedFd,
    /// How many keys of `sockets` were filled by the last update.
    filled: u32,
}

/// An attached steering program, between two agent images.
#[derive(Debug)]
pub struct SteeringCarry {
    pub state: OwnedFd,
    pub sockets: OwnedFd,
    pub program: OwnedFd,
    pub link: OwnedFd,
    pub filled: u32,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("filled", &self.filled)
            .finish()
    }
}

impl Steering {
    /// Attaches a program steering TCP/IPv4 connections to `port` in this network
    /// namespace. Fails without the privileges or on kernels without `sk_lookup`.
    pub fn attach(port: u16) -> io::Result<Steering> {
        let state = map_create(MAP_TYPE_ARRAY, 4, 16, 1, "fleet_rr")?;
        let sockets = map_create(MAP_TYPE_SOCKMAP, 4, 8, MAX_INSTANCES, "fleet_socks")?;
        let code = program(port, state.as_raw_fd(), sockets.as_raw_fd());
        let program = prog_load(&code)?;
        let netns = std::fs::File::open("/proc/self/ns/net")?;
        let link = link_create(program.as_raw_fd(), netns.as_raw_fd())?;
        Ok(Steering {
            state,
            sockets,
            _program: program,
            _link: link,
            filled: 0,
        })
    }

    /// The program's descriptors, for the next agent image (`fleet update`): the
    /// program stays attached as long as its link is open, so steering never pauses.
    pub fn hand_over(self) -> SteeringCarry {
        SteeringCarry {
            state: self.state,
            sockets: self.sockets,
            program: self._program,
            link: self._link,
            filled: self.filled,
        }
    }

    /// Other descriptors of the same maps, program and link.
    pub fn copy(&self) -> io::Result<SteeringCarry> {
        Ok(SteeringCarry {
            state: self.state.try_clone()?,
            sockets: self.sockets.try_clone()?,
            program: self._program.try_clone()?,
            link: self._link.try_clone()?,
            filled: self.filled,
        })
    }

    /// Takes over the program another agent image attached.
    pub fn adopt(carry: SteeringCarry) -> Steering {
        Steering {
            state: carry.state,
            sockets: carry.sockets,
            _program: carry.program,
            _link: carry.link,
            filled: carry.filled,
        }
    }

    /// Makes the ready instances, as `(pid, private port)`, the ones new connections go
    /// to. Returns how many are steered; an instance whose listener cannot be found or
    /// copied (it listens in a process the agent may not inspect) is left out, so its
    /// connections take the proxy. Nothing is steered when none can be.
    pub fn set(&mut self, ready: &[(i32, u16)]) -> usize {
        let mut n: u32 = 0;
        for &(pid, port) in ready.iter().take(MAX_INSTANCES as usize) {
            let Some(socket) = copy_listener(pid, port) else {
                tracing::debug!(pid, port, "no listener to steer to");
                continue;
            };
            if let Err(error) =
                map_update(&self.sockets, n, &(socket.as_raw_fd() as u64).to_ne_bytes())
            {
                tracing::debug!(pid, port, %error, "cannot steer to this listener");
                continue;
            }
            n += 1;
        }
        // The count first: between the two steps a lookup finds a stale or missing key,
        // and a missing key means the proxy takes that connection.
        let mut value = [0u8; 16];
        value[..4].copy_from_slice(&n.to_ne_bytes());
        if let Err(error) = map_update(&self.state, 0, &value) {
            tracing::warn!(%error, "cannot update the steering table; the proxy carries new connections");
            self.clear();
            return 0;
        }
        for key in n..self.filled {
            let _ = map_delete(&self.sockets, key);
        }
        self.filled = n;
        n as usize
    }

    fn clear(&mut self) {
        let _ = map_update(&self.state, 0, &[0u8; 16]);
        for key in 0..self.filled {
            let _ = map_delete(&self.sockets, key);
        }
        self.filled = 0;
    }
}

/// A copy of the socket listening on `port` in process `pid` or one of its descendants.
fn copy_listener(pid: i32, port: u16) -> Option<OwnedFd> {
    let mut queue = vec![pid];
    let mut seen = 0;
    while let Some(pid) = queue.pop() {
        seen += 1;
        if seen > 64 {
            break;
        }
        if let Some(socket) = listener_of(pid, port) {
            return Some(socket);
        }
        queue.extend(children(pid));
    }
    None
}

/// The socket `pid` listens on `port` with, looked for among its socket descriptors,
/// lowest first (a server opens its listener before the connections it accepts).
/// Reading `/proc/net/tcp` instead walks the host's whole connection table on every
/// read: 1-2 ms each, 40 ms of CPU per deploy of a proxied app (bench/deploy).
/// The process is pinned with a pidfd first: should `pid` end and be reused while its
/// descriptors are read, the copies fail rather than come from another process.
fn listener_of(pid: i32, port: u16) -> Option<OwnedFd> {
    let pidfd = crate::child::pidfd_open(pid).ok()?;
    let mut sockets: Vec<RawFd> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:["))
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    sockets.sort_unstable();
    sockets
        .into_iter()
        .filter_map(|fd| pidfd_getfd(&pidfd, fd).ok())
        .find(|socket| is_listener_on(socket, port))
}

/// Whether `socket` is a TCP socket listening on `port` (any address, IPv4 or IPv6).
fn is_listener_on(socket: &OwnedFd, port: u16) -> bool {
    let fd = socket.as_raw_fd();
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `listening`, an int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut listening).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        return false;
    }
    // SAFETY: an all-zero sockaddr_storage is a valid value of that plain C struct.
    let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `address`.
    let rc = unsafe { libc::getsockname(fd, (&raw mut address).cast(), &mut len) };
    if rc != 0 {
        return false;
    }
    // Both sockaddr_in and sockaddr_in6 keep the port, big-endian, right after the
    // family.
    let bound = match i32::from(address.ss_family) {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: for these families the storage holds a sockaddr_in or _in6.
            let address = unsafe { &*(&raw const address).cast::<libc::sockaddr_in>() };
            u16::from_be(address.sin_port)
        }
        _ => return false,
    };
    bound == port
}

fn children(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return kids;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            kids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    kids
}

fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; the copy is new and ours.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(new_fd(copy))
}

// --- bpf(2) --------------------------------------------------------------------------

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const MAP_TYPE_ARRAY: u32 = 2;
const MAP_TYPE_SOCKMAP: u32 = 15;
const PROG_TYPE_SK_LOOKUP: u32 = 30;
const ATTACH_SK_LOOKUP: u32 = 36;

/// A `union bpf_attr`, filled field by field at the offsets of `linux/bpf.h`.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(mut self, offset: usize, value: u32) -> Attr {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn u64(mut self, offset: usize, value: u64) -> Attr {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn name(mut self, offset: usize, name: &str) -> Attr {
        let bytes = &name.as_bytes()[..name.len().min(15)];
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size passed; every pointer
    // stored in it points to memory that outlives this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn new_fd(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn map_create(kind: u32, key: u32, value: u32, entries: u32, name: &str) -> io::Result<OwnedFd> {
    let mut attr = Attr::new()
        .u32(0, kind)
        .u32(4, key)
        .u32(8, value)
        .u32(12, entries)
        .name(28, name);
    bpf(BPF_MAP_CREATE, &mut attr).map(new_fd)
}

fn map_update(map: &OwnedFd, key: u32, value: &[u8]) -> io::Result<()> {
    let key = key.to_ne_bytes();
    let mut attr = Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

fn map_delete(map: &OwnedFd, key: u32) -> io::Result<()> {
    let key = key.to_ne_bytes();
    let mut attr = Attr::new()
        .u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64);
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

fn prog_load(code: &[u64]) -> io::Result<OwnedFd> {
    const LICENSE: &[u8] = b"Apache-2.0\0";
    let mut log = vec![0u8; 4096];
    let mut attr = Attr::new()
        .u32(0, PROG_TYPE_SK_LOOKUP)
        .u32(4, code.len() as u32)
        .u64(8, code.as_ptr() as u64)
        .u64(16, LICENSE.as_ptr() as u64)
        .u32(24, 1) // log_level: the verifier says why it refuses
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .name(48, "fleet_steer")
        .u32(68, ATTACH_SK_LOOKUP);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(new_fd(fd)),
        Err(error) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            let last = verifier.lines().rev().find(|l| !l.trim().is_empty());
            Err(match last {
                Some(line) => io::Error::new(error.kind(), format!("{error}: {line}")),
                None => error,
            })
        }
    }
}

fn link_create(program: RawFd, netns: RawFd) -> io::Result<OwnedFd> {
    let mut attr = Attr::new()
        .u32(0, program as u32)
        .u32(4, netns as u32)
        .u32(8, ATTACH_SK_LOOKUP);
    bpf(BPF_LINK_CREATE, &mut attr).map(new_fd)
}

// --- the program -----------------------------------------------------------------------

/// One instruction: opcode, registers, offset, immediate (`struct bpf_insn`).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf) << 8
        | u64::from(src & 0xf) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `struct bpf_sk_lookup` offsets.
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_PORT: i16 = 60;
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;

/// For a TCP/IPv4 connection to `port`: n = state[0].count; if n > 0, take key
/// `state[0].next++ % n`, look the socket up in `sockets` and assign it. Always
/// `SK_PASS`: with nothing assigned the kernel's own lookup finds the agent's listener.
/// The counter is not atomic: two CPUs racing give one instance two connections in a
/// row, nothing worse.
fn program(port: u16, state: RawFd, sockets: RawFd) -> Vec<u64> {
    const LDX_W: u8 = 0x61;
    const LDX_DW: u8 = 0x79;
    const ST_W: u8 = 0x62;
    const STX_W: u8 = 0x63;
    const STX_DW: u8 = 0x7b;
    const MOV_X: u8 = 0xbf;
    const MOV_K: u8 = 0xb7;
    const ADD_K: u8 = 0x07;
    const MOD_X: u8 = 0x9f;
    const JNE_K: u8 = 0x55;
    const JEQ_K: u8 = 0x15;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const LD_IMM64: u8 = 0x18;
    const PSEUDO_MAP_FD: u8 = 1;
    // Jumps to `OUT` are patched once the program's length is known.
    const OUT: i16 = i16::MIN;
    let ld_map = |dst: u8, fd: RawFd| {
        [
            insn(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd),
            insn(0, 0, 0, 0, 0),
        ]
    };

    let mut p = vec![
        insn(MOV_X, 6, 1, 0, 0), // r6 = ctx
        insn(LDX_W, 2, 6, CTX_FAMILY, 0),
        insn(JNE_K, 2, 0, OUT, libc::AF_INET),
        insn(LDX_W, 2, 6, CTX_PROTOCOL, 0),
        insn(JNE_K, 2, 0, OUT, libc::IPPROTO_TCP),
        insn(LDX_W, 2, 6, CTX_LOCAL_PORT, 0),
        insn(JNE_K, 2, 0, OUT, i32::from(port)),
        insn(ST_W, 10, 0, -4, 0), // key 0 on the stack
        insn(MOV_X, 2, 10, 0, 0),
        insn(ADD_K, 2, 0, 0, -4),
    ];
    p.extend(ld_map(1, state));
    p.extend([
        insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP),
        insn(JEQ_K, 0, 0, OUT, 0),
        insn(LDX_W, 7, 0, 0, 0), // r7 = count
        insn(JEQ_K, 7, 0, OUT, 0),
        insn(LDX_DW, 8, 0, 8, 0), // r8 = next
        insn(MOV_X, 9, 8, 0, 0),
        insn(ADD_K, 9, 0, 0, 1),
        insn(STX_DW, 0, 9, 8, 0), // next += 1
        insn(MOD_X, 8, 7, 0, 0),  // r8 = next % count
        insn(STX_W, 10, 8, -8, 0),
        insn(MOV_X, 2, 10, 0, 0),
        insn(ADD_K, 2, 0, 0, -8),
    ]);
    p.extend(ld_map(1, sockets));
    p.extend([
        insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP),
        insn(JEQ_K, 0, 0, OUT, 0),
        insn(MOV_X, 7, 0, 0, 0), // r7 = socket (a reference to release)
        insn(MOV_X, 1, 6, 0, 0),
        insn(MOV_X, 2, 7, 0, 0),
        insn(MOV_K, 3, 0, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SK_ASSIGN),
        insn(MOV_X, 1, 7, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SK_RELEASE),
    ]);
    let out = p.len();
    p.extend([insn(MOV_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]); // SK_PASS
    for (at, code) in p.iter_mut().enumerate() {
        if (*code >> 16) as u16 == OUT as u16 && (*code & 0x07) == 0x05 {
            let off = (out - at - 1) as i16;
            *code = (*code & !(0xffff << 16)) | u64::from(off as u16) << 16;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // r2 = *(u32 *)(r6 + 60): opcode 0x61, dst 2, src 6, off 60.
        assert_eq!(
            insn(0x61, 2, 6, 60, 0).to_le_bytes(),
            [0x61, 0x62, 60, 0, 0, 0, 0, 0]
        );
        // r2 += -4
        assert_eq!(
            insn(0x07, 2, 0, 0, -4).to_le_bytes(),
            [0x07, 0x02, 0, 0, 0xfc, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn every_exit_jump_lands_on_the_pass_path() {
        let code = program(8080, 3, 4);
        let out = code.len() - 2;
        for (at, &i) in code.iter().enumerate() {
            if (i & 0x07) == 0x05 && (i & 0xf0) != 0x80 && (i & 0xf0) != 0x90 {
                let off = (i >> 16) as u16 as i16;
                assert_eq!(at as i64 + 1 + i64::from(off), out as i64, "jump at {at}");
            }
        }
    }
}
