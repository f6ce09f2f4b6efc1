//! A TCP proxy that can be switched off and on: while off, it closes every connection it
//! carries and every new one at once (the database "is down"); while on, it forwards bytes
//! both ways. It stands between a server and Postgres to take the database away from a
//! running server and give it back.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Debug)]
struct State {
    up: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

/// The proxy; its threads run until the test process ends.
#[derive(Debug, Clone)]
pub struct TcpProxy {
    /// The proxy's address, `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl TcpProxy {
    /// A proxy on a free loopback port in front of `upstream`, switched on.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            open: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !shared.up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    let mut open = shared.open.lock().unwrap();
                    open.push(c);
                    open.push(s);
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self { addr, state }
    }

    /// Switch off: close every carried connection and refuse new ones.
    pub fn stop(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for stream in self.state.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Switch on again.
    pub fn resume(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
