//! Issued invoices in the store: written once per team and month (the first controller
//! to issue one wins; the others read it).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::store::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInvoice {
    pub id: String,
    pub team_id: String,
    /// `YYYY-MM`.
    pub month: String,
    pub currency: String,
    pub total: i64,
    /// The lines, as JSON.
    pub lines: String,
    pub issued_at: i64,
}

impl StoredInvoice {
    fn from_row(r: &AnyRow) -> Result<StoredInvoice, sqlx::Error> {
        Ok(StoredInvoice {
            id: r.try_get("id")?,
            team_id: r.try_get("team_id")?,
            month: r.try_get("month")?,
            currency: r.try_get("currency")?,
            total: r.try_get("total")?,
            lines: r.try_get("lines")?,
            issued_at: r.try_get("issued_at")?,
        })
    }
}

impl Store {
    /// The invoice of a team and month, issued now unless it was already: either way,
    /// the one that is kept.
    pub async fn issue_invoice(
        &self,
        invoice: &StoredInvoice,
    ) -> Result<StoredInvoice, StoreError> {
        sqlx::query(
            "INSERT INTO invoices (id, team_id, month, currency, total, lines, issued_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (team_id, month) DO NOTHING",
        )
        .bind(&invoice.id)
        .bind(&invoice.team_id)
        .bind(&invoice.month)
        .bind(&invoice.currency)
        .bind(invoice.total)
        .bind(&invoice.lines)
        .bind(invoice.issued_at)
        .execute(&self.pool)
        .await?;
        self.invoice(&invoice.team_id, &invoice.month)
            .await?
            .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))
    }

    pub async fn invoice(
        &self,
        team_id: &str,
        month: &str,
    ) -> Result<Option<StoredInvoice>, StoreError> {
        let row = sqlx::query(
            "SELECT id, team_id, month, currency, total, lines, issued_at FROM invoices \
             WHERE team_id = $1 AND month = $2",
        )
        .bind(team_id)
        .bind(month)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(StoredInvoice::from_row).transpose()?)
    }
}
