// Shared helpers of the JVM integration tests (run by scripts/kotlin-test.sh against a real
// Synapse, see that script for the environment it provides).
package org.newt.sdk

import java.io.File
import java.nio.file.Files
import java.util.concurrent.ConcurrentLinkedQueue
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlin.test.fail
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.channels.ReceiveChannel
import kotlinx.coroutines.flow.produceIn
import kotlinx.coroutines.withTimeoutOrNull
import uniffi.newt_ffi.ClientConfig
import uniffi.newt_ffi.KeyTransferListener
import uniffi.newt_ffi.NewtClient
import uniffi.newt_ffi.Session
import uniffi.newt_ffi.StoreKey
import uniffi.newt_ffi.TimelineItem
import uniffi.newt_ffi.TimelineUpdate

object TestEnv {
    private fun setting(env: String, prop: String): String? =
        System.getProperty(prop)?.takeIf { it.isNotEmpty() } ?: System.getenv(env)?.takeIf { it.isNotEmpty() }

    private fun required(env: String, prop: String): String =
        setting(env, prop) ?: fail("$env (or -D$prop) is not set: run the tests with scripts/kotlin-test.sh")

    /** Base URL of the Synapse started by scripts/kotlin-test.sh. */
    val homeserver: String by lazy { required("NEWT_HOMESERVER", "newt.homeserver").trimEnd('/') }

    /** The directory Synapse was started in (for `scripts/synapse.sh register`). */
    val synapseDir: String by lazy { required("NEWT_SYNAPSE_DIR", "newt.synapse.dir") }

    val repoRoot: String by lazy { required("NEWT_REPO_ROOT", "newt.repo.root") }

    /** Where the tests put client stores; removed by the script. */
    val tmpRoot: File by lazy {
        File(setting("NEWT_KOTLIN_TMP", "newt.kotlin.tmp") ?: System.getProperty("java.io.tmpdir")).also { it.mkdirs() }
    }

    /** Distinctive, so a leak into the logs is easy to find. */
    const val PASSWORD = "Pw-kotlin-s3cret-9f1c27"
    const val STORE_PASSPHRASE = "store-passphrase-kotlin"

    private val runId = java.lang.Long.toString(System.currentTimeMillis() % 1_000_000_000L, 36)
    private val counter = AtomicInteger()

    fun uniqueName(prefix: String) = "${prefix}_${runId}_${counter.incrementAndGet()}"

    fun newStoreDir(name: String): String = Files.createTempDirectory(tmpRoot.toPath(), "$name-").toString()

    /** Registers `@localpart:localhost` with scripts/synapse.sh; returns the user id. */
    fun register(localpart: String, password: String = PASSWORD): String {
        val process =
            ProcessBuilder("bash", "$repoRoot/scripts/synapse.sh", "register", synapseDir, localpart, password)
                .redirectErrorStream(true)
                .start()
        val output = process.inputStream.bufferedReader().readText()
        if (!process.waitFor(60, TimeUnit.SECONDS)) {
            process.destroyForcibly()
            fail("synapse.sh register $localpart timed out")
        }
        if (process.exitValue() != 0) fail("synapse.sh register $localpart failed: $output")
        return output.lines().map { it.trim() }.last { it.startsWith("@") }
    }
}

/** A registered account. */
data class TestUser(val localpart: String, val userId: String, val password: String = TestEnv.PASSWORD) {
    companion object {
        fun register(prefix: String): TestUser {
            val localpart = TestEnv.uniqueName(prefix)
            return TestUser(localpart, TestEnv.register(localpart))
        }
    }
}

fun config(
    storeDir: String,
    homeserver: String = TestEnv.homeserver,
    passphrase: String = TestEnv.STORE_PASSPHRASE,
) = ClientConfig(homeserver = homeserver, storeDir = storeDir, storeKey = StoreKey.Passphrase(passphrase))

/** Opens a client (the one place that knows how the generated API constructs one). */
suspend fun openClient(config: ClientConfig): NewtClient = NewtClient.create(config)

/** Closes everything added to it, last added first. */
class Resources : AutoCloseable {
    private val items = ArrayDeque<AutoCloseable>()

    fun <T : AutoCloseable> add(item: T): T = item.also { items.addFirst(it) }

    override fun close() {
        var first: Throwable? = null
        while (items.isNotEmpty()) {
            try {
                items.removeFirst().close()
            } catch (t: Throwable) {
                if (first == null) first = t
            }
        }
        first?.let { throw it }
    }
}

/** A logged-in client on a fresh store. */
class LoggedIn(val user: TestUser, val client: NewtClient, val session: Session, val storeDir: String)

suspend fun Resources.login(
    user: TestUser,
    homeserver: String = TestEnv.homeserver,
    storeDir: String = TestEnv.newStoreDir(user.localpart),
): LoggedIn {
    val client = add(openClient(config(storeDir, homeserver)))
    val session = client.loginPassword(user.localpart, user.password, null)
    return LoggedIn(user, client, session, storeDir)
}

/** alice and bob, logged in, in an encrypted room alice created and bob joined. */
class RoomPair(val alice: LoggedIn, val bob: LoggedIn, val roomId: String)

suspend fun Resources.roomPair(aliceHomeserver: String = TestEnv.homeserver): RoomPair {
    val alice = login(TestUser.register("alice"), aliceHomeserver)
    val bob = login(TestUser.register("bob"))
    // First syncs: device keys and one-time keys are uploaded.
    bob.client.syncOnce(0uL)
    alice.client.syncOnce(0uL)
    val roomId = alice.client.createEncryptedRoom("kotlin test", listOf(bob.user.userId))
    bob.client.syncOnce(0uL)
    kotlin.test.assertEquals(roomId, bob.client.joinRoom(roomId))
    bob.client.syncOnce(0uL)
    alice.client.syncOnce(0uL)
    return RoomPair(alice, bob, roomId)
}

/** The room's [timeline] Flow collected into a channel in [scope] (cancel the scope's children to stop). */
fun CoroutineScope.timelineUpdates(client: NewtClient, roomId: String): ReceiveChannel<TimelineUpdate> =
    client.timeline(roomId).produceIn(this)

/** Waits for an Updated item matching [predicate], skipping other updates. */
suspend fun ReceiveChannel<TimelineUpdate>.awaitUpdate(
    timeoutMs: Long = 30_000,
    what: String = "timeline update",
    predicate: (TimelineItem) -> Boolean,
): TimelineItem = awaitMatching(timeoutMs, what, updated = true, predicate)

/** Waits for an Appended item matching [predicate], skipping other updates. */
suspend fun ReceiveChannel<TimelineUpdate>.awaitItem(
    timeoutMs: Long = 30_000,
    what: String = "timeline item",
    predicate: (TimelineItem) -> Boolean,
): TimelineItem = awaitMatching(timeoutMs, what, updated = false, predicate)

/** Waits for an Updated ([updated]) or Appended item matching [predicate]. */
private suspend fun ReceiveChannel<TimelineUpdate>.awaitMatching(
    timeoutMs: Long,
    what: String,
    updated: Boolean,
    predicate: (TimelineItem) -> Boolean,
): TimelineItem {
    val seen = mutableListOf<String>()
    val found =
        withTimeoutOrNull(timeoutMs) {
            var match: TimelineItem? = null
            while (match == null) {
                when (val update = receive()) {
                    is TimelineUpdate.Appended ->
                        if (!updated && predicate(update.item)) match = update.item else seen += update.item.describe()
                    is TimelineUpdate.EchoReplaced ->
                        if (!updated && predicate(update.item)) match = update.item else seen += "own " + update.item.describe()
                    is TimelineUpdate.LocalEcho, is TimelineUpdate.SendStateChanged -> {}
                    is TimelineUpdate.Updated ->
                        if (updated && predicate(update.item)) match = update.item else seen += "updated " + update.item.describe()
                    is TimelineUpdate.Initial -> update.items.forEach { seen += "initial " + it.describe() }
                }
            }
            match
        }
    return found ?: fail("no $what within ${timeoutMs}ms; saw: $seen")
}

fun TimelineItem.describe() =
    "[$eventId from $sender type=$eventType decrypted=$decrypted body=${body?.let { "\"$it\"" }} error=$error " +
        "policy=$trustPolicy senderTrust=$senderTrust hidden=$hiddenByPolicy legacy=$legacy " +
        "waitingForKey=$waitingForKey]"

/** Polls [condition] until it holds or [timeoutMs] passed. */
suspend fun eventually(timeoutMs: Long = 10_000, what: String, condition: suspend () -> Boolean) {
    val deadline = System.nanoTime() + timeoutMs * 1_000_000
    while (!condition()) {
        if (System.nanoTime() > deadline) fail("timed out after ${timeoutMs}ms waiting for $what")
        kotlinx.coroutines.delay(50)
    }
}

/** Records each progress report (called on a Newt worker thread). */
internal class ProgressRecorder(val reports: ConcurrentLinkedQueue<Pair<ULong, ULong>>) : KeyTransferListener {
    override fun onProgress(done: ULong, total: ULong) {
        reports += done to total
    }
}

/**
 * The newest version of each item of a timeline (by event id), whichever update brought it
 * (Initial, Appended, Updated); [updated] holds the ids that came as Updated.
 */
internal class LatestItems(private val updates: ReceiveChannel<TimelineUpdate>) {
    val latest = mutableMapOf<String, TimelineItem>()
    val updated = mutableSetOf<String>()
    private val seen = mutableListOf<String>()

    private fun take(update: TimelineUpdate) {
        when (update) {
            is TimelineUpdate.Initial -> update.items.forEach { put(it, "initial") }
            is TimelineUpdate.Appended -> put(update.item, "appended")
            is TimelineUpdate.EchoReplaced -> put(update.item, "own")
            is TimelineUpdate.Updated -> {
                put(update.item, "updated")
                updated += update.item.eventId
            }
            is TimelineUpdate.LocalEcho, is TimelineUpdate.SendStateChanged -> {}
        }
    }

    private fun put(item: TimelineItem, how: String) {
        latest[item.eventId] = item
        seen += "$how ${item.describe()}"
    }

    /** Takes the updates already delivered. */
    fun drain() {
        while (true) take(updates.tryReceive().getOrNull() ?: return)
    }

    /** Takes updates (calling [sync] between rounds, if given) until [done] holds. */
    suspend fun await(
        timeoutMs: Long,
        what: String,
        sync: (suspend () -> Unit)? = null,
        done: (Map<String, TimelineItem>) -> Boolean,
    ): Map<String, TimelineItem> {
        val reached =
            withTimeoutOrNull(timeoutMs) {
                drain()
                while (!done(latest)) {
                    if (sync != null) {
                        sync()
                        drain()
                    } else {
                        take(updates.receive())
                    }
                }
                true
            }
        if (reached == null) fail("no $what within ${timeoutMs}ms; saw: $seen")
        return latest.toMap()
    }
}
