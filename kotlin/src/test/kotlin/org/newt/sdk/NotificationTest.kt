package org.newt.sdk

import java.io.File
import java.util.concurrent.TimeUnit
import kotlin.test.assertEquals
import kotlin.test.assertTrue
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout

/**
 * A push notification decrypted in a second JVM process (as an Android push handler or an
 * iOS notification service extension would), on the store of a Kotlin client that keeps
 * syncing meanwhile.
 */
class NotificationTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    /** Runs NotificationProcess.kt in a new JVM with this one's classpath and library path. */
    private suspend fun decryptInAnotherProcess(storeDir: String, roomId: String, eventId: String): List<String> =
        withContext(Dispatchers.IO) {
            val java = File(System.getProperty("java.home"), "bin/java").path
            val process =
                ProcessBuilder(
                    java,
                    "-Xmx64m",
                    "-Djna.library.path=${System.getProperty("jna.library.path")}",
                    "-cp",
                    System.getProperty("java.class.path"),
                    "org.newt.sdk.NotificationProcessKt",
                    TestEnv.homeserver,
                    storeDir,
                    TestEnv.STORE_PASSPHRASE,
                    roomId,
                    eventId,
                ).redirectErrorStream(true).start()
            val finished = process.waitFor(60, TimeUnit.SECONDS)
            val output = process.inputStream.bufferedReader().readLines()
            assertTrue(finished, "the notification process did not finish: $output")
            assertEquals(0, process.exitValue(), "the notification process failed: $output")
            output
        }

    @Test
    fun `a notification is decrypted in another process while the app syncs`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val bob = pair.bob.client
            bob.startSync()
            for (i in 1..3) {
                val text = "push number $i"
                val eventId = pair.alice.client.sendText(pair.roomId, text)
                val output = decryptInAnotherProcess(pair.bob.storeDir, pair.roomId, eventId)
                assertTrue("BODY:$text" in output, "decrypted in the other process: $output")
                assertTrue("SENDER:${pair.alice.user.userId}" in output, "$output")
                assertTrue("ENCRYPTED:true" in output, "$output")
            }
            bob.stopSync()
        }
    }
}
