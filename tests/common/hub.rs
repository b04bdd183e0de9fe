//! A local stand-in for the Hugging Face Hub (tests never use the network): serves
//! `/OWNER/NAME/resolve/REVISION/FILE` from folders, records what each request carried, and can
//! redirect a repository's files to another server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

pub struct StandIn {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Where a repository's files come from.
pub enum Repo {
    /// Files of this folder.
    Dir(PathBuf),
    /// A 302 to `{base}/{same path}` (another server).
    RedirectTo(String),
}

/// Serve `repos` (`OWNER/NAME` -> files) at any revision; everything else is a 404.
pub fn serve(repos: Vec<(&str, Repo)>) -> StandIn {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let repos: HashMap<String, Repo> = repos
        .into_iter()
        .map(|(name, repo)| (name.to_string(), repo))
        .collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut authorization = None;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("authorization")
                {
                    authorization = Some(value.trim().to_string());
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            log.lock().unwrap().push(Seen {
                path: path.clone(),
                authorization,
            });
            // /OWNER/NAME/resolve/REV/FILE...
            let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
            let response = match parts.as_slice() {
                [owner, name, "resolve", _rev, file] => {
                    match repos.get(&format!("{owner}/{name}")) {
                        Some(Repo::Dir(dir)) => std::fs::read(dir.join(file)).ok().map(Ok),
                        Some(Repo::RedirectTo(base)) => Some(Err(format!("{base}{path}"))),
                        None => None,
                    }
                }
                _ => None,
            };
            let _ = match response {
                Some(Ok(body)) => stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| stream.write_all(&body)),
                Some(Err(location)) => stream.write_all(
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\
                         Connection: close\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    StandIn { url, seen }
}
