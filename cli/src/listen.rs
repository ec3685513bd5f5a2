//! `listen ROOM`: print the room's messages as JSON lines, first those the inbox kept from
//! earlier commands, then new ones as syncs bring them, until `--count` were printed.

use std::time::{Duration, Instant};

use crate::Ctx;
use crate::args::Listen;
use crate::inbox::{Recorder, RoomFilter, line_of};

/// The longest long-poll of one sync.
const MAX_POLL: Duration = Duration::from_secs(5);

pub(crate) async fn listen(ctx: &Ctx, recorder: &mut Recorder, a: &Listen) -> Result<(), String> {
    ctx.restored()?;
    let own = ctx.client.session().ok_or("not logged in")?.user_id;
    let filter = RoomFilter {
        room_id: a.room.to_string(),
        skip_sender: (!a.include_own).then(|| own.to_string()),
    };
    let mut seen = 0;
    for line in recorder.take(&filter, a.count).await? {
        println!("{line}");
        seen += 1;
    }
    let deadline = Instant::now() + a.timeout;
    let timeout = |seen| format!("timeout: received {seen} of {} messages", a.count);
    while seen < a.count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout(seen));
        }
        match tokio::time::timeout(left, ctx.client.sync_once(left.min(MAX_POLL))).await {
            Ok(result) => result.map_err(|e| e.to_string())?,
            Err(_) => return Err(timeout(seen)),
        }
        seen += print_received(recorder, &filter, a.count - seen).await;
    }
    Ok(())
}

/// Print up to `want` of the received items `filter` matches; keep the others in the
/// inbox. Returns how many were printed.
async fn print_received(recorder: &mut Recorder, filter: &RoomFilter, want: usize) -> usize {
    let mut printed = 0;
    let mut rest = Vec::new();
    for event in recorder.received() {
        let line = line_of(&event);
        if printed < want && filter.matches(&line) {
            println!("{line}");
            printed += 1;
        } else {
            rest.push(event);
        }
    }
    recorder.keep(rest).await;
    printed
}
