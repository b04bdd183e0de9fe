//! `hf:OWNER/NAME[/PATH][@REVISION]` references to the Hugging Face Hub, parsed the same way on
//! every platform (natively `io/native/hub.rs` downloads them; in the browser
//! `web/model-source.js` mirrors this parser, and a browser test compares the two).
//!
//! A PATH ending in `.gguf` is one model file; any other PATH is a folder inside the repository.

use crate::error::{Error, Result};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A parsed `hf:` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `OWNER/NAME`.
    pub repo: String,
    pub revision: String,
    /// Inside the repository: a `.gguf` file or a folder; `None`: the repository's root folder.
    pub path: Option<String>,
}

/// What `hf:` references may contain in a part: letters, digits, `_`, `.` and `-`.
fn plain_part(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl HubRef {
    /// `None` when `spec` is not an `hf:` reference (a local path); `Some(Err)` when it is one
    /// but malformed.
    pub fn parse(spec: &str) -> Option<Result<Self>> {
        let spec = spec.trim();
        let rest = spec
            .get(..3)
            .filter(|prefix| prefix.eq_ignore_ascii_case("hf:"))
            .map(|_| &spec[3..])?;
        // Everything after the first `@` is the revision.
        let (path, revision) = match rest.split_once('@') {
            Some((p, r)) => (p, r.to_string()),
            None => (rest, "main".to_string()),
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        Some(match parts.as_slice() {
            [owner, name, sub @ ..]
                if !revision.is_empty() && parts.iter().all(|p| plain_part(p)) =>
            {
                Ok(Self {
                    repo: format!("{owner}/{name}"),
                    revision,
                    path: (!sub.is_empty()).then(|| sub.join("/")),
                })
            }
            _ => Err(Error::setting(
                "model",
                format!(
                    "`{spec}`: expected hf:OWNER/NAME[@REVISION] or hf:OWNER/NAME/FILE.gguf[@REVISION]"
                ),
            )),
        })
    }

    /// A single `.gguf` file rather than a model folder.
    pub fn is_file(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|p| p.to_ascii_lowercase().ends_with(".gguf"))
    }

    /// The URL the reference downloads from: the file, or the folder (ending in `/`).
    pub fn url(&self, endpoint: &str) -> String {
        let mut url = format!(
            "{}/{}/resolve/{}/",
            endpoint.trim_end_matches('/'),
            self.repo,
            encode_component(&decode_percent(&self.revision))
        );
        if let Some(path) = &self.path {
            url.push_str(path);
            if !self.is_file() {
                url.push('/');
            }
        }
        url
    }

    /// The URL of `file` inside the referenced folder.
    pub fn file_url(&self, endpoint: &str, file: &str) -> String {
        let base = self.url(endpoint);
        if self.is_file() {
            base
        } else {
            format!("{base}{file}")
        }
    }
}

/// `%XX` sequences decoded (others kept), as JavaScript's `decodeURIComponent` reads a revision.
fn decode_percent(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// JavaScript's `encodeURIComponent`.
fn encode_component(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert!(HubRef::parse("models/x").is_none());
        let r = HubRef::parse("hf:HuggingFaceTB/SmolLM2-135M-Instruct")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str(), r.path),
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "main", None)
        );
        let r = HubRef::parse("hf:a/b@v1.0").unwrap().unwrap();
        assert_eq!(r.revision, "v1.0");
        let r = HubRef::parse("hf:a/b/sub/m.Q4_0.gguf").unwrap().unwrap();
        assert_eq!(r.path.as_deref(), Some("sub/m.Q4_0.gguf"));
        assert!(r.is_file());
        assert!(HubRef::parse("hf:onlyowner").unwrap().is_err());
        assert!(HubRef::parse("hf:a/b@").unwrap().is_err());
        assert!(HubRef::parse("hf:a/../b").unwrap().is_err());
    }

    #[test]
    fn urls_match_the_browser() {
        let url = |spec: &str| HubRef::parse(spec).unwrap().unwrap().url(DEFAULT_ENDPOINT);
        assert_eq!(url("hf:a/b"), "https://huggingface.co/a/b/resolve/main/");
        assert_eq!(
            url("hf:a/b/x.gguf@refs/pr/1"),
            "https://huggingface.co/a/b/resolve/refs%2Fpr%2F1/x.gguf"
        );
        assert_eq!(
            url("hf:a/b/sub@v2"),
            "https://huggingface.co/a/b/resolve/v2/sub/"
        );
    }
}
