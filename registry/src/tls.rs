//! Makes rustls use the `ring` crypto provider, so no aws-lc has to be built.

/// Installs `ring` as rustls' process-wide default provider unless one is installed already.
///
/// `reqwest` is built without a provider of its own and takes the process default when a client is made.
pub(crate) fn install_ring_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread that installs a provider first is fine: one is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
