//! Services for tests: a server process started on an ephemeral port, and plain HTTP/1.1 requests
//! over a socket (no client library between the test and the service's bytes).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// A running server and its address (`HOST:PORT`); killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// Starts `cmd` (a `serve` command with `--addr 127.0.0.1:0`) and reads the address from the
    /// line it writes to stderr once it listens (`serving ... on http://HOST:PORT/ ...`).
    pub fn start(mut cmd: Command) -> Server {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let mut err = BufReader::new(child.stderr.as_mut().unwrap());
        let mut seen = String::new();
        let addr = loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("the server exited before it listened: {seen}");
            }
            if let Some(rest) = line.strip_prefix("serving ") {
                break rest
                    .split(" on http://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .unwrap_or_else(|| panic!("no address in {line:?}"))
                    .to_string();
            }
            seen.push_str(&line);
        };
        Server { child, addr }
    }

    /// Stops the server with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request (`Connection: close`); the status and the body (de-chunked).
pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}
