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
import kotlinx.coroutines.flow.emptyFlow
import kotlinx.coroutines.flow.flowOf
import kotlinx.coroutines.flow.transform
import kotlinx.coroutines.flow.transformWhile
import kotlinx.coroutines.ExperimentalCoroutinesApi
import uniffi.newt_ffi.NewtClient
import uniffi.newt_ffi.SendState
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
 * The items of a timeline Flow, oldest first: the initial items, then each appended one (our
 * own messages when their remote event replaces the local echo), and the new version of an
 * item that changed (same `eventId`: replace the one shown). Local echoes are left out.
 */
@OptIn(ExperimentalCoroutinesApi::class)
fun Flow<TimelineUpdate>.items(): Flow<TimelineItem> =
    flatMapConcat { update ->
        when (update) {
            is TimelineUpdate.Initial -> update.items.asFlow()
            is TimelineUpdate.Appended -> flowOf(update.item)
            is TimelineUpdate.Updated -> flowOf(update.item)
            is TimelineUpdate.EchoReplaced -> flowOf(update.item)
            is TimelineUpdate.LocalEcho, is TimelineUpdate.SendStateChanged -> emptyFlow()
        }
    }

/**
 * The states of the queued message [transactionId] (as `queueMessage` / `queueAttachment`
 * returned it), as a timeline Flow reports them: its echo's state, each change (uploading,
 * sending, waiting to retry, stuck, sent, cancelled), then [SendState.Sent] with the event
 * id when its remote event replaces the echo. Ends after that, or when it is cancelled.
 */
fun Flow<TimelineUpdate>.sendStates(transactionId: String): Flow<SendState> =
    transform { update ->
        when (update) {
            is TimelineUpdate.Initial ->
                update.echoes.firstOrNull { it.transactionId == transactionId }?.let { emit(it.state) }
            is TimelineUpdate.LocalEcho ->
                if (update.echo.transactionId == transactionId) emit(update.echo.state)
            is TimelineUpdate.SendStateChanged ->
                if (update.transactionId == transactionId) emit(update.state)
            is TimelineUpdate.EchoReplaced ->
                if (update.transactionId == transactionId) emit(SendState.Sent(update.item.eventId))
            is TimelineUpdate.Appended, is TimelineUpdate.Updated -> {}
        }
    }.transformWhile { state ->
        emit(state)
        // Sent without an event id: the remote echo still comes.
        !(state is SendState.Cancelled || (state is SendState.Sent && state.eventId != null))
    }
