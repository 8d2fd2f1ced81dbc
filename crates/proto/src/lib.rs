//! The control protocol between the host and `hangar-init`, PID 1 of every machine.
//!
//! One byte stream carries it: a Unix socket for sandboxes, a virtio-serial port for microVMs.
//! The host is the client and may reconnect at any time (a restarted server re-attaches), so
//! init keeps the main process's state, including its exit status, until a host reads it.
//!
//! A frame is the magic `HG`, a 4-byte big-endian length, then that many bytes of JSON. The
//! magic lets a reader resynchronise on a serial line after a host went away mid-frame.
//! Requests carry an `id`; replies and exec streams carry it back, so several execs can share
//! the one connection.
//!
//! The module is sans-IO: [`encode`] and [`Decoder`] work on bytes, and [`read_frame`] /
//! [`write_frame`] add blocking I/O for init. The host drives the decoder from async code.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// A frame larger than this is a protocol error (exec output is sent in smaller chunks).
pub const MAX_FRAME: usize = 16 << 20;
const MAGIC: [u8; 2] = *b"HG";
const HEADER: usize = 6;

/// Everything init needs to boot a machine, written by the host as JSON before boot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub machine_id: String,
    pub hostname: String,
    pub process: ProcessSpec,
    /// Files written into the root filesystem before the process starts.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Where init serves the control channel: `unix:PATH` (listens on a socket) or
    /// `serial:PATH` (a character device such as a virtio-serial port).
    pub control: String,
}

/// The main process, or an exec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE` strings, in order; later entries win.
    pub env: Vec<String>,
    /// Working directory; `/` when empty.
    #[serde(default)]
    pub cwd: String,
    /// `""`/`root`, `name`, `uid`, `name:group` or `uid:gid`, resolved against the machine's
    /// own `/etc/passwd` and `/etc/group`.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub tty: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileSpec {
    pub path: String,
    #[serde(with = "b64")]
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// How init configures the machine's network interface before the process starts: a microVM's
/// virtio-net device, which only the guest can configure (a sandbox's interface is configured by
/// the host, in the network namespace it prepares). The host writes it as JSON beside the launch
/// spec: `/hangar/network.json` in a microVM's initramfs ([`NETWORK_IN_INITRAMFS`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The interface's name inside the machine (`eth0`); the device is renamed to it.
    pub ifname: String,
    /// The device's MAC address (`02:ab:cd:ef:01:23`), which is how init finds it.
    pub mac: String,
    /// The interface's MTU; `None` leaves the device's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Addresses with their prefix lengths. IPv6 ones skip duplicate address detection: the host
    /// hands out unique addresses, and a tentative address would delay the machine's first
    /// connection.
    #[serde(default)]
    pub addresses: Vec<IpPrefix>,
    /// The IPv4 default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway4: Option<std::net::Ipv4Addr>,
    /// The IPv6 default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<std::net::Ipv6Addr>,
}

/// Where a microVM's initramfs holds its [`NetworkSpec`], when the machine has a network.
pub const NETWORK_IN_INITRAMFS: &str = "/hangar/network.json";

/// An address and its prefix length (`fdaa:1:2::3/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpPrefix {
    pub address: std::net::IpAddr,
    pub prefix_len: u8,
}

impl NetworkSpec {
    /// The MAC address as bytes.
    pub fn mac_bytes(&self) -> Result<[u8; 6], String> {
        parse_mac(&self.mac)
    }

    /// Whether the spec is one init can apply: a MAC, a name the kernel accepts, prefix
    /// lengths that fit their addresses.
    pub fn validate(&self) -> Result<(), String> {
        self.mac_bytes()?;
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self
                .ifname
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
        {
            return Err(format!("invalid interface name {:?}", self.ifname));
        }
        for a in &self.addresses {
            let max = if a.address.is_ipv4() { 32 } else { 128 };
            if a.prefix_len > max {
                return Err(format!(
                    "prefix length {} is too long for {}",
                    a.prefix_len, a.address
                ));
            }
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts
            .next()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| format!("invalid MAC address {text:?}"))?;
        *byte =
            u8::from_str_radix(part, 16).map_err(|_| format!("invalid MAC address {text:?}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("invalid MAC address {text:?}"));
    }
    Ok(out)
}

/// Host → init.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// The first request of every connection; init answers with [`Event::Status`].
    Hello { version: u32 },
    /// Deliver a signal to the main process.
    Signal { signal: i32 },
    /// Run a command beside the main process. Init answers with a [`Event::Reply`] once it has
    /// started (or failed to), then [`Event::ExecOutput`]s and one [`Event::ExecExit`], all
    /// carrying the request's id.
    Exec(ExecSpec),
    /// Bytes for a running exec's stdin; `eof` closes it.
    ExecInput {
        exec: u64,
        #[serde(with = "b64")]
        data: Vec<u8>,
        #[serde(default)]
        eof: bool,
    },
    /// The terminal size of an exec started with a tty.
    ExecResize { exec: u64, rows: u16, cols: u16 },
    /// A signal for an exec's process.
    ExecSignal { exec: u64, signal: i32 },
    /// Kill every process and end the machine: power off in a VM, exit in a sandbox.
    Shutdown,
    /// List the machine's processes; init answers with [`Event::Processes`].
    Ps,
    /// Probe a port inside the machine (a health check); init answers with
    /// [`Event::CheckResult`].
    Check(CheckSpec),
}

/// A health check run from inside the machine, so it needs no network from the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub port: u16,
    /// `None` for a TCP check (the port accepts a connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    /// `(name, value)` pairs, sent in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// One process inside the machine, read from its `/proc`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub command: String,
    pub cwd: String,
    /// User and system CPU time, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    pub rss_bytes: u64,
    /// Milliseconds since the process started.
    pub age_ms: u64,
    /// `(proto, address)` of the sockets it listens on, e.g. `("tcp", "0.0.0.0:8080")`.
    #[serde(default)]
    pub listening: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub process: ProcessSpec,
    /// All of stdin, for a non-interactive exec; closed after it is written.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Vec<u8>>,
    /// Keep stdin open for [`Op::ExecInput`] (interactive sessions).
    #[serde(default)]
    pub interactive: bool,
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
}

/// Init → host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The outcome of a request; `error` is set when it failed.
    Reply {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The main process's state: the answer to `Hello` (with its id), and sent unasked
    /// (without one) whenever the state changes.
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        main: MainProcess,
        init_version: String,
    },
    ExecOutput {
        exec: u64,
        stream: Stream,
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    ExecExit {
        exec: u64,
        status: ExitStatus,
    },
    /// The answer to [`Op::Ps`].
    Processes {
        id: u64,
        processes: Vec<ProcessInfo>,
    },
    /// The answer to [`Op::Check`]: whether it passed, and what was seen.
    CheckResult {
        id: u64,
        passing: bool,
        output: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MainProcess {
    /// Init is preparing the machine (mounts, files, user lookup).
    Starting,
    Running {
        pid: i32,
        started_at_ms: i64,
    },
    Exited(ExitStatus),
}

/// How a process ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, when the process exited on its own.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Why init could not run the process at all (no such file, bad user...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub exited_at_ms: i64,
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => -1,
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0) && self.error.is_none()
    }
}

#[derive(Debug)]
pub enum FrameError {
    TooLarge(usize),
    Json(serde_json::Error),
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => {
                write!(f, "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
            }
            FrameError::Json(e) => write!(f, "malformed frame: {e}"),
            FrameError::Io(e) => write!(f, "control channel: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// One message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("protocol messages always serialize");
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Accumulates bytes and yields whole messages.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one is buffered. Bytes before a frame's magic are skipped.
    /// A frame that is not valid JSON for `T` is dropped and reported, so one bad frame does
    /// not wedge the stream.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            match self.buf.windows(2).position(|w| w == MAGIC) {
                Some(0) => {}
                Some(skip) => {
                    self.buf.drain(..skip);
                }
                None => {
                    // Keep a trailing 'H' that may begin the next magic.
                    let keep = usize::from(self.buf.last() == Some(&MAGIC[0]));
                    let len = self.buf.len();
                    self.buf.drain(..len - keep);
                    return Ok(None);
                }
            }
            if self.buf.len() < HEADER {
                return Ok(None);
            }
            let len =
                u32::from_be_bytes([self.buf[2], self.buf[3], self.buf[4], self.buf[5]]) as usize;
            if len > MAX_FRAME {
                // Not a real frame header: skip the magic and look again.
                self.buf.drain(..2);
                continue;
            }
            if self.buf.len() < HEADER + len {
                return Ok(None);
            }
            let parsed = serde_json::from_slice(&self.buf[HEADER..HEADER + len]);
            self.buf.drain(..HEADER + len);
            return parsed.map(Some).map_err(FrameError::Json);
        }
    }
}

/// Reads one message, blocking. `Ok(None)` at a clean end of stream.
pub fn read_frame<T: DeserializeOwned>(
    r: &mut impl Read,
    dec: &mut Decoder,
) -> Result<Option<T>, FrameError> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(msg) = dec.decode()? {
            return Ok(Some(msg));
        }
        let n = match r.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(None);
        }
        dec.push(&chunk[..n]);
    }
}

/// Writes one message, blocking.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg))?;
    w.flush()?;
    Ok(())
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
        let mut dec = Decoder::new();
        dec.push(&encode(&msg));
        assert_eq!(dec.decode::<T>().unwrap(), Some(msg));
        assert_eq!(dec.decode::<T>().unwrap(), None);
    }

    #[test]
    fn messages_round_trip() {
        roundtrip(Request {
            id: 1,
            op: Op::Hello {
                version: PROTOCOL_VERSION,
            },
        });
        roundtrip(Request {
            id: 2,
            op: Op::Signal { signal: 15 },
        });
        roundtrip(Request {
            id: 3,
            op: Op::Exec(ExecSpec {
                process: ProcessSpec {
                    argv: vec!["sh".into()],
                    ..Default::default()
                },
                stdin: Some(b"in".to_vec()),
                ..Default::default()
            }),
        });
        roundtrip(Request {
            id: 4,
            op: Op::ExecInput {
                exec: 3,
                data: vec![0, 255],
                eof: true,
            },
        });
        roundtrip(Event::Status {
            id: None,
            main: MainProcess::Exited(ExitStatus {
                code: Some(7),
                signal: None,
                error: None,
                exited_at_ms: 5,
            }),
            init_version: "1".into(),
        });
        roundtrip(Event::ExecOutput {
            exec: 3,
            stream: Stream::Stderr,
            data: b"\x00bin".to_vec(),
        });
    }

    #[test]
    fn decodes_across_partial_reads_and_skips_noise() {
        let a = encode(&Request {
            id: 1,
            op: Op::Shutdown,
        });
        let b = encode(&Request {
            id: 2,
            op: Op::Signal { signal: 2 },
        });
        let mut stream = b"garbage H".to_vec();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&b);
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for byte in stream {
            dec.push(&[byte]);
            while let Some(r) = dec.decode::<Request>().unwrap() {
                got.push(r.id);
            }
        }
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn bad_frame_is_reported_then_skipped() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"HG");
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(b"{x}");
        bytes.extend_from_slice(&encode(&Request {
            id: 9,
            op: Op::Shutdown,
        }));
        let mut dec = Decoder::new();
        dec.push(&bytes);
        assert!(dec.decode::<Request>().is_err());
        assert_eq!(dec.decode::<Request>().unwrap().unwrap().id, 9);
    }

    #[test]
    fn network_specs_round_trip_and_validate() {
        let spec = NetworkSpec {
            ifname: "eth0".into(),
            mac: "02:ab:cd:ef:01:23".into(),
            mtu: None,
            addresses: vec![
                IpPrefix {
                    address: "fdaa:1:2::3".parse().unwrap(),
                    prefix_len: 16,
                },
                IpPrefix {
                    address: "172.19.0.2".parse().unwrap(),
                    prefix_len: 16,
                },
            ],
            gateway4: Some("172.19.0.1".parse().unwrap()),
            gateway6: Some("fdaa::1".parse().unwrap()),
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<NetworkSpec>(&json).unwrap(), spec);
        assert_eq!(spec.mac_bytes().unwrap(), [2, 0xab, 0xcd, 0xef, 1, 0x23]);
        spec.validate().unwrap();
        // Only the device is required.
        let bare: NetworkSpec =
            serde_json::from_str(r#"{"ifname":"eth0","mac":"02:00:00:00:00:01"}"#).unwrap();
        assert!(bare.addresses.is_empty() && bare.gateway6.is_none());
        for mac in [
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "0g:00:00:00:00:01",
            "",
        ] {
            assert!(parse_mac(mac).is_err(), "{mac}");
        }
        let mut bad = spec.clone();
        bad.addresses[1].prefix_len = 33;
        assert!(bad.validate().is_err());
        let mut bad = spec;
        bad.ifname = "a-much-too-long-name".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn exit_codes() {
        let by_signal = ExitStatus {
            code: None,
            signal: Some(9),
            error: None,
            exited_at_ms: 0,
        };
        assert_eq!(by_signal.shell_code(), 137);
        assert!(!by_signal.success());
        assert!(ExitStatus {
            code: Some(0),
            ..Default::default()
        }
        .success());
    }
}
