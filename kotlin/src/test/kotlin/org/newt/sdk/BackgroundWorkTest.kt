package org.newt.sdk

import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs
import kotlin.test.assertTrue
import kotlin.test.fail
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.NewtException
import uniffi.newt_ffi.TimelineUpdate
import uniffi.newt_ffi.WakeupRequest

class BackgroundWorkTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `a send that fails offline schedules a wakeup and runDueWork delivers it`() = runBlocking<Unit> {
        Resources().use { res ->
            val proxy = res.add(TcpProxy(TestEnv.homeserver))
            val pair = res.roomPair(aliceHomeserver = proxy.url)
            val alice = pair.alice.client
            val bob = pair.bob.client
            assertTrue(proxy.accepted > 0, "alice talks to the homeserver through the proxy")
            val requests = LinkedBlockingQueue<WakeupRequest>()
            alice.setBackgroundScheduler(BackgroundScheduler { requests += it })

            coroutineScope {
                val updates = timelineUpdates(bob, pair.roomId)
                assertIs<TimelineUpdate.Initial>(withTimeout(10_000) { updates.receive() })
                bob.startSync()

                proxy.online = false
                val text = "sent while offline"
                val started = System.nanoTime()
                val error = assertFailsWith<NewtException.Network> { withTimeout(60_000) { alice.sendText(pair.roomId, text) } }
                println("      offline sendText failed after %.1fs: %s".format((System.nanoTime() - started) / 1e9, error.details))

                val request = requests.poll(10, TimeUnit.SECONDS) ?: fail("no WakeupRequest after the failed send")
                println("      wakeup request: $request (${requests.size} more)")
                val all = listOf(request) + requests.toList()
                assertTrue(all.any { it.requiresNetwork }, "a request needs the network: $all")

                proxy.online = true
                // The app's wake-up (e.g. a WorkManager worker) runs the pending work. Newt runs
                // it when asked, also before delayMs passed: no need to wait here.
                assertTrue(all.filter { it.requiresNetwork }.all { it.delayMs > 0uL }, "a retry waits a little: $all")
                val report = alice.runDueWork()
                println("      runDueWork: $report")
                assertTrue(report.completed >= 1u, "completed: $report")
                assertEquals(0u, report.remaining, "remaining: $report")

                val item = updates.awaitItem(what = "the retried message at bob") { it.body == text }
                assertTrue(item.decrypted, item.describe())
                assertEquals(pair.alice.user.userId, item.sender)

                alice.setBackgroundScheduler(null)
                bob.stopSync()
                coroutineContext.cancelChildren()
            }
        }
    }
}
