//! Key pairs in the store: public keys that belong to a team, counted against its
//! `max_keypairs` quota under the team's lock.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::store::{Store, StoreError, decode_all, unique_to_conflict};
use super::teams::lock_team;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keypair {
    pub id: String,
    pub team_id: String,
    pub name: String,
    /// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, ...
    pub algorithm: String,
    /// One OpenSSH line.
    pub public_key: String,
    /// `SHA256:...`.
    pub fingerprint: String,
    /// The user who made or imported it.
    pub created_by: String,
    pub created_at: i64,
}

macro_rules! keypair_columns {
    () => {
        "id, team_id, name, algorithm, public_key, fingerprint, created_by, created_at"
    };
}

impl Keypair {
    fn from_row(r: &AnyRow) -> Result<Keypair, sqlx::Error> {
        Ok(Keypair {
            id: r.try_get("id")?,
            team_id: r.try_get("team_id")?,
            name: r.try_get("name")?,
            algorithm: r.try_get("algorithm")?,
            public_key: r.try_get("public_key")?,
            fingerprint: r.try_get("fingerprint")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

/// What recording a key pair did.
#[derive(Debug, PartialEq, Eq)]
pub enum KeypairInsert {
    Done,
    /// The team holds `used` key pairs of the `limit` its quota allows.
    OverQuota {
        limit: i64,
        used: i64,
    },
    NoSuchTeam,
}

impl Store {
    /// Records a key pair, within its team's `max_keypairs`; a name the team already
    /// uses is a [`StoreError::Conflict`].
    pub async fn insert_keypair(&self, k: &Keypair) -> Result<KeypairInsert, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_team(&mut tx, &k.team_id).await? {
            return Ok(KeypairInsert::NoSuchTeam);
        }
        let limit: Option<i64> = sqlx::query("SELECT max_keypairs FROM teams WHERE id = $1")
            .bind(&k.team_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("max_keypairs")?;
        if let Some(limit) = limit {
            let used: i64 = sqlx::query("SELECT COUNT(*) AS n FROM keypairs WHERE team_id = $1")
                .bind(&k.team_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if used >= limit {
                return Ok(KeypairInsert::OverQuota { limit, used });
            }
        }
        sqlx::query(concat!(
            "INSERT INTO keypairs (",
            keypair_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&k.id)
        .bind(&k.team_id)
        .bind(&k.name)
        .bind(&k.algorithm)
        .bind(&k.public_key)
        .bind(&k.fingerprint)
        .bind(&k.created_by)
        .bind(k.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            unique_to_conflict(e, format!("a key pair named {:?} in this team", k.name))
        })?;
        tx.commit().await?;
        Ok(KeypairInsert::Done)
    }

    pub async fn keypair(&self, id: &str) -> Result<Option<Keypair>, StoreError> {
        self.one_where(
            concat!(
                "SELECT ",
                keypair_columns!(),
                " FROM keypairs WHERE id = $1"
            ),
            id,
            Keypair::from_row,
        )
        .await
    }

    /// The key pair of a team with this name.
    pub async fn keypair_by_name(
        &self,
        team_id: &str,
        name: &str,
    ) -> Result<Option<Keypair>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            keypair_columns!(),
            " FROM keypairs WHERE team_id = $1 AND name = $2"
        ))
        .bind(team_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Keypair::from_row).transpose()?)
    }

    /// Every key pair, by team and name.
    pub async fn keypairs(&self) -> Result<Vec<Keypair>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            keypair_columns!(),
            " FROM keypairs ORDER BY team_id, name"
        ))
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, Keypair::from_row)
    }

    /// How many key pairs a team holds.
    pub async fn keypair_count(&self, team_id: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM keypairs WHERE team_id = $1")
            .bind(team_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Deletes a key pair; false when there was none.
    pub async fn delete_keypair(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM keypairs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
