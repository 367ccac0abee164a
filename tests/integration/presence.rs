//! The Valkey presence of one pod with more users than one heartbeat script renews, against a
//! real Valkey: the heartbeat goes slice by slice, and what it promises must hold across slices.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baby_discord::bus::valkey::ValkeyBus;
use baby_discord::core::model::SessionId;
use baby_discord::core::names::{Nickname, RoomName};
use baby_discord::core::ports::{Claim, Holder, Presence};
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::services::valkey::Valkey;

/// More than two heartbeat slices' worth.
const USERS: usize = 1200;
const TTL: Duration = Duration::from_secs(3);

async fn pod_with_users(valkey: &Valkey, room: &RoomName) -> Arc<ValkeyBus> {
    let bus = ValkeyBus::connect(&valkey.url(), "pod-a", TTL)
        .await
        .unwrap();
    for i in 0..USERS {
        let nick = Nickname::parse(&format!("user{i}")).unwrap();
        let session = SessionId::random();
        let claim = bus.claim(&nick, session, Holder::Pod).await.unwrap();
        assert_eq!(claim, Claim::Granted);
        bus.set_room(&nick, session, Some(room), Holder::Pod).await;
    }
    bus
}

async fn beat(client: &Client) -> Option<String> {
    client.get("presence:beat").await.unwrap()
}

#[tokio::test]
async fn a_many_user_pods_presence_is_never_read_half_written_by_its_heartbeat() {
    let valkey = Valkey::start();
    let room = RoomName::parse("lobby").unwrap();
    let bus = pod_with_users(&valkey, &room).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(bus.clone().run(shutdown.clone()));
    let observer = Client::new(Config::from_url(&valkey.url()).unwrap(), None, None, None);
    observer.init().await.unwrap();
    // Read the room's members over and over while at least two heartbeats rewrite them.
    let mut beats_seen = vec![beat(&observer).await];
    let deadline = Instant::now() + TTL * 3;
    while beats_seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no heartbeat ran: {beats_seen:?}"
        );
        let members = bus.room_members(&room).await.unwrap();
        assert_eq!(
            members.len(),
            USERS,
            "a presence read saw a partial rewrite"
        );
        let now = beat(&observer).await;
        if beats_seen.last() != Some(&now) {
            beats_seen.push(now);
        }
    }
    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn after_valkey_loses_everything_every_claim_of_a_many_user_pod_comes_back() {
    let mut valkey = Valkey::start();
    let room = RoomName::parse("lobby").unwrap();
    let bus = pod_with_users(&valkey, &room).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(bus.clone().run(shutdown.clone()));
    valkey.stop();
    valkey.resume();
    let back = Instant::now();
    // Within PRESENCE_TTL (the recovery window) every user is listed again…
    loop {
        if let Ok(members) = bus.room_members(&room).await
            && members.len() == USERS
        {
            break;
        }
        assert!(back.elapsed() < TTL * 2, "presence did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and no name can be taken by another pod.
    let other = ValkeyBus::connect(&valkey.url(), "pod-b", TTL)
        .await
        .unwrap();
    for i in 0..USERS {
        let nick = Nickname::parse(&format!("user{i}")).unwrap();
        let claim = other.claim(&nick, SessionId::random(), Holder::Pod).await;
        assert_ne!(claim.unwrap(), Claim::Granted, "{nick} was free");
    }
    shutdown.cancel();
    running.await.unwrap();
}
