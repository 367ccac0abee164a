//! The `idle` mode: many logged-in connections doing nothing.

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};

use crate::IdleArgs;
use crate::tcp::Member;

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let run_id: u32 = rand::random();
    let members: Vec<Member> = futures::stream::iter(0..args.connections)
        .map(|i| {
            let addr = args.endpoints[i % args.endpoints.len()];
            let nick = format!("idle{run_id:08x}_{i}");
            let room = args.room.clone();
            async move { Member::join(addr, &nick, room.as_deref()).await }
        })
        .buffer_unordered(64)
        .try_collect()
        .await
        .context("opening connections")?;
    println!(
        "holding {} idle connections for {}s",
        members.len(),
        args.hold
    );
    tokio::time::sleep(std::time::Duration::from_secs(args.hold)).await;
    drop(members);
    Ok(())
}
