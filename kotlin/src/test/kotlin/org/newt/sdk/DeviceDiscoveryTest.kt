package org.newt.sdk

import kotlin.test.assertNotEquals
import kotlin.test.assertTrue
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.runBlocking
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout

class DeviceDiscoveryTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `a new device of a tracked user gets the next room key without app action`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val alice = pair.alice.client
            alice.sendText(pair.roomId, "before the new device")
            // bob logs in on a second device; alice already tracks bob.
            val phone = res.login(pair.bob.user)
            assertNotEquals(pair.bob.session.deviceId, phone.session.deviceId)
            phone.client.syncOnce(0uL)
            coroutineScope {
                val updates = timelineUpdates(phone.client, pair.roomId)
                alice.syncOnce(0uL) // device_lists.changed names bob
                val text = "after the new device"
                alice.sendText(pair.roomId, text)
                phone.client.startSync()
                val item = updates.awaitItem(what = "alice's message on bob's new device") { it.body == text }
                assertTrue(item.decrypted, item.describe())
                phone.client.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }
}
