// Idiomatic Kotlin over the generated uniffi API (package uniffi.newt_ffi). All behaviour
// lives in Rust; this file only adapts callbacks to Flow.
package org.newt.sdk

import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.flatMapConcat
import kotlinx.coroutines.flow.asFlow
import kotlinx.coroutines.flow.flowOf
import kotlinx.coroutines.ExperimentalCoroutinesApi
import uniffi.newt_ffi.NewtClient
import uniffi.newt_ffi.TimelineItem
import uniffi.newt_ffi.TimelineListener
import uniffi.newt_ffi.TimelineUpdate

/**
 * The timeline of [roomId] as a cold [Flow]: each collection subscribes (the first emission
 * is [TimelineUpdate.Initial], then one [TimelineUpdate.Appended] per new item and a
 * [TimelineUpdate.Updated] when an item changed, e.g. a late room key decrypted it) and closes
 * its [uniffi.newt_ffi.TimelineSubscription] when the collector is cancelled or completes.
 *
 * Newt calls the listener on its own worker threads; the Flow hands the updates to the
 * collector's context, so collecting on `Dispatchers.Main` is safe. Updates are buffered
 * without limit so a slow collector never blocks a Newt thread and nothing is dropped.
 *
 * The client must be syncing (`startSync()` or `syncOnce`) for new items to arrive.
 */
fun NewtClient.timeline(roomId: String): Flow<TimelineUpdate> =
    callbackFlow {
        val subscription =
            subscribeTimeline(
                roomId,
                object : TimelineListener {
                    override fun onUpdate(update: TimelineUpdate) {
                        // Never blocks: the channel is unlimited. Fails only once closed.
                        trySend(update)
                    }
                },
            )
        awaitClose { subscription.close() }
    }.buffer(Channel.UNLIMITED)

/**
 * The items of a timeline Flow, oldest first: the initial items, then each appended one, and
 * the new version of an item that changed (same `eventId`: replace the one shown).
 */
@OptIn(ExperimentalCoroutinesApi::class)
fun Flow<TimelineUpdate>.items(): Flow<TimelineItem> =
    flatMapConcat { update ->
        when (update) {
            is TimelineUpdate.Initial -> update.items.asFlow()
            is TimelineUpdate.Appended -> flowOf(update.item)
            is TimelineUpdate.Updated -> flowOf(update.item)
        }
    }
