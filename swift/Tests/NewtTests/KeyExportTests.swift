import Foundation
import XCTest
import Newt

/// Mirrors kotlin/src/test/kotlin/org/newt/sdk/KeyExportTest.kt. Needs `NEWT_HOMESERVER`.
///
/// Recovery with a key export file (the spec's format, which Element reads and writes): alice
/// exports her room keys, a new device of hers imports them, and bob's earlier messages,
/// which that device could not read, arrive again decrypted as `TimelineUpdate.updated`. A
/// wrong passphrase and a file that is not an export are refused, with nothing imported.
final class KeyExportTests: XCTestCase {

    override func setUp() {
        super.setUp()
        executionTimeAllowance = 240 // enforced when test timeouts are enabled
    }

    func testNewDeviceReadsEarlierMessagesAfterImportingTheKeysAnotherDeviceExported() async throws {
        let hs = try homeserverOrSkip()
        let pair = try await roomPair(self, homeserver: hs)
        let alice = pair.alice.client
        let bob = pair.bob.client
        let texts = ["before the export, one", "before the export, two"]

        // bob sends two messages; alice reads them (and so holds bob's room key).
        let aliceUpdates = try alice.timelineUpdates(roomId: pair.roomId)
        try alice.startSync()
        var sent: [String] = []
        for text in texts {
            sent.append(try await bob.sendText(roomId: pair.roomId, body: text))
        }
        let eventIds = sent
        for (text, id) in zip(texts, eventIds) {
            let item = try await firstAppended(in: aliceUpdates, timeout: 60, what: "\"\(text)\" at alice") {
                $0.eventId == id
            }
            XCTAssertTrue(item.decrypted, "\(item)")
            XCTAssertEqual(item.body, text, "\(item)")
        }
        try await alice.stopSync()
        // Neither syncs any more: the new device can get the keys only from the file (no key
        // request is answered, no new room key is sent to it).
        try await bob.stopSync()

        let dir = try temporaryStoreDir(self)
        let export = dir + "/element-keys.txt"
        let passphrase = "export-passphrase-swift"
        let exportProgress = ProgressRecorder()
        let count = try await alice.exportRoomKeys(
            path: export, passphrase: passphrase, roomIds: nil, listener: exportProgress)
        XCTAssertGreaterThanOrEqual(count, 1, "at least bob's session")
        let armoured = try String(contentsOfFile: export, encoding: .utf8)
        XCTAssertTrue(armoured.hasPrefix("-----BEGIN MEGOLM SESSION DATA-----"),
                      "the spec's armour: \(armoured.prefix(60))")
        let exportReports = exportProgress.reports.all
        let lastExport = try XCTUnwrap(exportReports.last, "export progress was reported")
        XCTAssertEqual(lastExport, TransferReport(done: count, total: count),
                       "done == total == count at the end: \(exportReports)")
        XCTAssertTrue(exportReports.allSatisfy { $0.done <= $0.total }, "\(exportReports)")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["element-keys.txt"],
                       "no part file left beside it")
        // Only this room: the same sessions (alice is in no other room).
        let roomOnly = try await alice.exportRoomKeys(
            path: dir + "/room-keys.txt", passphrase: passphrase, roomIds: [pair.roomId], listener: nil)
        XCTAssertEqual(roomOnly, count)

        // alice logs in on a new device: bob's messages are there, not decrypted.
        let laptop = try await login(self, homeserver: hs, user: pair.alice.user, password: pair.alice.password)
        let updates = try laptop.client.timelineUpdates(roomId: pair.roomId)
        let seen = Recorded<TimelineUpdate>()
        let consumer = Task {
            for await update in updates { seen.append(update) }
        }
        defer { consumer.cancel() } // ends the stream and closes the subscription

        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let latest = latestItems(seen.all)
            if eventIds.allSatisfy({ latest[$0] != nil }) { break }
            try await laptop.client.syncOnce(timeoutMs: 300)
        }
        let before = latestItems(seen.all)
        for id in eventIds {
            let item = try XCTUnwrap(before[id], "bob's message \(id) never reached the new device; saw \(seen.all)")
            XCTAssertFalse(item.decrypted, "the new device cannot read it yet: \(item)")
            XCTAssertTrue(item.waitingForKey, "a missing key may still arrive: \(item)")
        }

        // Refused, with nothing imported.
        do {
            _ = try await laptop.client.importRoomKeys(path: export, passphrase: "not the passphrase", listener: nil)
            XCTFail("a wrong passphrase is refused")
        } catch NewtError.KeyFileRefused(let reason, let details) {
            XCTAssertEqual(reason, .wrongPassphrase, details)
        }
        let notes = dir + "/notes.txt"
        try String(repeating: "these are not room keys\n", count: 20)
            .write(toFile: notes, atomically: true, encoding: .utf8)
        do {
            _ = try await laptop.client.importRoomKeys(path: notes, passphrase: passphrase, listener: nil)
            XCTFail("a file that is not an export is refused")
        } catch NewtError.KeyFileRefused(let reason, let details) {
            XCTAssertEqual(reason, .notAKeyFile, details)
        }
        do {
            _ = try await laptop.client.importRoomKeys(path: dir + "/missing.txt", passphrase: passphrase, listener: nil)
            XCTFail("a file that is not there cannot be imported")
        } catch NewtError.File(let details) {
            XCTAssertFalse(details.isEmpty)
        }
        let refused = latestItems(seen.all)
        for id in eventIds {
            XCTAssertEqual(refused[id]?.decrypted, false, "nothing imported: \(String(describing: refused[id]))")
        }

        // The right passphrase: the messages arrive again, decrypted.
        let importProgress = ProgressRecorder()
        let summary = try await laptop.client.importRoomKeys(
            path: export, passphrase: passphrase, listener: importProgress)
        XCTAssertEqual(summary.total, count, "\(summary)")
        XCTAssertEqual(summary.imported + summary.alreadyKnown, count, "\(summary)")
        XCTAssertEqual(summary.refused, 0, "\(summary)")
        XCTAssertGreaterThanOrEqual(summary.imported, 1, "bob's session is new on this device: \(summary)")
        let size = try XCTUnwrap(
            try FileManager.default.attributesOfItem(atPath: export)[.size] as? NSNumber).uint64Value
        let importReports = importProgress.reports.all
        XCTAssertEqual(importReports.last, TransferReport(done: 2 * size, total: 2 * size),
                       "both passes read: \(importReports)")
        XCTAssertEqual(importReports.map(\.done), importReports.map(\.done).sorted(), "rising: \(importReports)")

        try await eventually("bob's messages decrypted on the new device", timeout: 60) {
            let latest = latestItems(seen.all)
            return eventIds.allSatisfy { latest[$0]?.decrypted == true }
        }
        let after = latestItems(seen.all)
        let updated = updatedIds(seen.all)
        for (id, text) in zip(eventIds, texts) {
            let item = try XCTUnwrap(after[id])
            XCTAssertEqual(item.body, text, "\(item)")
            XCTAssertEqual(item.sender, pair.bob.session.userId)
            XCTAssertTrue(item.legacy, "a session from a key export is legacy: \(item)")
            XCTAssertNil(item.failure, "\(item)")
            XCTAssertFalse(item.waitingForKey, "\(item)")
            XCTAssertTrue(updated.contains(id), "delivered as .updated: \(updated)")
        }

        // The same file again: nothing new.
        let again = try await laptop.client.importRoomKeys(path: export, passphrase: passphrase, listener: nil)
        XCTAssertEqual(again.total, count, "\(again)")
        XCTAssertEqual(again.imported, 0, "\(again)")
        XCTAssertEqual(again.alreadyKnown, count, "\(again)")
    }
}
