package org.newt.sdk

import java.util.concurrent.ConcurrentLinkedQueue
import kotlin.test.assertTrue
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.LogLevel
import uniffi.newt_ffi.LogRecord
import uniffi.newt_ffi.setLogger

class LoggerTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(90)

    @Test
    fun `a Kotlin logger receives Newt's events without secrets or message text`() = runBlocking<Unit> {
        val records = ConcurrentLinkedQueue<LogRecord>()
        val threads = ConcurrentLinkedQueue<String>()
        setLogger(
            Logger { record ->
                records += record
                threads += Thread.currentThread().name
            },
            LogLevel.DEBUG,
        )
        val text = "kotlin logger secret text 7d2e"
        try {
            Resources().use { res ->
                val pair = res.roomPair()
                pair.alice.client.sendText(pair.roomId, text)
                pair.bob.client.syncOnce(0uL)
            }
        } finally {
            setLogger(null, LogLevel.ERROR)
        }
        val all = records.toList()
        assertTrue(all.isNotEmpty(), "no log records arrived")
        assertTrue(all.any { it.target.startsWith("newt") }, "no record with a newt* target: ${all.take(5)}")
        assertTrue(all.none { it.level == LogLevel.TRACE }, "TRACE records at level DEBUG")
        val secrets = listOf(TestEnv.PASSWORD, text, TestEnv.STORE_PASSPHRASE)
        val leaks = all.filter { r -> secrets.any { r.message.contains(it) || r.target.contains(it) } }
        assertTrue(leaks.isEmpty(), "records contain a secret or the message text: $leaks")

        // Removed: no more records.
        delay(300)
        val before = records.size
        Resources().use { res -> res.login(TestUser.register("quiet")).client.syncOnce(0uL) }
        delay(300)
        assertTrue(records.size == before, "records arrived after setLogger(null): ${records.drop(before).take(5)}")
        println("      logger: ${all.size} records, targets ${all.map { it.target }.toSet().take(8)}, threads ${threads.toSet().take(4)}")
    }
}
