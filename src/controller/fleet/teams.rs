//! Who may do what: the caller as a [`Principal`] with its team roles, and the teams
//! themselves (members, quotas). The security model's rules live here: a team's
//! resources are visible to its members and to admins, and to anyone else they do not
//! exist (404); owners manage members, members create and operate, viewers read.

use super::ids::TeamRef;
use super::*;
use crate::controller::auth;
use crate::controller::store::{Role, User};
use crate::controller::teams::{
    Membership, MembershipChange, Quotas, Team, TeamDeletion, TeamRole,
};

/// Who is calling, with its place in each of its teams.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's or the service account's id (what tasks record as their owner).
    pub id: String,
    /// Its name (what events and logs record as the actor; `service-account:NAME` for
    /// an account).
    pub name: String,
    pub admin: bool,
    /// A service account (not a user): it acts for its one team only.
    pub account: bool,
    pub teams: Vec<Membership>,
}

impl Principal {
    /// `user`, with its memberships.
    pub fn user(user: &User, teams: Vec<Membership>) -> Principal {
        Principal {
            id: user.id.clone(),
            name: user.name.clone(),
            admin: user.role == Role::Admin,
            account: false,
            teams,
        }
    }

    /// Its role in a team, if it belongs to it.
    pub fn role_in(&self, team_id: &str) -> Option<TeamRole> {
        self.teams
            .iter()
            .find(|m| m.team_id == team_id)
            .map(|m| m.role)
    }

    /// Whether the team's resources exist for it: admins and the team's members.
    pub fn sees(&self, team_id: &str) -> bool {
        self.admin || self.role_in(team_id).is_some()
    }

    /// Whether it may read a task: its creator, the owners of its team, admins.
    pub fn reads_task(&self, task: &Task) -> bool {
        self.admin
            || task.owner_id == self.id
            || task
                .team_id
                .as_deref()
                .is_some_and(|t| self.role_in(t) == Some(TeamRole::Owner))
    }

    /// Refused unless it has at least `needed` in a team it sees (or is an admin).
    pub fn needs(&self, team_id: &str, needed: TeamRole, to: &str) -> Result<(), FleetError> {
        match self.role_in(team_id) {
            _ if self.admin => Ok(()),
            Some(role) if role >= needed => Ok(()),
            Some(role) => Err(FleetError::Forbidden(format!(
                "a team {} cannot {to}: that needs the {} role",
                role.as_str(),
                needed.as_str()
            ))),
            None => Err(FleetError::NotFound),
        }
    }
}

/// A team's name: 1 to 64 letters, digits, `.`, `_`, `@` or `-` (as user names, since
/// each user's personal team is named after it), and not shaped like an id.
pub fn check_team_name(name: &str) -> Result<&str, FleetError> {
    let ok = auth::check_user_name(name).is_ok_and(|n| n == name) && !looks_like_id(name);
    if ok {
        Ok(name)
    } else {
        Err(FleetError::Invalid(format!(
            "name {name:?}: 1 to 64 letters, digits, '.', '_', '@' or '-', not shaped like an id"
        )))
    }
}

/// Whether a name has the shape of the ids the controller gives (a UUID), which would
/// make "by id or name" ambiguous.
pub fn looks_like_id(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A team with its members, as its readers see it.
pub struct TeamDetail {
    pub team: Team,
    pub members: Vec<Membership>,
}

/// Quotas to set: a field absent is left; `null` makes it unlimited.
#[derive(Debug, Default)]
pub struct QuotaUpdate {
    pub max_appliances: Option<Option<i64>>,
    pub max_appliance_minutes: Option<Option<i64>>,
    pub max_keypairs: Option<Option<i64>>,
}

impl Fleet {
    /// The quotas a new team starts with (the configuration's).
    pub fn default_quotas(&self) -> Quotas {
        Quotas::configured(&self.config.teams)
    }

    /// The caller's view of a team named by id or name: what it cannot see does not exist.
    pub async fn visible_team(
        &self,
        caller: &Principal,
        team: &TeamRef,
    ) -> Result<Team, FleetError> {
        let found = match self.store.team(team.as_str()).await? {
            Some(t) => Some(t),
            None => self.store.team_by_name(team.as_str()).await?,
        };
        match found {
            Some(t) if caller.sees(&t.id) => Ok(t),
            _ => Err(FleetError::NoSuchTeam),
        }
    }

    /// The teams the caller belongs to; admins: every team.
    pub async fn teams(&self, caller: &Principal) -> Result<Vec<Team>, FleetError> {
        Ok(self
            .store
            .teams()
            .await?
            .into_iter()
            .filter(|t| caller.sees(&t.id))
            .collect())
    }

    pub async fn team(&self, caller: &Principal, team: &TeamRef) -> Result<TeamDetail, FleetError> {
        let team = self.visible_team(caller, team).await?;
        let members = self.store.members(&team.id).await?;
        Ok(TeamDetail { team, members })
    }

    /// Creates a team owned by the caller (admins; members only where the configuration
    /// lets them).
    pub async fn create_team(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<TeamDetail, FleetError> {
        if caller.account {
            return Err(FleetError::Forbidden(
                "a service account acts for its one team; it creates none".into(),
            ));
        }
        if !caller.admin && !self.config.teams.members_may_create {
            return Err(FleetError::Forbidden(
                "only admins create teams here (teams.members_may_create is off)".into(),
            ));
        }
        let name = check_team_name(name)?;
        let team = self
            .store
            .create_team(
                name,
                Some(&caller.id),
                self.default_quotas(),
                self.clock.now(),
            )
            .await?;
        let members = self.store.members(&team.id).await?;
        Ok(TeamDetail { team, members })
    }

    /// Renames a team (its owners, admins).
    pub async fn rename_team(
        &self,
        caller: &Principal,
        team: &TeamRef,
        name: &str,
    ) -> Result<TeamDetail, FleetError> {
        let t = self.visible_team(caller, team).await?;
        caller.needs(&t.id, TeamRole::Owner, "rename the team")?;
        let name = check_team_name(name)?;
        if !self.store.rename_team(&t.id, name).await? {
            return Err(FleetError::NoSuchTeam);
        }
        self.team(caller, &TeamRef::from(t.id)).await
    }

    /// Deletes a team (its owners, admins), refused while it owns live appliances.
    /// Its usage is invoiced first: every month's invoice is issued (this month's too:
    /// with no appliance left, its usage is final) and kept, for admins to read.
    pub async fn delete_team(&self, caller: &Principal, team: &TeamRef) -> Result<(), FleetError> {
        let t = self.visible_team(caller, team).await?;
        caller.needs(&t.id, TeamRole::Owner, "delete the team")?;
        if self.store.live_appliances(&t.id).await? == 0 {
            self.issue_invoices(&t).await?;
        }
        match self.store.delete_team(&t.id).await? {
            TeamDeletion::Done => Ok(()),
            TeamDeletion::NoSuchTeam => Err(FleetError::NoSuchTeam),
            TeamDeletion::OwnsAppliances(n) => Err(FleetError::Conflict(format!(
                "team {} still owns {n} appliance(s) that are not deleted: destroy them first",
                t.name
            ))),
            TeamDeletion::HasAccounts(n) => Err(FleetError::Conflict(format!(
                "{n} service account(s) still act for team {}: delete them first",
                t.name
            ))),
        }
    }

    /// Gives a user (by id or name) a role in a team (its owners, admins). The last owner
    /// cannot be demoted.
    pub async fn set_member(
        &self,
        caller: &Principal,
        team: &TeamRef,
        user: &str,
        role: &str,
    ) -> Result<TeamDetail, FleetError> {
        let t = self.visible_team(caller, team).await?;
        caller.needs(&t.id, TeamRole::Owner, "manage members")?;
        let role = TeamRole::parse(role).ok_or_else(|| {
            FleetError::Invalid(format!("role {role:?}: owner, member or viewer"))
        })?;
        // Owners change the roles of the team's members; only admins add users, so
        // that nobody is made a member (or an owner) of a team without an admin, and
        // an owner learns nothing of users outside its team.
        let user_id = if caller.admin {
            self.user_by_ref(user).await?.id
        } else {
            self.member_by_ref(&t, user).await?.ok_or_else(|| {
                FleetError::Forbidden(
                    "an owner changes the roles of the team's members; only admins add users to a team"
                        .into(),
                )
            })?
        };
        let change = self
            .store
            .set_membership(&t.id, &user_id, role, caller.admin, self.clock.now())
            .await?;
        self.membership_changed(change, &t)?;
        self.team(caller, &TeamRef::from(t.id)).await
    }

    /// A member of a team by user id or name, if it is one.
    async fn member_by_ref(&self, t: &Team, user: &str) -> Result<Option<String>, FleetError> {
        Ok(self
            .store
            .members(&t.id)
            .await?
            .into_iter()
            .find(|m| m.user_id == user || m.user_name == user)
            .map(|m| m.user_id))
    }

    /// Removes a user from a team: its owners and admins may remove anyone, anyone may
    /// leave; the last owner cannot.
    pub async fn remove_member(
        &self,
        caller: &Principal,
        team: &TeamRef,
        user: &str,
    ) -> Result<(), FleetError> {
        let t = self.visible_team(caller, team).await?;
        // Anyone may leave; removing someone else needs the owner role, checked before
        // the user is looked up (a viewer learns nothing of who exists).
        let leaving = user == caller.id || user == caller.name;
        if !leaving {
            caller.needs(&t.id, TeamRole::Owner, "manage members")?;
        }
        let user_id = if leaving {
            caller.id.clone()
        } else {
            self.member_by_ref(&t, user)
                .await?
                .ok_or(FleetError::NoSuchUser)?
        };
        let change = self.store.remove_membership(&t.id, &user_id).await?;
        self.membership_changed(change, &t)
    }

    fn membership_changed(&self, change: MembershipChange, t: &Team) -> Result<(), FleetError> {
        match change {
            MembershipChange::Done => Ok(()),
            MembershipChange::NoSuchTeam => Err(FleetError::NoSuchTeam),
            MembershipChange::NoSuchMember => Err(FleetError::NoSuchUser),
            MembershipChange::LastOwner => Err(FleetError::Conflict(format!(
                "the last owner of team {} cannot leave it or give up the owner role: \
                 make someone else an owner first",
                t.name
            ))),
        }
    }

    /// A user named by id or name.
    async fn user_by_ref(&self, user: &str) -> Result<User, FleetError> {
        match self.store.user(user).await? {
            Some(u) => Ok(u),
            None => self
                .store
                .user_by_name(user)
                .await?
                .ok_or(FleetError::NoSuchUser),
        }
    }

    /// Sets a team's quotas (admins); a negative quota is refused.
    pub async fn set_quotas(
        &self,
        caller: &Principal,
        team: &TeamRef,
        update: QuotaUpdate,
    ) -> Result<Team, FleetError> {
        let t = self.visible_team(caller, team).await?;
        if !caller.admin {
            return Err(FleetError::AdminOnly);
        }
        for (field, value) in [
            ("max_appliances", update.max_appliances),
            ("max_appliance_minutes", update.max_appliance_minutes),
            ("max_keypairs", update.max_keypairs),
        ] {
            if let Some(Some(n)) = value
                && n < 0
            {
                return Err(FleetError::Invalid(format!(
                    "{field}: a whole number of at least 0, or null for unlimited"
                )));
            }
        }
        if !self
            .store
            .set_quotas(
                &t.id,
                update.max_appliances,
                update.max_appliance_minutes,
                update.max_keypairs,
            )
            .await?
        {
            return Err(FleetError::NoSuchTeam);
        }
        self.visible_team(caller, &TeamRef::from(t.id)).await
    }

    /// The team something is made in (an appliance, a key pair): the one named (by id
    /// or name), or the caller's only team. The caller must be one of its members or
    /// owners (or an admin) to `what`.
    pub async fn team_for(
        &self,
        caller: &Principal,
        team: Option<&str>,
        what: &str,
    ) -> Result<Team, FleetError> {
        let team = match team {
            Some(t) => self
                .visible_team(caller, &TeamRef::from(t.to_string()))
                .await
                .map_err(|_| FleetError::Invalid(format!("team {t:?}: no such team of yours")))?,
            None => self.only_team(caller).await?,
        };
        caller.needs(&team.id, TeamRole::Member, what)?;
        Ok(team)
    }

    /// The caller's team, for a request that names none: its only one.
    pub(super) async fn only_team(&self, caller: &Principal) -> Result<Team, FleetError> {
        match caller.teams.as_slice() {
            [only] => self
                .store
                .team(&only.team_id)
                .await?
                .ok_or(FleetError::NoSuchTeam),
            [] => Err(FleetError::Invalid(
                "team: you belong to no team; name one".into(),
            )),
            several => {
                let names: Vec<&str> = several.iter().map(|m| m.team_name.as_str()).collect();
                Err(FleetError::Invalid(format!(
                    "team: you belong to several teams; name one of {}",
                    names.join(", ")
                )))
            }
        }
    }
}
