//! The `ec2` compute backend: each appliance is an instance of an EC2-compatible cloud,
//! made with `RunInstances` from the configured (or chosen) image, instance type and
//! subnet, tagged with its appliance's id. Its user data (a shell script) installs a
//! systemd unit running the enrolment command, with a one-time token issued for that
//! appliance alone, so the instance joins by itself: nothing is installed from the
//! internet, and its private key is made on it and never leaves it. `Describe*` gives
//! the catalogue (images, instance types as flavors, subnets as networks, the region
//! checked against the cloud's) and the instances' states; `Start`/`Stop`/
//! `TerminateInstances` act on them; a team's key pair is imported for the instance
//! (`ImportKeyPair`) and deleted with it.

pub mod credentials;
pub mod query;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;

use crate::controller::fleet::ids::ApplianceId;
use crate::controller::fleet::ports::{
    Backend, BackendError, Capabilities, Catalogue, CatalogueEntry, Join, MachineAction,
    MachineSpec, MachineState, Region,
};
use query::{Ec2Client, Ec2Error, Failure, child_text, items, parse, tags};

/// The tag naming an instance's appliance.
pub const APPLIANCE_TAG: &str = "applianced:appliance";

/// How often the catalogue is described again.
pub const CATALOGUE_REFRESH: Duration = Duration::from_secs(600);

/// The network entry when no subnet is configured: the cloud's default subnet.
const DEFAULT_NETWORK: &str = "default";

/// The systemd unit an instance's user data installs.
pub const UNIT: &str = "applianced-appliance.service";

/// Longest a start waits for an instance that is still stopping.
const STOP_WAIT: Duration = Duration::from_secs(60);

pub struct Ec2Backend {
    pub client: Ec2Client,
    /// The images, instance types and subnets appliances may be made from; the first of
    /// each is the default.
    pub images: Vec<String>,
    pub instance_types: Vec<String>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    /// Shell lines the user data runs before the enrolment command (to install or
    /// configure the agent where the image does not have it).
    pub agent_install: Option<String>,
    pub agent_port: u16,
    pub regions: Vec<Region>,
    /// What the cloud last said about the catalogue.
    pub catalogue: ArcSwap<Catalogue>,
    /// The runtime its calls run on (the trait's calls block, on the blocking pool).
    pub runtime: tokio::runtime::Handle,
    /// The instances this controller made, by appliance (until destroyed).
    pub launched: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
}

impl Ec2Backend {
    /// The catalogue before the cloud described it: the configured ids.
    pub fn configured_catalogue(&self) -> Catalogue {
        let entries = |ids: &[String], what: &str| {
            ids.iter()
                .map(|id| CatalogueEntry {
                    id: id.clone(),
                    name: id.clone(),
                    description: format!("{what} (not yet described by the cloud)"),
                })
                .collect()
        };
        Catalogue {
            images: entries(&self.images, "image"),
            flavors: entries(&self.instance_types, "instance type"),
            networks: self.networks(entries(&self.subnets, "subnet")),
        }
    }

    fn networks(&self, subnets: Vec<CatalogueEntry>) -> Vec<CatalogueEntry> {
        if self.subnets.is_empty() {
            vec![CatalogueEntry {
                id: DEFAULT_NETWORK.into(),
                name: DEFAULT_NETWORK.into(),
                description: "the cloud's default subnet".into(),
            }]
        } else {
            subnets
        }
    }

    /// Describes the configured images, instance types and subnets, one at a time (a
    /// cloud refuses a whole list for one id it does not know); the catalogue keeps
    /// the configured entry for any it cannot describe. The failures, logged.
    pub async fn refresh_catalogue(&self) -> Vec<Ec2Error> {
        let mut failed = Vec::new();
        // The region calls are signed for should be one of the cloud's.
        match self.check_region().await {
            Ok(()) => {}
            Err(e) => failed.push(e),
        }
        let mut describe_all = async |what: Described, ids: &[String]| {
            let mut found = Vec::new();
            for id in ids {
                match self.describe(what, id).await {
                    Ok(Some(e)) => found.push(e),
                    Ok(None) => {}
                    Err(e) => failed.push(e),
                }
            }
            found
        };
        let described = Catalogue {
            images: describe_all(Described::Image, &self.images).await,
            flavors: describe_all(Described::InstanceType, &self.instance_types).await,
            networks: describe_all(Described::Subnet, &self.subnets).await,
        };
        // In the configured order; one the cloud did not describe stays as configured
        // (a create with it fails with the cloud's own message).
        let configured = self.configured_catalogue();
        let keep = |described: Vec<CatalogueEntry>, configured: Vec<CatalogueEntry>| {
            configured
                .into_iter()
                .map(|c| {
                    described
                        .iter()
                        .find(|d| d.id == c.id)
                        .cloned()
                        .unwrap_or(c)
                })
                .collect()
        };
        self.catalogue.store(Arc::new(Catalogue {
            images: keep(described.images, configured.images),
            flavors: keep(described.flavors, configured.flavors),
            networks: keep(described.networks, configured.networks),
        }));
        failed
    }

    async fn check_region(&self) -> Result<(), Ec2Error> {
        let regions = self.client.call("DescribeRegions", &[]).await?;
        let doc = parse("DescribeRegions", &regions)?;
        let known: Vec<&str> = items(&doc, "regionInfo")
            .into_iter()
            .filter_map(|r| child_text(r, "regionName"))
            .collect();
        if !known.is_empty() && !known.contains(&self.client.region.as_str()) {
            return Err(Ec2Error::Config(format!(
                "region {:?} is not one of the cloud's ({})",
                self.client.region,
                known.join(", ")
            )));
        }
        Ok(())
    }

    /// The cloud's description of one configured id, if it knows it.
    async fn describe(
        &self,
        what: Described,
        id: &str,
    ) -> Result<Option<CatalogueEntry>, Ec2Error> {
        let (action, param, set) = what.call();
        let xml = self
            .client
            .call(action, &[(format!("{param}.1"), id.into())])
            .await?;
        let doc = parse(action, &xml)?;
        Ok(items(&doc, set).into_iter().find_map(|n| what.entry(n)))
    }

    fn block<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Ec2Error>>,
    ) -> Result<T, BackendError> {
        self.runtime.block_on(f).map_err(backend_error)
    }

    /// The appliance's instances that are not (being) terminated, with their state:
    /// those its tag finds, and those this controller made that a describe does not
    /// show yet (the cloud's answers are eventually consistent).
    async fn instances(&self, id: &ApplianceId) -> Result<Vec<(String, String)>, Ec2Error> {
        let xml = self
            .client
            .call(
                "DescribeInstances",
                &[
                    ("Filter.1.Name".into(), format!("tag:{APPLIANCE_TAG}")),
                    ("Filter.1.Value.1".into(), id.as_str().to_string()),
                ],
            )
            .await?;
        let doc = parse("DescribeInstances", &xml)?;
        let mut found: Vec<(String, String)> = items(&doc, "instancesSet")
            .into_iter()
            .filter_map(|i| {
                let state = i
                    .children()
                    .find(|c| c.tag_name().name() == "instanceState")
                    .and_then(|s| child_text(s, "name"))
                    .unwrap_or("unknown")
                    .to_string();
                Some((child_text(i, "instanceId")?.to_string(), state))
            })
            .collect();
        let made = self.made(id);
        for instance in made {
            if !found.iter().any(|(known, _)| *known == instance) {
                found.push((instance, "pending".into()));
            }
        }
        Ok(found
            .into_iter()
            .filter(|(_, state)| state != "terminated" && state != "shutting-down")
            .collect())
    }

    /// The instances this controller made for the appliance.
    fn made(&self, id: &ApplianceId) -> Vec<String> {
        self.launched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id.as_str())
            .cloned()
            .unwrap_or_default()
    }

    fn key_name(id: &ApplianceId) -> String {
        format!("applianced-{}", id.as_str())
    }

    /// Imports the appliance's key pair under its own name (again, if one of that name
    /// is left from an earlier attempt).
    async fn import_key(&self, id: &ApplianceId, key: &str) -> Result<String, Ec2Error> {
        let name = Self::key_name(id);
        let params = [
            ("KeyName".to_string(), name.clone()),
            (
                "PublicKeyMaterial".to_string(),
                base64::engine::general_purpose::STANDARD.encode(key.trim()),
            ),
        ];
        match self.client.call("ImportKeyPair", &params).await {
            Err(Ec2Error::Api { code, .. }) if code == "InvalidKeyPair.Duplicate" => {
                self.delete_key(id).await?;
                self.client.call("ImportKeyPair", &params).await?;
            }
            other => {
                other?;
            }
        }
        Ok(name)
    }

    async fn delete_key(&self, id: &ApplianceId) -> Result<(), Ec2Error> {
        match self
            .client
            .call("DeleteKeyPair", &[("KeyName".into(), Self::key_name(id))])
            .await
        {
            Err(e) if e.failure() == Failure::NotFound => Ok(()),
            other => other.map(drop),
        }
    }

    async fn run(&self, spec: &MachineSpec<'_>, command: &str) -> Result<(), Ec2Error> {
        let key_name = match spec.authorized_key {
            Some(key) => Some(self.import_key(spec.id, key).await?),
            None => None,
        };
        let image = spec
            .image
            .or(self.images.first().map(String::as_str))
            .unwrap_or_default();
        let flavor = if spec.flavor.is_empty() {
            self.instance_types
                .first()
                .map(String::as_str)
                .unwrap_or_default()
        } else {
            spec.flavor
        };
        let mut params: Vec<(String, String)> = vec![
            ("ImageId".into(), image.into()),
            ("InstanceType".into(), flavor.into()),
            ("MinCount".into(), "1".into()),
            ("MaxCount".into(), "1".into()),
            (
                "UserData".into(),
                base64::engine::general_purpose::STANDARD.encode(self.user_data(spec, command)),
            ),
            ("TagSpecification.1.ResourceType".into(), "instance".into()),
            ("TagSpecification.1.Tag.1.Key".into(), "Name".into()),
            ("TagSpecification.1.Tag.1.Value".into(), spec.name.into()),
            ("TagSpecification.1.Tag.2.Key".into(), APPLIANCE_TAG.into()),
            (
                "TagSpecification.1.Tag.2.Value".into(),
                spec.id.as_str().into(),
            ),
        ];
        match spec.network.or(self.subnets.first().map(String::as_str)) {
            Some(subnet) if subnet != DEFAULT_NETWORK => {
                params.push(("SubnetId".into(), subnet.into()));
            }
            _ => {}
        }
        for (i, group) in self.security_groups.iter().enumerate() {
            params.push((format!("SecurityGroupId.{}", i + 1), group.clone()));
        }
        if let Some(name) = &key_name {
            params.push(("KeyName".into(), name.clone()));
        }
        // Idempotent: a second RunInstances for the same appliance (a retry of one whose
        // answer was lost) makes no second instance.
        params.push(("ClientToken".into(), spec.id.as_str().into()));
        match self.client.call("RunInstances", &params).await {
            Ok(xml) => {
                let doc = parse("RunInstances", &xml)?;
                let ids: Vec<String> = items(&doc, "instancesSet")
                    .into_iter()
                    .filter_map(|i| child_text(i, "instanceId").map(str::to_string))
                    .collect();
                tracing::info!(appliance = %spec.id, instances = ?ids, "instance made");
                self.launched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(spec.id.as_str().to_string(), ids);
                Ok(())
            }
            Err(e) => {
                // Nothing is left for a machine that was not made.
                if key_name.is_some()
                    && let Err(e2) = self.delete_key(spec.id).await
                {
                    tracing::error!(appliance = %spec.id, error = %e2, "cannot delete the imported key pair");
                }
                Err(e)
            }
        }
    }

    /// The command the instance runs: the enrolment command, its agent listening on
    /// `agent_port` of every address. Once enrolled, the same command serves.
    pub fn agent_command(&self, enrol: &str) -> String {
        format!("{enrol} --listen 0.0.0.0:{}", self.agent_port)
    }

    /// The instance's user data: a shell script that runs `agent_install`, then, under
    /// systemd, installs and starts a unit that runs the agent command (restarted when
    /// it fails, for example before the network is up, and at every boot); without
    /// systemd, runs it in the foreground.
    pub fn user_data(&self, spec: &MachineSpec<'_>, enrol: &str) -> String {
        let id = spec.id.as_str();
        let command = self.agent_command(enrol);
        let mut script = format!(
            "#!/bin/sh\n\
             # applianced appliance {id}: written by its controller. The instance joins the\n\
             # controller with a one-time token for this appliance alone; once it has\n\
             # joined, the same command serves.\n\
             set -e\n"
        );
        if let Some(install) = &self.agent_install {
            script.push_str(install.trim_end());
            script.push('\n');
        }
        script.push_str(&format!(
            "if [ -d /run/systemd/system ]; then\n\
             umask 077\n\
             cat > /etc/systemd/system/{UNIT} <<'UNIT'\n\
             [Unit]\n\
             Description=applianced agent of appliance {id}\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             ExecStart=/usr/bin/env {command}\n\
             Restart=always\n\
             RestartSec=5\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n\
             UNIT\n\
             systemctl daemon-reload\n\
             exec systemctl enable --now {UNIT}\n\
             fi\n\
             exec {command}\n"
        ));
        script
    }

    /// Acts on the appliance's instances; `Ok` with nothing to act on when `absent_ok`.
    async fn act(&self, id: &ApplianceId, verb: &str, absent_ok: bool) -> Result<(), Ec2Error> {
        let found = self.instances(id).await?;
        if found.is_empty() {
            if absent_ok {
                return Ok(());
            }
            return Err(Ec2Error::Api {
                action: verb.into(),
                status: 404,
                code: "InvalidInstanceID.NotFound".into(),
                message: format!("appliance {id} has no instance"),
            });
        }
        let params: Vec<(String, String)> = found
            .into_iter()
            .enumerate()
            .map(|(i, (instance, _))| (format!("InstanceId.{}", i + 1), instance))
            .collect();
        self.client.call(verb, &params).await.map(drop)
    }

    /// Waits until no instance of the appliance is `stopping` (at most a minute).
    async fn wait_stopped(&self, id: &ApplianceId) -> Result<(), Ec2Error> {
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while self
            .instances(id)
            .await?
            .iter()
            .any(|(_, state)| state == "stopping")
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(Ec2Error::Api {
                    action: "StartInstances".into(),
                    status: 409,
                    code: "IncorrectInstanceState".into(),
                    message: format!("appliance {id}'s instance is still stopping"),
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(())
    }
}

/// A cloud's failure as the fleet answers it: no room is 503, anything else 502. The
/// problem (which tenants read) has the cloud's code and message without what names
/// the cloud account (ARNs, account ids, encoded authorization details); the log has
/// it whole.
fn backend_error(e: Ec2Error) -> BackendError {
    tracing::warn!(error = %e, "ec2");
    let shown = query::redact(&e.to_string());
    match e.failure() {
        Failure::NoCapacity => BackendError::NoCapacity(shown),
        Failure::Failed | Failure::NotFound => BackendError::Failed(shown),
    }
}

impl Backend for Ec2Backend {
    fn name(&self) -> &'static str {
        "ec2"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create: true,
            power: true,
            suspend: false,
            regions: false,
            enrols: true,
        }
    }

    fn catalogue(&self) -> Catalogue {
        Catalogue::clone(&self.catalogue.load())
    }

    fn regions(&self) -> Vec<Region> {
        self.regions.clone()
    }

    /// Instances have no slots: their addresses are the ones they enrol from.
    fn address(&self, _slot: i64) -> Option<IpAddr> {
        None
    }

    fn slots(&self) -> std::ops::Range<i64> {
        0..0
    }

    fn agent_port(&self) -> u16 {
        self.agent_port
    }

    fn create(&self, spec: &MachineSpec<'_>) -> Result<MachineState, BackendError> {
        let Join::Enrol { command } = spec.join else {
            return Err(BackendError::Failed(
                "ec2 instances enrol; they are not handed a certificate".into(),
            ));
        };
        self.block(self.run(spec, command))?;
        Ok(MachineState::Running { pid: None })
    }

    fn get(&self, id: &ApplianceId) -> Result<MachineState, BackendError> {
        let found = self.block(self.instances(id))?;
        Ok(match found.first().map(|(_, s)| s.as_str()) {
            None => MachineState::Absent,
            Some("stopping" | "stopped") => MachineState::Stopped,
            Some(_) => MachineState::Running { pid: None },
        })
    }

    fn action(&self, id: &ApplianceId, action: MachineAction) -> Result<(), BackendError> {
        match action {
            // A start right after a stop: the instance must have stopped first.
            MachineAction::Start => self.block(async {
                self.wait_stopped(id).await?;
                self.act(id, "StartInstances", false).await
            }),
            // Nothing left to stop is stopped.
            MachineAction::Stop => self.block(self.act(id, "StopInstances", true)),
            MachineAction::Suspend | MachineAction::Resume => Err(BackendError::Unsupported {
                backend: "ec2",
                action: action.name(),
            }),
        }
    }

    /// Terminates its instances and deletes its imported key pair.
    fn delete(&self, id: &ApplianceId) -> Result<(), BackendError> {
        self.block(async {
            self.act(id, "TerminateInstances", true).await?;
            self.delete_key(id).await?;
            self.launched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id.as_str());
            Ok(())
        })
    }
}

/// What the catalogue describes: images, instance types (flavors), subnets (networks).
#[derive(Debug, Clone, Copy)]
enum Described {
    Image,
    InstanceType,
    Subnet,
}

impl Described {
    /// The describing action, its id parameter and the answer's item set.
    fn call(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Described::Image => ("DescribeImages", "ImageId", "imagesSet"),
            Described::InstanceType => ("DescribeInstanceTypes", "InstanceType", "instanceTypeSet"),
            Described::Subnet => ("DescribeSubnets", "SubnetId", "subnetSet"),
        }
    }

    /// One item of the answer as a catalogue entry.
    fn entry(self, n: roxmltree::Node<'_, '_>) -> Option<CatalogueEntry> {
        Some(match self {
            Described::Image => {
                let id = child_text(n, "imageId")?.to_string();
                CatalogueEntry {
                    name: child_text(n, "name").unwrap_or(&id).to_string(),
                    description: child_text(n, "description").unwrap_or("image").to_string(),
                    id,
                }
            }
            Described::InstanceType => {
                let id = child_text(n, "instanceType")?.to_string();
                let node = |name: &str| n.children().find(|c| c.tag_name().name() == name);
                let vcpus = node("vCpuInfo").and_then(|v| child_text(v, "defaultVCpus"));
                let mib = node("memoryInfo").and_then(|m| child_text(m, "sizeInMiB"));
                CatalogueEntry {
                    name: id.clone(),
                    description: format!(
                        "{} vCPU, {} MiB",
                        vcpus.unwrap_or("?"),
                        mib.unwrap_or("?")
                    ),
                    id,
                }
            }
            Described::Subnet => {
                let id = child_text(n, "subnetId")?.to_string();
                let name = tags(n)
                    .into_iter()
                    .find(|(k, _)| k == "Name")
                    .map(|(_, v)| v)
                    .unwrap_or_else(|| id.clone());
                CatalogueEntry {
                    name,
                    description: format!(
                        "{} in {}",
                        child_text(n, "cidrBlock").unwrap_or("?"),
                        child_text(n, "availabilityZone").unwrap_or("?")
                    ),
                    id,
                }
            }
        })
    }
}
