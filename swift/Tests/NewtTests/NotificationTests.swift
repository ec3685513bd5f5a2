import Foundation
import XCTest
import Newt

/// Mirrors kotlin/src/test/kotlin/org/newt/sdk/NotificationTest.kt (there the decryptor runs
/// in a second JVM; here in the test process, as an app's own push handler would). Needs
/// `NEWT_HOMESERVER`.
///
/// A push notification is decrypted by a `NotificationDecryptor` on the store of a client
/// that keeps syncing meanwhile.
final class NotificationTests: XCTestCase {

    override func setUp() {
        super.setUp()
        executionTimeAllowance = 120 // enforced when test timeouts are enabled
    }

    func testANotificationIsDecryptedBesideTheSyncingApp() async throws {
        let hs = try homeserverOrSkip()
        let storeDir = try temporaryStoreDir(self)
        let pair = try await roomPair(self, homeserver: hs, bobStoreDir: storeDir)
        try pair.bob.client.startSync()
        let decryptor = try await NotificationDecryptor.open(config: testConfig(homeserver: hs, storeDir: storeDir))
        for i in 1...3 {
            let text = "push number \(i)"
            let eventId = try await pair.alice.client.sendText(roomId: pair.roomId, body: text)
            let notification = try await decryptor.decrypt(
                roomId: pair.roomId, eventId: eventId, eventJson: nil, budgetMs: 20_000)
            XCTAssertEqual(notification.body, text)
            XCTAssertEqual(notification.sender, pair.alice.session.userId)
            XCTAssertTrue(notification.encrypted)
        }
        try await pair.bob.client.stopSync()
    }
}
