package org.newt.sdk

import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertTrue
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.runBlocking
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.DecryptionFailure
import uniffi.newt_ffi.DeviceTrust
import uniffi.newt_ffi.NewtException
import uniffi.newt_ffi.RoomKeyRotation
import uniffi.newt_ffi.SharingPolicy
import uniffi.newt_ffi.TimelineUpdate

/** Who gets room keys and when they rotate, set from Kotlin. */
class SharingPolicyTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `verified-only sharing withholds the key from an unverified device until it is verified`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val alice = pair.alice.client
            val bob = pair.bob.client
            alice.setShareWithVerifiedOnly(true)
            coroutineScope {
                val updates = timelineUpdates(bob, pair.roomId)
                kotlin.test.assertIs<TimelineUpdate.Initial>(updates.receive())
                val withheld = alice.sendText(pair.roomId, "only for verified devices")
                bob.startSync()
                val first = updates.awaitItem(what = "the withheld message at bob") { it.eventId == withheld }
                assertFalse(first.decrypted, first.describe())
                assertTrue(first.error?.contains("m.unverified") == true, "the reason is given: ${first.describe()}")
                val failure = first.failure
                assertTrue(
                    failure is DecryptionFailure.Withheld && failure.code == "m.unverified",
                    "the reason is typed: $failure",
                )
                assertTrue(alice.devicesWithoutOlm(pair.roomId).isEmpty(), "bob has an Olm channel, only no trust")

                alice.setDeviceTrust(pair.bob.user.userId, pair.bob.session.deviceId, DeviceTrust.VERIFIED)
                val text = "bob is verified now"
                val shared = alice.sendText(pair.roomId, text)
                val second = updates.awaitItem(what = "the message after verification") { it.eventId == shared }
                assertTrue(second.decrypted, second.describe())
                assertEquals(text, second.body)
                bob.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }

    @Test
    fun `a room with its own rotation settings works and bad settings are refused`() = runBlocking<Unit> {
        Resources().use { res ->
            val alice = res.login(TestUser.register("alice"))
            val bob = res.login(TestUser.register("bob"))
            bob.client.syncOnce(0uL)
            alice.client.syncOnce(0uL)
            assertFailsWith<NewtException.InvalidInput> {
                alice.client.createEncryptedRoomWithRotation(null, emptyList(), RoomKeyRotation(periodMs = 0uL, messages = 10uL))
            }
            val room =
                alice.client.createEncryptedRoomWithRotation("rotating", listOf(bob.user.userId), RoomKeyRotation(3_600_000uL, 2uL))
            bob.client.syncOnce(0uL)
            assertEquals(room, bob.client.joinRoom(room))
            bob.client.syncOnce(0uL)
            alice.client.syncOnce(0uL)
            coroutineScope {
                val updates = timelineUpdates(bob.client, room)
                val texts = (1..5).map { "message $it" }
                val ids = texts.map { alice.client.sendText(room, it) }
                bob.client.startSync()
                for ((id, text) in ids.zip(texts)) {
                    val item = updates.awaitItem(what = text) { it.eventId == id }
                    assertTrue(item.decrypted, "every rotated session reaches bob: ${item.describe()}")
                    assertEquals(text, item.body)
                }
                bob.client.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }

    @Test
    fun `a room's cross-signed-only policy withholds the key until bob cross-signs his device`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val alice = pair.alice.client
            val bob = pair.bob.client
            alice.setRoomSharingPolicy(pair.roomId, SharingPolicy.CROSS_SIGNED_ONLY)
            assertEquals(SharingPolicy.CROSS_SIGNED_ONLY, alice.sharingPolicy(pair.roomId))
            coroutineScope {
                val updates = timelineUpdates(bob, pair.roomId)
                kotlin.test.assertIs<TimelineUpdate.Initial>(updates.receive())
                val withheld = alice.sendText(pair.roomId, "only for cross-signed devices")
                bob.startSync()
                val first = updates.awaitItem(what = "the withheld message at bob") { it.eventId == withheld }
                val failure = first.failure
                assertTrue(
                    failure is DecryptionFailure.Withheld && failure.code == "m.unverified",
                    "withheld until cross-signed: ${first.describe()}",
                )

                // bob cross-signs his device; alice learns it with his device list.
                bob.bootstrapCrossSigning()
                alice.syncOnce(0uL)
                val text = "bob is cross-signed now"
                val shared = alice.sendText(pair.roomId, text)
                val second = updates.awaitItem(what = "the message after cross-signing") { it.eventId == shared }
                assertTrue(second.decrypted, second.describe())
                assertEquals(text, second.body)

                // Back to the global policy.
                alice.setRoomSharingPolicy(pair.roomId, null)
                assertEquals(SharingPolicy.ALL_BUT_BLACKLISTED, alice.sharingPolicy(pair.roomId))
                bob.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }
}
