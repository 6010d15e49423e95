//! The steps of the tasks that change an appliance: provisioning, stop, destroy, certificate rotation.

use super::*;

impl Fleet {
    pub async fn view(&self, id: &str) -> Result<Value, FleetError> {
        Ok(appliance_view(&self.appliance(id).await?))
    }

    /// The create task: a slot and address, a certificate, the files, the process. Each
    /// step is skipped when already done, so a resumed task never does anything twice.
    pub(super) async fn provision(&self, id: &str) -> Result<Value, FleetError> {
        let a = self.appliance(id).await?;
        match a.state {
            State::Requested => {
                self.apply(id, Event::Provision, |_| Changes::default(), None)
                    .await?;
            }
            State::Provisioning => {}
            // It failed, or was destroyed: the task cannot have done its work.
            State::Failed | State::Deleted => return Err(illegal(&a, Event::Provision)),
            // Past provisioning: done before the controller was interrupted.
            _ => return self.view(id).await,
        }
        match self.provision_steps(id).await {
            Ok(()) => self.view(id).await,
            Err(e) => {
                self.clean_up_failed(id).await;
                let detail = json!({"problem": e.problem()});
                if let Err(e2) = self
                    .apply(
                        id,
                        Event::ProvisionFailed,
                        |_| Changes::default(),
                        Some(detail),
                    )
                    .await
                {
                    tracing::error!(appliance = id, error = %e2, "cannot record the failure");
                }
                Err(e)
            }
        }
    }

    pub(super) async fn provision_steps(&self, id: &str) -> Result<(), FleetError> {
        let mut a = self.appliance(id).await?;
        let backend = self.backend_of(&a)?;
        if backend.capabilities().enrols {
            return self.provision_enrolling(&a, &backend).await;
        }
        if a.slot.is_none() {
            a = self.allocate_slot(id, &backend).await?;
        }
        let address: IpAddr = a
            .address
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| FleetError::Internal(format!("appliance {id} has no address")))?;
        let slot = a.slot.unwrap_or_default();
        let machine = ApplianceId::from(id.to_string());
        let m = machine.clone();
        let mut state = on_backend(&backend, move |b| b.get(&m)).await?;
        if a.cert_serial.is_none() || state == MachineState::Absent {
            let (ca, backend, m) = (self.ca.clone(), backend.clone(), machine.clone());
            let made_of = a.clone();
            let (issued, made) = blocking(move || {
                let issued = ca
                    .issue_appliance(m.as_str(), &address.to_string())
                    .map_err(|e| FleetError::Internal(format!("the CA cannot issue: {e}")))?;
                let join = Join::Issued {
                    slot,
                    address,
                    issued: &issued,
                };
                let spec = machine_spec(&made_of, &m, join);
                let made = backend.create(&spec)?;
                Ok((issued, made))
            })
            .await?;
            state = made;
            let (serial, not_after) = (issued.serial.clone(), issued.not_after.unix_timestamp());
            self.apply(
                id,
                Event::Provision,
                |_| Changes {
                    cert_serial: Some(serial.clone()),
                    cert_not_after: Some(not_after),
                    ..Changes::default()
                },
                None,
            )
            .await?;
        }
        let state = running(&backend, &machine, state).await?;
        let pid = match state {
            MachineState::Running { pid } => pid,
            _ => None,
        };
        self.apply(
            id,
            Event::Spawned,
            |_| Changes::default(),
            Some(json!({"pid": pid, "address": address.to_string()})),
        )
        .await?;
        Ok(())
    }

    /// The create task of a backend whose machines enrol: a one-time token for this
    /// appliance alone, in the command the machine's first boot runs; the machine. It
    /// is `booting` until it enrols (with that token) and its agent reports `launched`.
    async fn provision_enrolling(
        &self,
        a: &Appliance,
        backend: &Arc<dyn Backend>,
    ) -> Result<(), FleetError> {
        let machine = ApplianceId::from(a.id.clone());
        let m = machine.clone();
        let mut state = on_backend(backend, move |b| b.get(&m)).await?;
        // Made before the controller was interrupted: its command holds the token
        // issued then.
        if state == MachineState::Absent {
            let command = self.machine_enrolment_command(a).await?;
            let (backend, m, made_of) = (backend.clone(), machine.clone(), a.clone());
            state = blocking(move || {
                let spec = machine_spec(&made_of, &m, Join::Enrol { command: &command });
                Ok(backend.create(&spec)?)
            })
            .await?;
        }
        running(backend, &machine, state).await?;
        self.apply(
            &a.id,
            Event::Spawned,
            |_| Changes::default(),
            Some(json!({"backend": a.backend, "joins_by": "enrolment"})),
        )
        .await?;
        Ok(())
    }

    /// After a create task failed: a backend whose machines cost (a cloud's) removes
    /// what it made, so that nothing is left running for an appliance that failed.
    pub(super) async fn clean_up_failed(&self, id: &str) {
        let Ok(a) = self.appliance(id).await else {
            return;
        };
        let Ok(backend) = self.backend_of(&a) else {
            return;
        };
        if !backend.capabilities().enrols {
            return;
        }
        let machine = ApplianceId::from(id.to_string());
        match on_backend(&backend, move |b| b.delete(&machine)).await {
            Ok(()) => tracing::info!(appliance = id, "removed what the failed create made"),
            Err(e) => {
                tracing::error!(appliance = id, error = %e, "cannot remove what the failed create made")
            }
        }
        if let Err(e) = self
            .store
            .delete_appliance_enrolment_tokens(id, "create failed", self.clock.now())
            .await
        {
            tracing::error!(appliance = id, error = %e, "cannot delete the appliance's enrolment token");
        }
        // A machine that enrolled before the create failed: its certificate is revoked.
        if let Ok(a) = self.appliance(id).await
            && let Some(serial) = a.cert_serial
            && let Err(e) = self.revoke_serial(serial).await
        {
            tracing::error!(appliance = id, error = %e, "cannot revoke the failed appliance's certificate");
        }
    }

    /// Gives the appliance the lowest free loopback slot.
    pub(super) async fn allocate_slot(
        &self,
        id: &str,
        backend: &Arc<dyn Backend>,
    ) -> Result<Appliance, FleetError> {
        for _ in 0..10 {
            // Slots are numbered across backends; each backend has its own range.
            let used = self.store.used_slots().await?;
            let slots = backend.slots();
            let slot = slots.clone().find(|s| !used.contains(s)).ok_or_else(|| {
                FleetError::NoCapacity(format!(
                    "all {} appliance slots of backend {} are in use",
                    slots.end - slots.start,
                    backend.name()
                ))
            })?;
            let address = backend
                .address(slot)
                .ok_or_else(|| FleetError::NoCapacity("no address left".into()))?;
            let port = i64::from(backend.agent_port());
            match self
                .apply(
                    id,
                    Event::Provision,
                    |_| Changes {
                        slot: Some(slot),
                        address: Some(address.to_string()),
                        agent_port: Some(port),
                        ..Changes::default()
                    },
                    None,
                )
                .await
            {
                Ok(a) => return Ok(a),
                // Taken by a concurrent create: try the next one.
                Err(FleetError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(FleetError::NoCapacity(
            "could not reserve an appliance slot".into(),
        ))
    }

    pub(super) async fn stop(&self, id: &str) -> Result<Value, FleetError> {
        let machine = ApplianceId::from(id.to_string());
        let backend = self.backend_of(&self.appliance(id).await?)?;
        on_backend(&backend, move |b| b.action(&machine, MachineAction::Stop)).await?;
        let a = self.appliance(id).await?;
        // The appliance's own `stopped` usually arrives first; otherwise the backend's
        // word that the processes are gone confirms it.
        if a.state != State::Stopped {
            self.apply(
                id,
                Event::StoppedCallback,
                |_| Changes::default(),
                Some(json!({"reported_by": "backend"})),
            )
            .await?;
        }
        self.view(id).await
    }

    pub(super) async fn destroy(&self, id: &str) -> Result<Value, FleetError> {
        let a = self.appliance(id).await?;
        if a.state == State::Deleted {
            return self.view(id).await;
        }
        let backend = self.backend_of(&a)?;
        // Its machine's token, unused if it never enrolled, dies first: no enrolment
        // completes it while it is being destroyed.
        self.store
            .delete_appliance_enrolment_tokens(id, "destroy", self.clock.now())
            .await?;
        // Read again: a machine that enrolled just before has a certificate now.
        let a = self.appliance(id).await?;
        if let Some(serial) = a.cert_serial.clone() {
            self.revoke_serial(serial).await?;
        }
        let machine = ApplianceId::from(id.to_string());
        on_backend(&backend, move |b| b.delete(&machine)).await?;
        self.apply(
            id,
            Event::Destroyed,
            |_| Changes::default(),
            Some(json!({"certificate_revoked": a.cert_serial})),
        )
        .await?;
        self.view(id).await
    }

    /// A new certificate for the appliance, pushed with the agent's `PUT /certificate`.
    pub(super) async fn rotate(&self, id: &str) -> Result<Value, FleetError> {
        let a = self.appliance(id).await?;
        lifecycle::next(a.state, Event::RotateCertificate)
            .ok_or_else(|| illegal(&a, Event::RotateCertificate))?;
        let address = a.address.clone().unwrap_or_default();
        let (ca, id2) = (self.ca.clone(), id.to_string());
        // An appliance that keeps its own key (an enrolled one) gets a certificate for
        // that key, without a key; the others a new key too.
        let kept_key = match &a.public_key {
            Some(k) => Some(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k)
                    .map_err(|e| FleetError::Internal(format!("appliance {id}'s key: {e}")))?,
            ),
            None => None,
        };
        let issued = blocking(move || {
            match &kept_key {
                Some(spki) => ca.issue_appliance_for_key(&id2, &address, spki),
                None => ca.issue_appliance(&id2, &address),
            }
            .map_err(|e| FleetError::Internal(format!("the CA cannot issue: {e}")))
        })
        .await?;
        let reply = self
            .call_agent(
                &a,
                Verb::Put,
                "/certificate",
                Vec::new(),
                Bytes::from(ca::bundle(&issued)),
            )
            .await?;
        if !reply.is_success() {
            return Err(FleetError::BadGateway(format!(
                "the agent refused the new certificate: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )));
        }
        let (serial, not_after) = (issued.serial.clone(), issued.not_after.unix_timestamp());
        self.apply(
            id,
            Event::RotateCertificate,
            |_| Changes {
                cert_serial: Some(serial.clone()),
                cert_not_after: Some(not_after),
                ..Changes::default()
            },
            Some(json!({"serial": serial, "previous_serial": a.cert_serial})),
        )
        .await?;
        self.view(id).await
    }
}

/// What the machine of appliance `a` is made with.
fn machine_spec<'a>(a: &'a Appliance, id: &'a ApplianceId, join: Join<'a>) -> MachineSpec<'a> {
    MachineSpec {
        id,
        name: &a.name,
        join,
        authorized_key: a.authorized_key.as_deref(),
        flavor: a.flavor.as_deref().unwrap_or_default(),
        image: a.image.as_deref(),
        network: a.network.as_deref(),
    }
}

/// Starts a machine that is not running; its state after.
async fn running(
    backend: &Arc<dyn Backend>,
    machine: &ApplianceId,
    state: MachineState,
) -> Result<MachineState, FleetError> {
    if matches!(state, MachineState::Running { .. }) {
        return Ok(state);
    }
    let m = machine.clone();
    on_backend(backend, move |b| {
        b.action(&m, MachineAction::Start)?;
        b.get(&m)
    })
    .await
}
