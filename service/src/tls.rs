//! TLS for every listener and every internal client, when certificates are configured
//! (`--tls-cert`, `--tls-key`, `--tls-ca`, `--tls-client-auth`): rustls with aws-lc-rs (reqwest's own) as the
//! crypto provider. One certificate per process serves its listener and, with mutual TLS,
//! proves the process to the others; the CA file is the only trust anchor of the clients (and
//! of the servers, for client certificates). Loaded once at start-up: a bad file stops the
//! process with a clear message, never a request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The files of a process's TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain of this process (leaf first).
    pub cert: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificates the clients trust for servers (and, with `client_auth`, the servers
    /// for clients). Required: a cluster names its own CA.
    pub ca: PathBuf,
    /// Mutual TLS: this process's listener asks every client for a certificate signed by
    /// `ca` (the directory and the stores; the public roles, cache, uploader and S3, leave it
    /// off). The internal clients present this process's certificate either way.
    pub client_auth: bool,
}

/// TLS settings loaded from [`TlsFiles`]: a server and a client configuration.
pub struct Tls {
    pub files: TlsFiles,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        self.files == other.files
    }
}

impl Eq for Tls {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

impl Tls {
    /// Loads and checks the files: the certificate matches the key, the CA parses.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let chain = certs(&files.cert)?;
        let mut roots = RootCertStore::empty();
        for c in certs(&files.ca)? {
            roots
                .add(c)
                .map_err(|e| format!("bad CA certificate in {}: {e}", files.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let versions = rustls::DEFAULT_VERSIONS;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("tls: {e}"))?;
        let server = if files.client_auth {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| format!("tls client verifier: {e}"))?;
            server.with_client_cert_verifier(verifier)
        } else {
            server.with_no_client_auth()
        };
        let mut server = server
            .with_single_cert(chain.clone(), key(&files.key)?)
            .map_err(|e| {
                format!(
                    "{} and {} are not a certificate and its key: {e}",
                    files.cert.display(),
                    files.key.display()
                )
            })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots);
        let mut client = client
            .with_client_auth_cert(chain, key(&files.key)?)
            .map_err(|e| format!("tls client certificate: {e}"))?;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            files,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The listeners' configuration (for actix-web's `listen_rustls_0_23`).
    pub fn server_config(&self) -> rustls::ServerConfig {
        (*self.server).clone()
    }

    /// The internal clients' configuration.
    pub fn client_config(&self) -> rustls::ClientConfig {
        (*self.client).clone()
    }
}

/// A reqwest client builder that speaks TLS with `tls` when given (trusting its CA only, and
/// presenting its certificate under mutual TLS), plain HTTP otherwise. Every internal client
/// of every role starts here.
pub fn http_builder(tls: Option<&Tls>) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder();
    match tls {
        Some(t) => b.tls_backend_preconfigured(t.client_config()),
        None => b,
    }
}

/// Listens on `listener` with TLS when `tls` is given, plain HTTP otherwise.
pub fn listen<F, I, S, B>(
    server: actix_web::HttpServer<F, I, S, B>,
    listener: std::net::TcpListener,
    tls: Option<&Tls>,
) -> std::io::Result<actix_web::HttpServer<F, I, S, B>>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_web::dev::ServiceFactory<actix_http::Request, Config = actix_web::dev::AppConfig>
        + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<actix_web::dev::Response<B>> + 'static,
    <S::Service as actix_web::dev::Service<actix_http::Request>>::Future: 'static,
    S::Service: 'static,
    B: actix_web::body::MessageBody + 'static,
{
    match tls {
        Some(t) => server.listen_rustls_0_23(listener, t.server_config()),
        None => server.listen(listener),
    }
}
