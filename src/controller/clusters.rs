//! Clusters in the store: a team's group of appliances with a topology and an active
//! member.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::store::{Store, StoreError, decode_all, unique_to_conflict};
use super::teams::lock_team;

/// How a cluster's appliances share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One appliance.
    Single,
    /// Two: an active one and a standby.
    ActiveStandby,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Single => "SINGLE",
            Topology::ActiveStandby => "ACTIVE_STANDBY",
        }
    }

    pub fn parse(s: &str) -> Option<Topology> {
        match s {
            "SINGLE" => Some(Topology::Single),
            "ACTIVE_STANDBY" => Some(Topology::ActiveStandby),
            _ => None,
        }
    }

    /// Appliances (not deleted) the cluster holds at most.
    pub fn size(self) -> i64 {
        match self {
            Topology::Single => 1,
            Topology::ActiveStandby => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub topology: Topology,
    /// The member that takes a write first; set when the first appliance joins.
    pub active_id: Option<String>,
    /// Being deleted: no appliance joins it any more.
    pub deleting: bool,
    pub created_by: String,
    pub created_at: i64,
}

macro_rules! cluster_columns {
    () => {
        "id, team_id, name, topology, active_id, deleting, created_by, created_at"
    };
}

impl Cluster {
    fn from_row(r: &AnyRow) -> Result<Cluster, sqlx::Error> {
        let topology: String = r.try_get("topology")?;
        Ok(Cluster {
            id: r.try_get("id")?,
            team_id: r.try_get("team_id")?,
            name: r.try_get("name")?,
            topology: Topology::parse(&topology).ok_or_else(|| sqlx::Error::ColumnDecode {
                index: "topology".into(),
                source: format!("unknown topology {topology:?}").into(),
            })?,
            active_id: r.try_get("active_id")?,
            deleting: r.try_get::<i64, _>("deleting")? != 0,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

impl Store {
    /// Records a cluster under its team's lock; false when the team is gone. A name the
    /// team uses is a [`StoreError::Conflict`].
    pub async fn insert_cluster(&self, c: &Cluster) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_team(&mut tx, &c.team_id).await? {
            return Ok(false);
        }
        sqlx::query(concat!(
            "INSERT INTO clusters (",
            cluster_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&c.id)
        .bind(&c.team_id)
        .bind(&c.name)
        .bind(c.topology.as_str())
        .bind(&c.active_id)
        .bind(i64::from(c.deleting))
        .bind(&c.created_by)
        .bind(c.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_to_conflict(e, format!("a cluster named {:?} in this team", c.name)))?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn cluster(&self, id: &str) -> Result<Option<Cluster>, StoreError> {
        self.one_where(
            concat!(
                "SELECT ",
                cluster_columns!(),
                " FROM clusters WHERE id = $1"
            ),
            id,
            Cluster::from_row,
        )
        .await
    }

    pub async fn cluster_by_name(
        &self,
        team_id: &str,
        name: &str,
    ) -> Result<Option<Cluster>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            cluster_columns!(),
            " FROM clusters WHERE team_id = $1 AND name = $2"
        ))
        .bind(team_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Cluster::from_row).transpose()?)
    }

    pub async fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            cluster_columns!(),
            " FROM clusters ORDER BY team_id, name"
        ))
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, Cluster::from_row)
    }

    /// Marks a cluster as being deleted, under its team's lock (so that no create joins
    /// it from now on); false when there is no such cluster.
    pub async fn mark_cluster_deleting(&self, c: &Cluster) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_team(&mut tx, &c.team_id).await?;
        let done = sqlx::query("UPDATE clusters SET deleting = 1 WHERE id = $1")
            .bind(&c.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a cluster; false when there was none.
    pub async fn delete_cluster(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM clusters WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
