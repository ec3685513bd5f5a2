import Foundation
import XCTest
import Newt

/// Mirrors kotlin/src/test/kotlin/org/newt/sdk/BackupTest.kt. Needs `NEWT_HOMESERVER`.
///
/// Recovery with the server-side key backup, through the prompt interface: alice sets up a
/// backup (`setUpRecovery` shows the recovery key as `Prompt.newRecoveryKey`), her room keys
/// are uploaded to it, and a new device of hers restores them with `recover()`, which asks for
/// the recovery key (`Prompt.recoveryKey`; asked again, with the reason, after a typo). bob's
/// earlier messages, which that device could not read, then arrive again decrypted as
/// `TimelineUpdate.updated`. A key that is not one, another account's backup key, and a
/// dismissed prompt restore nothing.
final class BackupTests: XCTestCase {

    override func setUp() {
        super.setUp()
        executionTimeAllowance = 300 // enforced when test timeouts are enabled
    }

    func testRestoreFromBackupWithTheRecoveryKeyThroughThePromptInterface() async throws {
        let hs = try homeserverOrSkip()
        let pair = try await roomPair(self, homeserver: hs)
        let alice = pair.alice.client
        let bob = pair.bob.client

        // alice sets up recovery: the key is shown through the prompt handler.
        let shown = RecordingPrompter()
        try alice.setPromptHandler(handler: shown)
        let stateBefore = try await alice.backupState()
        XCTAssertEqual(stateBefore, .disabled, "no backup before setting one up")
        let keyBefore = try await alice.recoveryKey()
        XCTAssertNil(keyBefore, "no recovery key before setting one up")
        // The state as it changes, from before the set-up.
        let states = BackupStateRecorder()
        let subscription = try alice.subscribeBackup(listener: states)
        defer { subscription.cancel() }
        try await eventually("the current state first") { !states.states.all.isEmpty }
        XCTAssertEqual(states.states.all.first, .disabled, "the current state first")
        try await alice.setUpRecovery()
        var newKeys: [String] = []
        for case .newRecoveryKey(let key) in shown.prompts.all {
            // Printing the prompt (a log line, say) does not print the key.
            XCTAssertEqual("\(key)", "<redacted>")
            newKeys.append(key.expose())
        }
        XCTAssertEqual(newKeys.count, 1, "one newRecoveryKey prompt: \(shown.prompts.all.count) prompts")
        let recoveryKey = try XCTUnwrap(newKeys.first, "a recovery key was shown")
        XCTAssertFalse(recoveryKey.isEmpty)
        XCTAssertTrue(recoveryKey.split(separator: " ").allSatisfy { $0.count <= 4 }, "groups of four characters")
        let keyAgain = try await alice.recoveryKey()
        XCTAssertEqual(keyAgain, recoveryKey, "recoveryKey() shows the same key again")
        let stateAfter = try await alice.backupState()
        guard case .enabled(let version, _) = stateAfter else {
            return XCTFail("a backup is set up: \(stateAfter)")
        }

        // bob sends two messages (one Megolm session) and alice one (her own session): alice
        // reads them all, so she holds two sessions to back up.
        let bobTexts = ["before the backup, one", "before the backup, two"]
        let aliceText = "alice, before the new device"
        let aliceUpdates = try alice.timelineUpdates(roomId: pair.roomId)
        try alice.startSync()
        var sent: [String] = []
        for text in bobTexts {
            sent.append(try await bob.sendText(roomId: pair.roomId, body: text))
        }
        let bobIds = sent
        for (text, id) in zip(bobTexts, bobIds) {
            let item = try await firstAppended(in: aliceUpdates, timeout: 90, what: "\"\(text)\" at alice") {
                $0.eventId == id
            }
            XCTAssertTrue(item.decrypted, "\(item)")
            XCTAssertEqual(item.body, text, "\(item)")
        }
        let aliceId = try await alice.sendText(roomId: pair.roomId, body: aliceText)
        try await alice.stopSync()
        // Neither syncs any more: the new device can get the keys only from the backup (no key
        // request is answered, no new room key is sent to it).
        try await bob.stopSync()

        _ = try await alice.uploadBackup() // whatever the background upload left
        let uploaded = try await alice.backupState()
        XCTAssertEqual(uploaded, .enabled(version: version, pending: 0), "everything uploaded")
        try await eventually("the subscription saw the uploads") {
            let seen = states.states.all
            let pendingSeen = seen.contains { state in
                if case .enabled(_, let pending) = state { return pending > 0 }
                return false
            }
            return seen.contains(.enabled(version: version, pending: 0)) && pendingSeen
        }
        let found = try await alice.backupInfo()
        let info = try XCTUnwrap(found, "the server has a backup")
        XCTAssertEqual(info.version, version, "\(info)")
        XCTAssertEqual(info.algorithm, "m.megolm_backup.v1.curve25519-aes-sha2", "\(info)")
        XCTAssertTrue(info.trusted, "signed by this device: \(info)")
        XCTAssertTrue(info.ours, "this device uploads to it: \(info)")
        XCTAssertGreaterThanOrEqual(info.count, 2, "bob's session and alice's own: \(info)")

        // Another account's backup key: a valid recovery key, but not the key of alice's backup.
        let bobKey = try await bob.enableBackup()
        XCTAssertNotEqual(bobKey, recoveryKey)

        // alice logs in on a new device: the messages are there, not decrypted.
        let laptop = try await login(self, homeserver: hs, user: pair.alice.user, password: pair.alice.password)
        let device = laptop.client
        let eventIds = bobIds + [aliceId]
        let updates = try device.timelineUpdates(roomId: pair.roomId)
        let seen = Recorded<TimelineUpdate>()
        let consumer = Task {
            for await update in updates { seen.append(update) }
        }
        defer { consumer.cancel() } // ends the stream and closes the subscription

        let deadline = Date().addingTimeInterval(90)
        while Date() < deadline {
            let latest = latestItems(seen.all)
            if eventIds.allSatisfy({ latest[$0] != nil }) { break }
            try await device.syncOnce(timeoutMs: 300)
        }
        let before = latestItems(seen.all)
        for id in eventIds {
            let item = try XCTUnwrap(before[id], "message \(id) never reached the new device; saw \(seen.all)")
            XCTAssertFalse(item.decrypted, "the new device cannot read it yet: \(item)")
            XCTAssertTrue(item.waitingForKey, "a missing key may still arrive: \(item)")
        }
        let deviceStateBefore = try await device.backupState()
        XCTAssertEqual(deviceStateBefore, .disabled, "no backup on the new device yet")
        let deviceKeyBefore = try await device.recoveryKey()
        XCTAssertNil(deviceKeyBefore)
        let foundByDevice = try await device.backupInfo()
        let seenByDevice = try XCTUnwrap(foundByDevice, "the new device sees alice's backup")
        XCTAssertEqual(seenByDevice.version, version)
        XCTAssertFalse(seenByDevice.ours, "the new device does not upload to it yet: \(seenByDevice)")

        // Refused, with nothing restored.
        do {
            _ = try await device.restoreBackup(recoveryKey: "not a recovery key", roomId: nil, listener: nil)
            XCTFail("a text that is not a recovery key is refused")
        } catch NewtError.Backup(let reason, let details) {
            XCTAssertEqual(reason, .invalidRecoveryKey, details)
        }
        do {
            _ = try await device.restoreBackup(recoveryKey: bobKey, roomId: nil, listener: nil)
            XCTFail("another backup's key is refused")
        } catch NewtError.Backup(let reason, let details) {
            XCTAssertEqual(reason, .wrongRecoveryKey, details)
        }
        do {
            _ = try await device.restoreBackup(recoveryKey: recoveryKey, roomId: "not a room id", listener: nil)
            XCTFail("an invalid room id is refused")
        } catch NewtError.InvalidInput {
        }

        // The user dismisses the prompt: promptDismissed, asked once.
        let dismissing = RecordingPrompter()
        try device.setPromptHandler(handler: dismissing)
        do {
            _ = try await device.recover()
            XCTFail("a dismissed prompt ends recover()")
        } catch NewtError.PromptDismissed {
        }
        // (Prompt is not Equatable: a prompt may hold a SecretText object.)
        let dismissedPrompts = dismissing.prompts.all
        XCTAssertEqual(dismissedPrompts.count, 1, "asked once")
        guard case .recoveryKey(let previousError)? = dismissedPrompts.first else {
            return XCTFail("not a recoveryKey prompt: \(dismissedPrompts)")
        }
        XCTAssertNil(previousError, "no error yet")
        let refused = latestItems(seen.all)
        for id in eventIds {
            XCTAssertEqual(refused[id]?.decrypted, false, "nothing restored: \(String(describing: refused[id]))")
        }
        let stillDisabled = try await device.backupState()
        XCTAssertEqual(stillDisabled, .disabled, "still no backup on the new device")

        // A typo first (a '0' is not in the recovery key's alphabet), then the right key.
        var typed = Array(recoveryKey)
        typed[5] = "0"
        let typo = String(typed)
        let typist = RecoveryKeyTypist(answers: [typo, recoveryKey])
        try device.setPromptHandler(handler: typist)
        let summary = try await device.recover()
        let asked = typist.asked.all
        XCTAssertEqual(asked.count, 2, "asked twice: \(asked)")
        if asked.count == 2 {
            XCTAssertNil(asked[0], "the first time, no error")
            let why = try XCTUnwrap(asked[1], "the second time says why the first answer failed")
            XCTAssertFalse(why.isEmpty, "a reason in words")
            XCTAssertFalse(why.contains(typo) || why.contains(recoveryKey), "the reason does not repeat the key: \(why)")
        }
        XCTAssertGreaterThanOrEqual(summary.imported, 2, "bob's session and alice's own: \(summary)")
        XCTAssertEqual(summary.refused, 0, "\(summary)")
        XCTAssertEqual(summary.imported + summary.alreadyKnown, summary.total, "\(summary)")

        // The messages arrive again, decrypted.
        try await eventually("the messages decrypted on the new device", timeout: 90) {
            let latest = latestItems(seen.all)
            return eventIds.allSatisfy { latest[$0]?.decrypted == true }
        }
        let after = latestItems(seen.all)
        let updated = updatedIds(seen.all)
        for (id, text) in Array(zip(bobIds, bobTexts)) + [(aliceId, aliceText)] {
            let item = try XCTUnwrap(after[id])
            XCTAssertEqual(item.body, text, "\(item)")
            XCTAssertTrue(item.legacy, "a session from the backup is legacy: \(item)")
            XCTAssertNil(item.failure, "\(item)")
            XCTAssertFalse(item.waitingForKey, "\(item)")
            XCTAssertTrue(updated.contains(id), "delivered as .updated: \(updated)")
        }
        for id in bobIds { XCTAssertEqual(after[id]?.sender, pair.bob.session.userId) }
        XCTAssertEqual(after[aliceId]?.sender, pair.alice.session.userId)

        // The new device now uses the same backup, with the same recovery key.
        let deviceState = try await device.backupState()
        guard case .enabled(let deviceVersion, _) = deviceState else {
            return XCTFail("the new device uses the backup: \(deviceState)")
        }
        XCTAssertEqual(deviceVersion, version)
        let deviceKey = try await device.recoveryKey()
        XCTAssertEqual(deviceKey, recoveryKey)
        let deviceInfo = try await device.backupInfo()
        XCTAssertEqual(deviceInfo?.ours, true, "the new device uploads to it now")

        // One room again, with a progress listener: nothing new.
        let progress = ProgressRecorder()
        let again = try await device.restoreBackup(recoveryKey: recoveryKey, roomId: pair.roomId, listener: progress)
        XCTAssertEqual(again.total, summary.total, "\(again)")
        XCTAssertEqual(again.imported, 0, "\(again)")
        XCTAssertEqual(again.alreadyKnown, again.total, "\(again)")
        let last = progress.reports.all.last
        XCTAssertEqual(last?.done, again.total, "done == total at the end")
        XCTAssertEqual(last?.total, again.total, "done == total at the end")
        try device.setPromptHandler(handler: nil)
        try alice.setPromptHandler(handler: nil)
    }
}

/// Records every prompt and dismisses it (the answer to `newRecoveryKey` is ignored).
private final class RecordingPrompter: PromptHandler, @unchecked Sendable {
    let prompts = Recorded<Prompt>()

    func onPrompt(prompt: Prompt) -> PromptAnswer {
        prompts.append(prompt)
        return .dismissed
    }
}

/// Answers each `recoveryKey` prompt with the next of `answers` (dismissed when none is left);
/// records the `previousError` of each.
private final class RecoveryKeyTypist: PromptHandler, @unchecked Sendable {
    let asked = Recorded<String?>()
    private let answers: [String]

    init(answers: [String]) { self.answers = answers }

    func onPrompt(prompt: Prompt) -> PromptAnswer {
        guard case .recoveryKey(let previousError) = prompt else { return .dismissed }
        let index = asked.all.count
        asked.append(previousError)
        return index < answers.count ? .recoveryKey(recoveryKey: SecretText(text: answers[index])) : .dismissed
    }
}

/// Records the backup states a subscription delivers.
private final class BackupStateRecorder: BackupStateListener, @unchecked Sendable {
    let states = Recorded<BackupState>()

    func onState(state: BackupState) {
        states.append(state)
    }
}
