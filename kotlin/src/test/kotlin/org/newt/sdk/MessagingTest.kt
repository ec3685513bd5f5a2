package org.newt.sdk

import java.util.concurrent.ConcurrentLinkedQueue
import java.util.concurrent.atomic.AtomicInteger
import java.util.concurrent.atomic.AtomicReference
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertIs
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.TimelineUpdate
import uniffi.newt_ffi.SenderTrust
import uniffi.newt_ffi.TrustPolicy

class MessagingTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `alice and bob exchange encrypted messages through the timeline Flow`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val alice = pair.alice.client
            val bob = pair.bob.client
            coroutineScope {
                // Collected in runBlocking's single-threaded context, as an app would on Main.
                val bobUpdates = timelineUpdates(bob, pair.roomId)
                val aliceUpdates = timelineUpdates(alice, pair.roomId)
                val first = withTimeout(10_000) { bobUpdates.receive() }
                assertIs<TimelineUpdate.Initial>(first, "the first update is Initial")
                assertIs<TimelineUpdate.Initial>(withTimeout(10_000) { aliceUpdates.receive() })

                bob.startSync()
                bob.startSync() // idempotent
                alice.startSync()

                val hello = "hello bob from kotlin"
                val eventId = alice.sendText(pair.roomId, hello)
                val received = bobUpdates.awaitItem(what = "alice's message at bob") { it.body == hello }
                assertTrue(received.decrypted, "decrypted: ${received.describe()}")
                assertEquals(eventId, received.eventId)
                assertEquals(pair.roomId, received.roomId)
                assertEquals(pair.alice.user.userId, received.sender)
                assertEquals(pair.alice.session.deviceId, received.senderDevice)
                assertEquals(null, received.error)

                val reply = "hi alice, bob here"
                val replyId = bob.sendText(pair.roomId, reply)
                val back = aliceUpdates.awaitItem(what = "bob's reply at alice") { it.body == reply }
                assertTrue(back.decrypted, back.describe())
                assertEquals(replyId, back.eventId)
                assertEquals(pair.bob.user.userId, back.sender)

                // A new subscription starts with the items kept in memory (items() flattens the
                // updates; first() ends the collection, which closes the subscription).
                val again = withTimeout(10_000) { bob.timeline(pair.roomId).items().first { it.eventId == eventId } }
                assertEquals(hello, again.body)

                alice.stopSync()
                bob.stopSync()
                bob.stopSync() // idempotent
                coroutineContext.cancelChildren()
            }
        }
    }

    @Test
    fun `a restarted client reaches its first decrypted message quickly`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            pair.bob.client.shutdown()
            val text = "waiting for bob's next start"
            pair.alice.client.sendText(pair.roomId, text)
            // Measured: constructor -> restore -> sync -> first decrypted message.
            val started = System.nanoTime()
            val bob = res.add(openClient(config(pair.bob.storeDir)))
            assertEquals(pair.bob.session, bob.restoreSession())
            coroutineScope {
                val updates = timelineUpdates(bob, pair.roomId)
                bob.startSync()
                val item = updates.awaitItem(what = "alice's message after bob's restart") { it.body == text }
                val elapsedMs = (System.nanoTime() - started) / 1_000_000
                assertTrue(item.decrypted, item.describe())
                println("      constructor to first decrypted message: ${elapsedMs} ms")
                bob.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }

    @Test
    fun `the Kotlin policy object hides an unverified sender until bob verifies her`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val bob = pair.bob.client
            val calls = AtomicInteger()
            val rooms = ConcurrentLinkedQueue<String>()
            val policy = AtomicReference(TrustPolicy.VERIFIED_ONLY)
            bob.setTrustPolicyProvider(
                TrustPolicyProvider { roomId ->
                    calls.incrementAndGet()
                    rooms += roomId
                    policy.get()
                },
            )
            coroutineScope {
                val updates = timelineUpdates(bob, pair.roomId)
                assertIs<TimelineUpdate.Initial>(withTimeout(10_000) { updates.receive() })
                bob.startSync()

                // alice is not verified: bob decrypts her message but the policy hides it.
                val first = "only for verified senders"
                val eventId = pair.alice.client.sendText(pair.roomId, first)
                val hidden = updates.awaitItem(what = "hidden message") { it.eventId == eventId }
                assertTrue(hidden.decrypted && hidden.hiddenByPolicy, hidden.describe())
                assertNull(hidden.body, hidden.describe())
                assertEquals(SenderTrust.DEVICE_ONLY, hidden.senderTrust)
                assertEquals(TrustPolicy.VERIFIED_ONLY, hidden.trustPolicy)
                assertTrue(calls.get() >= 1, "the provider was called")
                assertTrue(rooms.all { it == pair.roomId }, "asked only for the test room: $rooms")

                // alice cross-signs; bob verifies her identity: the message is shown.
                pair.alice.client.bootstrapCrossSigning()
                val identity = assertNotNull(bob.identity(pair.alice.user.userId), "alice's identity")
                assertFalse(identity.verified)
                assertTrue(bob.verifyIdentity(pair.alice.user.userId))
                val shown = updates.awaitUpdate(what = "the message, shown") { it.eventId == eventId && !it.hiddenByPolicy }
                assertEquals(first, shown.body, shown.describe())
                assertEquals(SenderTrust.VERIFIED, shown.senderTrust)

                bob.setTrustPolicyProvider(null)
                bob.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }
}
