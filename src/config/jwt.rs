//! Token verification settings: where keys come from and which claims are required.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::amqp::mask_password;
use super::settings::Key;
use super::validate::Validator;

/// Where the gateway finds token verification keys. At least one must be set. `Debug`
/// shows the secret as `***` and the JWKS URL without its password.
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// PEM public key file, RSA (RS256) or P-256 (ES256).
    pub public_key_file: Option<PathBuf>,
    /// JWKS endpoint for keys selected by `kid`.
    pub jwks_url: Option<String>,
    /// Periodic JWKS refresh, so rotated keys appear without a restart.
    pub jwks_refresh: Duration,
    /// Floor between refetches triggered by unknown `kid`s, so forged kids cannot make
    /// the gateway hammer the identity provider.
    pub jwks_min_refetch: Duration,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Required `aud` when set.
    pub audience: Option<String>,
    /// Claim that names the tenant.
    pub tenant_claim: String,
    /// Cookie that may carry the token.
    pub cookie: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Single-tenant mode: tokens need no tenant claim; everyone is in this tenant.
    pub single_tenant: Option<String>,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Taken apart so that a new field cannot be left out (or shown unmasked) unnoticed.
        let JwtConfig {
            secret,
            public_key_file,
            jwks_url,
            jwks_refresh,
            jwks_min_refetch,
            issuer,
            audience,
            tenant_claim,
            cookie,
            leeway,
            single_tenant,
        } = self;
        let jwks_url = jwks_url
            .as_ref()
            .map(|u| mask_password(u).unwrap_or_else(|| "***".to_owned()));
        f.debug_struct("JwtConfig")
            .field("secret", &secret.as_ref().map(|_| "***"))
            .field("public_key_file", public_key_file)
            .field("jwks_url", &jwks_url)
            .field("jwks_refresh", jwks_refresh)
            .field("jwks_min_refetch", jwks_min_refetch)
            .field("issuer", issuer)
            .field("audience", audience)
            .field("tenant_claim", tenant_claim)
            .field("cookie", cookie)
            .field("leeway", leeway)
            .field("single_tenant", single_tenant)
            .finish()
    }
}

/// Most clock skew allowed on `exp` and `nbf`: ten minutes is beyond any clock kept by
/// NTP; more would quietly extend every token's life.
const MAX_LEEWAY_SECS: u64 = 600;

impl Validator<'_> {
    pub(super) fn jwt(&mut self) -> JwtConfig {
        let (secret, public_key_file, jwks_url) = self.jwt_keys();
        let tenant_claim = self.string(Key::JwtTenantClaim);
        if tenant_claim.is_empty() {
            self.problem(Key::JwtTenantClaim, "must not be empty");
        }
        let cookie = self.string(Key::JwtCookie);
        let leeway = match self.parsed::<u64>(Key::JwtLeewaySecs, "a whole number of seconds") {
            Some(v) if v <= MAX_LEEWAY_SECS => Duration::from_secs(v),
            Some(v) => {
                self.problem(
                    Key::JwtLeewaySecs,
                    format_args!("{v} is out of range (0 to {MAX_LEEWAY_SECS})"),
                );
                Duration::ZERO
            }
            None => Duration::ZERO,
        };
        JwtConfig {
            secret,
            public_key_file,
            jwks_url,
            jwks_refresh: self.secs(Key::JwtJwksRefreshSecs),
            jwks_min_refetch: self.secs(Key::JwtJwksMinRefetchSecs),
            issuer: self.optional(Key::JwtIssuer),
            audience: self.optional(Key::JwtAudience),
            tenant_claim,
            cookie,
            leeway,
            single_tenant: self.optional(Key::SingleTenant),
        }
    }

    /// The secret, key file and JWKS URL, each checked, and at least one of them set.
    fn jwt_keys(&mut self) -> (Option<String>, Option<PathBuf>, Option<String>) {
        let secret = self.secret(Key::JwtSecret, Key::JwtSecretFile);
        if let Some(s) = &secret
            && s.len() < 32
        {
            // RFC 7518 3.2: an HS256 key shorter than the hash output is brute-forceable.
            self.problem(Key::JwtSecret, "must be at least 32 bytes");
        }
        let public_key_file = self.optional(Key::JwtPublicKeyFile).map(PathBuf::from);
        if let Some(path) = &public_key_file
            && let Err(e) = std::fs::metadata(path)
        {
            self.problem(
                Key::JwtPublicKeyFile,
                format_args!("cannot read {}: {e}", path.display()),
            );
        }
        let jwks_url = self.optional(Key::JwtJwksUrl);
        if let Some(url) = &jwks_url
            && reqwest::Url::parse(url)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
        {
            // The URL may carry a login; one that is no URL at all is not quoted.
            match mask_password(url) {
                Some(masked) => self.problem(
                    Key::JwtJwksUrl,
                    format_args!("`{masked}` is not an http(s) URL"),
                ),
                None => self.problem(Key::JwtJwksUrl, "is not an http(s) URL"),
            }
        }
        let none = secret.is_none() && public_key_file.is_none() && jwks_url.is_none();
        if none && !self.checking {
            let [a, b, c] =
                [Key::JwtSecret, Key::JwtPublicKeyFile, Key::JwtJwksUrl].map(|k| k.setting().env);
            self.problems
                .push(format!("no token key configured: set {a}, {b} or {c}"));
        }
        (secret, public_key_file, jwks_url)
    }
}
