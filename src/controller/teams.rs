//! Teams and memberships in the store. A team owns appliances; users belong to teams
//! with a role. Every change to a team's memberships first locks the team's row (an
//! update of it, which SQLite and PostgreSQL both serialise), so two owners demoting
//! each other at the same moment cannot leave the team without one.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::auth;
use super::store::{Store, StoreError, decode_all, unique_to_conflict};

/// A role in a team: `owner` manages members, `member` creates and operates the team's
/// appliances, `viewer` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TeamRole {
    Viewer,
    Member,
    Owner,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Owner => "owner",
            TeamRole::Member => "member",
            TeamRole::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<TeamRole> {
        match s {
            "owner" => Some(TeamRole::Owner),
            "member" => Some(TeamRole::Member),
            "viewer" => Some(TeamRole::Viewer),
            _ => None,
        }
    }
}

/// A team's quotas; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    pub max_appliances: Option<i64>,
    pub max_appliance_minutes: Option<i64>,
    pub max_keypairs: Option<i64>,
}

impl Quotas {
    /// The quotas a new team starts with: the configuration's.
    pub fn configured(teams: &crate::config::controller::Teams) -> Quotas {
        Quotas {
            max_appliances: teams.max_appliances.map(i64::from),
            max_appliance_minutes: teams.max_appliance_minutes.map(i64::from),
            max_keypairs: teams.max_keypairs.map(i64::from),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub quotas: Quotas,
}

macro_rules! team_columns {
    () => {
        "id, name, created_at, max_appliances, max_appliance_minutes, max_keypairs"
    };
}

impl Team {
    fn from_row(r: &AnyRow) -> Result<Team, sqlx::Error> {
        Ok(Team {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            created_at: r.try_get("created_at")?,
            quotas: Quotas {
                max_appliances: r.try_get("max_appliances")?,
                max_appliance_minutes: r.try_get("max_appliance_minutes")?,
                max_keypairs: r.try_get("max_keypairs")?,
            },
        })
    }
}

/// A user's place in a team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub team_id: String,
    pub team_name: String,
    pub user_id: String,
    pub user_name: String,
    pub role: TeamRole,
    pub since: i64,
}

impl Membership {
    fn from_row(r: &AnyRow) -> Result<Membership, sqlx::Error> {
        let role: String = r.try_get("role")?;
        Ok(Membership {
            team_id: r.try_get("team_id")?,
            team_name: r.try_get("team_name")?,
            user_id: r.try_get("user_id")?,
            user_name: r.try_get("user_name")?,
            role: TeamRole::parse(&role).ok_or_else(|| sqlx::Error::ColumnDecode {
                index: "role".into(),
                source: format!("unknown team role {role:?}").into(),
            })?,
            since: r.try_get("created_at")?,
        })
    }
}

/// The query [`Membership::from_row`] reads, up to its `WHERE`.
macro_rules! memberships {
    () => {
        "SELECT m.team_id, t.name AS team_name, m.user_id, u.name AS user_name, m.role, \
         m.created_at FROM memberships m JOIN teams t ON t.id = m.team_id \
         JOIN users u ON u.id = m.user_id"
    };
}

/// What a change of memberships found.
#[derive(Debug, PartialEq, Eq)]
pub enum MembershipChange {
    Done,
    NoSuchTeam,
    NoSuchMember,
    /// It would leave the team without an owner.
    LastOwner,
}

/// What deleting a team found.
#[derive(Debug, PartialEq, Eq)]
pub enum TeamDeletion {
    Done,
    NoSuchTeam,
    /// It still owns this many appliances that are not deleted.
    OwnsAppliances(i64),
    /// This many service accounts still act for it.
    HasAccounts(i64),
}

pub(super) type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// Locks a team's row for the rest of the transaction; false when there is no such team.
pub(super) async fn lock_team(tx: &mut Tx<'_>, team_id: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE teams SET name = name WHERE id = $1")
        .bind(team_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Inserts a team and its first owner.
pub(super) async fn insert_team(
    tx: &mut Tx<'_>,
    id: &str,
    name: &str,
    owner: Option<&str>,
    quotas: Quotas,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO teams (",
        team_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(id)
    .bind(name)
    .bind(now)
    .bind(quotas.max_appliances)
    .bind(quotas.max_appliance_minutes)
    .bind(quotas.max_keypairs)
    .execute(&mut **tx)
    .await
    .map_err(|e| unique_to_conflict(e, format!("a team named {name:?}")))?;
    if let Some(user) = owner {
        sqlx::query(
            "INSERT INTO memberships (team_id, user_id, role, created_at) \
             VALUES ($1, $2, 'owner', $3)",
        )
        .bind(id)
        .bind(user)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Creates a team with `owner` as its first owner, in one transaction.
    pub async fn create_team(
        &self,
        name: &str,
        owner: Option<&str>,
        quotas: Quotas,
        now: i64,
    ) -> Result<Team, StoreError> {
        let id = auth::new_id();
        let mut tx = self.pool.begin().await?;
        insert_team(&mut tx, &id, name, owner, quotas, now).await?;
        tx.commit().await?;
        Ok(Team {
            id,
            name: name.to_string(),
            created_at: now,
            quotas,
        })
    }

    pub async fn team(&self, id: &str) -> Result<Option<Team>, StoreError> {
        self.one_where(
            concat!("SELECT ", team_columns!(), " FROM teams WHERE id = $1"),
            id,
            Team::from_row,
        )
        .await
    }

    pub async fn team_by_name(&self, name: &str) -> Result<Option<Team>, StoreError> {
        if name.contains('\0') {
            return Ok(None);
        }
        self.one_where(
            concat!("SELECT ", team_columns!(), " FROM teams WHERE name = $1"),
            name,
            Team::from_row,
        )
        .await
    }

    /// Every team, by name.
    pub async fn teams(&self) -> Result<Vec<Team>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            team_columns!(),
            " FROM teams ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, Team::from_row)
    }

    /// The teams a user belongs to, with its role in each, by team name.
    pub async fn memberships_of(&self, user_id: &str) -> Result<Vec<Membership>, StoreError> {
        let rows = sqlx::query(concat!(
            memberships!(),
            " WHERE m.user_id = $1 ORDER BY t.name"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, Membership::from_row)
    }

    /// The members of a team, by user name.
    pub async fn members(&self, team_id: &str) -> Result<Vec<Membership>, StoreError> {
        let rows = sqlx::query(concat!(
            memberships!(),
            " WHERE m.team_id = $1 ORDER BY u.name"
        ))
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, Membership::from_row)
    }

    /// Renames a team; false when there is no such team.
    pub async fn rename_team(&self, id: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE teams SET name = $1 WHERE id = $2")
            .bind(name)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| unique_to_conflict(e, format!("a team named {name:?}")))?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets the quotas named (`Some`) and leaves the others; false when there is no
    /// such team. `Some(None)` makes a quota unlimited.
    pub async fn set_quotas(
        &self,
        id: &str,
        max_appliances: Option<Option<i64>>,
        max_appliance_minutes: Option<Option<i64>>,
        max_keypairs: Option<Option<i64>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_team(&mut tx, id).await? {
            return Ok(false);
        }
        for (query, value) in [
            (
                "UPDATE teams SET max_appliances = $1 WHERE id = $2",
                max_appliances,
            ),
            (
                "UPDATE teams SET max_appliance_minutes = $1 WHERE id = $2",
                max_appliance_minutes,
            ),
            (
                "UPDATE teams SET max_keypairs = $1 WHERE id = $2",
                max_keypairs,
            ),
        ] {
            if let Some(value) = value {
                sqlx::query(query)
                    .bind(value)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Gives `user_id` `role` in a team (adding the membership if `may_add`, else
    /// [`MembershipChange::NoSuchMember`]); refused when it would demote the team's last
    /// owner.
    pub async fn set_membership(
        &self,
        team_id: &str,
        user_id: &str,
        role: TeamRole,
        may_add: bool,
        now: i64,
    ) -> Result<MembershipChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_team(&mut tx, team_id).await? {
            return Ok(MembershipChange::NoSuchTeam);
        }
        if role != TeamRole::Owner && last_owner(&mut tx, team_id, user_id).await? {
            return Ok(MembershipChange::LastOwner);
        }
        let updated =
            sqlx::query("UPDATE memberships SET role = $1 WHERE team_id = $2 AND user_id = $3")
                .bind(role.as_str())
                .bind(team_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            if !may_add {
                return Ok(MembershipChange::NoSuchMember);
            }
            sqlx::query(
                "INSERT INTO memberships (team_id, user_id, role, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(team_id)
            .bind(user_id)
            .bind(role.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(MembershipChange::Done)
    }

    /// Removes a membership; refused when it is the team's last owner's.
    pub async fn remove_membership(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<MembershipChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_team(&mut tx, team_id).await? {
            return Ok(MembershipChange::NoSuchTeam);
        }
        if last_owner(&mut tx, team_id, user_id).await? {
            return Ok(MembershipChange::LastOwner);
        }
        let done = sqlx::query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(if done.rows_affected() == 1 {
            MembershipChange::Done
        } else {
            MembershipChange::NoSuchMember
        })
    }

    /// Deletes a team with its memberships and key pairs, unless it owns appliances that
    /// are not deleted or has service accounts (checked under the team's lock, so none
    /// is created meanwhile).
    pub async fn delete_team(&self, id: &str) -> Result<TeamDeletion, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_team(&mut tx, id).await? {
            return Ok(TeamDeletion::NoSuchTeam);
        }
        let live: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM appliances WHERE team_id = $1 AND state <> 'deleted'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if live > 0 {
            return Ok(TeamDeletion::OwnsAppliances(live));
        }
        let accounts: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM service_accounts WHERE team_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
        if accounts > 0 {
            return Ok(TeamDeletion::HasAccounts(accounts));
        }
        for query in [
            "DELETE FROM memberships WHERE team_id = $1",
            "DELETE FROM keypairs WHERE team_id = $1",
            "DELETE FROM teams WHERE id = $1",
        ] {
            sqlx::query(query).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(TeamDeletion::Done)
    }
}

/// Whether `user_id` is the only owner of the team.
async fn last_owner(tx: &mut Tx<'_>, team_id: &str, user_id: &str) -> Result<bool, StoreError> {
    let rows = sqlx::query("SELECT user_id FROM memberships WHERE team_id = $1 AND role = 'owner'")
        .bind(team_id)
        .fetch_all(&mut **tx)
        .await?;
    let owners: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("user_id"))
        .collect::<Result<_, _>>()?;
    Ok(owners.len() == 1 && owners[0] == user_id)
}
