//! Pulling from a registry with `oci-client`: token auth, blob streams and platform choice come from the crate.
//! Manifests are fetched with our own bounded GET (same reqwest stack, the token oci-client negotiated) because
//! oci-client reads a manifest body whole with no size limit, and a registry is hostile input.

use crate::digest::Digest;
use crate::progress::{NoProgress, Progress};
use crate::reference::{self, is_local_registry};
use crate::store::{self, ImageStore, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::Image;
use base64::Engine as _;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{Arch, ImageIndex, Os};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// How to pull. Built with `PullOptions::new().with_*()`.
#[derive(Clone)]
pub struct PullOptions {
    insecure: bool,
    credentials: Option<(String, String)>,
    docker_config: bool,
    progress: Arc<dyn Progress>,
    attempts: u32,
    timeout: Duration,
}

impl fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullOptions")
            .field("insecure", &self.insecure)
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .field("docker_config", &self.docker_config)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Default for PullOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl PullOptions {
    /// HTTPS (plain HTTP only for localhost registries), credentials from ~/.docker/config.json, no progress
    /// output, 4 attempts per request.
    pub fn new() -> Self {
        Self {
            insecure: false,
            credentials: None,
            docker_config: true,
            progress: Arc::new(NoProgress),
            attempts: 4,
            timeout: Duration::from_secs(60),
        }
    }
    /// Use plain HTTP for every registry.
    pub fn with_insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }
    /// Log in with these credentials (over the Docker config file).
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some((username.into(), password.into()));
        self
    }
    /// Whether to read `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`) for credentials.
    pub fn with_docker_config(mut self, read: bool) -> Self {
        self.docker_config = read;
        self
    }
    /// Where progress goes.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }
    /// Attempts per request on transient errors (at least 1).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }
    /// Connect/read timeout per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Registry failures, with the one-line reason a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401/403.
    #[error("failed to pull {reference}: registry {registry} refused access (check --username/--password-stdin or ~/.docker/config.json)")]
    Unauthorized {
        /// What was pulled.
        reference: String,
        /// The registry.
        registry: String,
    },
    /// 404.
    #[error("failed to pull {reference}: {what} not found in registry {registry}")]
    NotFound {
        /// What was pulled.
        reference: String,
        /// What is missing.
        what: String,
        /// The registry.
        registry: String,
    },
    /// DNS failed.
    #[error("failed to reach registry {registry}: unknown host")]
    UnknownHost {
        /// The registry.
        registry: String,
    },
    /// Connection-level failure after all retries.
    #[error("failed to {what} (registry {registry})")]
    Transfer {
        /// The request.
        what: String,
        /// The registry.
        registry: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other non-success answer.
    #[error("failed to {what}: registry answered HTTP {status}")]
    Status {
        /// The request.
        what: String,
        /// The HTTP status.
        status: u16,
    },
    /// No linux/amd64 entry in a multi-platform index.
    #[error("failed to pull {0}: the image index has no linux/amd64 image")]
    NoPlatform(String),
    /// Credentials could not be read.
    #[error("failed to read registry credentials: {0}")]
    Credentials(String),
    /// The async runtime could not start.
    #[error("failed to start the I/O runtime")]
    Runtime(#[source] io::Error),
}

/// Pulls `reference` (verified, blob by blob) into `store` and names it.
pub(crate) fn pull(
    store: &ImageStore,
    reference: &str,
    opts: &PullOptions,
) -> crate::Result<Image> {
    let parsed = reference::parse(reference)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(Puller::new(store, parsed, opts)?.run())
}

struct Puller<'a> {
    store: &'a ImageStore,
    reference: Reference,
    name: String,
    registry: String,
    scheme: &'static str,
    tls: bool,
    opts: &'a PullOptions,
    client: Client,
    http: reqwest::Client,
    auth: RegistryAuth,
}

impl<'a> Puller<'a> {
    fn new(
        store: &'a ImageStore,
        reference: Reference,
        opts: &'a PullOptions,
    ) -> crate::Result<Self> {
        let name = reference.whole();
        let registry = reference.resolve_registry().to_string();
        let plain = opts.insecure || is_local_registry(reference.registry());
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(opts.timeout),
            ..Default::default()
        };
        let client = Client::new(config);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(opts.timeout)
            .build()
            .map_err(|e| Error::Transfer {
                what: "set up HTTP client".into(),
                registry: registry.clone(),
                source: Box::new(e),
            })?;
        let auth = credentials(opts, reference.registry())?;
        Ok(Self {
            store,
            reference,
            name,
            registry,
            scheme: if plain { "http" } else { "https" },
            tls: !plain,
            opts,
            client,
            http,
            auth,
        })
    }

    async fn run(self) -> crate::Result<Image> {
        let p = &self.opts.progress;
        let token = self
            .retry("authenticate", || {
                self.client
                    .auth(&self.reference, &self.auth, RegistryOperation::Pull)
            })
            .await?;
        let authz = match (&token, &self.auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, pw)) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"))
            )),
            _ => None,
        };
        let want = self
            .reference
            .digest()
            .map(str::to_string)
            .or_else(|| self.reference.tag().map(str::to_string))
            .unwrap_or_else(|| "latest".into());
        let (mut bytes, mut digest) = self.get_manifest(&want, authz.as_deref()).await?;
        if let Some(expected) = self.reference.digest() {
            if digest.as_str() != expected {
                return Err(crate::Error::DigestMismatch {
                    what: "manifest".into(),
                    expected: expected.into(),
                    actual: digest.to_string(),
                });
            }
        }
        if is_index(&bytes) {
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|source| crate::Error::Json {
                    what: format!("image index {digest}"),
                    source,
                })?;
            let entry = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform()
                        .as_ref()
                        .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
                })
                .ok_or_else(|| Error::NoPlatform(self.name.clone()))?;
            let want = Digest::parse(entry.digest().as_ref())?;
            p.note(&format!("{}: linux/amd64 is {want}", self.name));
            let (b, d) = self.get_manifest(want.as_str(), authz.as_deref()).await?;
            if d != want {
                return Err(crate::Error::DigestMismatch {
                    what: "platform manifest".into(),
                    expected: want.to_string(),
                    actual: d.to_string(),
                });
            }
            (bytes, digest) = (b, d);
        }
        let manifest = store::parse_manifest(&bytes, &digest)?;
        // Config first: a manifest whose layers disagree with the config's diff_ids is refused before any layer.
        let cfg = manifest.config();
        let config_digest = Digest::parse(cfg.digest().as_ref())?;
        if cfg.size() > MAX_CONFIG_BYTES {
            return Err(crate::Error::TooLarge {
                what: format!("config {config_digest}"),
                size: cfg.size(),
                limit: MAX_CONFIG_BYTES,
            });
        }
        self.fetch_blob(
            "config",
            &config_digest,
            cfg.media_type().to_string(),
            cfg.size(),
        )
        .await?;
        let config = store::parse_config(
            &self.store.read_blob(&config_digest, MAX_CONFIG_BYTES)?,
            &config_digest,
        )?;
        store::check_layers_match(&manifest, &config, &digest)?;
        for layer in manifest.layers() {
            let d = Digest::parse(layer.digest().as_ref())?;
            if layer.size() > self.store.max_layer_bytes() {
                return Err(crate::Error::TooLarge {
                    what: format!("layer {d}"),
                    size: layer.size(),
                    limit: self.store.max_layer_bytes(),
                });
            }
            self.fetch_blob("layer", &d, layer.media_type().to_string(), layer.size())
                .await?;
        }
        self.store.put_blob_bytes(&bytes)?;
        let origin = crate::store::Origin::Registry {
            registry: self.registry.clone(),
            tls: self.tls,
        };
        let image = self.store.commit_image(&self.name, &bytes, origin)?;
        p.note(&format!("{}: pulled {digest}", self.name));
        Ok(image)
    }

    // GET a manifest by tag or digest, reading at most MAX_MANIFEST_BYTES.
    async fn get_manifest(
        &self,
        reference: &str,
        authz: Option<&str>,
    ) -> crate::Result<(Vec<u8>, Digest)> {
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            self.registry,
            self.reference.repository(),
            reference
        );
        let what = format!("manifest {}:{reference}", self.reference.repository());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.get_manifest_once(&url, &what, authz).await {
                Err(GetError::Transient(e)) if attempt < self.opts.attempts => {
                    self.opts
                        .progress
                        .note(&format!("retrying {what} after: {e}"));
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(GetError::Transient(e)) => {
                    return Err(self.transport_error(format!("fetch {what}"), e).into());
                }
                Err(GetError::Fatal(e)) => return Err(e),
                Ok(body) => {
                    let d = Digest::of(&body);
                    return Ok((body, d));
                }
            }
        }
    }

    async fn get_manifest_once(
        &self,
        url: &str,
        what: &str,
        authz: Option<&str>,
    ) -> Result<Vec<u8>, GetError> {
        let mut req = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT);
        if let Some(a) = authz {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| GetError::Transient(Box::new(e)))?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 => {
                return Err(GetError::Fatal(
                    Error::Unauthorized {
                        reference: self.name.clone(),
                        registry: self.registry.clone(),
                    }
                    .into(),
                ))
            }
            404 => {
                return Err(GetError::Fatal(
                    Error::NotFound {
                        reference: self.name.clone(),
                        what: what.to_string(),
                        registry: self.registry.clone(),
                    }
                    .into(),
                ))
            }
            429 | 500..=599 => {
                return Err(GetError::Transient(
                    format!("registry answered HTTP {status}").into(),
                ))
            }
            _ => {
                return Err(GetError::Fatal(
                    Error::Status {
                        what: format!("fetch {what}"),
                        status,
                    }
                    .into(),
                ))
            }
        }
        if let Some(len) = resp.content_length() {
            if len > MAX_MANIFEST_BYTES {
                return Err(GetError::Fatal(crate::Error::TooLarge {
                    what: what.to_string(),
                    size: len,
                    limit: MAX_MANIFEST_BYTES,
                }));
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| GetError::Transient(Box::new(e)))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(GetError::Fatal(crate::Error::TooLarge {
                    what: what.to_string(),
                    size: (body.len() + chunk.len()) as u64,
                    limit: MAX_MANIFEST_BYTES,
                }));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    // Streams one blob into the store (digest and size checked there), retrying transient failures from scratch.
    async fn fetch_blob(
        &self,
        what: &str,
        digest: &Digest,
        media_type: String,
        size: u64,
    ) -> crate::Result<()> {
        let p = &self.opts.progress;
        if self.store.has_blob(digest, Some(size)) {
            p.start(digest.as_str(), what, size);
            p.finish(digest.as_str(), true);
            return Ok(());
        }
        let desc = OciDescriptor {
            media_type,
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        p.start(digest.as_str(), what, size);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err: Box<dyn std::error::Error + Send + Sync> =
                match self.client.pull_blob_stream(&self.reference, &desc).await {
                    Ok(stream) => match self.spool_stream(what, digest, size, stream).await {
                        Ok(()) => {
                            p.finish(digest.as_str(), false);
                            return Ok(());
                        }
                        Err(SpoolError::Fatal(e)) => return Err(e),
                        Err(SpoolError::Transient(e)) => e,
                    },
                    Err(e) => {
                        match classify(e, &self.name, &self.registry, &format!("{what} {digest}")) {
                            Ok(transient) => transient,
                            Err(fatal) => return Err(fatal),
                        }
                    }
                };
            if attempt >= self.opts.attempts {
                return Err(Error::Transfer {
                    what: format!("download {what} {digest}"),
                    registry: self.registry.clone(),
                    source: err,
                }
                .into());
            }
            p.note(&format!("retrying {what} {} after: {err}", digest.short()));
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    async fn spool_stream(
        &self,
        what: &str,
        digest: &Digest,
        size: u64,
        stream: oci_client::client::SizedStream,
    ) -> Result<(), SpoolError> {
        if let Some(len) = stream.content_length {
            if len != size {
                return Err(SpoolError::Fatal(crate::Error::SizeMismatch {
                    what: format!("{what} {digest} (Content-Length)"),
                    expected: size,
                    actual: len,
                }));
            }
        }
        let mut w = self
            .store
            .blob_writer(&format!("{what} {digest}"), size)
            .map_err(SpoolError::Fatal)?;
        let mut stream = stream.stream;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => w.write(&b).map_err(SpoolError::Fatal)?,
                Err(e) => {
                    if let Some(DigestError::VerificationError { expected, actual }) =
                        e.get_ref().and_then(|x| x.downcast_ref::<DigestError>())
                    {
                        return Err(SpoolError::Fatal(crate::Error::DigestMismatch {
                            what: format!("{what} {digest}"),
                            expected: expected.clone(),
                            actual: actual.clone(),
                        }));
                    }
                    return Err(SpoolError::Transient(Box::new(e)));
                }
            }
            self.opts.progress.advance(digest.as_str(), w.written());
        }
        if w.written() < size {
            // A short body is a dropped connection: worth another try.
            return Err(SpoolError::Transient(
                format!("connection closed after {} of {size} bytes", w.written()).into(),
            ));
        }
        self.store
            .commit_blob(w, digest, size)
            .map_err(SpoolError::Fatal)
    }

    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> crate::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => match classify(e, &self.name, &self.registry, what) {
                    Err(fatal) => return Err(fatal),
                    Ok(t) if attempt >= self.opts.attempts => {
                        return Err(self.transport_error(what.to_string(), t).into())
                    }
                    Ok(t) => {
                        debug!("retrying {what}: {t}");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                },
            }
        }
    }

    fn transport_error(
        &self,
        what: String,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        let e = e.into();
        if is_dns_error(&*e) {
            return Error::UnknownHost {
                registry: self.registry.clone(),
            };
        }
        Error::Transfer {
            what,
            registry: self.registry.clone(),
            source: e,
        }
    }
}

enum GetError {
    Transient(Box<dyn std::error::Error + Send + Sync>),
    Fatal(crate::Error),
}

enum SpoolError {
    Transient(Box<dyn std::error::Error + Send + Sync>),
    Fatal(crate::Error),
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5))
}

// Ok(transient cause) for errors worth a retry; Err(final error) otherwise.
fn classify(
    e: OciDistributionError,
    reference: &str,
    registry: &str,
    what: &str,
) -> Result<Box<dyn std::error::Error + Send + Sync>, crate::Error> {
    use OciDistributionError as E;
    let fatal = |err: Error| Err(err.into());
    match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => fatal(Error::Unauthorized {
            reference: reference.into(),
            registry: registry.into(),
        }),
        E::ImageManifestNotFoundError(_) => fatal(Error::NotFound {
            reference: reference.into(),
            what: what.into(),
            registry: registry.into(),
        }),
        E::ServerError { code: 404, .. } => fatal(Error::NotFound {
            reference: reference.into(),
            what: what.into(),
            registry: registry.into(),
        }),
        E::ServerError { code, .. } if code == 401 || code == 403 => fatal(Error::Unauthorized {
            reference: reference.into(),
            registry: registry.into(),
        }),
        E::ServerError { code, .. } if code == 429 || code >= 500 => Ok(Box::new(e)),
        E::RegistryError { ref envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|x| format!("{:?}", x.code).contains("Unknown")) =>
        {
            fatal(Error::NotFound {
                reference: reference.into(),
                what: what.into(),
                registry: registry.into(),
            })
        }
        E::RequestError(ref r) if is_dns_error(r) => fatal(Error::UnknownHost {
            registry: registry.into(),
        }),
        E::RequestError(_) | E::IoError(_) => Ok(Box::new(e)),
        other => fatal(Error::Transfer {
            what: what.into(),
            registry: registry.into(),
            source: Box::new(other),
        }),
    }
}

fn is_dns_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if s.contains("failed to lookup address")
            || s.contains("Name or service not known")
            || s.contains("dns error")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => {
            matches!(
                p.media_type.as_deref(),
                Some(
                    "application/vnd.oci.image.index.v1+json"
                        | "application/vnd.docker.distribution.manifest.list.v2+json"
                )
            ) || (p.media_type.is_none() && p.manifests.is_some())
        }
        Err(_) => false,
    }
}

fn credentials(opts: &PullOptions, registry: &str) -> Result<RegistryAuth, Error> {
    if let Some((u, p)) = &opts.credentials {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    if !opts.docker_config {
        return Ok(RegistryAuth::Anonymous);
    }
    let keys: &[&str] = if registry == "docker.io" {
        &[
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io",
        ]
    } else {
        &[registry]
    };
    for key in keys {
        match docker_credential::get_credential(key) {
            Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
                return Ok(RegistryAuth::Basic(u, p))
            }
            Ok(docker_credential::DockerCredential::IdentityToken(t)) => {
                return Ok(RegistryAuth::Bearer(t))
            }
            Err(docker_credential::CredentialRetrievalError::ConfigNotFound)
            | Err(docker_credential::CredentialRetrievalError::NoCredentialConfigured)
            | Err(docker_credential::CredentialRetrievalError::ConfigReadError) => {}
            Err(e) => return Err(Error::Credentials(e.to_string())),
        }
    }
    Ok(RegistryAuth::Anonymous)
}
