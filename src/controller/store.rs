//! The controller's state: one code path over SQLite (embedded, the default) and
//! PostgreSQL, through sqlx's `Any` driver, with the migrations in `migrations/`
//! embedded in the binary and applied at open. Queries use `$n` placeholders, which
//! both databases accept.

use std::sync::Once;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::auth;
use super::teams::{Quotas, insert_team};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?} (sqlite:... or postgres://...)")]
    Url(String),
    #[error("cannot lock the database for migrations: {0}")]
    Lock(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    fn parse(s: &str) -> Role {
        if s == "admin" {
            Role::Admin
        } else {
            Role::Member
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at: i64,
    pub display_name: Option<String>,
    pub email: Option<String>,
}

impl User {
    fn from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
        Ok(User {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            role: Role::parse(&row.try_get::<String, _>("role")?),
            password_hash: row.try_get("password_hash")?,
            created_at: row.try_get("created_at")?,
            display_name: row.try_get("display_name")?,
            email: row.try_get("email")?,
        })
    }
}

/// A user to record.
pub struct NewUserRecord<'a> {
    pub name: &'a str,
    pub role: Role,
    pub password_hash: &'a str,
    pub display_name: Option<&'a str>,
    pub email: Option<&'a str>,
}

/// Changes to a user: `None` leaves a field; `Some(None)` clears an optional one.
#[derive(Debug, Default)]
pub struct UserUpdate {
    pub display_name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
}

pub struct Store {
    pub(super) pool: AnyPool,
    backend: Backend,
}

/// The columns [`User::from_row`] reads (a macro, so queries stay static strings).
macro_rules! user_columns {
    () => {
        "id, name, role, password_hash, created_at, display_name, email"
    };
}

impl Store {
    /// Connects (creating an SQLite file if needed) and applies pending migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let (backend, url) = if url.starts_with("sqlite:") {
            // Create the file on first use.
            let url = if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        // PostgreSQL serialises migrations with an advisory lock; SQLite has none, so
        // processes opening the same file (a controller starting, `controller user add`)
        // take a lock file beside it first.
        let _migrating = match sqlite_file(&url) {
            Some(db) => {
                // Password and token hashes: the controller's alone, whoever else may
                // pass through its state directory (isolated appliances do).
                private_sqlite_files(&db).map_err(|e| StoreError::Lock(format!("{db}: {e}")))?;
                let lock = std::path::PathBuf::from(format!("{db}.lock"));
                let held =
                    tokio::task::spawn_blocking(move || crate::fsutil::lock_exclusive(&lock))
                        .await
                        .map_err(|e| StoreError::Lock(e.to_string()))?
                        .map_err(|e| StoreError::Lock(format!("{db}.lock: {e}")))?;
                Some(held)
            }
            None => None,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect(&url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Creates a user and, with `personal_team`, a team of the same name that it owns
    /// (with those quotas), in one transaction: both or neither.
    pub async fn create_user(
        &self,
        new: NewUserRecord<'_>,
        personal_team: Option<Quotas>,
        now: i64,
    ) -> Result<User, StoreError> {
        let user = User {
            id: auth::new_id(),
            name: new.name.to_string(),
            role: new.role,
            password_hash: new.password_hash.to_string(),
            created_at: now,
            display_name: new.display_name.map(str::to_string),
            email: new.email.map(str::to_string),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&user.id)
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .bind(now)
        .bind(&user.display_name)
        .bind(&user.email)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_to_conflict(e, format!("user {:?}", user.name)))?;
        if let Some(quotas) = personal_team {
            // The personal team's id is the user's, as the migration made them.
            insert_team(&mut tx, &user.id, &user.name, Some(&user.id), quotas, now).await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    /// Changes what `update` names; false when there is no such user.
    pub async fn update_user(&self, id: &str, update: &UserUpdate) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("UPDATE users SET name = name WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !exists {
            return Ok(false);
        }
        let texts = [
            (
                "UPDATE users SET display_name = $1 WHERE id = $2",
                update.display_name.as_ref(),
            ),
            (
                "UPDATE users SET email = $1 WHERE id = $2",
                update.email.as_ref(),
            ),
        ];
        for (query, value) in texts {
            if let Some(value) = value {
                sqlx::query(query)
                    .bind(value.as_deref())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(hash) = &update.password_hash {
            sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                .bind(hash)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            // A new password ends the sessions of the old one.
            sqlx::query("DELETE FROM tokens WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(role) = update.role {
            sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
                .bind(role.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.one_where(
            concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"),
            id,
            User::from_row,
        )
        .await
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        // No user is named with a NUL (PostgreSQL cannot even compare one): no such user.
        if name.contains('\0') {
            return Ok(None);
        }
        self.one_where(
            concat!("SELECT ", user_columns!(), " FROM users WHERE name = $1"),
            name,
            User::from_row,
        )
        .await
    }

    /// The row a one-parameter query selects, decoded by `from_row`.
    pub(super) async fn one_where<T>(
        &self,
        query: &'static str,
        value: &str,
        from_row: fn(&AnyRow) -> Result<T, sqlx::Error>,
    ) -> Result<Option<T>, StoreError> {
        // Nothing is named with a NUL, and PostgreSQL cannot even compare one.
        if value.contains('\0') {
            return Ok(None);
        }
        let row = sqlx::query(query)
            .bind(value)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, User::from_row)
    }

    /// Deletes a user and, with it, its tokens and memberships. False when there was no
    /// such user.
    pub async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Explicit, rather than relying on each backend's foreign-key settings.
        for query in [
            "DELETE FROM tokens WHERE user_id = $1",
            "DELETE FROM memberships WHERE user_id = $1",
        ] {
            sqlx::query(query).bind(id).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a token (by its hash) for a user; returns the token's id.
    pub async fn insert_token(
        &self,
        user_id: &str,
        token_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<String, StoreError> {
        let id = auth::new_id();
        sqlx::query("INSERT INTO tokens (id, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&id)
            .bind(user_id)
            .bind(token_hash)
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(|e| unique_to_conflict(e, "token".into()))?;
        Ok(id)
    }

    /// The user a token belongs to, if the token exists and has not expired at `now`.
    pub async fn user_for_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.role, u.password_hash, u.created_at, u.display_name, \
             u.email FROM tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND t.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| User::from_row(&r)).transpose()?)
    }

    /// Removes one token (log out); false when there was no such token.
    pub async fn delete_token(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes expired tokens; returns how many.
    pub async fn delete_expired_tokens(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
impl Store {
    /// A user with its personal team (unlimited) and no password, for tests.
    pub async fn add_user(&self, name: &str, role: Role, now: i64) -> User {
        let record = NewUserRecord {
            name,
            role,
            password_hash: "-",
            display_name: None,
            email: None,
        };
        self.create_user(record, Some(Quotas::default()), now)
            .await
            .unwrap()
    }
}

/// Every row, decoded by `from_row`.
pub(super) fn decode_all<T>(
    rows: &[AnyRow],
    from_row: fn(&AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, StoreError> {
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Makes an SQLite database and its side files readable by their owner only, creating
/// the database file (empty: SQLite initialises it) so that SQLite gives its journal and
/// WAL files the same mode.
fn private_sqlite_files(db: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)?;
    for suffix in ["", "-wal", "-shm", "-journal", ".lock"] {
        let path = format!("{db}{suffix}");
        if std::path::Path::new(&path).exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// The file of an SQLite URL (`sqlite://PATH?...` or `sqlite:PATH`), `None` in memory.
fn sqlite_file(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| path.to_string())
}

pub(super) fn unique_to_conflict(e: sqlx::Error, what: String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Database(e),
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_file;

    #[test]
    fn sqlite_files_from_urls() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/x.db?mode=rwc").as_deref(),
            Some("/var/lib/x.db")
        );
        assert_eq!(sqlite_file("sqlite:rel.db").as_deref(), Some("rel.db"));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }
}
