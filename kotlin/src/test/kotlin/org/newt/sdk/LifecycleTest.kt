package org.newt.sdk

import java.lang.management.ManagementFactory
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.ClientConfig
import uniffi.newt_ffi.StoreKey
import uniffi.newt_ffi.NewtException
import uniffi.newt_ffi.TimelineListener
import uniffi.newt_ffi.TimelineUpdate

class LifecycleTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    @Test
    fun `shutdown and close are idempotent and later calls fail`() = runBlocking<Unit> {
        Resources().use { res ->
            val user = TestUser.register("closer")
            val client = res.login(user).client
            val listener = object : TimelineListener {
                override fun onUpdate(update: TimelineUpdate) {}
            }
            client.subscribeTimeline("!nowhere:localhost", listener).use { sub ->
                sub.cancel()
                sub.cancel()
            }
            client.subscribeTimeline("!nowhere:localhost", listener).close()
            client.startSync()

            // shutdown() (the Rust `close`): stops sync and subscriptions, releases the store.
            client.shutdown()
            client.shutdown()
            assertFailsWith<NewtException.Closed> { client.syncOnce(0uL) }
            assertFailsWith<NewtException.Closed> { client.ownFingerprint() }
            assertFailsWith<NewtException.Closed> { client.sendText("!room:localhost", "x") }
            assertFailsWith<NewtException.Closed> { client.startSync() }
            assertEquals(null, client.session())

            // close() (AutoCloseable, what use {} calls): releases the Rust object itself.
            client.close()
            client.close()
            assertFailsWith<IllegalStateException> { client.syncOnce(0uL) }
        }

        // close() alone, on a syncing client, is enough (the Rust object's drop stops it).
        Resources().use { res ->
            val client = res.login(TestUser.register("closer2")).client
            client.startSync()
            client.close()
            assertFailsWith<IllegalStateException> { client.startSync() }
        }
    }

    @Test
    fun `shutdown waits for the sync loop and releases the store for a new client`() = runBlocking<Unit> {
        Resources().use { res ->
            val login = res.login(TestUser.register("reopen"))
            val client = login.client
            val fingerprint = client.ownFingerprint()
            client.startSync()
            client.syncOnce(0uL)
            // Suspends until the loop has ended and the store is released.
            withTimeout(30_000) { client.shutdown() }
            assertFailsWith<NewtException.Closed> { client.syncOnce(0uL) }
            withTimeout(10_000) { client.shutdown() } // idempotent, returns at once

            // The same store, opened again in this process: same device, same keys.
            val again = res.add(openClient(config(login.storeDir)))
            assertEquals(login.session, again.restoreSession())
            assertEquals(fingerprint, again.ownFingerprint())
            again.syncOnce(0uL)
            again.shutdown()
        }
    }

    @Test
    fun `cancelling a coroutine cancels the Rust call`() = runBlocking<Unit> {
        Resources().use { res ->
            // Through a proxy that sees whether a request is still waiting for its answer.
            val proxy = res.add(TcpProxy(TestEnv.homeserver))
            val client = res.login(TestUser.register("cancel"), homeserver = proxy.url).client
            client.syncOnce(0uL) // now there is a sync token: the next sync long-polls
            assertEquals(0, proxy.pendingRequests)

            val poll = launch { client.syncOnce(30_000uL) }
            eventually(what = "the long poll to reach the server") { proxy.pendingRequests == 1 }
            delay(300)
            assertEquals(1, proxy.pendingRequests, "the long poll is waiting for news")
            val started = System.nanoTime()
            poll.cancelAndJoin()
            val elapsedMs = (System.nanoTime() - started) / 1_000_000
            assertTrue(elapsedMs < 2_000, "the coroutine was cancelled promptly (${elapsedMs}ms)")
            // Rust dropped the request: its connection is closed long before the 30 s poll ends.
            eventually(timeoutMs = 5_000, what = "the cancelled /sync request to be dropped") { proxy.pendingRequests == 0 }
            // The client is still usable afterwards.
            client.syncOnce(0uL)
        }
    }

    @Test
    fun `creating and closing 50 clients releases threads and memory`() = runBlocking<Unit> {
        val rt = Runtime.getRuntime()
        suspend fun cycle(n: Int) = repeat(n) { i ->
            // A raw 32-byte key: no PBKDF2 stretching, so 50 clients stay quick.
            val cfg = ClientConfig(TestEnv.homeserver, TestEnv.newStoreDir("cycle$i"), StoreKey.Bytes(ByteArray(32) { it.toByte() }))
            openClient(cfg).use { client ->
                client.restoreSession()
                client.subscribeTimeline("!x:localhost", object : TimelineListener {
                    override fun onUpdate(update: TimelineUpdate) {}
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
