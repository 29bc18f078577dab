//! `meshtrace-proxy init`: the iptables step run once by the pod's init container.

/// Flags of `meshtrace-proxy init`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct InitArgs {}

/// Programs the pod's nat table.
pub fn run(_args: &InitArgs) -> Result<(), InitError> {
    Err(InitError::NotImplemented)
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("meshtrace-proxy init is not implemented yet")]
    NotImplemented,
}
