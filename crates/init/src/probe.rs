//! Health checks run from inside the machine: a TCP connect, or an HTTP request whose answer
//! must be 2xx. Running them here needs no network path from the host into the machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hangar_proto::CheckSpec;

/// `(passing, output)`.
pub fn run(spec: &CheckSpec) -> (bool, String) {
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    let deadline = Instant::now() + timeout;
    let mut stream = match connect(spec.port, timeout) {
        Ok(s) => s,
        Err(e) => return (false, format!("connect to port {}: {e}", spec.port)),
    };
    let Some(http) = &spec.http else {
        return (true, format!("port {} accepts connections", spec.port));
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let _ = stream.set_read_timeout(Some(left));
    let _ = stream.set_write_timeout(Some(left));
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: localhost:{}\r\nUser-Agent: hangar-check\r\nConnection: close\r\n",
        http.method, http.path, spec.port
    );
    for (name, value) in &http.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return (false, format!("sending the request: {e}"));
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return (false, format!("reading the response: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("").trim().to_string();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..300).contains(&c) => (true, status_line),
        Some(_) => (false, status_line),
        None => (false, format!("not an HTTP response: {status_line:?}")),
    }
}

/// IPv4 loopback first, then IPv6: a server may listen on either.
fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => Ok(s),
        Err(e) => {
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, timeout).map_err(|_| e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_proto::HttpCheck;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        port
    }

    fn http(port: u16) -> CheckSpec {
        CheckSpec {
            port,
            http: Some(HttpCheck {
                method: "GET".into(),
                path: "/health".into(),
                headers: vec![("X-A".into(), "1".into())],
            }),
            timeout_ms: 2000,
        }
    }

    #[test]
    fn http_2xx_passes_and_5xx_fails() {
        let (ok, out) = run(&http(serve_once("HTTP/1.1 204 No Content\r\n\r\n")));
        assert!(ok, "{out}");
        assert_eq!(out, "HTTP/1.1 204 No Content");
        let (ok, out) = run(&http(serve_once(
            "HTTP/1.1 503 Service Unavailable\r\n\r\n",
        )));
        assert!(!ok);
        assert!(out.contains("503"), "{out}");
        let (ok, out) = run(&http(serve_once("SSH-2.0-nope\r\n")));
        assert!(!ok);
        assert!(out.contains("not an HTTP response"), "{out}");
    }

    #[test]
    fn tcp_checks_need_a_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let spec = CheckSpec {
            port,
            http: None,
            timeout_ms: 1000,
        };
        assert!(run(&spec).0);
        drop(l);
        let (ok, out) = run(&spec);
        assert!(!ok);
        assert!(out.contains("connect"), "{out}");
    }
}
