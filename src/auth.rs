//! Auth: finds a request's token and verifies it into an [`Identity`] (tenant and user).
//!
//! Key sources: an HS256 secret, a PEM public key (RS256 or ES256) and a JWKS URL. A token's
//! `alg` picks the source and must be the algorithm of the key it is checked with, which
//! rules out `none` and the classic confusion of an RSA public key used as an HMAC secret.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE, SEC_WEBSOCKET_PROTOCOL};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::JwtConfig;

/// Who a verified token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The tenant claim.
    pub tenant: String,
    /// `sub`.
    pub user: String,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// `iat`, seconds since the epoch, when the token has one.
    pub issued_at: Option<u64>,
}

impl Identity {
    /// Time left until `exp` plus `leeway`, the moment the connection must end; at most
    /// a year, so an absurd `exp` cannot overflow a timer.
    pub fn remaining(&self, leeway: Duration) -> Duration {
        let deadline = Duration::from_secs(self.expires_at).saturating_add(leeway);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        deadline.saturating_sub(now).min(MAX_LIFETIME)
    }
}

/// Longest a connection is kept for one token, whatever its `exp` says.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

crate::label_set! {
    /// Why a token was refused; the names are the `reason` of a 401 body and of
    /// `gateway_auth_failures_total`.
    pub enum AuthFailure as "reason" {
        /// No token in header, subprotocol, query or cookie.
        Missing = "missing",
        /// Not three base64url parts with a JSON header, or a `crit` header.
        Malformed = "malformed",
        /// `none`, or an algorithm no configured key has.
        Algorithm = "algorithm",
        /// `kid` not in the JWKS (after a bounded refetch).
        UnknownKey = "unknown_key",
        /// Signature does not verify.
        Signature = "signature",
        /// `exp` passed (beyond leeway).
        Expired = "expired",
        /// `nbf` in the future (beyond leeway).
        NotYetValid = "not_yet_valid",
        /// `iss` differs from `GATEWAY_JWT_ISSUER`.
        Issuer = "issuer",
        /// `aud` differs from `GATEWAY_JWT_AUDIENCE`.
        Audience = "audience",
        /// `sub`, the tenant claim or `exp` missing, not a non-empty string / number, or
        /// repeated.
        Claims = "claims",
        /// The JWKS could not be fetched yet.
        KeysUnavailable = "keys_unavailable",
        /// Issued before the platform banned its user or suspended its tenant.
        Revoked = "revoked",
    }
}

/// Where the token of a request was found; cookie auth gets the origin check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer`.
    Header,
    /// `Sec-WebSocket-Protocol: realtime-gateway.v1, bearer.<token>`: how browsers keep the
    /// token out of WebSocket URLs (and so out of logs and console errors).
    Protocol,
    /// `?access_token=`.
    Query,
    /// The configured cookie.
    Cookie,
}

/// The WebSocket subprotocol a client offers (and the gateway selects) when it sends its
/// token as another offered subprotocol.
pub const WS_PROTOCOL: &str = "realtime-gateway.v1";
/// Prefix of the offered subprotocol that carries the token.
const WS_TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// The token offered as a `bearer.<token>` WebSocket subprotocol, next to [`WS_PROTOCOL`].
fn protocol_token(headers: &HeaderMap) -> Option<String> {
    let mut offered = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let mut token = None;
    let mut ours = false;
    for p in offered.by_ref() {
        if p == WS_PROTOCOL {
            ours = true;
        } else if let Some(t) = p.strip_prefix(WS_TOKEN_PROTOCOL_PREFIX)
            && !t.is_empty()
        {
            token = Some(t.to_owned());
        }
    }
    token.filter(|_| ours)
}

/// Finds the token in, in this order, the `Authorization: Bearer` header, the
/// `bearer.<token>` WebSocket subprotocol, the `access_token` query parameter, the cookie.
/// The first place that has one wins, so a bad header token is not silently replaced by a
/// cookie.
pub fn find_token(
    headers: &HeaderMap,
    query: Option<&str>,
    cookie_name: &str,
) -> Option<(String, TokenSource)> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = value.splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some((token.trim().to_owned(), TokenSource::Header));
        }
    }
    if let Some(token) = protocol_token(headers) {
        return Some((token, TokenSource::Protocol));
    }
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == "access_token" && !v.is_empty() {
                return Some((v.into_owned(), TokenSource::Query));
            }
        }
    }
    for value in headers.get_all(COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == cookie_name
                && !v.is_empty()
            {
                return Some((v.to_owned(), TokenSource::Cookie));
            }
        }
    }
    None
}

/// Problems loading keys at startup.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File named by GATEWAY_JWT_PUBLIC_KEY_FILE.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The PEM is not an RSA or EC public key.
    #[error("{0} is not an RSA or P-256 EC public key in PEM format")]
    Pem(String),
    /// The HTTP client for the JWKS could not be built.
    #[error("JWKS client: {0}")]
    Client(String),
}

/// A verification key and the only algorithm it may be used with.
#[derive(Clone)]
struct Key {
    key: Arc<DecodingKey>,
    alg: Algorithm,
}

/// Verifies tokens against the configured key sources.
pub struct Verifier {
    secret: Option<Key>,
    pem: Option<Key>,
    jwks: Option<Jwks>,
    tenant_claim: String,
    single_tenant: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
}

impl Verifier {
    /// Loads the static keys; the JWKS is fetched by [`Verifier::refresh_jwks`].
    pub fn new(cfg: &JwtConfig) -> Result<Verifier, KeyError> {
        let secret = cfg.secret.as_ref().map(|s| Key {
            key: Arc::new(DecodingKey::from_secret(s.as_bytes())),
            alg: Algorithm::HS256,
        });
        let pem = match &cfg.public_key_file {
            None => None,
            Some(path) => {
                let shown = path.display().to_string();
                let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: shown.clone(),
                    source,
                })?;
                Some(pem_key(&bytes).ok_or(KeyError::Pem(shown))?)
            }
        };
        let jwks = match &cfg.jwks_url {
            None => None,
            Some(url) => Some(Jwks::new(url.clone(), cfg.jwks_min_refetch)?),
        };
        Ok(Verifier {
            secret,
            pem,
            jwks,
            tenant_claim: cfg.tenant_claim.clone(),
            single_tenant: cfg.single_tenant.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway,
        })
    }

    /// Whether a JWKS URL is configured (and so needs periodic refreshes).
    pub fn has_jwks(&self) -> bool {
        self.jwks.is_some()
    }

    /// Refetches the JWKS now, whatever the rate limit; used at start and periodically.
    pub async fn refresh_jwks(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.fetch().await;
        }
    }

    /// Verifies `token`: signature, algorithm, `exp`/`nbf` with leeway, issuer, audience,
    /// `sub` and the tenant claim.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthFailure> {
        check_header(token)?;
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return Err(classify_bad_header(token)),
        };
        let key = self.key_for(header.alg, header.kid.as_deref()).await?;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &self.validation(key.alg))
                .map_err(|e| decode_failure(token, e.kind()))?;
        // The claims were parsed into a map, where a repeated claim silently keeps its last
        // value: a signed `"tenant_id":"A","tenant_id":"B"` must not connect as B.
        if !segment(token, 1).is_some_and(|json| unique_keys(&json)) {
            return Err(AuthFailure::Claims);
        }
        self.identity(&data.claims)
    }

    /// What jsonwebtoken checks: the key's algorithm, `exp`/`nbf` with leeway, and the
    /// configured issuer and audience.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // jsonwebtoken only checks iss/aud when the claim is present, so a configured
        // issuer or audience must also make the claim required.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        validation
    }

    /// Tenant, user and lifetime from verified claims.
    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthFailure> {
        let text = |name: &str| match claims.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let user = text("sub").ok_or(AuthFailure::Claims)?;
        // In single-tenant mode the tenant is the gateway's, whatever the token says.
        let tenant = match &self.single_tenant {
            Some(t) => t.clone(),
            None => text(&self.tenant_claim).ok_or(AuthFailure::Claims)?,
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthFailure::Claims)?;
        Ok(Identity {
            tenant,
            user,
            expires_at,
            issued_at: claims.get("iat").and_then(Value::as_u64),
        })
    }

    async fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<Key, AuthFailure> {
        if alg == Algorithm::HS256 {
            return self.secret.clone().ok_or(AuthFailure::Algorithm);
        }
        if let (Some(jwks), Some(kid)) = (&self.jwks, kid) {
            let key = jwks.key(kid).await;
            match key {
                Ok(k) if k.alg == alg => return Ok(k),
                Ok(_) => return Err(AuthFailure::Algorithm),
                // A token with a kid may still be meant for the static PEM key.
                Err(e) => match &self.pem {
                    Some(p) if p.alg == alg => return Ok(p.clone()),
                    _ => return Err(e),
                },
            }
        }
        match &self.pem {
            Some(p) if p.alg == alg => Ok(p.clone()),
            Some(_) => Err(AuthFailure::Algorithm),
            None if self.jwks.is_some() => Err(AuthFailure::UnknownKey),
            None => Err(AuthFailure::Algorithm),
        }
    }
}

/// Refuses headers the gateway must not accept whatever the signature: repeated keys, and
/// `crit` (RFC 7515 4.1.11: it names extensions that must be understood, and the gateway
/// understands none).
fn check_header(token: &str) -> Result<(), AuthFailure> {
    let header = segment(token, 0).ok_or(AuthFailure::Malformed)?;
    if !unique_keys(&header) || has_key(&header, "crit") {
        return Err(AuthFailure::Malformed);
    }
    Ok(())
}

/// Why jsonwebtoken refused a token, as the gateway reports it.
fn decode_failure(token: &str, kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::Issuer,
        ErrorKind::InvalidAudience => AuthFailure::Audience,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => AuthFailure::Claims,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthFailure::Algorithm,
        // jsonwebtoken reads the registered claims into a struct after checking the
        // signature: a repeated `sub` or `exp` fails there.
        ErrorKind::Json(_) if !segment(token, 1).is_some_and(|j| unique_keys(&j)) => {
            AuthFailure::Claims
        }
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthFailure::Malformed,
        _ => AuthFailure::Signature,
    }
}

/// The base64url-decoded `index`-th dot-separated part of a token.
fn segment(token: &str, index: usize) -> Option<Vec<u8>> {
    let part = token.split('.').nth(index)?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()
}

/// Whether `json` is an object whose top-level keys are all distinct (after unescaping).
fn unique_keys(json: &[u8]) -> bool {
    serde_json::from_slice::<UniqueKeys>(json).is_ok()
}

/// Whether `json` is an object with top-level key `key`.
fn has_key(json: &[u8], key: &str) -> bool {
    serde_json::from_slice::<Map<String, Value>>(json).is_ok_and(|m| m.contains_key(key))
}

/// Deserializes only when an object's keys are distinct; the values are skipped.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object without repeated keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key) {
                        return Err(serde::de::Error::custom("repeated key"));
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(UniqueKeys)
            }
        }
        d.deserialize_map(Keys)
    }
}

/// `decode_header` fails both on garbage and on algorithms it does not know (`none`);
/// the two are told apart for the metrics.
fn classify_bad_header(token: &str) -> AuthFailure {
    let Some(first) = token.split('.').next() else {
        return AuthFailure::Malformed;
    };
    let alg = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("alg").cloned());
    match alg {
        Some(Value::String(_)) => AuthFailure::Algorithm,
        _ => AuthFailure::Malformed,
    }
}

fn pem_key(bytes: &[u8]) -> Option<Key> {
    if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
        return Some(Key {
            key: Arc::new(k),
            alg: Algorithm::RS256,
        });
    }
    DecodingKey::from_ec_pem(bytes).ok().map(|k| Key {
        key: Arc::new(k),
        alg: Algorithm::ES256,
    })
}

/// The algorithm a JWK may be used with, or `None` when the gateway does not accept it.
fn jwk_key(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        key: Arc::new(key),
        alg,
    })
}

/// Timeout of one JWKS fetch, so a hung identity provider cannot hold handshakes.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// Keys from a JWKS endpoint, by `kid`.
struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, Key>>>,
    /// Held while fetching so concurrent handshakes with an unknown kid share one fetch;
    /// holds the time of the last fetch for the refetch floor.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    loaded: std::sync::atomic::AtomicBool,
}

impl Jwks {
    fn new(url: String, min_refetch: Duration) -> Result<Jwks, KeyError> {
        let client = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .build()
            .map_err(|e| KeyError::Client(e.to_string()))?;
        Ok(Jwks {
            url,
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            fetching: tokio::sync::Mutex::new(None),
            min_refetch,
            loaded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn lookup(&self, kid: &str) -> Option<Key> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }

    async fn key(&self, kid: &str) -> Result<Key, AuthFailure> {
        if let Some(k) = self.lookup(kid) {
            return Ok(k);
        }
        {
            let mut last = self.fetching.lock().await;
            // Another handshake may have fetched while we waited for the lock.
            if let Some(k) = self.lookup(kid) {
                return Ok(k);
            }
            let due = last.is_none_or(|t| t.elapsed() >= self.min_refetch);
            if due {
                *last = Some(Instant::now());
                self.fetch_locked().await;
            }
        }
        match self.lookup(kid) {
            Some(k) => Ok(k),
            None if !self.loaded.load(std::sync::atomic::Ordering::Acquire) => {
                Err(AuthFailure::KeysUnavailable)
            }
            None => Err(AuthFailure::UnknownKey),
        }
    }

    async fn fetch(&self) {
        let mut last = self.fetching.lock().await;
        *last = Some(Instant::now());
        self.fetch_locked().await;
    }

    async fn fetch_locked(&self) {
        match self.download().await {
            Ok(keys) => {
                tracing::info!(jwks.keys = keys.len(), "JWKS loaded");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                self.loaded
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            // Keep the keys we have: an identity provider hiccup must not log everyone out.
            Err(e) => tracing::warn!(error = %e, "JWKS fetch failed; keeping the previous keys"),
        }
    }

    async fn download(&self) -> Result<HashMap<String, Key>, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if body.len() > JWKS_MAX_BYTES {
            return Err("JWKS document too large".into());
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no `keys` array")?;
        let mut out = HashMap::new();
        // Keys are parsed one by one so one exotic key does not hide the others.
        for raw in keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            let (Some(kid), Some(key)) = (jwk.common.key_id.clone(), jwk_key(&jwk)) else {
                continue;
            };
            out.insert(kid, key);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config() -> JwtConfig {
        JwtConfig {
            secret: Some(SECRET.into()),
            tenant_claim: "tenant_id".into(),
            cookie: "access_token".into(),
            leeway: Duration::from_secs(5),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(10),
            ..JwtConfig::default()
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn verify(cfg: &JwtConfig, token: &str) -> Result<Identity, AuthFailure> {
        let v = Verifier::new(cfg).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(v.verify(token))
    }

    /// An HS256 token over a header and payload given as raw JSON text, so tests can sign
    /// what a serializer would never produce (repeated keys).
    pub(crate) fn hs_raw(header: &str, payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let message = format!("{}.{}", b64(header), b64(payload));
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    }

    #[test]
    fn repeated_claims_and_crit_headers_are_refused() {
        let exp = now() + 60;
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let good = format!(r#"{{"sub":"u1","tenant_id":"A","exp":{exp}}}"#);
        assert!(verify(&config(), &hs_raw(header, &good)).is_ok());
        for payload in [
            format!(r#"{{"sub":"u1","tenant_id":"A","tenant_id":"B","exp":{exp}}}"#),
            // The same key spelled with an escape.
            format!(r#"{{"sub":"u1","tenant_id":"A","tenant\u005fid":"B","exp":{exp}}}"#),
            format!(r#"{{"sub":"u1","sub":"u2","tenant_id":"A","exp":{exp}}}"#),
        ] {
            assert_eq!(
                verify(&config(), &hs_raw(header, &payload)),
                Err(AuthFailure::Claims),
                "{payload}"
            );
        }
        for header in [
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
        ] {
            assert_eq!(
                verify(&config(), &hs_raw(header, &good)),
                Err(AuthFailure::Malformed),
                "{header}"
            );
        }
    }

    #[test]
    fn valid_token_gives_identity() {
        let id = verify(
            &config(),
            &hs(json!({"sub": "u1", "tenant_id": "t1", "exp": now() + 60})),
        )
        .unwrap();
        assert_eq!((id.tenant.as_str(), id.user.as_str()), ("t1", "u1"));
    }

    #[test]
    fn refusals_have_reasons() {
        let cfg = config();
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = json!({"sub": "u", "tenant_id": "t", "exp": now() + 60});
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(claims.clone())
        );
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let wrong_key = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        let cases = [
            ("garbage", "not-a-token".to_owned(), AuthFailure::Malformed),
            ("none", none, AuthFailure::Algorithm),
            ("hs512", hs512, AuthFailure::Algorithm),
            ("wrong key", wrong_key, AuthFailure::Signature),
            (
                "expired",
                hs(json!({"sub": "u", "tenant_id": "t", "exp": now() - 60})),
                AuthFailure::Expired,
            ),
            (
                "nbf",
                hs(json!({"sub": "u", "tenant_id": "t", "exp": now() + 600, "nbf": now() + 300})),
                AuthFailure::NotYetValid,
            ),
            (
                "no exp",
                hs(json!({"sub": "u", "tenant_id": "t"})),
                AuthFailure::Claims,
            ),
            (
                "no sub",
                hs(json!({"tenant_id": "t", "exp": now() + 60})),
                AuthFailure::Claims,
            ),
            (
                "no tenant",
                hs(json!({"sub": "u", "exp": now() + 60})),
                AuthFailure::Claims,
            ),
            (
                "empty tenant",
                hs(json!({"sub": "u", "tenant_id": "", "exp": now() + 60})),
                AuthFailure::Claims,
            ),
            (
                "numeric tenant",
                hs(json!({"sub": "u", "tenant_id": 5, "exp": now() + 60})),
                AuthFailure::Claims,
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(verify(&cfg, &token).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn absurd_exp_does_not_overflow() {
        let id = Identity {
            tenant: "t".into(),
            user: "u".into(),
            expires_at: u64::MAX,
            issued_at: None,
        };
        assert_eq!(id.remaining(Duration::from_secs(u64::MAX)), MAX_LIFETIME);
    }

    #[test]
    fn leeway_applies_to_exp() {
        let token = hs(json!({"sub": "u", "tenant_id": "t", "exp": now() - 2}));
        assert!(verify(&config(), &token).is_ok());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let cfg = JwtConfig {
            issuer: Some("https://id.flatrender.example".into()),
            audience: Some("realtime".into()),
            ..config()
        };
        let good = hs(json!({"sub": "u", "tenant_id": "t", "exp": now() + 60,
            "iss": "https://id.flatrender.example", "aud": "realtime"}));
        assert!(verify(&cfg, &good).is_ok());
        let bad_iss = hs(json!({"sub": "u", "tenant_id": "t", "exp": now() + 60,
            "iss": "https://evil.example", "aud": "realtime"}));
        assert_eq!(verify(&cfg, &bad_iss).unwrap_err(), AuthFailure::Issuer);
        let bad_aud = hs(json!({"sub": "u", "tenant_id": "t", "exp": now() + 60,
            "iss": "https://id.flatrender.example", "aud": "billing"}));
        assert_eq!(verify(&cfg, &bad_aud).unwrap_err(), AuthFailure::Audience);
        let bare = hs(json!({"sub": "u", "tenant_id": "t", "exp": now() + 60}));
        assert_eq!(verify(&cfg, &bare).unwrap_err(), AuthFailure::Claims);
        // Not configured: an aud claim is fine.
        assert!(verify(&config(), &bad_aud).is_ok());
    }

    #[test]
    fn single_tenant_mode_needs_no_tenant_claim() {
        let cfg = JwtConfig {
            single_tenant: Some("app".into()),
            ..config()
        };
        let id = verify(&cfg, &hs(json!({"sub": "u", "exp": now() + 60}))).unwrap();
        assert_eq!(id.tenant, "app");
        let id = verify(
            &cfg,
            &hs(json!({"sub": "u", "tenant_id": "x", "exp": now() + 60})),
        )
        .unwrap();
        assert_eq!(id.tenant, "app");
    }

    #[test]
    fn custom_tenant_claim() {
        let cfg = JwtConfig {
            tenant_claim: "org".into(),
            ..config()
        };
        let id = verify(
            &cfg,
            &hs(json!({"sub": "u", "org": "o", "exp": now() + 60})),
        )
        .unwrap();
        assert_eq!(id.tenant, "o");
    }

    #[test]
    fn token_sources_in_contract_order() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=b; access_token=from-cookie".parse().unwrap());
        assert_eq!(
            find_token(&h, Some("x=1"), "access_token"),
            Some(("from-cookie".into(), TokenSource::Cookie))
        );
        assert_eq!(
            find_token(&h, Some("access_token=from%2Bquery"), "access_token"),
            Some(("from+query".into(), TokenSource::Query))
        );
        h.insert(AUTHORIZATION, "Bearer from-header".parse().unwrap());
        assert_eq!(
            find_token(&h, Some("access_token=q"), "access_token"),
            Some(("from-header".into(), TokenSource::Header))
        );
        assert_eq!(find_token(&HeaderMap::new(), None, "access_token"), None);
        let mut p = HeaderMap::new();
        p.insert(
            SEC_WEBSOCKET_PROTOCOL,
            "realtime-gateway.v1, bearer.a.b.c".parse().unwrap(),
        );
        assert_eq!(
            find_token(&p, Some("access_token=q"), "access_token"),
            Some(("a.b.c".into(), TokenSource::Protocol))
        );
        // Without our protocol next to it, a `bearer.` entry is someone else's protocol.
        p.insert(SEC_WEBSOCKET_PROTOCOL, "bearer.a.b.c".parse().unwrap());
        assert_eq!(find_token(&p, None, "access_token"), None);
        assert_eq!(
            find_token(&h, None, "session").map(|t| t.1),
            Some(TokenSource::Header)
        );
    }
}
