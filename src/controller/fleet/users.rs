//! Users and their credentials: who is calling, tokens, the users themselves.

use super::ids::UserId;
use super::teams::{Principal, looks_like_id};
use super::*;
use crate::controller::auth;
use crate::controller::store::{NewUserRecord, Role, User, UserUpdate};

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
    pub display_name: Option<String>,
    pub email: Option<String>,
    /// Whether it gets a team of its own name that it owns (default: yes).
    pub personal_team: Option<bool>,
}

/// Changes to a user (`PATCH`): a field absent is left, `null` clears an optional one.
#[derive(Debug, Default)]
pub struct UserPatch {
    pub display_name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub password: Option<String>,
    pub role: Option<String>,
}

/// Refused unless the caller is an admin.
pub fn admin(caller: &Principal) -> Result<(), FleetError> {
    if caller.admin {
        Ok(())
    } else {
        Err(FleetError::AdminOnly)
    }
}

fn parse_role(role: &str) -> Result<Role, FleetError> {
    match role {
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        other => Err(FleetError::BadRequest(format!(
            "role {other:?}: admin or member"
        ))),
    }
}

/// A display name: 1 to 128 characters, none of them control characters.
fn check_display_name(name: &str) -> Result<(), FleetError> {
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(FleetError::Invalid(
            "display_name: 1 to 128 characters, no control characters".into(),
        ));
    }
    Ok(())
}

/// An e-mail address as mail is sent to it: `local@domain`, at most 254 characters,
/// printable ASCII without spaces, angle brackets, quotes or commas (which would let it
/// name more than one recipient), and a domain of dot-separated labels.
pub fn check_email(email: &str) -> Result<(), FleetError> {
    let bad = || FleetError::Invalid(format!("email {email:?}: an address like name@example.com"));
    let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:\"@".contains(c));
    let domain_ok = domain.len() <= 253
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if email.len() <= 254 && local_ok && domain_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

fn check_password(password: &str) -> Result<(), FleetError> {
    if password.chars().count() >= 12 {
        Ok(())
    } else {
        Err(FleetError::BadRequest(
            "password: at least 12 characters".into(),
        ))
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
    ) -> Result<Principal, FleetError> {
        let user = self.authenticate_user(token, certificate_name).await?;
        self.principal(&user).await
    }

    /// A user as a principal: with its team memberships.
    pub async fn principal(&self, user: &User) -> Result<Principal, FleetError> {
        let teams = self.store.memberships_of(&user.id).await?;
        Ok(Principal::user(user, teams))
    }

    async fn authenticate_user(
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

    pub async fn users(&self, caller: &Principal) -> Result<Vec<User>, FleetError> {
        admin(caller)?;
        Ok(self.store.users().await?)
    }

    /// Creates a user, with its personal team unless asked not to; the generated
    /// password, when none was given, comes back once.
    pub async fn create_user(
        &self,
        caller: &Principal,
        new: NewUser,
    ) -> Result<(User, Option<String>), FleetError> {
        admin(caller)?;
        let name =
            auth::check_user_name(&new.name).map_err(|e| FleetError::BadRequest(e.to_string()))?;
        if looks_like_id(name) {
            return Err(FleetError::Invalid(format!(
                "name {name:?}: not shaped like an id"
            )));
        }
        let role = parse_role(new.role.as_deref().unwrap_or("member"))?;
        if let Some(d) = &new.display_name {
            check_display_name(d)?;
        }
        if let Some(e) = &new.email {
            check_email(e)?;
        }
        let (password, generated) = match new.password {
            Some(p) => {
                check_password(&p)?;
                (p, false)
            }
            None => (auth::generate_password(), true),
        };
        let hash = {
            let password = password.clone();
            on_blocking_pool(move || auth::hash_password(&password)).await?
        };
        let personal = new
            .personal_team
            .unwrap_or(true)
            .then(|| self.default_quotas());
        let user = self
            .store
            .create_user(
                NewUserRecord {
                    name,
                    role,
                    password_hash: &hash,
                    display_name: new.display_name.as_deref(),
                    email: new.email.as_deref(),
                },
                personal,
                self.clock.now(),
            )
            .await?;
        Ok((user, generated.then_some(password)))
    }

    /// A user, for itself or an admin.
    pub async fn user(&self, caller: &Principal, id: &UserId) -> Result<User, FleetError> {
        if !caller.admin && caller.id != id.as_str() {
            return Err(FleetError::AdminOnly);
        }
        self.store
            .user(id.as_str())
            .await?
            .ok_or(FleetError::NoSuchUser)
    }

    /// Changes a user: itself (display name, e-mail, password) or, for admins, anyone
    /// and anyone's role. A new password ends the user's sessions.
    pub async fn update_user(
        &self,
        caller: &Principal,
        id: &UserId,
        patch: UserPatch,
    ) -> Result<User, FleetError> {
        self.user(caller, id).await?;
        let role = match patch.role.as_deref() {
            Some(r) => {
                let role = parse_role(r)?;
                admin(caller)
                    .map_err(|_| FleetError::Forbidden("only admins change roles".into()))?;
                Some(role)
            }
            None => None,
        };
        if let Some(Some(d)) = &patch.display_name {
            check_display_name(d)?;
        }
        if let Some(Some(e)) = &patch.email {
            check_email(e)?;
        }
        let password_hash = match patch.password {
            Some(p) => {
                check_password(&p)?;
                Some(on_blocking_pool(move || auth::hash_password(&p)).await?)
            }
            None => None,
        };
        let update = UserUpdate {
            display_name: patch.display_name,
            email: patch.email,
            password_hash,
            role,
        };
        if !self.store.update_user(id.as_str(), &update).await? {
            return Err(FleetError::NoSuchUser);
        }
        self.user(caller, id).await
    }

    pub async fn delete_user(&self, caller: &Principal, id: &UserId) -> Result<(), FleetError> {
        admin(caller)?;
        if self.store.delete_user(id.as_str()).await? {
            Ok(())
        } else {
            Err(FleetError::NoSuchUser)
        }
    }
}
