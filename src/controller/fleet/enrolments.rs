//! Enrolment: appliances built elsewhere join with a one-time token (seed 001's minion
//! keys). Admins issue tokens for a team; an appliance sends a certificate signing
//! request with one; the request is accepted at once or waits for an admin; accepted,
//! the controller signs the appliance's own key (which never leaves it) and records it
//! as an `active` appliance of the `enrolled` backend.

use base64::Engine;

use super::teams::Principal;
use super::*;
use crate::controller::auth;
use crate::controller::enrolments::{
    Accepted, Enrolment, EnrolmentState, EnrolmentToken, Submitted,
};
use crate::controller::fleet::ids::{EnrolmentId, EnrolmentTokenId, TeamRef};

/// A token's lifetime when the request names none, and the longest one may ask.
pub const DEFAULT_TOKEN_TTL_SECS: u32 = 3600;
pub const MAX_TOKEN_TTL_SECS: u32 = 7 * 86_400;
/// Requests that may wait for an admin at once; more are refused (429) until some are
/// decided.
pub const MAX_PENDING: i64 = 200;
/// The backend of appliances that joined by enrolment.
pub const ENROLLED: &str = "enrolled";

/// A token as issued: the token itself is in this answer only.
pub struct TokenIssued {
    pub record: EnrolmentToken,
    pub token: String,
    pub ca_fingerprint: String,
    /// The command that enrols an appliance with it.
    pub command: String,
}

/// What an appliance sends to join.
pub struct EnrolmentRequest {
    pub token: String,
    /// PEM certificate signing request for the key the appliance made.
    pub csr: String,
    /// Where its agent listens; an absent or unspecified address is the one the
    /// request came from.
    pub address: Option<IpAddr>,
    pub port: u16,
    pub name: Option<String>,
}

impl Fleet {
    /// Issues a one-time token for `team` (admins).
    pub async fn issue_enrolment_token(
        &self,
        caller: &Principal,
        team: &str,
        ttl_seconds: Option<u32>,
        auto_accept: bool,
    ) -> Result<TokenIssued, FleetError> {
        if !caller.admin {
            return Err(FleetError::AdminOnly);
        }
        let ttl = ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
            return Err(FleetError::Invalid(format!(
                "ttl_seconds: from 1 to {MAX_TOKEN_TTL_SECS}"
            )));
        }
        let team = self
            .visible_team(caller, &TeamRef::from(team.to_string()))
            .await
            .map_err(|_| FleetError::Invalid(format!("team {team:?}: no such team")))?;
        let url = crate::controller::controller_url(&self.config).ok_or_else(|| {
            FleetError::Invalid(
                "the controller has no appliance listener (nor backend.controller_url) for \
                 appliances to enrol with"
                    .into(),
            )
        })?;
        let now = self.clock.now();
        let (token, hash) = auth::new_token();
        let record = EnrolmentToken {
            id: auth::new_id(),
            team_id: team.id,
            auto_accept,
            created_by: caller.id.clone(),
            created_at: now,
            expires_at: now + i64::from(ttl),
            used_at: None,
            appliance_id: None,
        };
        self.store.create_enrolment_token(&record, &hash).await?;
        let ca_fingerprint = format!("sha256:{}", self.ca.fingerprint());
        tracing::info!(token = %record.id, team = %record.team_id, auto_accept, actor = %caller.name, "enrolment token issued");
        Ok(TokenIssued {
            command: enrol_command(&url, &token, &ca_fingerprint),
            record,
            token,
            ca_fingerprint,
        })
    }

    /// The command that makes the machine of appliance `a` (a cloud backend's) join
    /// as that appliance: a one-time token for it alone, accepted at once, valid for
    /// twice the time the appliance may take to launch (one that joins late still
    /// becomes active). Its earlier tokens are deleted.
    pub(super) async fn machine_enrolment_command(
        &self,
        a: &Appliance,
    ) -> Result<String, FleetError> {
        let url =
            crate::controller::controller_url_of(&self.config, &a.backend).ok_or_else(|| {
                FleetError::Internal("no appliance listener for machines to enrol with".into())
            })?;
        let now = self.clock.now();
        self.store
            .delete_appliance_enrolment_tokens(&a.id, "replaced", now)
            .await?;
        let ttl = i64::try_from(self.config.appliances.launch_timeout.0.as_secs())
            .unwrap_or(i64::MAX / 4)
            .max(60)
            .saturating_mul(2);
        let (token, hash) = auth::new_token();
        let record = EnrolmentToken {
            id: auth::new_id(),
            team_id: a.team_id.clone(),
            auto_accept: true,
            created_by: a.owner_id.clone(),
            created_at: now,
            expires_at: now.saturating_add(ttl),
            used_at: None,
            appliance_id: Some(a.id.clone()),
        };
        self.store.create_enrolment_token(&record, &hash).await?;
        tracing::info!(token = %record.id, appliance = %a.id, "enrolment token issued for the appliance's machine");
        Ok(enrol_command(
            &url,
            &token,
            &format!("sha256:{}", self.ca.fingerprint()),
        ))
    }

    pub async fn enrolment_tokens(
        &self,
        caller: &Principal,
    ) -> Result<Vec<EnrolmentToken>, FleetError> {
        if !caller.admin {
            return Err(FleetError::AdminOnly);
        }
        Ok(self.store.enrolment_tokens().await?)
    }

    /// Deletes a token, used or not (a used one's appliance stays).
    pub async fn delete_enrolment_token(
        &self,
        caller: &Principal,
        id: &EnrolmentTokenId,
    ) -> Result<(), FleetError> {
        if !caller.admin {
            return Err(FleetError::AdminOnly);
        }
        if self
            .store
            .delete_enrolment_token(id.as_str(), &caller.name, self.clock.now())
            .await?
        {
            Ok(())
        } else {
            Err(FleetError::NoSuchEntry(format!(
                "no such enrolment token {id:?}"
            )))
        }
    }

    /// A request to join from an appliance at `peer` (unauthenticated but for its
    /// token). Accepted at once when its token says so and the team has room.
    pub async fn submit_enrolment(
        &self,
        peer: IpAddr,
        req: EnrolmentRequest,
    ) -> Result<Enrolment, FleetError> {
        if req.token.is_empty() || req.token.len() > 128 {
            return Err(FleetError::EnrolmentRefused(
                "unknown enrolment token".into(),
            ));
        }
        let key = crate::pki::csr::parse(&req.csr)
            .map_err(|e| FleetError::Invalid(format!("csr: {e}")))?;
        if req.port == 0 {
            return Err(FleetError::Invalid("port: from 1 to 65535".into()));
        }
        let address = match req.address {
            Some(a) if !a.is_unspecified() => {
                if a.is_multicast() {
                    return Err(FleetError::Invalid(format!(
                        "address {a}: not a unicast address"
                    )));
                }
                a
            }
            _ => peer,
        };
        let name = match req.name {
            Some(n) => {
                operations::check_name(&n)?;
                n
            }
            None => format!("enrolled-{}", &key.fingerprint[..12]),
        };
        let now = self.clock.now();
        let new = Enrolment {
            id: auth::new_id(),
            token_id: String::new(),
            team_id: String::new(),
            state: EnrolmentState::Pending,
            name,
            address: address.to_string(),
            agent_port: i64::from(req.port),
            peer_address: peer.to_string(),
            public_key: base64::engine::general_purpose::STANDARD.encode(&key.spki),
            key_algorithm: key.algorithm,
            fingerprint: key.fingerprint,
            appliance_id: None,
            certificate: None,
            created_at: now,
            decided_at: None,
            decided_by: None,
        };
        let (outcome, recorded) = self
            .store
            .submit_enrolment(&auth::token_hash(&req.token), &new, MAX_PENDING)
            .await?;
        let auto_accept = match outcome {
            Submitted::Recorded { auto_accept } => auto_accept,
            Submitted::UnknownToken => {
                return Err(FleetError::EnrolmentRefused(
                    "unknown enrolment token".into(),
                ));
            }
            Submitted::UsedToken => {
                return Err(FleetError::EnrolmentRefused(
                    "this enrolment token was used already: ask for a new one".into(),
                ));
            }
            Submitted::ExpiredToken => {
                return Err(FleetError::EnrolmentRefused(
                    "this enrolment token has expired: ask for a new one".into(),
                ));
            }
            Submitted::TooManyPending(n) => {
                return Err(FleetError::TooManyRequests(format!(
                    "{n} enrolments wait for an admin already; try again later"
                )));
            }
        };
        let e = recorded.ok_or_else(|| FleetError::Internal("enrolment not recorded".into()))?;
        tracing::info!(enrolment = %e.id, team = %e.team_id, peer = %peer, address = %e.address, key = %e.key_algorithm, "enrolment requested");
        if !auto_accept {
            return Ok(e);
        }
        match self
            .accept(&EnrolmentId::from(e.id.clone()), "auto-accept")
            .await
        {
            Ok(accepted) => Ok(accepted),
            // Left for an admin (the team at its quota, its address taken, ...): the
            // appliance has its request's id and waits, its token spent.
            Err(err) => {
                tracing::warn!(enrolment = %e.id, error = %err, "enrolment left pending for an admin");
                Ok(e)
            }
        }
    }

    /// A request as its appliance polls it (its id is the appliance's secret).
    pub async fn enrolment(&self, id: &EnrolmentId) -> Result<Enrolment, FleetError> {
        self.store
            .enrolment(id.as_str())
            .await?
            .ok_or(FleetError::NoSuchEnrolment)
    }

    /// Requests (admins), newest first; only those in `state` when given.
    pub async fn enrolments(
        &self,
        caller: &Principal,
        state: Option<EnrolmentState>,
    ) -> Result<Vec<Enrolment>, FleetError> {
        if !caller.admin {
            return Err(FleetError::AdminOnly);
        }
        Ok(self.store.enrolments(state).await?)
    }

    pub async fn accept_enrolment(
        &self,
        caller: &Principal,
        id: &EnrolmentId,
    ) -> Result<Enrolment, FleetError> {
        if !caller.admin {
            return Err(FleetError::AdminOnly);
        }
        self.accept(id, &caller.name).await
    }

    pub async fn reject_enrolment(
        &self,
        caller: &Principal,
        id: &EnrolmentId,
    ) -> Result<Enrolment, FleetError> {
        if !caller.admin {
            return Err(FleetError::AdminOnly);
        }
        let e = self.enrolment(id).await?;
        if !self
            .store
            .reject_enrolment(id.as_str(), &caller.name, self.clock.now())
            .await?
        {
            return Err(not_pending(&e));
        }
        tracing::info!(enrolment = %id, actor = %caller.name, "enrolment rejected");
        self.enrolment(id).await
    }

    /// Signs the request's key and records its appliance, `decided_by` naming who
    /// accepted it.
    async fn accept(&self, id: &EnrolmentId, decided_by: &str) -> Result<Enrolment, FleetError> {
        let e = self.enrolment(id).await?;
        if e.state != EnrolmentState::Pending {
            return Err(not_pending(&e));
        }
        let Some(token) = self.store.enrolment_token(&e.token_id).await? else {
            // Deleting a token rejects its waiting requests; one left is refused.
            return Err(FleetError::Conflict(format!(
                "the token of enrolment {id} was deleted: reject it"
            )));
        };
        if let Some(appliance) = token.appliance_id {
            return self.attach(id, &e, &appliance, decided_by).await;
        }
        let spki = base64::engine::general_purpose::STANDARD
            .decode(&e.public_key)
            .map_err(|err| FleetError::Internal(format!("enrolment {id}: its key: {err}")))?;
        let appliance_id = auth::new_id();
        let (ca, aid, address) = (self.ca.clone(), appliance_id.clone(), e.address.clone());
        let issued = blocking(move || {
            ca.issue_appliance_for_key(&aid, &address, &spki)
                .map_err(|err| FleetError::Internal(format!("the CA cannot issue: {err}")))
        })
        .await?;
        let now = self.clock.now();
        // Its owner: the admin who issued the token.
        let owner = token.created_by.clone();
        let appliance = Appliance {
            id: appliance_id,
            name: e.name.clone(),
            team_id: e.team_id.clone(),
            owner_id: owner,
            external_id: None,
            request_hash: String::new(),
            state: State::Active,
            state_since: now,
            ttl_minutes: 0,
            callback_url: None,
            slot: None,
            address: Some(e.address.clone()),
            agent_port: Some(e.agent_port),
            cert_serial: Some(issued.serial.clone()),
            cert_not_after: Some(issued.not_after.unix_timestamp()),
            launched_at: Some(now),
            expires_at: None,
            // The watchdog gives it its usual time to report from now.
            last_heartbeat_at: Some(now),
            last_status: None,
            created_at: now,
            keypair_id: None,
            authorized_key: None,
            template: None,
            image: None,
            flavor: None,
            network: None,
            region: None,
            notify_email: None,
            cluster_id: None,
            backend: ENROLLED.to_string(),
            public_key: Some(e.public_key.clone()),
        };
        let record = Record {
            kind: "enrolled",
            detail: Some(json!({
                "enrolment": e.id,
                "peer_address": e.peer_address,
                "key_fingerprint": e.fingerprint,
            })),
            actor: Some(decided_by),
        };
        let outcome = self
            .store
            .accept_enrolment(
                id.as_str(),
                &appliance,
                &issued.chain_pem(),
                &record,
                decided_by,
            )
            .await;
        let refused = match outcome {
            Ok(Accepted::Done(e)) => {
                tracing::info!(enrolment = %id, appliance = %appliance.id, actor = %decided_by, "enrolment accepted");
                return Ok(*e);
            }
            Ok(Accepted::NotPending) => not_pending(&self.enrolment(id).await?),
            Ok(Accepted::NoTeam) => {
                FleetError::Conflict(format!("the team of enrolment {id} was deleted: reject it"))
            }
            Ok(Accepted::AddressTaken) => FleetError::Conflict(format!(
                "another appliance is reached at {}:{}: reject this request",
                e.address, e.agent_port
            )),
            Ok(Accepted::OverQuota { limit, used }) => FleetError::QuotaExceeded {
                quota: "max_appliances",
                limit,
                used,
            },
            Ok(Accepted::NotWaiting) => {
                FleetError::Internal("a new appliance is always waited for".into())
            }
            Err(err) => err.into(),
        };
        // Nothing uses the certificate just issued.
        self.revoke_unused(&issued.serial).await;
        Err(refused)
    }
}

impl Fleet {
    /// Accepts a request made with the token of appliance `appliance_id`'s machine:
    /// signs its key for that appliance and completes its record.
    async fn attach(
        &self,
        id: &EnrolmentId,
        e: &Enrolment,
        appliance_id: &str,
        decided_by: &str,
    ) -> Result<Enrolment, FleetError> {
        let a = self.appliance(appliance_id).await.map_err(|_| {
            FleetError::Conflict(format!(
                "the appliance enrolment {id} was made for no longer exists: reject it"
            ))
        })?;
        let spki = base64::engine::general_purpose::STANDARD
            .decode(&e.public_key)
            .map_err(|err| FleetError::Internal(format!("enrolment {id}: its key: {err}")))?;
        let (ca, aid, address) = (self.ca.clone(), a.id.clone(), e.address.clone());
        let issued = blocking(move || {
            ca.issue_appliance_for_key(&aid, &address, &spki)
                .map_err(|err| FleetError::Internal(format!("the CA cannot issue: {err}")))
        })
        .await?;
        let record = Record {
            kind: "enrolled",
            detail: Some(json!({
                "enrolment": e.id,
                "address": e.address,
                "peer_address": e.peer_address,
                "key_fingerprint": e.fingerprint,
            })),
            actor: Some(decided_by),
        };
        let outcome = self
            .store
            .attach_enrolment(
                id.as_str(),
                &a,
                e,
                (
                    &issued.chain_pem(),
                    &issued.serial,
                    issued.not_after.unix_timestamp(),
                ),
                &record,
                decided_by,
                self.clock.now(),
            )
            .await;
        let refused = match outcome {
            Ok(Accepted::Done(e)) => {
                tracing::info!(enrolment = %id, appliance = %a.id, actor = %decided_by, "the appliance's machine enrolled");
                return Ok(*e);
            }
            Ok(Accepted::NotPending) => not_pending(&self.enrolment(id).await?),
            Ok(Accepted::AddressTaken) => FleetError::Conflict(format!(
                "another appliance is reached at {}:{}",
                e.address, e.agent_port
            )),
            Ok(Accepted::NotWaiting) => FleetError::Conflict(format!(
                "appliance {} is {}: it waits for no machine to enrol",
                a.id,
                a.state.as_str()
            )),
            Ok(Accepted::NoTeam | Accepted::OverQuota { .. }) => {
                FleetError::Internal("an appliance's machine is never counted again".into())
            }
            Err(err) => err.into(),
        };
        self.revoke_unused(&issued.serial).await;
        Err(refused)
    }

    /// Revokes a certificate issued for an acceptance that did not happen.
    async fn revoke_unused(&self, serial: &str) {
        if let Err(err) = self.revoke_serial(serial.to_string()).await {
            tracing::error!(serial = %serial, error = %err, "cannot revoke an unused certificate");
        }
    }
}

/// The command that enrols an appliance with `token`.
fn enrol_command(url: &str, token: &str, ca_fingerprint: &str) -> String {
    format!("applianced agent --enrol {url} --token {token} --ca-fingerprint {ca_fingerprint}")
}

fn not_pending(e: &Enrolment) -> FleetError {
    FleetError::Conflict(format!(
        "enrolment {} is {} already",
        e.id,
        e.state.as_str()
    ))
}

/// The backend of enrolled appliances: machines someone else made and powers. The
/// controller drives their agents and forgets them; it cannot create, power or suspend
/// them.
pub struct EnrolledBackend;

impl Backend for EnrolledBackend {
    fn name(&self) -> &'static str {
        ENROLLED
    }

    fn capabilities(&self) -> ports::Capabilities {
        ports::Capabilities {
            create: false,
            power: false,
            suspend: false,
            regions: false,
            enrols: false,
        }
    }

    fn catalogue(&self) -> ports::Catalogue {
        ports::Catalogue::default()
    }

    fn regions(&self) -> Vec<ports::Region> {
        Vec::new()
    }

    fn address(&self, _slot: i64) -> Option<IpAddr> {
        None
    }

    fn slots(&self) -> std::ops::Range<i64> {
        0..0
    }

    /// Each declares its own when it enrols.
    fn agent_port(&self) -> u16 {
        0
    }

    fn create(&self, _spec: &MachineSpec<'_>) -> Result<MachineState, ports::BackendError> {
        Err(unsupported("create"))
    }

    /// Running as far as the controller knows: its agent reports for it.
    fn get(&self, _id: &ApplianceId) -> Result<MachineState, ports::BackendError> {
        Ok(MachineState::Running { pid: None })
    }

    fn action(&self, _id: &ApplianceId, action: MachineAction) -> Result<(), ports::BackendError> {
        Err(unsupported(action.name()))
    }

    /// Forgetting: the machine is its owner's; its certificate is revoked by the fleet.
    fn delete(&self, _id: &ApplianceId) -> Result<(), ports::BackendError> {
        Ok(())
    }
}

fn unsupported(action: &'static str) -> ports::BackendError {
    ports::BackendError::Unsupported {
        backend: ENROLLED,
        action,
    }
}

impl Fleet {
    /// The backend that serves `a`: the one it names. An appliance whose backend is no
    /// longer configured cannot be acted on (not even destroyed: its machine would be
    /// left running while its slot and address went to another appliance).
    pub(super) fn backend_of(&self, a: &Appliance) -> Result<Arc<dyn Backend>, FleetError> {
        if a.backend == ENROLLED {
            return Ok(Arc::new(EnrolledBackend));
        }
        self.backend_named(&a.backend).ok_or_else(|| {
            FleetError::Unsupported(format!(
                "appliance {} belongs to backend {:?}, which is not configured; configure it \
                 again to act on the appliance",
                a.id, a.backend
            ))
        })
    }

    /// A configured backend by name.
    pub fn backend_named(&self, name: &str) -> Option<Arc<dyn Backend>> {
        self.backends
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
    }

    /// The default backend and its name.
    pub fn default_backend(&self) -> (&str, &Arc<dyn Backend>) {
        let (name, b) = &self.backends[0];
        (name, b)
    }
}
