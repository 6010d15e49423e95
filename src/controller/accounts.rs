//! Service accounts in the store: a certificate subject mapped to one team with a team
//! role.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::store::{Store, StoreError, decode_all, unique_to_conflict};
use super::teams::{TeamRole, lock_team};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub id: String,
    pub name: String,
    pub team_id: String,
    pub role: TeamRole,
    /// The common name of the client certificate it authenticates with.
    pub subject: String,
    /// The serial of the certificate the controller issued it, if it did.
    pub cert_serial: Option<String>,
    pub created_by: String,
    pub created_at: i64,
}

macro_rules! account_columns {
    () => {
        "id, name, team_id, role, subject, cert_serial, created_by, created_at"
    };
}

impl ServiceAccount {
    fn from_row(r: &AnyRow) -> Result<ServiceAccount, sqlx::Error> {
        let role: String = r.try_get("role")?;
        Ok(ServiceAccount {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            team_id: r.try_get("team_id")?,
            role: TeamRole::parse(&role).ok_or_else(|| sqlx::Error::ColumnDecode {
                index: "role".into(),
                source: format!("unknown team role {role:?}").into(),
            })?,
            subject: r.try_get("subject")?,
            cert_serial: r.try_get("cert_serial")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

impl Store {
    /// Records a service account, under its team's lock (a team being deleted gets
    /// none); false when the team is gone. A taken name or subject is a
    /// [`StoreError::Conflict`].
    pub async fn insert_account(&self, a: &ServiceAccount) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_team(&mut tx, &a.team_id).await? {
            return Ok(false);
        }
        sqlx::query(concat!(
            "INSERT INTO service_accounts (",
            account_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&a.id)
        .bind(&a.name)
        .bind(&a.team_id)
        .bind(a.role.as_str())
        .bind(&a.subject)
        .bind(&a.cert_serial)
        .bind(&a.created_by)
        .bind(a.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_to_conflict(e, "a service account with this name or subject".into()))?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn account(&self, id: &str) -> Result<Option<ServiceAccount>, StoreError> {
        self.one_where(
            concat!(
                "SELECT ",
                account_columns!(),
                " FROM service_accounts WHERE id = $1"
            ),
            id,
            ServiceAccount::from_row,
        )
        .await
    }

    /// The account a certificate's common name maps to.
    pub async fn account_by_subject(
        &self,
        subject: &str,
    ) -> Result<Option<ServiceAccount>, StoreError> {
        if subject.contains('\0') {
            return Ok(None);
        }
        self.one_where(
            concat!(
                "SELECT ",
                account_columns!(),
                " FROM service_accounts WHERE subject = $1"
            ),
            subject,
            ServiceAccount::from_row,
        )
        .await
    }

    pub async fn accounts(&self) -> Result<Vec<ServiceAccount>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            account_columns!(),
            " FROM service_accounts ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, ServiceAccount::from_row)
    }

    /// Deletes an account; false when there was none.
    pub async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM service_accounts WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
