/// Errors building a catalog cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("invalid catalog setting {key}: {reason}")]
    InvalidConfig {
        /// Which setting.
        key: &'static str,
        /// Why it is rejected.
        reason: String,
    },
}
