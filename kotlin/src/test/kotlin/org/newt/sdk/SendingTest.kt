package org.newt.sdk

import java.io.File
import kotlin.random.Random
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs
import kotlin.test.assertNotNull
import kotlin.test.assertTrue
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.flow.consumeAsFlow
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.NewtException
import uniffi.newt_ffi.OutgoingMessage
import uniffi.newt_ffi.SendState
import uniffi.newt_ffi.TimelineUpdate

class SendingTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `an encrypted attachment goes out with its states in the Flow and bob downloads it`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val alice = pair.alice.client
            val bob = pair.bob.client
            val picture = Random(7).nextBytes(300 * 1024)
            val file = File(TestEnv.newStoreDir("attachment"), "newt.png").apply { writeBytes(picture) }
            coroutineScope {
                // Subscribed before queueing: no state is missed.
                val updates = timelineUpdates(alice, pair.roomId)
                assertIs<TimelineUpdate.Initial>(withTimeout(10_000) { updates.receive() })
                val bobUpdates = timelineUpdates(bob, pair.roomId)
                assertIs<TimelineUpdate.Initial>(withTimeout(10_000) { bobUpdates.receive() })
                alice.startSync()
                bob.startSync()

                val txn = alice.queueAttachment(pair.roomId, file.path, "image/png", "newt.png")
                val states = withTimeout(60_000) { updates.consumeAsFlow().sendStates(txn).toList() }
                assertEquals(SendState.Queued, states.first(), "the echo first: $states")
                val uploads = states.filterIsInstance<SendState.Uploading>()
                assertTrue(uploads.size >= 4, "upload progress: $states")
                assertTrue(uploads.zipWithNext().all { (a, b) -> a.sentBytes < b.sentBytes }, "rising: $uploads")
                assertEquals(uploads.last().totalBytes, uploads.last().sentBytes)
                assertTrue(SendState.Sending in states, "$states")
                val sent = assertIs<SendState.Sent>(states.last(), "$states")
                val eventId = assertNotNull(sent.eventId)

                val item = bobUpdates.awaitItem(what = "the picture at bob") { it.eventId == eventId }
                assertTrue(item.decrypted, item.describe())
                assertEquals("newt.png", item.body)
                assertTrue(item.contentJson.contains("\"file\""), item.contentJson)
                val out = File(file.parentFile, "downloaded.png")
                val size = bob.downloadAttachment(item.contentJson, out.path, 1_000_000uL)
                assertEquals(picture.size.toULong(), size)
                assertTrue(picture.contentEquals(out.readBytes()), "the same bytes")

                // Sent: no longer in the queue.
                assertFailsWith<NewtException.NotQueued> { alice.cancelSend(txn) }
                alice.stopSync()
                bob.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }

    @Test
    fun `offline a reaction waits for its queued message and a cancelled one is not sent`() = runBlocking<Unit> {
        Resources().use { res ->
            val proxy = res.add(TcpProxy(TestEnv.homeserver))
            val pair = res.roomPair(aliceHomeserver = proxy.url)
            val alice = pair.alice.client
            val bob = pair.bob.client
            coroutineScope {
                val bobUpdates = timelineUpdates(bob, pair.roomId)
                assertIs<TimelineUpdate.Initial>(withTimeout(10_000) { bobUpdates.receive() })
                // Offline: queued, not sent; the reaction names the message by its id.
                proxy.online = false
                val hello = alice.queueMessage(pair.roomId, OutgoingMessage.Text("hello from the queue"))
                val reaction = alice.queueMessage(pair.roomId, OutgoingMessage.Reaction(hello, "👍"))
                val dropped = alice.queueMessage(pair.roomId, OutgoingMessage.Text("never sent"))
                alice.cancelSend(dropped)
                val echoes = alice.localEchoes(pair.roomId).map { it.transactionId }
                assertEquals(listOf(hello, reaction), echoes)
                // Back online: alice's sync gets through and the queue drains.
                proxy.online = true
                bob.startSync()
                alice.startSync()
                val message = bobUpdates.awaitItem(what = "the message") { it.body == "hello from the queue" }
                val annotation = bobUpdates.awaitItem(what = "the reaction") { it.eventType == "m.reaction" }
                assertTrue(annotation.contentJson.contains(message.eventId), annotation.contentJson)
                assertTrue(annotation.contentJson.contains("m.annotation"), annotation.contentJson)
                eventually(30_000, "alice's queue to empty") { alice.localEchoes(pair.roomId).isEmpty() }
                assertTrue(bobUpdates.tryReceive().getOrNull()?.toString()?.contains("never sent") != true)
                alice.stopSync()
                bob.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }
}
