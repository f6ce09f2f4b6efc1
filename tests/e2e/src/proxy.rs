//! A reply-dropping HTTP proxy: it forwards every request to the server, and for the
//! paths it is told to, throws the server's answer away and closes the client's
//! connection instead, once per path. The server did the work; the client never learns
//! it. This is the fault of a crash between commit and reply, a proxy timeout or a lost
//! packet, made deterministic.
//!
//! One request per client connection (the forwarded request says `Connection: close`, so
//! the server's answer says it too and the client opens a new connection for the next).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Largest request head or answer the proxy reads.
const MAX: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
struct Rules {
    /// Paths whose next answer is dropped (removed once dropped).
    armed: Vec<String>,
    /// How many answers were dropped, per path.
    dropped: BTreeMap<String, u32>,
    /// How many requests were forwarded, per path.
    forwarded: BTreeMap<String, u32>,
}

/// The proxy; it runs until the test process ends.
#[derive(Debug, Clone)]
pub struct ReplyDroppingProxy {
    pub url: String,
    rules: Arc<Mutex<Rules>>,
}

impl ReplyDroppingProxy {
    /// A proxy on a free loopback port in front of `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let rules = Arc::new(Mutex::new(Rules::default()));
        let shared = rules.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let rules = shared.clone();
                thread::spawn(move || {
                    let _ = serve(stream, upstream, &rules);
                });
            }
        });
        Self { url, rules }
    }

    /// Drop the next answer to each of `paths` (e.g. `/phoenix/v1/ds/send_message`).
    pub fn drop_next_reply(&self, paths: &[&str]) {
        let mut rules = self.rules.lock().unwrap();
        rules.armed.extend(paths.iter().map(|p| (*p).to_owned()));
    }

    /// Answers dropped so far, per path.
    pub fn dropped(&self) -> BTreeMap<String, u32> {
        self.rules.lock().unwrap().dropped.clone()
    }

    /// Paths armed but not met yet.
    pub fn armed(&self) -> Vec<String> {
        self.rules.lock().unwrap().armed.clone()
    }

    /// Requests forwarded so far, per path.
    pub fn forwarded(&self) -> BTreeMap<String, u32> {
        self.rules.lock().unwrap().forwarded.clone()
    }
}

fn serve(mut client: TcpStream, upstream: SocketAddr, rules: &Mutex<Rules>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (head, mut body) = read_head(&mut client)?;
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head_text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut length = 0usize;
    let mut forwarded_head = format!("{request_line}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") {
            continue;
        }
        forwarded_head.push_str(line);
        forwarded_head.push_str("\r\n");
    }
    forwarded_head.push_str("Connection: close\r\n\r\n");
    while body.len() < length.min(MAX) {
        let mut chunk = [0u8; 16 * 1024];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }

    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(Duration::from_secs(60)))?;
    server.write_all(forwarded_head.as_bytes())?;
    server.write_all(&body)?;
    let mut answer = Vec::new();
    server.take(MAX as u64).read_to_end(&mut answer)?;

    let drop_it = {
        let mut rules = rules.lock().unwrap();
        *rules.forwarded.entry(path.clone()).or_default() += 1;
        if let Some(i) = rules.armed.iter().position(|p| *p == path) {
            rules.armed.remove(i);
            *rules.dropped.entry(path.clone()).or_default() += 1;
            true
        } else {
            false
        }
    };
    if drop_it {
        // The server has answered (and committed); the client gets a closed connection.
        let _ = client.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    client.write_all(&answer)?;
    client.flush()?;
    let _ = client.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// Read up to the end of the head; returns the head and whatever body bytes came with it.
fn read_head(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = buf.split_off(end + 4);
            return Ok((buf, body));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed before the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
