//! The controller's store, in process, on both backends: embedded SQLite, and a real
//! PostgreSQL server the test starts. The same scenario must hold on each.

mod common;

use applianced::controller::auth;
use applianced::controller::lifecycle::State;
use applianced::controller::records::{
    Appliance, Changes, Moved, NewTask, Record, TaskKind, TaskState,
};
use applianced::controller::store::{Backend, Role, Store, StoreError};

async fn scenario(store: Store) {
    let now = 1_800_000_000;
    assert!(store.users().await.unwrap().is_empty());

    let admin = store
        .create_user("alice", Role::Admin, &auth::hash_password("pw-a"), now)
        .await
        .unwrap();
    let member = store
        .create_user("bob", Role::Member, &auth::hash_password("pw-b"), now)
        .await
        .unwrap();
    match store.create_user("alice", Role::Member, "x", now).await {
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
    };
    let task = |kind| NewTask {
        kind,
        appliance_id: Some(&a.id),
        owner_id: owner,
        request: "{}".into(),
    };
    let create = store
        .create_appliance(&a, &task(TaskKind::Create), None)
        .await
        .unwrap();
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
    again.close().await;
}

#[tokio::test]
async fn postgres_store_migrates_once_and_keeps_its_rules() {
    let pg = common::postgres::Postgres::start();
    let store = Store::open(&pg.url, 4).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    scenario(store).await;
    let again = Store::open(&pg.url, 4).await.unwrap();
    assert_eq!(again.users().await.unwrap().len(), 1);
    again.close().await;
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(matches!(
        Store::open("mysql://x", 1).await,
        Err(StoreError::Url(_))
    ));
}
