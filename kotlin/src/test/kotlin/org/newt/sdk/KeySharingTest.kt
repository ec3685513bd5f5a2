package org.newt.sdk

import java.util.concurrent.ConcurrentLinkedQueue
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertTrue
import kotlin.test.fail
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.DeviceDecision
import uniffi.newt_ffi.DeviceInfo
import uniffi.newt_ffi.DeviceTrust
import uniffi.newt_ffi.Prompt
import uniffi.newt_ffi.PromptAnswer
import uniffi.newt_ffi.PromptHandler
import uniffi.newt_ffi.TimelineItem
import uniffi.newt_ffi.TimelineUpdate

/**
 * Seed 004, key sharing between own devices: a new device that cannot read earlier messages
 * asks the user's other device, whose app asks the user (Prompt.KeyShareRequest); once the
 * user verifies the new device, the key is forwarded and the new device's timeline gets the
 * message again as TimelineUpdate.Updated, now decrypted.
 */
class KeySharingTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `a new own device gets old keys once the user verifies it in the prompt`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val phone = pair.alice
            val text = "before the laptop"
            val eventId = pair.bob.client.sendText(pair.roomId, text)
            val asked = ConcurrentLinkedQueue<DeviceInfo>()
            phone.client.setPromptHandler(
                PromptHandler { prompt ->
                    when (prompt) {
                        is Prompt.KeyShareRequest -> {
                            asked += prompt.device
                            PromptAnswer.DeviceDecisions(
                                listOf(DeviceDecision(prompt.device.userId, prompt.device.deviceId, DeviceTrust.VERIFIED)),
                            )
                        }
                        else -> PromptAnswer.Dismissed
                    }
                },
            )

            // alice logs in on a laptop: bob's earlier message is undecryptable there.
            val laptop = res.login(phone.user)
            eventually(what = "the laptop to know the phone") {
                laptop.client.devices(phone.user.userId).any { it.deviceId == phone.session.deviceId }
            }
            laptop.client.setDeviceTrust(phone.user.userId, phone.session.deviceId, DeviceTrust.VERIFIED)

            coroutineScope {
                val updates = timelineUpdates(laptop.client, pair.roomId)
                val seen = mutableListOf<String>()
                var before: TimelineItem? = null
                var after: TimelineItem? = null
                withTimeoutOrNull(60_000) {
                    while (after == null) {
                        phone.client.syncOnce(300uL)
                        laptop.client.syncOnce(300uL)
                        while (true) {
                            val update = updates.tryReceive().getOrNull() ?: break
                            when (update) {
                                is TimelineUpdate.Initial -> update.items.filter { it.eventId == eventId }.forEach { before = it }
                                is TimelineUpdate.Appended -> if (update.item.eventId == eventId) before = update.item
                                is TimelineUpdate.Updated -> if (update.item.eventId == eventId) after = update.item
                                else -> {}
                            }
                            seen += update.toString()
                        }
                    }
                }
                val first = before ?: fail("the laptop never showed bob's message; saw $seen")
                assertFalse(first.decrypted, "the laptop could not read it at first: ${first.describe()}")
                assertTrue(first.waitingForKey, "a missing key may still arrive: ${first.describe()}")
                val healed = after ?: fail("no Updated item for bob's message; saw $seen")
                assertTrue(healed.decrypted, healed.describe())
                assertEquals(text, healed.body)
                coroutineContext.cancelChildren()
            }
            assertEquals(listOf(laptop.session.deviceId), asked.map { it.deviceId }, "asked once, about the laptop")
            assertEquals(DeviceTrust.UNSET, asked.single().trust)
            val stored = phone.client.devices(phone.user.userId).single { it.deviceId == laptop.session.deviceId }
            assertEquals(DeviceTrust.VERIFIED, stored.trust, "the user's answer is stored")
            phone.client.setPromptHandler(null)
        }
    }
}
