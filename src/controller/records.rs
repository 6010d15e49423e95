//! The fleet's records in the store: appliances, their events and webhook deliveries,
//! and durable tasks. Every state change is a conditional update (`WHERE state = old`)
//! written in the same transaction as its event and delivery, so two controllers, or a
//! timer and a callback, can never both move an appliance.

use std::sync::atomic::{AtomicI64, Ordering};

use sqlx::Row;
use sqlx::any::AnyRow;

use super::auth;
use super::lifecycle::{Clock, State};
use super::store::{Backend, Store, StoreError, decode_all, unique_to_conflict};
use super::teams::lock_team;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appliance {
    pub id: String,
    pub name: String,
    /// The team it belongs to.
    pub team_id: String,
    /// The user who asked for it.
    pub owner_id: String,
    pub external_id: Option<String>,
    pub request_hash: String,
    pub state: State,
    pub state_since: i64,
    pub ttl_minutes: i64,
    pub callback_url: Option<String>,
    pub slot: Option<i64>,
    pub address: Option<String>,
    pub agent_port: Option<i64>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<i64>,
    pub launched_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub last_status: Option<String>,
    pub created_at: i64,
    /// The key pair it was created with, and a copy of its public key (installed where
    /// the backend installs keys).
    pub keypair_id: Option<String>,
    pub authorized_key: Option<String>,
    /// What it was made of (the template, if one was named), and where it was placed.
    pub template: Option<String>,
    pub image: Option<String>,
    pub flavor: Option<String>,
    pub network: Option<String>,
    pub region: Option<String>,
    /// Where its `launched`, `expiring` and `stopped` events are mailed.
    pub notify_email: Option<String>,
    /// The cluster it joined at create.
    pub cluster_id: Option<String>,
    /// The backend that serves it (`process`, `enrolled`, ...).
    pub backend: String,
    /// An enrolled appliance's public key (SubjectPublicKeyInfo, base64), which its
    /// renewed certificates name.
    pub public_key: Option<String>,
}

macro_rules! appliance_columns {
    () => {
        "id, name, team_id, owner_id, external_id, request_hash, state, state_since, \
         ttl_minutes, callback_url, slot, address, agent_port, cert_serial, cert_not_after, \
         launched_at, expires_at, last_heartbeat_at, last_status, created_at, keypair_id, \
         authorized_key, template, image, flavor, network, region, notify_email, cluster_id, \
         backend, public_key"
    };
}

impl Appliance {
    fn from_row(r: &AnyRow) -> Result<Appliance, sqlx::Error> {
        Ok(Appliance {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            team_id: r.try_get("team_id")?,
            owner_id: r.try_get("owner_id")?,
            external_id: r.try_get("external_id")?,
            request_hash: r.try_get("request_hash")?,
            state: decode_state(r)?,
            state_since: r.try_get("state_since")?,
            ttl_minutes: r.try_get("ttl_minutes")?,
            callback_url: r.try_get("callback_url")?,
            slot: r.try_get("slot")?,
            address: r.try_get("address")?,
            agent_port: r.try_get("agent_port")?,
            cert_serial: r.try_get("cert_serial")?,
            cert_not_after: r.try_get("cert_not_after")?,
            launched_at: r.try_get("launched_at")?,
            expires_at: r.try_get("expires_at")?,
            last_heartbeat_at: r.try_get("last_heartbeat_at")?,
            last_status: r.try_get("last_status")?,
            created_at: r.try_get("created_at")?,
            keypair_id: r.try_get("keypair_id")?,
            authorized_key: r.try_get("authorized_key")?,
            template: r.try_get("template")?,
            image: r.try_get("image")?,
            flavor: r.try_get("flavor")?,
            network: r.try_get("network")?,
            region: r.try_get("region")?,
            notify_email: r.try_get("notify_email")?,
            cluster_id: r.try_get("cluster_id")?,
            backend: r.try_get("backend")?,
            public_key: r.try_get("public_key")?,
        })
    }
}

/// Where a task is; stored by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What a task does; stored by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Create,
    Start,
    Stop,
    Suspend,
    Resume,
    Destroy,
    RotateCertificate,
    Ping,
    /// The same agent write to every member of a cluster, the active one first.
    ClusterWrite,
    /// A cluster's appliances destroyed, then the cluster.
    ClusterDestroy,
}

impl TaskKind {
    pub const ALL: [TaskKind; 10] = [
        TaskKind::Create,
        TaskKind::Start,
        TaskKind::Stop,
        TaskKind::Suspend,
        TaskKind::Resume,
        TaskKind::Destroy,
        TaskKind::RotateCertificate,
        TaskKind::Ping,
        TaskKind::ClusterWrite,
        TaskKind::ClusterDestroy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Create => "create",
            TaskKind::Start => "start",
            TaskKind::Stop => "stop",
            TaskKind::Suspend => "suspend",
            TaskKind::Resume => "resume",
            TaskKind::Destroy => "destroy",
            TaskKind::RotateCertificate => "rotate-certificate",
            TaskKind::Ping => "ping",
            TaskKind::ClusterWrite => "cluster-write",
            TaskKind::ClusterDestroy => "cluster-destroy",
        }
    }

    pub fn parse(name: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Where a webhook delivery is; stored by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 3] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// A column holding a name, as its enum.
fn decode_name<T>(
    r: &AnyRow,
    column: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, sqlx::Error> {
    let name: String = r.try_get(column)?;
    parse(&name).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: format!("unknown {column} {name:?}").into(),
    })
}

/// The `state` column as a lifecycle state.
fn decode_state(r: &AnyRow) -> Result<State, sqlx::Error> {
    let state: String = r.try_get("state")?;
    State::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "state".into(),
        source: format!("unknown state {state:?}").into(),
    })
}

/// Columns a state change may set besides the state (`None`: left as it is).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub launched_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub last_status: Option<String>,
    pub slot: Option<i64>,
    pub address: Option<String>,
    pub agent_port: Option<i64>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<i64>,
}

macro_rules! delivery_columns {
    () => {
        "id, event_id, url, body, state, attempts, next_attempt_at, last_status, last_error, \
         delivered_at"
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: String,
    pub appliance_id: String,
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub detail: Option<String>,
    /// The user who caused it, by name; `None` for timers and the appliance's callbacks.
    pub actor: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub url: String,
    pub body: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub kind: TaskKind,
    pub appliance_id: Option<String>,
    /// The user who queued it (for the controller's own timers: the appliance's).
    pub owner_id: String,
    /// The team of its appliance; none for a ping of many.
    pub team_id: Option<String>,
    pub state: TaskState,
    pub request: String,
    pub result: Option<String>,
    pub problem: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

macro_rules! task_columns {
    () => {
        "id, kind, appliance_id, owner_id, team_id, state, request, result, problem, \
         attempts, created_at, finished_at"
    };
}

impl Task {
    fn from_row(r: &AnyRow) -> Result<Task, sqlx::Error> {
        Ok(Task {
            id: r.try_get("id")?,
            kind: decode_name(r, "kind", TaskKind::parse)?,
            appliance_id: r.try_get("appliance_id")?,
            owner_id: r.try_get("owner_id")?,
            team_id: r.try_get("team_id")?,
            state: decode_name(r, "state", TaskState::parse)?,
            request: r.try_get("request")?,
            result: r.try_get("result")?,
            problem: r.try_get("problem")?,
            attempts: r.try_get("attempts")?,
            created_at: r.try_get("created_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    }

    pub fn is_done(&self) -> bool {
        matches!(
            self.state,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A task to queue.
pub struct NewTask<'a> {
    pub kind: TaskKind,
    pub appliance_id: Option<&'a str>,
    pub owner_id: &'a str,
    pub request: String,
    /// Its team, when it has no appliance to take it from (a cluster's task).
    pub team_id: Option<&'a str>,
}

/// What [`Store::create_appliance`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// Recorded, with its create task's id and the region it was placed in.
    Queued { task_id: String, region: String },
    /// No region given has room.
    NoRoom,
    /// The cluster (of the appliance's team) is gone or being deleted.
    NoSuchCluster,
    /// The cluster already holds the `size` appliances its topology has.
    ClusterFull { size: i64 },
    /// The team has `used` live appliances of the `limit` its quota allows; nothing
    /// was written.
    OverQuota { limit: i64, used: i64 },
    /// The team is gone.
    NoSuchTeam,
}

/// What [`Store::transition`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Moved {
    /// Someone else moved the appliance first; nothing was written.
    Lost,
    /// Moved, with the id of the task queued along, if one was.
    Done { task_id: Option<String> },
}

/// What to record with a state change.
pub struct Record<'a> {
    pub kind: &'a str,
    pub detail: Option<serde_json::Value>,
    /// The acting user's name.
    pub actor: Option<&'a str>,
}

/// A strictly increasing sequence for ordering events (microseconds since the epoch).
fn next_seq() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

impl Store {
    /// Records a new appliance (`requested`) with its create task and first event.
    /// A taken `external_id` is a [`StoreError::Conflict`].
    /// The appliance is placed in the first of `regions` (name and capacity) with room.
    pub async fn create_appliance(
        &self,
        a: &Appliance,
        regions: &[(String, i64)],
        task: &NewTask<'_>,
        actor: Option<&str>,
    ) -> Result<Created, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The team's row is locked until commit: two creates cannot both take its last
        // slot.
        if !lock_team(&mut tx, &a.team_id).await? {
            return Ok(Created::NoSuchTeam);
        }
        if let Some((limit, used)) = over_appliance_quota(&mut tx, &a.team_id).await? {
            return Ok(Created::OverQuota { limit, used });
        }
        // A cluster holds as many appliances as its topology has places; the first to
        // join is its active member.
        if let Some(cluster) = &a.cluster_id {
            let row = sqlx::query(
                "SELECT topology FROM clusters WHERE id = $1 AND team_id = $2 AND deleting = 0",
            )
            .bind(cluster)
            .bind(&a.team_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(Created::NoSuchCluster);
            };
            let topology: String = row.try_get("topology")?;
            let size =
                crate::controller::clusters::Topology::parse(&topology).map_or(0, |t| t.size());
            let members: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM appliances WHERE cluster_id = $1 AND state <> 'deleted'",
            )
            .bind(cluster)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if members >= size {
                return Ok(Created::ClusterFull { size });
            }
            sqlx::query("UPDATE clusters SET active_id = $1 WHERE id = $2 AND (active_id IS NULL OR active_id NOT IN (SELECT id FROM appliances WHERE cluster_id = $2 AND state <> 'deleted'))")
                .bind(&a.id)
                .bind(cluster)
                .execute(&mut *tx)
                .await?;
        }
        // The first region with room, each locked in turn (always in the order given, so
        // two creates never wait for each other's locks).
        let mut region = None;
        for (name, capacity) in regions {
            sqlx::query(
                "INSERT INTO region_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE region_locks SET name = name WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let used: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM appliances WHERE region = $1 AND state <> 'deleted'",
            )
            .bind(name)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if used < *capacity {
                region = Some(name.clone());
                break;
            }
        }
        let Some(region) = region else {
            return Ok(Created::NoRoom);
        };
        insert_appliance(&mut tx, a, Some(&region)).await?;
        let task_id = insert_task(&mut tx, task, a.created_at).await?;
        let record = Record {
            kind: "requested",
            detail: None,
            actor,
        };
        insert_event(&mut tx, a, None, a.state, &record, a.created_at).await?;
        tx.commit().await?;
        Ok(Created::Queued { task_id, region })
    }

    pub async fn appliance(&self, id: &str) -> Result<Option<Appliance>, StoreError> {
        self.one_where(
            concat!(
                "SELECT ",
                appliance_columns!(),
                " FROM appliances WHERE id = $1"
            ),
            id,
            Appliance::from_row,
        )
        .await
    }

    /// The appliance of `team_id` with this idempotency key.
    pub async fn appliance_by_external_id(
        &self,
        team_id: &str,
        external_id: &str,
    ) -> Result<Option<Appliance>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            appliance_columns!(),
            " FROM appliances WHERE team_id = $1 AND external_id = $2"
        ))
        .bind(team_id)
        .bind(external_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Appliance::from_row).transpose()?)
    }

    /// Appliances, oldest first: those not deleted, or only the deleted ones (filters
    /// are applied by the caller).
    pub async fn appliances(&self, deleted: bool) -> Result<Vec<Appliance>, StoreError> {
        let query = if deleted {
            concat!(
                "SELECT ",
                appliance_columns!(),
                " FROM appliances WHERE state = 'deleted' ORDER BY created_at, id"
            )
        } else {
            concat!(
                "SELECT ",
                appliance_columns!(),
                " FROM appliances WHERE state <> 'deleted' ORDER BY created_at, id"
            )
        };
        let rows = sqlx::query(query).fetch_all(&self.pool).await?;
        decode_all(&rows, Appliance::from_row)
    }

    /// The clocks of appliances whose timers may be due: `(id, owner, clock)`, only the
    /// columns the timers read (this runs every second).
    pub async fn timed_clocks(&self) -> Result<Vec<(String, String, Clock)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, owner_id, state, state_since, expires_at, last_heartbeat_at, \
             cert_not_after FROM appliances WHERE state IN \
             ('booting', 'active', 'expiring', 'unhealthy', 'suspended', 'stopping')",
        )
        .fetch_all(&self.pool)
        .await?;
        let decode = |r: &AnyRow| -> Result<(String, String, Clock), sqlx::Error> {
            Ok((
                r.try_get("id")?,
                r.try_get("owner_id")?,
                Clock {
                    state: decode_state(r)?,
                    state_since: r.try_get("state_since")?,
                    expires_at: r.try_get("expires_at")?,
                    last_heartbeat_at: r.try_get("last_heartbeat_at")?,
                    cert_not_after: r.try_get("cert_not_after")?,
                },
            ))
        };
        decode_all(&rows, decode)
    }

    /// Keeps statuses the controller fetched itself (a status poll counts as a
    /// heartbeat), in one transaction.
    pub async fn record_statuses(&self, statuses: &[(String, String)]) -> Result<(), StoreError> {
        if statuses.is_empty() {
            return Ok(());
        }
        let now = crate::certs::now_unix();
        let mut tx = self.pool.begin().await?;
        for (id, status) in statuses {
            sqlx::query(
                "UPDATE appliances SET last_status = $1, last_heartbeat_at = $2 WHERE id = $3",
            )
            .bind(status)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Slots held by appliances that are not deleted.
    pub async fn used_slots(&self) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT slot FROM appliances WHERE state <> 'deleted' AND slot IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<i64, _>("slot"))
            .collect::<Result<_, _>>()?)
    }

    /// Moves an appliance from `a.state` to `to` and sets `changes`, recording `record`
    /// as an event (and a webhook delivery when the appliance has a callback URL) and
    /// queueing `task`, if given, all in one transaction: a worker can never run the
    /// task before the move is recorded. [`Moved::Lost`] when the appliance was no
    /// longer in `a.state` (someone else moved it); a [`StoreError::Conflict`] (nothing
    /// written) when the appliance already has an unfinished task.
    pub async fn transition(
        &self,
        a: &Appliance,
        to: State,
        changes: &Changes,
        record: Option<Record<'_>>,
        task: Option<&NewTask<'_>>,
        now: i64,
    ) -> Result<Moved, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE appliances SET state = $1, \
             state_since = CASE WHEN state = $1 THEN state_since ELSE $2 END, updated_at = $2, \
             launched_at = COALESCE($3, launched_at), expires_at = COALESCE($4, expires_at), \
             last_heartbeat_at = COALESCE($5, last_heartbeat_at), \
             last_status = COALESCE($6, last_status), slot = COALESCE($7, slot), \
             address = COALESCE($8, address), agent_port = COALESCE($9, agent_port), \
             cert_serial = COALESCE($10, cert_serial), \
             cert_not_after = COALESCE($11, cert_not_after) \
             WHERE id = $12 AND state = $13",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(changes.launched_at)
        .bind(changes.expires_at)
        .bind(changes.last_heartbeat_at)
        .bind(&changes.last_status)
        .bind(changes.slot)
        .bind(&changes.address)
        .bind(changes.agent_port)
        .bind(&changes.cert_serial)
        .bind(changes.cert_not_after)
        .bind(&a.id)
        .bind(a.state.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_to_conflict(e, "this loopback slot".into()))?;
        if done.rows_affected() == 0 {
            return Ok(Moved::Lost);
        }
        if let Some(record) = record {
            insert_event(&mut tx, a, Some(a.state), to, &record, now).await?;
        }
        let task_id = match task {
            Some(task) => Some(insert_task(&mut tx, task, now).await?),
            None => None,
        };
        tx.commit().await?;
        Ok(Moved::Done { task_id })
    }

    /// The events of an appliance, oldest first, each with its deliveries.
    pub async fn events(
        &self,
        appliance_id: &str,
    ) -> Result<Vec<(EventRecord, Vec<Delivery>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, appliance_id, kind, from_state, to_state, detail, actor, at FROM events \
             WHERE appliance_id = $1 ORDER BY seq",
        )
        .bind(appliance_id)
        .fetch_all(&self.pool)
        .await?;
        let deliveries = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries WHERE appliance_id = $1 ORDER BY created_at"
        ))
        .bind(appliance_id)
        .fetch_all(&self.pool)
        .await?;
        let deliveries: Vec<Delivery> = decode_all(&deliveries, Delivery::from_row)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let event = EventRecord {
                id: r.try_get("id")?,
                appliance_id: r.try_get("appliance_id")?,
                kind: r.try_get("kind")?,
                from_state: r.try_get("from_state")?,
                to_state: r.try_get("to_state")?,
                detail: r.try_get("detail")?,
                actor: r.try_get("actor")?,
                at: r.try_get("at")?,
            };
            let mine = deliveries
                .iter()
                .filter(|d| d.event_id == event.id)
                .cloned()
                .collect();
            out.push((event, mine));
        }
        Ok(out)
    }

    /// Pending deliveries whose next attempt is due, oldest first.
    pub async fn due_deliveries(&self, now: i64, limit: i64) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, Delivery::from_row)
    }

    /// Claims a due delivery for one attempt by pushing its next attempt to `lease_until`;
    /// false when another controller claimed it first.
    pub async fn claim_delivery(&self, d: &Delivery, lease_until: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1 \
             WHERE id = $2 AND state = 'pending' AND next_attempt_at = $3",
        )
        .bind(lease_until)
        .bind(&d.id)
        .bind(d.next_attempt_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records one delivery attempt.
    pub async fn delivery_attempted(
        &self,
        id: &str,
        state: DeliveryState,
        status: Option<i64>,
        error: Option<&str>,
        next_attempt_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deliveries SET state = $1, attempts = attempts + 1, last_status = $2, \
             last_error = $3, next_attempt_at = $4, \
             delivered_at = CASE WHEN $1 = 'delivered' THEN $5 ELSE delivered_at END \
             WHERE id = $6",
        )
        .bind(state.as_str())
        .bind(status)
        .bind(error)
        .bind(next_attempt_at)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queues a task. A second unfinished task for the same appliance is a
    /// [`StoreError::Conflict`].
    pub async fn queue_task(&self, task: &NewTask<'_>, now: i64) -> Result<String, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id = insert_task(&mut tx, task, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.one_where(
            concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1"),
            id,
            Task::from_row,
        )
        .await
    }

    /// The newest tasks: those a user or service account queued or whose team it owns,
    /// or everybody's.
    pub async fn tasks(&self, reader: Option<&str>, limit: i64) -> Result<Vec<Task>, StoreError> {
        let rows = match reader {
            Some(owner) => {
                sqlx::query(concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks WHERE owner_id = $1 OR team_id IN (SELECT team_id FROM \
                     memberships WHERE user_id = $1 AND role = 'owner') OR team_id IN \
                     (SELECT team_id FROM service_accounts WHERE id = $1 AND role = 'owner') \
                     ORDER BY created_at DESC, id LIMIT $2"
                ))
                .bind(owner)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks ORDER BY created_at DESC, id LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        decode_all(&rows, Task::from_row)
    }

    /// The create task of an appliance (to answer a repeated idempotent create).
    pub async fn create_task_of(&self, appliance_id: &str) -> Result<Option<Task>, StoreError> {
        self.one_where(
            concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE appliance_id = $1 AND kind = 'create' ORDER BY created_at LIMIT 1"
            ),
            appliance_id,
            Task::from_row,
        )
        .await
    }

    /// Claims the oldest runnable task: queued, or running under an expired lease (its
    /// controller died). PostgreSQL skips rows another controller is claiming.
    pub async fn claim_task(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Task>, StoreError> {
        let query = match self.backend() {
            Backend::Postgres => concat!(
                "UPDATE tasks SET state = 'running', lease_owner = $1, lease_until = $2, \
                 attempts = attempts + 1, started_at = COALESCE(started_at, $3) \
                 WHERE id = (SELECT id FROM tasks WHERE state = 'queued' \
                 OR (state = 'running' AND lease_until < $3) \
                 ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ",
                task_columns!()
            ),
            Backend::Sqlite => concat!(
                "UPDATE tasks SET state = 'running', lease_owner = $1, lease_until = $2, \
                 attempts = attempts + 1, started_at = COALESCE(started_at, $3) \
                 WHERE id = (SELECT id FROM tasks WHERE state = 'queued' \
                 OR (state = 'running' AND lease_until < $3) \
                 ORDER BY created_at, id LIMIT 1) RETURNING ",
                task_columns!()
            ),
        };
        let row = sqlx::query(query)
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Task::from_row(&r)).transpose()?)
    }

    /// Extends the lease of tasks this controller runs.
    pub async fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tasks SET lease_until = $1 WHERE state = 'running' AND lease_owner = $2",
        )
        .bind(lease_until)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Owners of running tasks (to find those of controllers that are gone).
    pub async fn lease_owners(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT lease_owner FROM tasks WHERE state = 'running' \
             AND lease_owner IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("lease_owner"))
            .collect::<Result<_, _>>()?)
    }

    /// Ends the leases of a controller known to be dead, so its tasks run again now.
    pub async fn expire_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_until = 0 WHERE state = 'running' AND lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Replaces what a task keeps of its request (to drop what it no longer needs).
    pub async fn set_task_request(&self, id: &str, request: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE tasks SET request = $1 WHERE id = $2")
            .bind(request)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Cancels a task that is queued and has never run; false when it is not (any more).
    pub async fn cancel_task(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tasks SET state = 'cancelled', finished_at = $1 \
             WHERE id = $2 AND state = 'queued' AND attempts = 0",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Finishes a task this controller holds. False when the lease was lost.
    pub async fn finish_task(
        &self,
        id: &str,
        owner: &str,
        state: TaskState,
        result: Option<&str>,
        problem: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tasks SET state = $1, result = $2, problem = $3, finished_at = $4, \
             lease_owner = NULL WHERE id = $5 AND lease_owner = $6 AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(result)
        .bind(problem)
        .bind(now)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl Delivery {
    fn from_row(r: &AnyRow) -> Result<Delivery, sqlx::Error> {
        Ok(Delivery {
            id: r.try_get("id")?,
            event_id: r.try_get("event_id")?,
            url: r.try_get("url")?,
            body: r.try_get("body")?,
            state: decode_name(r, "state", DeliveryState::parse)?,
            attempts: r.try_get("attempts")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            last_status: r.try_get("last_status")?,
            last_error: r.try_get("last_error")?,
            delivered_at: r.try_get("delivered_at")?,
        })
    }
}

async fn insert_task(tx: &mut Tx<'_>, task: &NewTask<'_>, now: i64) -> Result<String, StoreError> {
    let id = auth::new_id();
    sqlx::query(
        "INSERT INTO tasks (id, kind, appliance_id, owner_id, team_id, state, request, \
         created_at) VALUES ($1, $2, $3, $4, \
         COALESCE((SELECT team_id FROM appliances WHERE id = $3), $7), 'queued', $5, $6)",
    )
    .bind(&id)
    .bind(task.kind.name())
    .bind(task.appliance_id)
    .bind(task.owner_id)
    .bind(&task.request)
    .bind(now)
    .bind(task.team_id)
    .execute(&mut **tx)
    .await
    .map_err(|e| unique_to_conflict(e, "an unfinished operation on this appliance".into()))?;
    Ok(id)
}

/// The events mailed to an appliance's `notify_email`.
pub const MAILED_EVENTS: [&str; 3] = ["launched", "expiring", "stopped"];

/// Records an event and, when the appliance has a callback URL, its webhook delivery;
/// when it has a `notify_email` and the event is one of [`MAILED_EVENTS`], its mail (a
/// delivery to a `mailto:` URL).
pub(super) async fn insert_event(
    tx: &mut Tx<'_>,
    a: &Appliance,
    from: Option<State>,
    to: State,
    record: &Record<'_>,
    now: i64,
) -> Result<(), StoreError> {
    let id = auth::new_id();
    let detail = record.detail.as_ref().map(|d| d.to_string());
    sqlx::query(
        "INSERT INTO events (id, seq, appliance_id, kind, from_state, to_state, detail, actor, \
         at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(next_seq())
    .bind(&a.id)
    .bind(record.kind)
    .bind(from.map(State::as_str))
    .bind(to.as_str())
    .bind(&detail)
    .bind(record.actor)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let mail = a
        .notify_email
        .as_ref()
        .filter(|_| MAILED_EVENTS.contains(&record.kind))
        .map(|to| format!("mailto:{to}"));
    let body = serde_json::json!({
        "id": id,
        "appliance_id": a.id,
        "external_id": a.external_id,
        "event": record.kind,
        "from_state": from.map(State::as_str),
        "to_state": to.as_str(),
        "detail": record.detail,
        "actor": record.actor,
        "at": crate::certs::format_unix(now),
    })
    .to_string();
    for url in a.callback_url.iter().chain(mail.as_ref()) {
        sqlx::query(
            "INSERT INTO deliveries (id, event_id, appliance_id, url, body, state, \
             next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6)",
        )
        .bind(auth::new_id())
        .bind(&id)
        .bind(&a.id)
        .bind(url)
        .bind(&body)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// The appliances usage counts over a period ending at `before` (created before it,
    /// and not deleted before `since`), of one team or of all, each with what it is
    /// counted by and its state changes, oldest first.
    pub async fn billed(
        &self,
        team_id: Option<&str>,
        since: i64,
        before: i64,
    ) -> Result<Vec<crate::controller::usage::Billed>, StoreError> {
        use crate::controller::usage::{Billed, UsageKey};
        let rows = match team_id {
            Some(team) => {
                sqlx::query(concat!(
                    "SELECT a.id, a.team_id, a.template, a.flavor, a.region, e.to_state, e.at \
                     FROM appliances a JOIN events e ON e.appliance_id = a.id \
                     WHERE a.team_id = $1 AND a.created_at < $2 \
                     AND NOT (a.state = 'deleted' AND a.updated_at < $3) ",
                    "ORDER BY a.id, e.seq"
                ))
                .bind(team)
                .bind(before)
                .bind(since)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT a.id, a.team_id, a.template, a.flavor, a.region, e.to_state, e.at \
                     FROM appliances a JOIN events e ON e.appliance_id = a.id \
                     WHERE a.created_at < $1 AND NOT (a.state = 'deleted' AND a.updated_at < $2) ",
                    "ORDER BY a.id, e.seq"
                ))
                .bind(before)
                .bind(since)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut out: Vec<Billed> = Vec::new();
        let mut current: Option<String> = None;
        for r in &rows {
            let id: String = r.try_get("id")?;
            let state = decode_name(r, "to_state", State::parse)?;
            let at: i64 = r.try_get("at")?;
            if current.as_deref() != Some(id.as_str()) {
                out.push(Billed {
                    key: UsageKey {
                        team_id: r.try_get("team_id")?,
                        template: r.try_get("template")?,
                        flavor: r.try_get("flavor")?,
                        region: r.try_get("region")?,
                    },
                    changes: Vec::new(),
                });
                current = Some(id);
            }
            if let Some(last) = out.last_mut() {
                last.changes.push((at, state));
            }
        }
        Ok(out)
    }

    /// The appliances of a cluster that are not deleted, oldest first.
    pub async fn cluster_members(&self, cluster_id: &str) -> Result<Vec<Appliance>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            appliance_columns!(),
            " FROM appliances WHERE cluster_id = $1 AND state <> 'deleted' ORDER BY created_at, id"
        ))
        .bind(cluster_id)
        .fetch_all(&self.pool)
        .await?;
        decode_all(&rows, Appliance::from_row)
    }

    /// How many appliances of a team are not deleted.
    pub async fn live_appliances(&self, team_id: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM appliances WHERE team_id = $1 AND state <> 'deleted'",
        )
        .bind(team_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// The creation time of a team's first appliance, if it has any.
    pub async fn first_appliance_at(&self, team_id: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(created_at) AS first FROM appliances WHERE team_id = $1")
            .bind(team_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("first")?)
    }
}

/// The team's appliance quota and its use, when one more appliance would exceed it
/// (its row locked by the caller).
pub(super) async fn over_appliance_quota(
    tx: &mut Tx<'_>,
    team_id: &str,
) -> Result<Option<(i64, i64)>, StoreError> {
    let limit: Option<i64> = sqlx::query("SELECT max_appliances FROM teams WHERE id = $1")
        .bind(team_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("max_appliances")?;
    let Some(limit) = limit else {
        return Ok(None);
    };
    let used: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM appliances WHERE team_id = $1 AND state <> 'deleted'",
    )
    .bind(team_id)
    .fetch_one(&mut **tx)
    .await?
    .try_get("n")?;
    Ok((used >= limit).then_some((limit, used)))
}

/// Records an appliance that exists already (an enrolled one), with its first event.
pub(super) async fn insert_existing_appliance(
    tx: &mut Tx<'_>,
    a: &Appliance,
    record: &Record<'_>,
) -> Result<(), StoreError> {
    insert_appliance(tx, a, a.region.as_deref()).await?;
    insert_event(tx, a, None, a.state, record, a.created_at).await
}

/// Inserts an appliance's row, placed in `region`.
async fn insert_appliance(
    tx: &mut Tx<'_>,
    a: &Appliance,
    region: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(concat!(
            "INSERT INTO appliances (",
            appliance_columns!(),
            ", updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $20)"
        ))
        .bind(&a.id)
        .bind(&a.name)
        .bind(&a.team_id)
        .bind(&a.owner_id)
        .bind(&a.external_id)
        .bind(&a.request_hash)
        .bind(a.state.as_str())
        .bind(a.state_since)
        .bind(a.ttl_minutes)
        .bind(&a.callback_url)
        .bind(a.slot)
        .bind(&a.address)
        .bind(a.agent_port)
        .bind(&a.cert_serial)
        .bind(a.cert_not_after)
        .bind(a.launched_at)
        .bind(a.expires_at)
        .bind(a.last_heartbeat_at)
        .bind(&a.last_status)
        .bind(a.created_at)
        .bind(&a.keypair_id)
        .bind(&a.authorized_key)
        .bind(&a.template)
        .bind(&a.image)
        .bind(&a.flavor)
        .bind(&a.network)
        .bind(region)
        .bind(&a.notify_email)
        .bind(&a.cluster_id)
        .bind(&a.backend)
        .bind(&a.public_key)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            unique_to_conflict(e, "an appliance of this team with this external_id".into())
        })?;
    Ok(())
}
