package org.newt.sdk

import java.io.File
import java.util.concurrent.ConcurrentLinkedQueue
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
import uniffi.newt_ffi.KeyFileProblem
import uniffi.newt_ffi.NewtException
import uniffi.newt_ffi.TimelineUpdate

/**
 * Recovery with a key export file (the spec's format, which Element reads and writes): alice
 * exports her room keys, a new device of hers imports them, and bob's earlier messages, which
 * that device could not read, arrive again decrypted as TimelineUpdate.Updated. A wrong
 * passphrase and a file that is not an export are refused, with nothing imported.
 */
class KeyExportTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(240)

    @Test
    fun `a new device reads earlier messages after importing the keys another device exported`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val alice = pair.alice.client
            val bob = pair.bob.client
            val texts = listOf("before the export, one", "before the export, two")

            // bob sends two messages; alice reads them (and so holds bob's room key).
            val eventIds =
                coroutineScope {
                    val updates = timelineUpdates(alice, pair.roomId)
                    alice.startSync()
                    val ids = texts.map { bob.sendText(pair.roomId, it) }
                    for ((text, id) in texts.zip(ids)) {
                        val item = updates.awaitItem(60_000, "\"$text\" at alice") { it.eventId == id }
                        assertTrue(item.decrypted, item.describe())
                        assertEquals(text, item.body, item.describe())
                    }
                    alice.stopSync()
                    coroutineContext.cancelChildren()
                    ids
                }
            // Neither syncs any more: the new device can get the keys only from the file (no key
            // request is answered, no new room key is sent to it).
            bob.stopSync()

            val dir = TestEnv.newStoreDir("key-export")
            val export = File(dir, "element-keys.txt")
            val passphrase = "export-passphrase-kotlin"
            val exportProgress = ConcurrentLinkedQueue<Pair<ULong, ULong>>()
            val count = alice.exportRoomKeys(export.path, passphrase, null, ProgressRecorder(exportProgress))
            assertTrue(count >= 1uL, "at least bob's session: $count")
            assertTrue(export.isFile && export.length() > 0, "the export is written")
            assertTrue(
                export.readText().startsWith("-----BEGIN MEGOLM SESSION DATA-----"),
                "the spec's armour: ${export.readText().take(60)}",
            )
            assertTrue(exportProgress.isNotEmpty(), "export progress was reported")
            assertEquals(count to count, exportProgress.last(), "done == total == count at the end: $exportProgress")
            assertTrue(exportProgress.all { (done, total) -> done <= total }, "$exportProgress")
            assertEquals(listOf(export.name), File(dir).list()!!.toList(), "no part file left beside it")
            // Only this room: the same sessions (alice is in no other room).
            val roomOnly = File(dir, "room-keys.txt")
            assertEquals(count, alice.exportRoomKeys(roomOnly.path, passphrase, listOf(pair.roomId), null))

            // alice logs in on a new device: bob's messages are there, not decrypted.
            val laptop = res.login(pair.alice.user)
            coroutineScope {
                val items = LatestItems(timelineUpdates(laptop.client, pair.roomId))
                val before =
                    items.await(60_000, "bob's messages on the new device", sync = { laptop.client.syncOnce(300uL) }) { latest ->
                        eventIds.all { it in latest }
                    }
                for (id in eventIds) {
                    val item = before.getValue(id)
                    assertFalse(item.decrypted, "the new device cannot read it yet: ${item.describe()}")
                    assertTrue(item.waitingForKey, "a missing key may still arrive: ${item.describe()}")
                }

                // Refused, with nothing imported.
                val wrong =
                    assertFailsWith<NewtException.KeyFileRefused> {
                        laptop.client.importRoomKeys(export.path, "not the passphrase", null)
                    }
                assertEquals(KeyFileProblem.WRONG_PASSPHRASE, wrong.reason, wrong.details)
                val notes = File(dir, "notes.txt").apply { writeText("these are not room keys\n".repeat(20)) }
                val notKeys =
                    assertFailsWith<NewtException.KeyFileRefused> {
                        laptop.client.importRoomKeys(notes.path, passphrase, null)
                    }
                assertEquals(KeyFileProblem.NOT_A_KEY_FILE, notKeys.reason, notKeys.details)
                assertFailsWith<NewtException.File> {
                    laptop.client.importRoomKeys(File(dir, "missing.txt").path, passphrase, null)
                }
                items.drain()
                for (id in eventIds) {
                    assertFalse(items.latest.getValue(id).decrypted, "nothing imported: ${items.latest.getValue(id).describe()}")
                }

                // The right passphrase: the messages arrive again, decrypted.
                val importProgress = ConcurrentLinkedQueue<Pair<ULong, ULong>>()
                val summary = laptop.client.importRoomKeys(export.path, passphrase, ProgressRecorder(importProgress))
                assertEquals(count, summary.total, "$summary")
                assertEquals(count, summary.imported + summary.alreadyKnown, "$summary")
                assertEquals(0uL, summary.refused, "$summary")
                assertTrue(summary.imported >= 1uL, "bob's session is new on this device: $summary")
                val fileBytes = export.length().toULong()
                assertEquals(2uL * fileBytes to 2uL * fileBytes, importProgress.last(), "both passes read: $importProgress")
                assertTrue(importProgress.zipWithNext().all { (a, b) -> a.first <= b.first }, "rising: $importProgress")

                val after =
                    items.await(60_000, "bob's messages decrypted on the new device") { latest ->
                        eventIds.all { latest[it]?.decrypted == true }
                    }
                for ((id, text) in eventIds.zip(texts)) {
                    val item = after.getValue(id)
                    assertEquals(text, item.body, item.describe())
                    assertEquals(pair.bob.user.userId, item.sender)
                    assertTrue(item.legacy, "a session from a key export is legacy: ${item.describe()}")
                    assertEquals(null, item.failure, item.describe())
                    assertFalse(item.waitingForKey, item.describe())
                }
                assertTrue(eventIds.all { it in items.updated }, "delivered as Updated: ${items.updated}")

                // The same file again: nothing new.
                val again = laptop.client.importRoomKeys(export.path, passphrase, null)
                assertEquals(count, again.total, "$again")
                assertEquals(0uL, again.imported, "$again")
                assertEquals(count, again.alreadyKnown, "$again")
                coroutineContext.cancelChildren()
            }
        }
    }
}
