//! The Valkey session store against a real Valkey: what a restore may replace.

use std::time::Duration;

use baby_discord::bus::valkey::ValkeyBus;
use baby_discord::core::model::{SessionId, SessionRecord};
use baby_discord::core::names::Nickname;
use baby_discord::core::ports::Sessions;

use crate::services::valkey::Valkey;

const TTL: Duration = Duration::from_secs(60);

fn record(id: SessionId, nick: &str, revision: u64) -> SessionRecord {
    SessionRecord {
        id,
        user_id: 1,
        nick: Nickname::parse(nick).unwrap(),
        room: None,
        seen: 0,
        revision,
        joined: revision,
    }
}

#[tokio::test]
async fn a_restore_replaces_only_nothing_or_an_older_revision_and_outdates_loaded_versions() {
    let valkey = Valkey::start();
    let bus = ValkeyBus::connect(&valkey.url(), "pod-a", TTL)
        .await
        .unwrap();
    let id = SessionId::random();
    // Into nothing: stored.
    assert!(bus.restore(&record(id, "older", 10), TTL).await.unwrap());
    let loaded = bus.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.record, record(id, "older", 10));
    // A newer revision replaces it, and a save from before that (its version) no longer lands.
    assert!(bus.restore(&record(id, "newer", 20), TTL).await.unwrap());
    assert!(
        !bus.save(&record(id, "older", 11), loaded.version, TTL)
            .await
            .unwrap()
    );
    // An older one, or the same, does not.
    for revision in [15, 20] {
        assert!(
            !bus.restore(&record(id, "stale", revision), TTL)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        bus.load(id).await.unwrap().unwrap().record,
        record(id, "newer", 20)
    );
}
