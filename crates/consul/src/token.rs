//! Where the client's ACL token comes from: none, a fixed value, or a file
//! re-read when it changes, so that a token rotated by Vault, consul-template
//! or a credential agent takes effect on the next request, without a restart.
//!
//! The file is checked before every request by its modification time, length
//! and inode (one `stat`, far cheaper than the HTTP call it precedes; an
//! atomic rename changes the inode) and read only when one of them changed. A
//! file that became unreadable or empty keeps the previous token in use,
//! warned about once per change of the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use http::HeaderValue;
use tracing::{info, warn};

use crate::config::Token;

/// A token with its request header, marked sensitive (never logged by the
/// HTTP stack).
#[derive(Debug)]
pub(crate) struct Credential {
    pub(crate) token: Token,
    pub(crate) header: HeaderValue,
}

impl Credential {
    /// `None` when the token is empty or not visible ASCII.
    pub(crate) fn new(token: Token) -> Option<Self> {
        let mut header = HeaderValue::from_str(token.expose())
            .ok()
            .filter(|_| !token.expose().is_empty())?;
        header.set_sensitive(true);
        Some(Self { token, header })
    }
}

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::metadata(path)?;
        Ok(Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: metadata.ino(),
        })
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    #[error("it holds no token (empty, or not visible ASCII)")]
    Unusable,
}

/// Reads and trims the token in `path`.
fn read(path: &Path) -> Result<Credential, FileError> {
    let text = std::fs::read_to_string(path)?;
    Credential::new(Token::new(text.trim().to_owned())).ok_or(FileError::Unusable)
}

#[derive(Debug)]
pub(crate) struct FileState {
    /// The version last looked at (read, or failed to read).
    stamp: Option<Stamp>,
    current: Arc<Credential>,
}

/// The token source of one client.
#[derive(Debug)]
pub(crate) enum TokenSource {
    /// No token: the agent's default token applies.
    None,
    /// A fixed token (`consul.token`, `CONSUL_HTTP_TOKEN`).
    Fixed(Arc<Credential>),
    /// A token file (`consul.token_file`, `CONSUL_HTTP_TOKEN_FILE`).
    File {
        path: PathBuf,
        state: Mutex<FileState>,
    },
}

impl TokenSource {
    /// Reads the file now: a client never starts without its token.
    pub(crate) fn file(path: PathBuf) -> Result<Self, FileError> {
        let stamp = Stamp::of(&path).ok();
        let current = Arc::new(read(&path)?);
        Ok(Self::File {
            path,
            state: Mutex::new(FileState { stamp, current }),
        })
    }

    /// The token to send now (re-reading a file that changed).
    pub(crate) fn current(&self) -> Option<Arc<Credential>> {
        match self {
            Self::None => None,
            Self::Fixed(credential) => Some(Arc::clone(credential)),
            Self::File { path, state } => {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                // A file being replaced may be missing for a moment: keep the token.
                if let Ok(stamp) = Stamp::of(path)
                    && state.stamp != Some(stamp)
                {
                    state.stamp = Some(stamp);
                    match read(path) {
                        Ok(credential) => {
                            if credential.token != state.current.token {
                                info!(path = %path.display(), "Consul ACL token file changed; using the new token");
                            }
                            state.current = Arc::new(credential);
                        }
                        Err(error) => warn!(
                            path = %path.display(),
                            error = %error,
                            "Consul ACL token file changed but cannot be used; keeping the previous token"
                        ),
                    }
                }
                Some(Arc::clone(&state.current))
            }
        }
    }

    /// Forgets the file's stamp, so the next request reads it again (reload).
    pub(crate) fn reread(&self) {
        if let Self::File { state, .. } = self {
            state.lock().unwrap_or_else(PoisonError::into_inner).stamp = None;
        }
    }

    /// Whether a token is sent.
    pub(crate) fn is_some(&self) -> bool {
        !matches!(self, Self::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(source: &TokenSource) -> Option<String> {
        source
            .current()
            .map(|credential| credential.token.expose().to_owned())
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes_and_kept_when_it_breaks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").expect("write");
        let source = TokenSource::file(path.clone()).expect("readable");
        assert_eq!(secret(&source).as_deref(), Some("first"));
        // Rotation by atomic rename, as consul-template and Vault agent do.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        assert_eq!(secret(&source).as_deref(), Some("second-token"));
        // Emptied, then removed: the last good token stays.
        std::fs::write(&path, "").expect("write");
        assert_eq!(secret(&source).as_deref(), Some("second-token"));
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(secret(&source).as_deref(), Some("second-token"));
        std::fs::write(&path, "third").expect("write");
        assert_eq!(secret(&source).as_deref(), Some("third"));
        assert!(matches!(
            TokenSource::file(dir.path().join("missing")),
            Err(FileError::Read(_))
        ));
        std::fs::write(&path, " \n").expect("write");
        assert!(matches!(TokenSource::file(path), Err(FileError::Unusable)));
    }
}
