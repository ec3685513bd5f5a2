package org.newt.sdk

import java.util.concurrent.ConcurrentLinkedQueue
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertIs
import kotlin.test.assertNotEquals
import kotlin.test.assertTrue
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.DeviceDecision
import uniffi.newt_ffi.DeviceInfo
import uniffi.newt_ffi.DeviceTrust
import uniffi.newt_ffi.Prompt
import uniffi.newt_ffi.PromptAnswer
import uniffi.newt_ffi.SecretText
import uniffi.newt_ffi.TimelineUpdate

class PromptTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `deleteDevice asks the prompt handler for the password`() = runBlocking<Unit> {
        Resources().use { res ->
            val user = TestUser.register("alice")
            val first = res.login(user)
            val second = res.login(user) // another store: a second device
            assertNotEquals(first.session.deviceId, second.session.deviceId)
            first.client.syncOnce(0uL)
            eventually(what = "the second device in devices()") {
                first.client.devices(user.userId).any { it.deviceId == second.session.deviceId }
            }

            val prompts = ConcurrentLinkedQueue<Prompt>()
            first.client.setPromptHandler(
                PromptHandler { prompt ->
                    prompts += prompt
                    when (prompt) {
                        is Prompt.Password -> PromptAnswer.Password(SecretText(user.password))
                        else -> PromptAnswer.Dismissed
                    }
                },
            )
            first.client.deleteDevice(second.session.deviceId)

            val asked = prompts.filterIsInstance<Prompt.Password>()
            assertEquals(1, asked.size, "one password prompt: $prompts")
            assertEquals(user.userId, asked.single().userId)

            // After a resync the deleted device is gone from devices(), or kept with deleted=true
            // (Newt remembers deleted devices so their old messages still show who sent them).
            var last: List<DeviceInfo> = emptyList()
            try {
                eventually(timeoutMs = 15_000, what = "the deleted device to leave devices()") {
                    first.client.syncOnce(0uL)
                    last = first.client.devices(user.userId)
                    last.none { it.deviceId == second.session.deviceId && !it.deleted }
                }
            } catch (e: AssertionError) {
                throw AssertionError("${e.message}; devices(): ${last.map { "${it.deviceId} deleted=${it.deleted} trust=${it.trust}" }}")
            }
            println("      devices() after deletion: ${last.map { "${it.deviceId} deleted=${it.deleted}" }}")
            first.client.setPromptHandler(null)
        }
    }

    @Test
    fun `new devices answered VERIFIED get the room key`() = runBlocking<Unit> {
        newDevicesScenario(DeviceTrust.VERIFIED)
    }

    @Test
    fun `new devices answered BLACKLISTED do not get the room key`() = runBlocking<Unit> {
        newDevicesScenario(DeviceTrust.BLACKLISTED)
    }

    private suspend fun newDevicesScenario(answer: DeviceTrust) = Resources().use { res ->
        val pair = res.roomPair()
        val alice = pair.alice.client
        val bob = pair.bob.client
        val asked = ConcurrentLinkedQueue<DeviceInfo>()
        alice.setAskAboutNewDevices(true)
        alice.setPromptHandler(
            PromptHandler { prompt ->
                when (prompt) {
                    is Prompt.NewDevices -> {
                        asked += prompt.devices
                        PromptAnswer.DeviceDecisions(prompt.devices.map { DeviceDecision(it.userId, it.deviceId, answer) })
                    }
                    else -> PromptAnswer.Dismissed
                }
            },
        )
        coroutineScope {
            val updates = timelineUpdates(bob, pair.roomId)
            assertIs<TimelineUpdate.Initial>(withTimeout(10_000) { updates.receive() })
            bob.startSync()

            val text = "after deciding $answer"
            val eventId = alice.sendText(pair.roomId, text)
            val bobDevice = asked.singleOrNull { it.userId == pair.bob.user.userId }
            assertTrue(bobDevice != null, "bob's device was in Prompt.NewDevices: $asked")
            assertEquals(pair.bob.session.deviceId, bobDevice.deviceId)
            assertEquals(DeviceTrust.UNSET, bobDevice.trust)
            assertFalse(asked.any { it.userId == pair.alice.user.userId && it.deviceId == pair.alice.session.deviceId },
                "alice's own device is not asked about")

            val item = updates.awaitItem(what = "alice's event at bob") { it.eventId == eventId }
            if (answer == DeviceTrust.BLACKLISTED) {
                assertFalse(item.decrypted, "a blacklisted device must not decrypt: ${item.describe()}")
                assertEquals(null, item.body)
                assertTrue(item.error != null, "an undecryptable item says why")
            } else {
                assertTrue(item.decrypted, item.describe())
                assertEquals(text, item.body)
            }
            val trust = alice.devices(pair.bob.user.userId).single { it.deviceId == pair.bob.session.deviceId }.trust
            assertEquals(answer, trust, "the decision is stored")
            bob.stopSync()
            coroutineContext.cancelChildren()
        }
    }
}
