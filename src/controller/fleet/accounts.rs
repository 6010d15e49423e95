//! Service accounts: integrations on `api` listeners. Each is a client certificate
//! subject (common name) mapped to one team with a team role; admins create them, with
//! a subject of their own PKI or a certificate the controller issues (returned once),
//! and delete them (an issued certificate is then revoked).

use super::ids::AccountId;
use super::teams::{Principal, check_team_name, looks_like_id};
use super::*;
use crate::controller::accounts::ServiceAccount;
use crate::controller::auth;
use crate::controller::teams::{Membership, TeamRole};
use crate::pki::Issued;

/// A service account to create: with `subject`, for a certificate of the operator's own
/// PKI; without, the controller issues one.
pub struct NewAccount {
    pub name: String,
    pub team: String,
    pub role: String,
    pub subject: Option<String>,
}

/// The common name of a certificate the controller issues to an account: its name and
/// a random part, so that an account made again under the same name is not the old
/// certificate's (wherever a CRL does not reach).
pub fn issued_subject(name: &str) -> String {
    format!("service-account.{name}.{}", &auth::new_id()[..8])
}

/// A subject an account may be mapped to: printable, at most 128 characters, and none
/// that names an appliance (an id) or the controller itself.
fn check_subject(subject: &str) -> Result<(), FleetError> {
    let ok = !subject.is_empty()
        && subject.len() <= 128
        && subject.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        && !looks_like_id(subject)
        && !subject.starts_with("applianced-");
    if ok {
        Ok(())
    } else {
        Err(FleetError::Invalid(format!(
            "subject {subject:?}: 1 to 128 printable characters, not an appliance id nor an applianced-* name"
        )))
    }
}

impl Fleet {
    /// Creates a service account (admins); the certificate the controller issued, when
    /// it issued one, comes back once.
    pub async fn create_account(
        &self,
        caller: &Principal,
        new: NewAccount,
    ) -> Result<(ServiceAccount, Option<Issued>), FleetError> {
        users::admin(caller)?;
        check_team_name(&new.name)?;
        let role = TeamRole::parse(&new.role).ok_or_else(|| {
            FleetError::Invalid(format!("role {:?}: owner, member or viewer", new.role))
        })?;
        let team = self
            .visible_team(caller, &super::ids::TeamRef::from(new.team.clone()))
            .await
            .map_err(|_| FleetError::Invalid(format!("team {:?}: no such team", new.team)))?;
        let subject = match &new.subject {
            Some(s) => {
                check_subject(s)?;
                s.clone()
            }
            None => issued_subject(&new.name),
        };
        let issued = match new.subject {
            Some(_) => None,
            None => {
                let (ca, cn) = (self.ca.clone(), subject.clone());
                Some(
                    blocking(move || {
                        ca.issue_client(&cn)
                            .map_err(|e| FleetError::Internal(format!("the CA cannot issue: {e}")))
                    })
                    .await?,
                )
            }
        };
        let account = ServiceAccount {
            id: auth::new_id(),
            name: new.name,
            team_id: team.id,
            role,
            subject,
            cert_serial: issued.as_ref().map(|i| i.serial.clone()),
            created_by: caller.id.clone(),
            created_at: self.clock.now(),
        };
        let recorded = match self.store.insert_account(&account).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(FleetError::NoSuchTeam),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = recorded {
            // Nothing is left that works: a certificate issued for nothing is revoked.
            if let Some(serial) = account.cert_serial.clone() {
                self.revoke_serial(serial).await?;
            }
            return Err(e);
        }
        Ok((account, issued))
    }

    /// Revokes a certificate the CA issued; the listeners that check the CRL reload it.
    pub(super) async fn revoke_serial(&self, serial: String) -> Result<(), FleetError> {
        let ca = self.ca.clone();
        blocking(move || {
            ca.revoke(&serial)
                .map_err(|e| FleetError::Internal(format!("the CA cannot revoke: {e}")))
        })
        .await?;
        (self.on_revoke)();
        Ok(())
    }

    /// Every service account (admins).
    pub async fn accounts(&self, caller: &Principal) -> Result<Vec<ServiceAccount>, FleetError> {
        users::admin(caller)?;
        Ok(self.store.accounts().await?)
    }

    pub async fn account(
        &self,
        caller: &Principal,
        id: &AccountId,
    ) -> Result<ServiceAccount, FleetError> {
        users::admin(caller)?;
        self.store
            .account(id.as_str())
            .await?
            .ok_or(FleetError::NoSuchAccount)
    }

    /// Deletes a service account (admins): it stops working at once, and a certificate
    /// the controller issued it is revoked.
    pub async fn delete_account(
        &self,
        caller: &Principal,
        id: &AccountId,
    ) -> Result<(), FleetError> {
        let account = self.account(caller, id).await?;
        if !self.store.delete_account(&account.id).await? {
            return Err(FleetError::NoSuchAccount);
        }
        if let Some(serial) = account.cert_serial {
            self.revoke_serial(serial).await?;
        }
        Ok(())
    }

    /// The service account an `api` listener's verified client certificate names.
    pub async fn authenticate_account(&self, subject: &str) -> Result<Principal, FleetError> {
        let account =
            self.store
                .account_by_subject(subject)
                .await?
                .ok_or(FleetError::Unauthorized(
                    "the client certificate names no service account",
                ))?;
        let team = self
            .store
            .team(&account.team_id)
            .await?
            .ok_or(FleetError::Unauthorized(
                "the service account's team is gone",
            ))?;
        Ok(Principal {
            id: account.id.clone(),
            name: format!("service-account:{}", account.name),
            admin: false,
            account: true,
            teams: vec![Membership {
                team_id: team.id,
                team_name: team.name,
                user_id: account.id,
                user_name: account.name,
                role: account.role,
                since: account.created_at,
            }],
        })
    }
}
