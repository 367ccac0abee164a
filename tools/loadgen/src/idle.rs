//! The `idle` mode: many logged-in connections (or open SSE streams) doing nothing.

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};

use crate::IdleArgs;
use crate::http::{WebUser, unpooled_client};
use crate::tcp::Member;

/// Connections opened at once.
const CONCURRENCY: usize = 64;

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let run_id: u32 = rand::random();
    let nick = |i: usize| format!("idle{run_id:08x}_{i}");
    let room = args.room.as_deref();
    let held: Vec<Box<dyn Send>> = if args.sse {
        let room = room.context("--sse needs --room")?;
        // Not also the leftover connection of each `/api/connect`.
        let client = unpooled_client()?;
        // One user creates the room; every stream subscribes to it.
        WebUser::connect(
            client.clone(),
            args.http_endpoints[0],
            format!("idle{run_id:08x}_o"),
            Some(room),
        )
        .await?;
        futures::stream::iter(0..args.connections)
            .map(|i| {
                let (client, addr) = (
                    client.clone(),
                    args.http_endpoints[i % args.http_endpoints.len()],
                );
                async move {
                    let user = WebUser::connect(client, addr, nick(i), None).await?;
                    let stream = user.subscribe(room).await?;
                    anyhow::Ok(Box::new((user, Box::pin(stream))) as Box<dyn Send>)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
            .context("opening streams")?
    } else {
        futures::stream::iter(0..args.connections)
            .map(|i| {
                let addr = args.endpoints[i % args.endpoints.len()];
                async move {
                    anyhow::Ok(Box::new(Member::join(addr, nick(i), room).await?) as Box<dyn Send>)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
            .context("opening connections")?
    };
    println!(
        "holding {} idle {} for {}s",
        held.len(),
        if args.sse {
            "SSE streams"
        } else {
            "connections"
        },
        args.hold
    );
    tokio::time::sleep(std::time::Duration::from_secs(args.hold)).await;
    drop(held);
    Ok(())
}
