package org.newt.sdk

import java.lang.management.ManagementFactory
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlinx.coroutines.TimeoutCancellationException
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.NewtClient
import uniffi.newt_ffi.NewtException

class LifecycleTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `close is idempotent and later calls throw Closed`() = runBlocking {
        Resources().use { res ->
            val user = TestUser.register("closer")
            val client = res.login(user).client
            val sub = client.subscribeTimeline("!nowhere:localhost", object : uniffi.newt_ffi.TimelineListener {
                override fun onUpdate(update: uniffi.newt_ffi.TimelineUpdate) {}
            })
            sub.close()
            sub.close()
            client.startSync()
            client.close()
            client.close()
            assertFailsWith<NewtException.Closed> { client.syncOnce(0uL) }
            assertFailsWith<NewtException.Closed> { client.ownFingerprint() }
            assertFailsWith<NewtException.Closed> { client.sendText("!room:localhost", "x") }
            assertFailsWith<NewtException.Closed> { client.startSync() }
        }
    }

    @Test
    fun `cancelling a coroutine cancels the Rust call`() = runBlocking {
        Resources().use { res ->
            val client = res.login(TestUser.register("cancel")).client
            client.syncOnce(0uL) // now there is a sync token: the next sync long-polls
            val started = System.nanoTime()
            assertFailsWith<TimeoutCancellationException> { withTimeout(500) { client.syncOnce(30_000uL) } }
            val elapsedMs = (System.nanoTime() - started) / 1_000_000
            assertTrue(elapsedMs < 5_000, "the 30 s long poll was cancelled promptly (${elapsedMs}ms)")
            // The client is still usable afterwards.
            client.syncOnce(0uL)
        }
    }

    @Test
    fun `creating and closing 50 clients releases threads and memory`() = runBlocking {
        val rt = Runtime.getRuntime()
        suspend fun cycle(n: Int) = repeat(n) { i ->
            openClient(config(TestEnv.newStoreDir("cycle$i"))).use { client ->
                client.restoreSession()
                client.subscribeTimeline("!x:localhost", object : uniffi.newt_ffi.TimelineListener {
                    override fun onUpdate(update: uniffi.newt_ffi.TimelineUpdate) {}
                }).close()
            }
        }
        suspend fun settle(): Pair<Int, Long> {
            repeat(3) { System.gc(); delay(100) }
            return ManagementFactory.getThreadMXBean().threadCount to (rt.totalMemory() - rt.freeMemory())
        }
        cycle(5) // warm up: runtime, JNA, callback threads
        val (threads0, heap0) = settle()
        val rss0 = rssKb()
        cycle(50)
        var (threads1, heap1) = settle()
        val deadline = System.nanoTime() + 5_000_000_000L
        while (threads1 > threads0 + 2 && System.nanoTime() < deadline) {
            delay(200)
            threads1 = ManagementFactory.getThreadMXBean().threadCount
        }
        val rss1 = rssKb()
        println("      threads $threads0 -> $threads1, heap ${heap0 / 1024}K -> ${heap1 / 1024}K, rss ${rss0}K -> ${rss1}K")
        assertTrue(threads1 <= threads0 + 2, "threads back near the baseline: $threads0 -> $threads1")
        assertTrue(heap1 - heap0 < 32L * 1024 * 1024, "heap grew by ${(heap1 - heap0) / 1024}K")
        if (rss0 > 0 && rss1 > 0) assertTrue(rss1 - rss0 < 150_000, "RSS grew by ${rss1 - rss0}K")
    }

    private fun rssKb(): Long =
        try {
            java.io.File("/proc/self/status").readLines().first { it.startsWith("VmRSS:") }
                .split(Regex("\\s+"))[1].toLong()
        } catch (_: Exception) {
            -1
        }
}
