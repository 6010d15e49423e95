//! Enrolment in the store: one-time tokens (kept as hashes) and the requests appliances
//! made with them, pending until accepted or rejected. Accepting records the appliance
//! in the same transaction, within its team's quota.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::records::{
    Appliance, Record, insert_event, insert_existing_appliance, over_appliance_quota,
};
use super::store::{Store, StoreError, decode_all};
use super::teams::lock_team;

/// A token as kept: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentToken {
    pub id: String,
    pub team_id: String,
    /// Requests made with it are accepted at once (otherwise they wait for an admin).
    pub auto_accept: bool,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// The appliance whose machine it was issued for (a cloud backend's): its request
    /// completes that appliance instead of recording a new one.
    pub appliance_id: Option<String>,
}

impl EnrolmentToken {
    fn from_row(r: &AnyRow) -> Result<EnrolmentToken, sqlx::Error> {
        Ok(EnrolmentToken {
            id: r.try_get("id")?,
            team_id: r.try_get("team_id")?,
            auto_accept: r.try_get::<i64, _>("auto_accept")? != 0,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            used_at: r.try_get("used_at")?,
            appliance_id: r.try_get("appliance_id")?,
        })
    }
}

macro_rules! token_columns {
    () => {
        "id, team_id, auto_accept, created_by, created_at, expires_at, used_at, appliance_id"
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolmentState {
    Pending,
    Accepted,
    Rejected,
}

impl EnrolmentState {
    pub const ALL: [EnrolmentState; 3] = [
        EnrolmentState::Pending,
        EnrolmentState::Accepted,
        EnrolmentState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnrolmentState::Pending => "pending",
            EnrolmentState::Accepted => "accepted",
            EnrolmentState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<EnrolmentState> {
        EnrolmentState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A request to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub id: String,
    pub token_id: String,
    pub team_id: String,
    pub state: EnrolmentState,
    /// The appliance's name (the host's, unless it gave one).
    pub name: String,
    /// Where the controller reaches its agent: the address it declared (or, for an
    /// unspecified one, the address its request came from) and its port.
    pub address: String,
    pub agent_port: i64,
    /// The address the request came from.
    pub peer_address: String,
    /// Its public key: SubjectPublicKeyInfo, base64; the algorithm (`ecdsa-p256`,
    /// `rsa-3072`, ...) and the key's SHA-256 fingerprint.
    pub public_key: String,
    pub key_algorithm: String,
    pub fingerprint: String,
    /// Once accepted: the appliance it became and its certificate chain (PEM).
    pub appliance_id: Option<String>,
    pub certificate: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
}

macro_rules! enrolment_columns {
    () => {
        "id, token_id, team_id, state, name, address, agent_port, peer_address, public_key, \
         key_algorithm, fingerprint, appliance_id, certificate, created_at, decided_at, decided_by"
    };
}

impl Enrolment {
    fn from_row(r: &AnyRow) -> Result<Enrolment, sqlx::Error> {
        let state: String = r.try_get("state")?;
        Ok(Enrolment {
            id: r.try_get("id")?,
            token_id: r.try_get("token_id")?,
            team_id: r.try_get("team_id")?,
            state: EnrolmentState::parse(&state).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown enrolment state {state:?}").into())
            })?,
            name: r.try_get("name")?,
            address: r.try_get("address")?,
            agent_port: r.try_get("agent_port")?,
            peer_address: r.try_get("peer_address")?,
            public_key: r.try_get("public_key")?,
            key_algorithm: r.try_get("key_algorithm")?,
            fingerprint: r.try_get("fingerprint")?,
            appliance_id: r.try_get("appliance_id")?,
            certificate: r.try_get("certificate")?,
            created_at: r.try_get("created_at")?,
            decided_at: r.try_get("decided_at")?,
            decided_by: r.try_get("decided_by")?,
        })
    }
}

/// What became of a request made with a token.
#[derive(Debug)]
pub enum Submitted {
    /// Recorded (pending); whether the token accepts it at once.
    Recorded {
        auto_accept: bool,
    },
    UnknownToken,
    UsedToken,
    ExpiredToken,
    /// This many requests wait already.
    TooManyPending(i64),
}

/// What became of an accept.
#[derive(Debug)]
pub enum Accepted {
    Done(Box<Enrolment>),
    /// Not pending (decided already), or no such request.
    NotPending,
    /// Its team was deleted since the token was issued.
    NoTeam,
    /// Another live appliance is reached at that address and port.
    AddressTaken,
    OverQuota {
        limit: i64,
        used: i64,
    },
    /// The appliance its token was issued for is no longer being made (it failed, or
    /// was destroyed).
    NotWaiting,
}

impl Store {
    pub async fn create_enrolment_token(
        &self,
        t: &EnrolmentToken,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO enrolment_tokens (",
            token_columns!(),
            ", token_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&t.id)
        .bind(&t.team_id)
        .bind(i64::from(t.auto_accept))
        .bind(&t.created_by)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.used_at)
        .bind(&t.appliance_id)
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Tokens, newest first.
    pub async fn enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM enrolment_tokens ORDER BY created_at DESC, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, EnrolmentToken::from_row)
    }

    pub async fn enrolment_token(&self, id: &str) -> Result<Option<EnrolmentToken>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM enrolment_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(EnrolmentToken::from_row).transpose()?)
    }

    async fn token_by_hash(&self, token_hash: &str) -> Result<Option<EnrolmentToken>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM enrolment_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(EnrolmentToken::from_row).transpose()?)
    }

    /// Deletes a token (revokes it before use); false when there is none.
    pub async fn delete_enrolment_token(
        &self,
        id: &str,
        decided_by: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM enrolment_tokens WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // A request it made that still waits is refused with it.
        sqlx::query(
            "UPDATE enrolments SET state = 'rejected', decided_at = $1, decided_by = $2 \
             WHERE token_id = $3 AND state = 'pending'",
        )
        .bind(now)
        .bind(decided_by)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Uses the token with this hash for `e` (its `token_id` and `team_id` are the
    /// token's): the token is spent and the request recorded in one transaction, so a
    /// token makes one request however many race with it.
    pub async fn submit_enrolment(
        &self,
        token_hash: &str,
        e: &Enrolment,
        max_pending: i64,
    ) -> Result<(Submitted, Option<Enrolment>), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Spent first (a write takes the lock at once): of racing requests with one
        // token, exactly one gets past this.
        let spent = sqlx::query(
            "UPDATE enrolment_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(e.created_at)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() != 1 {
            tx.rollback().await?;
            let why = match self.token_by_hash(token_hash).await? {
                None => Submitted::UnknownToken,
                Some(t) if t.used_at.is_some() => Submitted::UsedToken,
                Some(_) => Submitted::ExpiredToken,
            };
            return Ok((why, None));
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM enrolment_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_one(&mut *tx)
        .await?;
        let token = EnrolmentToken::from_row(&row)?;
        let pending: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM enrolments WHERE state = 'pending'")
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
        if pending >= max_pending {
            // The token stays unspent: the appliance may try again later.
            tx.rollback().await?;
            return Ok((Submitted::TooManyPending(pending), None));
        }
        let e = Enrolment {
            token_id: token.id.clone(),
            team_id: token.team_id.clone(),
            ..e.clone()
        };
        sqlx::query(concat!(
            "INSERT INTO enrolments (",
            enrolment_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(&e.id)
        .bind(&e.token_id)
        .bind(&e.team_id)
        .bind(e.state.as_str())
        .bind(&e.name)
        .bind(&e.address)
        .bind(e.agent_port)
        .bind(&e.peer_address)
        .bind(&e.public_key)
        .bind(&e.key_algorithm)
        .bind(&e.fingerprint)
        .bind(&e.appliance_id)
        .bind(&e.certificate)
        .bind(e.created_at)
        .bind(e.decided_at)
        .bind(&e.decided_by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((
            Submitted::Recorded {
                auto_accept: token.auto_accept,
            },
            Some(e),
        ))
    }

    pub async fn enrolment(&self, id: &str) -> Result<Option<Enrolment>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            enrolment_columns!(),
            " FROM enrolments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Enrolment::from_row).transpose()?)
    }

    /// Requests, newest first; only those in `state` when given.
    pub async fn enrolments(
        &self,
        state: Option<EnrolmentState>,
    ) -> Result<Vec<Enrolment>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            enrolment_columns!(),
            " FROM enrolments WHERE ($1 = '' OR state = $1) ORDER BY created_at DESC, id"
        ))
        .bind(state.map_or("", EnrolmentState::as_str))
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, Enrolment::from_row)
    }

    /// Accepts a pending request: records `appliance` (active, in the request's team,
    /// within its quota) and the request's certificate, in one transaction.
    pub async fn accept_enrolment(
        &self,
        id: &str,
        appliance: &Appliance,
        certificate: &str,
        record: &Record<'_>,
        decided_by: &str,
    ) -> Result<Accepted, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_team(&mut tx, &appliance.team_id).await? {
            return Ok(Accepted::NoTeam);
        }
        let done = sqlx::query(
            "UPDATE enrolments SET state = 'accepted', appliance_id = $1, certificate = $2, \
             decided_at = $3, decided_by = $4 WHERE id = $5 AND state = 'pending' \
             AND team_id = $6",
        )
        .bind(&appliance.id)
        .bind(certificate)
        .bind(appliance.created_at)
        .bind(decided_by)
        .bind(id)
        .bind(&appliance.team_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Accepted::NotPending);
        }
        if let Some((limit, used)) = over_appliance_quota(&mut tx, &appliance.team_id).await? {
            return Ok(Accepted::OverQuota { limit, used });
        }
        let taken: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM appliances WHERE address = $1 AND agent_port = $2 \
             AND state <> 'deleted'",
        )
        .bind(&appliance.address)
        .bind(appliance.agent_port)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if taken > 0 {
            return Ok(Accepted::AddressTaken);
        }
        insert_existing_appliance(&mut tx, appliance, record).await?;
        tx.commit().await?;
        match self.enrolment(id).await? {
            Some(e) => Ok(Accepted::Done(Box::new(e))),
            None => Ok(Accepted::NotPending),
        }
    }

    /// Deletes the tokens issued for an appliance's machine (its old ones before a new
    /// one, all of them when it is destroyed or its create failed); a request made
    /// with one that still waits is rejected with it (`decided_by` names why).
    pub async fn delete_appliance_enrolment_tokens(
        &self,
        appliance_id: &str,
        decided_by: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE enrolments SET state = 'rejected', decided_at = $1, decided_by = $2 \
             WHERE state = 'pending' AND token_id IN \
             (SELECT id FROM enrolment_tokens WHERE appliance_id = $3)",
        )
        .bind(now)
        .bind(decided_by)
        .bind(appliance_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM enrolment_tokens WHERE appliance_id = $1")
            .bind(appliance_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Accepts a pending request made with a token issued for `appliance`'s machine:
    /// completes that appliance (still being made: `provisioning`, `booting`, or
    /// `launch_timeout`, which a late `launched` still makes active) with
    /// the address its agent is reached at, its key and its certificate, in one
    /// transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn attach_enrolment(
        &self,
        id: &str,
        appliance: &Appliance,
        e: &Enrolment,
        certificate: (&str, &str, i64),
        record: &Record<'_>,
        decided_by: &str,
        now: i64,
    ) -> Result<Accepted, StoreError> {
        let (chain, serial, not_after) = certificate;
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE enrolments SET state = 'accepted', appliance_id = $1, certificate = $2, \
             decided_at = $3, decided_by = $4 WHERE id = $5 AND state = 'pending'",
        )
        .bind(&appliance.id)
        .bind(chain)
        .bind(now)
        .bind(decided_by)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Accepted::NotPending);
        }
        let taken: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM appliances WHERE address = $1 AND agent_port = $2 \
             AND state <> 'deleted' AND id <> $3",
        )
        .bind(&e.address)
        .bind(e.agent_port)
        .bind(&appliance.id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if taken > 0 {
            return Ok(Accepted::AddressTaken);
        }
        // In whichever of these states it is now (the create task or a timer may have
        // moved it since it was read).
        let completed = sqlx::query(
            "UPDATE appliances SET address = $1, agent_port = $2, public_key = $3, \
             cert_serial = $4, cert_not_after = $5, updated_at = $6 \
             WHERE id = $7 AND state IN ('provisioning', 'booting', 'launch_timeout') \
             RETURNING state",
        )
        .bind(&e.address)
        .bind(e.agent_port)
        .bind(&e.public_key)
        .bind(serial)
        .bind(not_after)
        .bind(now)
        .bind(&appliance.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = completed else {
            return Ok(Accepted::NotWaiting);
        };
        let state: String = row.try_get("state")?;
        let state = super::lifecycle::State::parse(&state).unwrap_or(appliance.state);
        insert_event(&mut tx, appliance, Some(state), state, record, now).await?;
        tx.commit().await?;
        match self.enrolment(id).await? {
            Some(e) => Ok(Accepted::Done(Box::new(e))),
            None => Ok(Accepted::NotPending),
        }
    }

    /// Rejects a pending request; false when it is not pending (or does not exist).
    pub async fn reject_enrolment(
        &self,
        id: &str,
        decided_by: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE enrolments SET state = 'rejected', decided_at = $1, decided_by = $2 \
             WHERE id = $3 AND state = 'pending'",
        )
        .bind(now)
        .bind(decided_by)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
