//! The send queue against a real Synapse on 127.0.0.1 (issue 12's figures):
//!
//! - `send_queue/1000_messages`: queue 1,000 texts to an encrypted room (with another
//!   member's device to share the room key with; the key rotates every 100 messages) and
//!   wait until the server has them all: the queue's throughput, everything included
//!   (encryption, the stores' transactions, the `PUT`s one after the other, rotations);
//! - `send_latency/queue_to_local_echo`: from `queue_message` to its local echo being
//!   published (what the app shows at once);
//! - `send_latency/queue_to_remote_echo`: from `queue_message` to the message's own event
//!   coming back in alice's `/sync` (what replaces the echo).
//!
//! Synapse is started by the harness (rate limits off) and stopped at the end.

// A benchmark may stop at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use newt_core::client::{Client, OutgoingMessage, SendState, SendUpdate};
use newt_core::ruma::OwnedRoomId;
use newt_e2e_tests::clients::World;
use tokio::runtime::Runtime;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

const BATCH: usize = 1000;

fn text(body: String) -> OutgoingMessage {
    OutgoingMessage::Text { body }
}

/// Wait until `txn` reaches a state `pred` accepts.
async fn until(rx: &mut Receiver<SendUpdate>, txn: &str, pred: impl Fn(&SendUpdate) -> bool) {
    loop {
        match rx.recv().await {
            Ok(update) if update.txn_id == txn && pred(&update) => return,
            // Earlier updates skipped: the one awaited is newer.
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => panic!("the client closed"),
        }
    }
}

fn is_sent(u: &SendUpdate) -> bool {
    matches!(u.state, SendState::Sent { .. })
}

/// Queue `BATCH` messages and wait until the last is sent (they go in order).
async fn send_batch(alice: &Client, room: &OwnedRoomId, round: u64) -> Duration {
    let mut rx = alice.subscribe_sends();
    let start = Instant::now();
    let mut last = String::new();
    for i in 0..BATCH {
        last = alice
            .queue_message(room, text(format!("round {round} message {i}")))
            .await
            .unwrap();
    }
    until(&mut rx, &last, is_sent).await;
    start.elapsed()
}

async fn to_local_echo(alice: &Client, room: &OwnedRoomId, i: u64) -> Duration {
    let mut rx = alice.subscribe_sends();
    let start = Instant::now();
    let txn = alice
        .queue_message(room, text(format!("echo {i}")))
        .await
        .unwrap();
    until(&mut rx, &txn, |u| u.echo.is_some()).await;
    let elapsed = start.elapsed();
    until(&mut rx, &txn, is_sent).await; // not timed: the next one starts on an empty queue
    elapsed
}

async fn to_remote_echo(alice: &Client, room: &OwnedRoomId, i: u64) -> Duration {
    let mut timeline = alice.subscribe_timeline();
    let start = Instant::now();
    let txn = alice
        .queue_message(room, text(format!("remote {i}")))
        .await
        .unwrap();
    loop {
        let event = timeline.recv().await.expect("timeline");
        if event.transaction_id.as_deref() == Some(txn.as_str()) {
            return start.elapsed();
        }
    }
}

/// Criterion's `iters` runs of `one` (given a running number), timed by `one` itself.
fn timed<F, Fut>(rt: &Runtime, iters: u64, counter: &mut u64, mut one: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            *counter += 1;
            total += one(*counter).await;
        }
        total
    })
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let w = World::new(&["alice", "bob"]);
    let (alice, _bob, room): (Arc<Client>, Arc<Client>, OwnedRoomId) =
        rt.block_on(w.alice_and_bob());
    rt.block_on(alice.send_text(&room, "warm up")).unwrap();
    let sync = rt.block_on(async { alice.start_sync() });

    let mut group = c.benchmark_group("send_queue");
    // One batch per sample (a batch takes seconds): ten batches after the warm-up.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(60));
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut round = 0;
    group.bench_function("1000_messages", |b| {
        b.iter_custom(|iters| timed(&rt, iters, &mut round, |i| send_batch(&alice, &room, i)))
    });
    group.finish();

    let mut group = c.benchmark_group("send_latency");
    group.sample_size(30);
    let mut n = 0;
    group.bench_function("queue_to_local_echo", |b| {
        b.iter_custom(|iters| timed(&rt, iters, &mut n, |i| to_local_echo(&alice, &room, i)))
    });
    group.bench_function("queue_to_remote_echo", |b| {
        b.iter_custom(|iters| timed(&rt, iters, &mut n, |i| to_remote_echo(&alice, &room, i)))
    });
    group.finish();
    drop(sync);
    drop(w);
}

criterion_group!(benches, bench);
criterion_main!(benches);
