import Foundation
import XCTest
import Newt

/// Mirrors the first test of kotlin/src/test/kotlin/org/newt/sdk/SendingTest.kt. Needs
/// `NEWT_HOMESERVER`.
///
/// Issue 12: an encrypted attachment is queued; its local echo and states (queued,
/// uploading with rising progress, sending, sent) arrive through the timeline stream, and
/// bob downloads the file, checked against its hash.
final class SendingTests: XCTestCase {

    override func setUp() {
        super.setUp()
        executionTimeAllowance = 120
    }

    func testAnEncryptedAttachmentGoesOutWithItsStatesAndBobDownloadsIt() async throws {
        let hs = try homeserverOrSkip()
        let pair = try await roomPair(self, homeserver: hs)
        let dir = try temporaryStoreDir(self)
        let picture = Data((0..<(300 * 1024)).map { _ in UInt8.random(in: 0...255) })
        let path = dir + "/newt.png"
        try picture.write(to: URL(fileURLWithPath: path))

        // Subscribed before queueing: no state is missed.
        let updates = try pair.alice.client.timelineUpdates(roomId: pair.roomId)
        let bobUpdates = try pair.bob.client.timelineUpdates(roomId: pair.roomId)
        try pair.alice.client.startSync()
        try pair.bob.client.startSync()
        let txn = try await pair.alice.client.queueAttachment(
            roomId: pair.roomId, path: path, mimetype: "image/png", name: "newt.png")

        var states: [SendState] = []
        var eventId: String?
        for await update in updates {
            switch update {
            case .localEcho(let echo) where echo.transactionId == txn:
                states.append(echo.state)
            case .sendStateChanged(let id, let state) where id == txn:
                states.append(state)
                if case .sent(let sent?) = state { eventId = sent }
            case .echoReplaced(let id, let item) where id == txn:
                eventId = item.eventId
            default:
                break
            }
            if eventId != nil { break }
        }
        XCTAssertEqual(states.first, .queued, "\(states)")
        let uploads = states.compactMap { state -> UInt64? in
            if case .uploading(let sent, _) = state { return sent }
            return nil
        }
        XCTAssertGreaterThanOrEqual(uploads.count, 4, "\(states)")
        XCTAssertEqual(uploads, uploads.sorted(), "rising progress")
        let sentId = try XCTUnwrap(eventId)

        let item = try await firstAppended(in: bobUpdates, what: "the picture at bob") { $0.eventId == sentId }
        XCTAssertTrue(item.decrypted)
        XCTAssertEqual(item.body, "newt.png")
        let out = dir + "/downloaded.png"
        let size = try await pair.bob.client.downloadAttachment(
            contentJson: item.contentJson, path: out, maxBytes: 1_000_000)
        XCTAssertEqual(size, UInt64(picture.count))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out)), picture)

        do {
            try await pair.alice.client.cancelSend(transactionId: txn)
            XCTFail("a sent message is no longer queued")
        } catch NewtError.NotQueued(let transactionId) {
            XCTAssertEqual(transactionId, txn)
        }
        try await pair.alice.client.stopSync()
        try await pair.bob.client.stopSync()
    }
}
