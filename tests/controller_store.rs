//! The controller's store, in process, on both backends: embedded SQLite, and a real
//! PostgreSQL server the test starts. The same scenario must hold on each.

mod common;

use applianced::controller::auth;
use applianced::controller::lifecycle::State;
use applianced::controller::records::{
    Appliance, Changes, Created, Moved, NewTask, Record, TaskKind, TaskState,
};
use applianced::controller::store::{Backend, NewUserRecord, Role, Store, StoreError, User};
use applianced::controller::teams::{MembershipChange, Quotas, TeamDeletion, TeamRole};

/// Records a user with its personal team (unlimited).
async fn add_user(
    store: &Store,
    name: &str,
    role: Role,
    hash: &str,
    now: i64,
) -> Result<User, StoreError> {
    let record = NewUserRecord {
        name,
        role,
        password_hash: hash,
        display_name: None,
        email: None,
    };
    store
        .create_user(record, Some(Quotas::default()), now)
        .await
}

async fn scenario(store: Store) {
    let now = 1_800_000_000;
    assert!(store.users().await.unwrap().is_empty());

    let admin = add_user(
        &store,
        "alice",
        Role::Admin,
        &auth::hash_password("pw-a"),
        now,
    )
    .await
    .unwrap();
    let member = add_user(
        &store,
        "bob",
        Role::Member,
        &auth::hash_password("pw-b"),
        now,
    )
    .await
    .unwrap();
    match add_user(&store, "alice", Role::Member, "x", now).await {
        Err(StoreError::Conflict(what)) => assert!(what.contains("alice")),
        other => panic!("duplicate name accepted: {other:?}"),
    }
    let names: Vec<String> = store
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let found = store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(found, admin);
    assert!(auth::verify_password("pw-a", &found.password_hash));
    assert_eq!(
        store.user(&member.id).await.unwrap().unwrap().role,
        Role::Member
    );
    assert!(
        store
            .user("00000000-0000-4000-8000-000000000000")
            .await
            .unwrap()
            .is_none()
    );

    // Tokens are found by hash until they expire.
    let (token, hash) = auth::new_token();
    store
        .insert_token(&admin.id, &hash, now, now + 3600)
        .await
        .unwrap();
    let (_, old_hash) = auth::new_token();
    store
        .insert_token(&member.id, &old_hash, now - 7200, now - 3600)
        .await
        .unwrap();
    assert_eq!(
        store
            .user_for_token(&auth::token_hash(&token), now)
            .await
            .unwrap()
            .unwrap()
            .id,
        admin.id
    );
    assert!(
        store
            .user_for_token(&old_hash, now)
            .await
            .unwrap()
            .is_none(),
        "expired token accepted"
    );
    assert!(
        store
            .user_for_token(&hash, now + 3600)
            .await
            .unwrap()
            .is_none(),
        "token valid at its expiry"
    );
    assert!(
        store
            .user_for_token(&auth::token_hash("forged"), now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.insert_token(&member.id, &hash, now, now + 1).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.delete_expired_tokens(now).await.unwrap(), 1);

    moves_and_tasks(&store, &member.id, now).await;

    // Logging out removes one token, once.
    let (_, short) = auth::new_token();
    store
        .insert_token(&admin.id, &short, now, now + 60)
        .await
        .unwrap();
    assert!(store.delete_token(&short).await.unwrap());
    assert!(!store.delete_token(&short).await.unwrap());
    assert!(store.user_for_token(&short, now).await.unwrap().is_none());
    assert!(store.user_for_token(&hash, now).await.unwrap().is_some());

    // Deleting a user takes its tokens along.
    assert!(store.delete_user(&admin.id).await.unwrap());
    assert!(!store.delete_user(&admin.id).await.unwrap());
    assert!(store.user_for_token(&hash, now).await.unwrap().is_none());
    assert_eq!(store.users().await.unwrap().len(), 1);
}

/// A move that queues a task is one transaction: with another task unfinished neither
/// happens; a move from a state the appliance has left writes nothing.
async fn moves_and_tasks(store: &Store, owner: &str, now: i64) {
    let a = Appliance {
        id: auth::new_id(),
        name: "m".into(),
        // The owner's personal team has the owner's id.
        team_id: owner.into(),
        owner_id: owner.into(),
        external_id: None,
        request_hash: String::new(),
        state: State::Active,
        state_since: now,
        ttl_minutes: 60,
        callback_url: None,
        slot: None,
        address: None,
        agent_port: None,
        cert_serial: None,
        cert_not_after: None,
        launched_at: Some(now),
        expires_at: Some(now + 3600),
        last_heartbeat_at: None,
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
        backend: "process".into(),
        public_key: None,
    };
    let task = |kind| NewTask {
        kind,
        appliance_id: Some(&a.id),
        owner_id: owner,
        request: "{}".into(),
        team_id: None,
    };
    let Created::Queued {
        task_id: create, ..
    } = store
        .create_appliance(&a, &[("r".into(), 10)], &task(TaskKind::Create), None)
        .await
        .unwrap()
    else {
        panic!("not created");
    };
    let record = || Record {
        kind: "expired",
        detail: None,
        actor: None,
    };
    let stop = task(TaskKind::Stop);
    // Expiry: to `stopping`, with its event and the stop task.
    let no_changes = Changes::default();
    let expire = || {
        store.transition(
            &a,
            State::Stopping,
            &no_changes,
            Some(record()),
            Some(&stop),
            now,
        )
    };
    let moved = expire().await;
    assert!(matches!(moved, Err(StoreError::Conflict(_))), "{moved:?}");
    let unchanged = store.appliance(&a.id).await.unwrap().unwrap();
    assert_eq!(unchanged.state, State::Active);
    assert_eq!(event_kinds(store, &a.id).await, ["requested"]);

    let claimed = store
        .claim_task("c1", now, now + 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, create);
    // A task that ran once is not cancelled.
    assert!(!store.cancel_task(&create, now).await.unwrap());
    assert!(
        store
            .finish_task(&create, "c1", TaskState::Succeeded, None, None, now)
            .await
            .unwrap()
    );
    let Moved::Done {
        task_id: Some(stop_id),
    } = expire().await.unwrap()
    else {
        panic!("the move and its task were not written");
    };
    let queued = store.task(&stop_id).await.unwrap().unwrap();
    assert_eq!(
        (queued.kind.name(), queued.state.as_str()),
        ("stop", "queued")
    );
    // A queued task that never ran is cancelled, once; the store does not judge which
    // kinds may be (the fleet does).
    assert!(store.cancel_task(&stop_id, now).await.unwrap());
    let cancelled = store.task(&stop_id).await.unwrap().unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert_eq!(cancelled.finished_at, Some(now));
    assert!(!store.cancel_task(&stop_id, now).await.unwrap());
    assert_eq!(
        store.appliance(&a.id).await.unwrap().unwrap().state,
        State::Stopping
    );
    assert_eq!(event_kinds(store, &a.id).await, ["requested", "expired"]);
    // `a` still says active: that move was made already, and nothing more is written.
    let again = store
        .transition(
            &a,
            State::Stopping,
            &Changes::default(),
            Some(record()),
            None,
            now,
        )
        .await
        .unwrap();
    assert_eq!(again, Moved::Lost);
    assert_eq!(event_kinds(store, &a.id).await.len(), 2);
}

/// Teams under concurrency: creates never pass a team's quota together, and two owners
/// demoting each other at the same moment cannot leave the team without one.
async fn teams_under_concurrency(store: &Store, now: i64) {
    let olga = add_user(store, "olga", Role::Member, "-", now)
        .await
        .unwrap();
    let oleg = add_user(store, "oleg", Role::Member, "-", now)
        .await
        .unwrap();
    let quotas = Quotas {
        max_appliances: Some(2),
        ..Quotas::default()
    };
    let team = store
        .create_team("ops", Some(&olga.id), quotas, now)
        .await
        .unwrap();
    let appliance = |i: usize| Appliance {
        id: auth::new_id(),
        name: format!("q{i}"),
        team_id: team.id.clone(),
        owner_id: olga.id.clone(),
        external_id: None,
        request_hash: String::new(),
        state: State::Requested,
        state_since: now,
        ttl_minutes: 60,
        callback_url: None,
        slot: None,
        address: None,
        agent_port: None,
        cert_serial: None,
        cert_not_after: None,
        launched_at: None,
        expires_at: None,
        last_heartbeat_at: None,
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
        backend: "process".into(),
        public_key: None,
    };
    let everywhere = [("big".to_string(), 100)];
    let appliances: Vec<Appliance> = (0..8).map(appliance).collect();
    let tasks: Vec<NewTask> = appliances
        .iter()
        .map(|a| NewTask {
            kind: TaskKind::Create,
            appliance_id: Some(&a.id),
            owner_id: &olga.id,
            request: "{}".into(),
            team_id: None,
        })
        .collect();
    let outcomes = futures_util::future::join_all(
        appliances
            .iter()
            .zip(&tasks)
            .map(|(a, t)| store.create_appliance(a, &everywhere, t, None)),
    )
    .await;
    let queued = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Created::Queued { .. })))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Created::OverQuota { limit: 2, used: 2 })))
        .count();
    assert_eq!((queued, refused), (2, 6), "{outcomes:?}");
    let mine = store.appliances(false).await.unwrap();
    assert_eq!(mine.iter().filter(|a| a.team_id == team.id).count(), 2);
    // Each queued task carries its appliance's team.
    let created = outcomes.iter().find_map(|o| match o {
        Ok(Created::Queued { task_id, .. }) => Some(task_id.clone()),
        _ => None,
    });
    let task = store.task(&created.unwrap()).await.unwrap().unwrap();
    assert_eq!(task.team_id.as_deref(), Some(team.id.as_str()));

    // Regions: two creates never take a region's last place together; the next region
    // in order takes what the first cannot hold, and with none left nothing is made.
    store
        .set_quotas(&team.id, Some(None), None, None)
        .await
        .unwrap();
    let regions = [("r1".to_string(), 1), ("r2".to_string(), 2)];
    let more: Vec<Appliance> = (8..16).map(appliance).collect();
    let tasks: Vec<NewTask> = more
        .iter()
        .map(|a| NewTask {
            kind: TaskKind::Create,
            appliance_id: Some(&a.id),
            owner_id: &olga.id,
            request: "{}".into(),
            team_id: None,
        })
        .collect();
    let outcomes = futures_util::future::join_all(
        more.iter()
            .zip(&tasks)
            .map(|(a, t)| store.create_appliance(a, &regions, t, None)),
    )
    .await;
    let mut placed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(Created::Queued { region, .. }) => Some(region.clone()),
            _ => None,
        })
        .collect();
    placed.sort();
    assert_eq!(placed, ["r1", "r2", "r2"], "{outcomes:?}");
    let no_room = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Created::NoRoom)))
        .count();
    assert_eq!(no_room, 5);
    let in_r2 = store
        .appliances(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.region.as_deref() == Some("r2"))
        .count();
    assert_eq!(in_r2, 2);

    // Two owners step down at once: one of them stays owner.
    store
        .set_membership(&team.id, &oleg.id, TeamRole::Owner, true, now)
        .await
        .unwrap();
    let (a, b) = futures_util::future::join(
        store.set_membership(&team.id, &olga.id, TeamRole::Viewer, false, now),
        store.set_membership(&team.id, &oleg.id, TeamRole::Viewer, false, now),
    )
    .await;
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        [MembershipChange::Done, MembershipChange::LastOwner]
    );
    let owners = store
        .members(&team.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.role == TeamRole::Owner)
        .count();
    assert_eq!(owners, 1);
    // A team with live appliances is not deleted.
    assert_eq!(
        store.delete_team(&team.id).await.unwrap(),
        TeamDeletion::OwnsAppliances(5)
    );
}

/// A database made before teams existed: every user gets a personal team (its id and
/// name are the user's) that owns the user's appliances and tasks; an appliance whose
/// user was deleted gets a team of its own.
async fn upgrade_to_teams(url: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    sqlx::migrate!("./migrations")
        .run_to(3, &pool)
        .await
        .unwrap();
    for q in [
        "INSERT INTO users (id, name, role, password_hash, created_at) VALUES          ('u1', 'alice', 'admin', 'h', 10), ('u2', 'bob', 'member', 'h', 20)",
        "INSERT INTO appliances (id, name, owner_id, external_id, request_hash, state,          state_since, ttl_minutes, created_at, updated_at) VALUES          ('a1', 'lb', 'u2', 'k', 'r', 'active', 1, 60, 1, 1),          ('a2', 'lb', 'u1', 'k2', 'r', 'deleted', 1, 60, 1, 1),          ('a3', 'old', 'gone', NULL, 'r', 'active', 1, 60, 1, 1)",
        "INSERT INTO tasks (id, kind, appliance_id, owner_id, state, request, created_at)          VALUES ('t1', 'create', 'a1', 'u2', 'succeeded', '{}', 1),          ('t2', 'ping', NULL, 'u1', 'succeeded', '{}', 2)",
    ] {
        sqlx::query(q).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::open(url, 2).await.unwrap();
    let teams: Vec<(String, String)> = store
        .teams()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    assert_eq!(
        teams,
        [
            ("u1".to_string(), "alice".to_string()),
            ("u2".into(), "bob".into()),
            ("gone".into(), "former-gone".into()),
        ]
    );
    let bobs = store.memberships_of("u2").await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        (bobs[0].team_id.as_str(), bobs[0].role),
        ("u2", TeamRole::Owner)
    );
    assert!(store.members("gone").await.unwrap().is_empty());
    let team_of = |id: &'static str| {
        let store = &store;
        async move { store.appliance(id).await.unwrap().unwrap().team_id }
    };
    assert_eq!(team_of("a1").await, "u2");
    assert_eq!(team_of("a2").await, "u1");
    assert_eq!(team_of("a3").await, "gone");
    let a1 = store.appliance("a1").await.unwrap().unwrap();
    assert_eq!((a1.owner_id.as_str(), a1.state), ("u2", State::Active));
    assert!(
        store
            .appliance_by_external_id("u2", "k")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .appliance_by_external_id("u1", "k")
            .await
            .unwrap()
            .is_none()
    );
    let t1 = store.task("t1").await.unwrap().unwrap();
    assert_eq!(t1.team_id.as_deref(), Some("u2"));
    assert_eq!(store.task("t2").await.unwrap().unwrap().team_id, None);
    let user = store.user("u2").await.unwrap().unwrap();
    assert_eq!((user.display_name, user.email), (None, None));
    store.close().await;
}

async fn event_kinds(store: &Store, appliance_id: &str) -> Vec<String> {
    let events = store.events(appliance_id).await.unwrap();
    events.into_iter().map(|(e, _)| e.kind).collect()
}

#[tokio::test]
async fn sqlite_store_migrates_once_and_keeps_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/controller.db", dir.path().display());
    let store = Store::open(&url, 4).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    scenario(store).await;
    // Reopening applies no migration twice and keeps the data.
    let again = Store::open(&url, 4).await.unwrap();
    assert_eq!(again.users().await.unwrap().len(), 1);
    teams_under_concurrency(&again, 1_800_000_000).await;
    again.close().await;
    upgrade_to_teams(&format!(
        "sqlite://{}/upgraded.db?mode=rwc",
        dir.path().display()
    ))
    .await;
}

#[tokio::test]
async fn postgres_store_migrates_once_and_keeps_its_rules() {
    let pg = common::postgres::Postgres::start();
    let store = Store::open(&pg.url, 4).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    scenario(store).await;
    let again = Store::open(&pg.url, 4).await.unwrap();
    assert_eq!(again.users().await.unwrap().len(), 1);
    teams_under_concurrency(&again, 1_800_000_000).await;
    again.close().await;
    let pool = sqlx::AnyPool::connect(&pg.url).await.unwrap();
    sqlx::query("CREATE DATABASE upgraded")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = pg.url.rsplit_once('/').unwrap();
    upgrade_to_teams(&format!("{base}/upgraded")).await;
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(matches!(
        Store::open("mysql://x", 1).await,
        Err(StoreError::Url(_))
    ));
}
