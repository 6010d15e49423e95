//! Users and their credentials: who is calling, tokens, the users themselves.

use super::ids::UserId;
use super::*;
use crate::controller::auth;
use crate::controller::store::{Role, User};

/// Default and longest lifetime of a bearer token.
pub const TOKEN_TTL_DEFAULT: i64 = 8 * 3600;
pub const TOKEN_TTL_MAX: i64 = 24 * 3600;

/// A bearer token as issued (its hash is what the store keeps).
pub struct IssuedToken {
    pub token: String,
    pub expires_at: i64,
    pub user: User,
}

/// A user to create.
pub struct NewUser {
    pub name: String,
    pub role: Option<String>,
    pub password: Option<String>,
}

/// Whether `user` may see appliance or task of `owner_id`.
pub fn sees(user: &User, owner_id: &str) -> bool {
    user.role == Role::Admin || owner_id == user.id
}

/// `user`, if it is an admin.
pub fn admin(user: User) -> Result<User, FleetError> {
    if user.role == Role::Admin {
        Ok(user)
    } else {
        Err(FleetError::AdminOnly)
    }
}

fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("no such user"))
}

async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FleetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FleetError::Internal(e.to_string()))
}

impl Fleet {
    /// The user a name and password belong to. Unknown users and wrong passwords look
    /// the same, in words and in time.
    pub async fn authenticate_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<User, FleetError> {
        let user = self.store.user_by_name(name).await?;
        // The hash is computed whether or not the user exists, so timing tells nothing;
        // PBKDF2 is deliberately slow, so it runs on the blocking pool.
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let password = password.to_string();
        let valid = on_blocking_pool(move || {
            auth::verify_password(&password, stored.as_deref().unwrap_or_else(|| dummy_hash()))
        })
        .await?;
        match user {
            Some(u) if valid => Ok(u),
            _ => Err(FleetError::Unauthorized(
                "basic authentication with a valid user and password is required",
            )),
        }
    }

    /// The user making a request: the owner of its bearer token, or without one, the
    /// user its verified client certificate names (CN = user name). A token and a
    /// certificate naming different existing users are refused.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        certificate_name: Option<&str>,
    ) -> Result<User, FleetError> {
        let now = self.clock.now();
        let Some(token) = token else {
            let Some(name) = certificate_name else {
                return Err(FleetError::Unauthorized("a bearer token is required"));
            };
            return self
                .store
                .user_by_name(name)
                .await?
                .ok_or(FleetError::Unauthorized(
                    "the client certificate names no user; a bearer token is required",
                ));
        };
        let user = self
            .store
            .user_for_token(&auth::token_hash(token), now)
            .await?
            .ok_or(FleetError::Unauthorized("the token is unknown or expired"))?;
        // Only a certificate naming another existing user contradicts the token.
        if let Some(name) = certificate_name
            && name != user.name
            && self.store.user_by_name(name).await?.is_some()
        {
            return Err(FleetError::Unauthorized(
                "the bearer token and the client certificate name different users",
            ));
        }
        Ok(user)
    }

    /// Logs out: the bearer token stops working at once.
    pub async fn revoke_token(&self, token: &str) -> Result<(), FleetError> {
        if self.store.delete_token(&auth::token_hash(token)).await? {
            Ok(())
        } else {
            Err(FleetError::Unauthorized("unknown or expired token"))
        }
    }

    /// A new bearer token for `user`, living `ttl_seconds` (default 8 h, at most 24 h).
    pub async fn issue_token(
        &self,
        user: User,
        ttl_seconds: Option<i64>,
    ) -> Result<IssuedToken, FleetError> {
        let now = self.clock.now();
        let ttl = ttl_seconds.unwrap_or(TOKEN_TTL_DEFAULT);
        if ttl <= 0 {
            return Err(FleetError::BadRequest(
                "ttl_seconds must be positive".into(),
            ));
        }
        let expires_at = now + ttl.min(TOKEN_TTL_MAX);
        let (token, hash) = auth::new_token();
        self.store
            .insert_token(&user.id, &hash, now, expires_at)
            .await?;
        let _ = self.store.delete_expired_tokens(now).await;
        Ok(IssuedToken {
            token,
            expires_at,
            user,
        })
    }

    pub async fn users(&self, caller: User) -> Result<Vec<User>, FleetError> {
        admin(caller)?;
        Ok(self.store.users().await?)
    }

    /// Creates a user; the generated password, when none was given, comes back once.
    pub async fn create_user(
        &self,
        caller: User,
        new: NewUser,
    ) -> Result<(User, Option<String>), FleetError> {
        admin(caller)?;
        let name =
            auth::check_user_name(&new.name).map_err(|e| FleetError::BadRequest(e.to_string()))?;
        let role = match new.role.as_deref() {
            None | Some("member") => Role::Member,
            Some("admin") => Role::Admin,
            Some(other) => {
                return Err(FleetError::BadRequest(format!(
                    "role {other:?}: admin or member"
                )));
            }
        };
        let (password, generated) = match new.password {
            Some(p) if p.len() >= 12 => (p, false),
            Some(_) => {
                return Err(FleetError::BadRequest(
                    "password: at least 12 characters".into(),
                ));
            }
            None => (auth::generate_password(), true),
        };
        let hash = {
            let password = password.clone();
            on_blocking_pool(move || auth::hash_password(&password)).await?
        };
        let user = self
            .store
            .create_user(name, role, &hash, self.clock.now())
            .await?;
        Ok((user, generated.then_some(password)))
    }

    /// A user, for itself or an admin.
    pub async fn user(&self, caller: &User, id: &UserId) -> Result<User, FleetError> {
        if caller.role != Role::Admin && caller.id != id.as_str() {
            return Err(FleetError::AdminOnly);
        }
        self.store
            .user(id.as_str())
            .await?
            .ok_or(FleetError::NoSuchUser)
    }

    pub async fn delete_user(&self, caller: User, id: &UserId) -> Result<(), FleetError> {
        admin(caller)?;
        if self.store.delete_user(id.as_str()).await? {
            Ok(())
        } else {
            Err(FleetError::NoSuchUser)
        }
    }
}
