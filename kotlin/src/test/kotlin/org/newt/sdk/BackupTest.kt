package org.newt.sdk

import java.util.concurrent.ConcurrentLinkedQueue
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertIs
import kotlin.test.assertNotEquals
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.runBlocking
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.BackupProblem
import uniffi.newt_ffi.BackupState
import uniffi.newt_ffi.BackupStateListener
import uniffi.newt_ffi.NewtException
import uniffi.newt_ffi.Prompt
import uniffi.newt_ffi.PromptAnswer
import uniffi.newt_ffi.SecretText
import uniffi.newt_ffi.TimelineUpdate

/**
 * Recovery with the server-side key backup, through the prompt interface: alice sets up a
 * backup (setUpRecovery shows the recovery key as Prompt.NewRecoveryKey), her room keys are
 * uploaded to it, and a new device of hers restores them with recover(), which asks for the
 * recovery key (Prompt.RecoveryKey; asked again, with the reason, after a typo). bob's earlier
 * messages, which that device could not read, then arrive again decrypted as
 * TimelineUpdate.Updated. A key that is not one, another account's backup key, and a dismissed
 * prompt restore nothing.
 */
class BackupTest {
    // Generous: a 2-core machine, with other builds running at the same time.
    @get:Rule val timeout: Timeout = Timeout.seconds(300)

    @Test
    fun `restore from backup with the recovery key through the prompt interface`() = runBlocking<Unit> {
        Resources().use { res ->
            val pair = res.roomPair()
            val alice = pair.alice.client
            val bob = pair.bob.client

            // alice sets up recovery: the key is shown through the prompt handler.
            val shown = ConcurrentLinkedQueue<Prompt>()
            alice.setPromptHandler(
                PromptHandler { prompt ->
                    shown += prompt
                    PromptAnswer.Dismissed // the answer to NewRecoveryKey is ignored; anything else declined
                },
            )
            assertEquals(BackupState.Disabled, alice.backupState(), "no backup before setting one up")
            assertNull(alice.recoveryKey(), "no recovery key before setting one up")
            // The state as it changes, from before the set-up.
            val states = ConcurrentLinkedQueue<BackupState>()
            res.add(
                alice.subscribeBackup(
                    object : BackupStateListener {
                        override fun onState(state: BackupState) {
                            states += state
                        }
                    },
                ),
            )
            eventually(what = "the current state first") { states.isNotEmpty() }
            assertEquals(BackupState.Disabled, states.first(), "the current state first: $states")
            alice.setUpRecovery()
            val newKeyPrompts = shown.filterIsInstance<Prompt.NewRecoveryKey>()
            assertEquals(1, newKeyPrompts.size, "one NewRecoveryKey prompt: ${shown.map { it::class.simpleName }}")
            val shownKey = newKeyPrompts.single().recoveryKey
            val recoveryKey = shownKey.expose()
            // Printing the prompt (a log line, say) does not print the key.
            assertFalse(newKeyPrompts.single().toString().contains(recoveryKey), "$shownKey")
            assertEquals("<redacted>", shownKey.toString())
            assertTrue(recoveryKey.isNotBlank(), "a recovery key was shown")
            assertTrue(recoveryKey.split(' ').all { it.length <= 4 }, "groups of four characters")
            assertEquals(recoveryKey, alice.recoveryKey(), "recoveryKey() shows the same key again")
            val version = assertIs<BackupState.Enabled>(alice.backupState(), "a backup is set up").version

            // bob sends two messages (one Megolm session) and alice one (her own session):
            // alice reads them all, so she holds two sessions to back up.
            val bobTexts = listOf("before the backup, one", "before the backup, two")
            val aliceText = "alice, before the new device"
            val (bobIds, aliceId) =
                coroutineScope {
                    val updates = timelineUpdates(alice, pair.roomId)
                    alice.startSync()
                    val ids = bobTexts.map { bob.sendText(pair.roomId, it) }
                    for ((text, id) in bobTexts.zip(ids)) {
                        val item = updates.awaitItem(90_000, "\"$text\" at alice") { it.eventId == id }
                        assertTrue(item.decrypted, item.describe())
                        assertEquals(text, item.body, item.describe())
                    }
                    val own = alice.sendText(pair.roomId, aliceText)
                    alice.stopSync()
                    coroutineContext.cancelChildren()
                    ids to own
                }
            // Neither syncs any more: the new device can get the keys only from the backup (no
            // key request is answered, no new room key is sent to it).
            bob.stopSync()

            alice.uploadBackup() // whatever the background upload left
            val uploaded = alice.backupState()
            assertEquals(BackupState.Enabled(version, 0uL), uploaded, "everything uploaded")
            eventually(what = "the subscription saw the uploads") {
                states.contains(BackupState.Enabled(version, 0uL)) &&
                    states.any { it is BackupState.Enabled && it.pending > 0uL }
            }
            val info = assertNotNull(alice.backupInfo(), "the server has a backup")
            assertEquals(version, info.version, "$info")
            assertEquals("m.megolm_backup.v1.curve25519-aes-sha2", info.algorithm, "$info")
            assertTrue(info.trusted, "signed by this device: $info")
            assertTrue(info.ours, "this device uploads to it: $info")
            assertTrue(info.count >= 2uL, "bob's session and alice's own: $info")

            // Another account's backup key: a valid recovery key, but not the key of alice's backup.
            val bobKey = bob.enableBackup()
            assertNotEquals(recoveryKey, bobKey)

            // alice logs in on a new device: the messages are there, not decrypted.
            val laptop = res.login(pair.alice.user)
            val device = laptop.client
            val eventIds = bobIds + aliceId
            coroutineScope {
                val items = LatestItems(timelineUpdates(device, pair.roomId))
                val before =
                    items.await(90_000, "the messages on the new device", sync = { device.syncOnce(300uL) }) { latest ->
                        eventIds.all { it in latest }
                    }
                for (id in eventIds) {
                    val item = before.getValue(id)
                    assertFalse(item.decrypted, "the new device cannot read it yet: ${item.describe()}")
                    assertTrue(item.waitingForKey, "a missing key may still arrive: ${item.describe()}")
                }
                assertEquals(BackupState.Disabled, device.backupState(), "no backup on the new device yet")
                assertNull(device.recoveryKey())
                val seenByDevice = assertNotNull(device.backupInfo(), "the new device sees alice's backup")
                assertEquals(version, seenByDevice.version)
                assertFalse(seenByDevice.ours, "the new device does not upload to it yet: $seenByDevice")

                // Refused, with nothing restored.
                val notAKey =
                    assertFailsWith<NewtException.Backup> { device.restoreBackup("not a recovery key", null, null) }
                assertEquals(BackupProblem.INVALID_RECOVERY_KEY, notAKey.reason, notAKey.details)
                val wrongKey = assertFailsWith<NewtException.Backup> { device.restoreBackup(bobKey, null, null) }
                assertEquals(BackupProblem.WRONG_RECOVERY_KEY, wrongKey.reason, wrongKey.details)
                assertFailsWith<NewtException.InvalidInput> { device.restoreBackup(recoveryKey, "not a room id", null) }

                // The user dismisses the prompt: PromptDismissed, asked once.
                val dismissed = ConcurrentLinkedQueue<Prompt>()
                device.setPromptHandler(
                    PromptHandler { prompt ->
                        dismissed += prompt
                        PromptAnswer.Dismissed
                    },
                )
                assertFailsWith<NewtException.PromptDismissed> { device.recover() }
                assertEquals(listOf<Prompt>(Prompt.RecoveryKey(null)), dismissed.toList(), "asked once, no error yet")

                items.drain()
                for (id in eventIds) {
                    val item = items.latest.getValue(id)
                    assertFalse(item.decrypted, "nothing restored: ${item.describe()}")
                }
                assertEquals(BackupState.Disabled, device.backupState(), "still no backup on the new device")

                // A typo first (a '0' is not in the recovery key's alphabet), then the right key.
                val typo = recoveryKey.substring(0, 5) + "0" + recoveryKey.substring(6)
                val asked = ConcurrentLinkedQueue<Prompt.RecoveryKey>()
                device.setPromptHandler(
                    PromptHandler { prompt ->
                        when (prompt) {
                            is Prompt.RecoveryKey -> {
                                asked += prompt
                                PromptAnswer.RecoveryKey(SecretText(if (asked.size == 1) typo else recoveryKey))
                            }
                            else -> PromptAnswer.Dismissed
                        }
                    },
                )
                val summary = device.recover()
                val prompts = asked.toList()
                assertEquals(2, prompts.size, "asked twice: ${prompts.map { it.previousError }}")
                assertNull(prompts[0].previousError, "the first time, no error")
                val why = assertNotNull(prompts[1].previousError, "the second time says why the first answer failed")
                assertTrue(why.isNotBlank(), "a reason in words")
                assertFalse(why.contains(typo) || why.contains(recoveryKey), "the reason does not repeat the key: $why")
                assertTrue(summary.imported >= 2uL, "bob's session and alice's own: $summary")
                assertEquals(0uL, summary.refused, "$summary")
                assertEquals(summary.total, summary.imported + summary.alreadyKnown, "$summary")

                // The messages arrive again, decrypted.
                val after =
                    items.await(90_000, "the messages decrypted on the new device") { latest ->
                        eventIds.all { latest[it]?.decrypted == true }
                    }
                for ((id, text) in bobIds.zip(bobTexts) + (aliceId to aliceText)) {
                    val item = after.getValue(id)
                    assertEquals(text, item.body, item.describe())
                    assertTrue(item.legacy, "a session from the backup is legacy: ${item.describe()}")
                    assertEquals(null, item.failure, item.describe())
                    assertFalse(item.waitingForKey, item.describe())
                }
                for (id in bobIds) assertEquals(pair.bob.user.userId, after.getValue(id).sender)
                assertEquals(pair.alice.user.userId, after.getValue(aliceId).sender)
                assertTrue(eventIds.all { it in items.updated }, "delivered as Updated: ${items.updated}")

                // The new device now uses the same backup, with the same recovery key.
                val state = assertIs<BackupState.Enabled>(device.backupState(), "the new device uses the backup")
                assertEquals(version, state.version)
                assertEquals(recoveryKey, device.recoveryKey())
                assertEquals(true, device.backupInfo()?.ours, "the new device uploads to it now")

                // One room again, with a progress listener: nothing new.
                val progress = ConcurrentLinkedQueue<Pair<ULong, ULong>>()
                val again = device.restoreBackup(recoveryKey, pair.roomId, ProgressRecorder(progress))
                assertEquals(summary.total, again.total, "$again")
                assertEquals(0uL, again.imported, "$again")
                assertEquals(again.total, again.alreadyKnown, "$again")
                assertEquals(again.total to again.total, progress.lastOrNull(), "done == total at the end: $progress")
                device.setPromptHandler(null)
                coroutineContext.cancelChildren()
            }
            alice.setPromptHandler(null)
        }
    }
}
