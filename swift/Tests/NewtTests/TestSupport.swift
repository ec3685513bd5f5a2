import Foundation
import XCTest
import Newt

/// Homeserver for the end-to-end tests, e.g. a Synapse from `scripts/synapse.sh start DIR`
/// (open registration). Tests that need it are skipped when `NEWT_HOMESERVER` is unset.
func homeserverOrSkip() throws -> String {
    guard let url = ProcessInfo.processInfo.environment["NEWT_HOMESERVER"], !url.isEmpty else {
        throw XCTSkip("NEWT_HOMESERVER is not set")
    }
    return url
}

/// A port nothing listens on: requests fail fast with a network error.
let unreachableHomeserver = "http://127.0.0.1:9"

/// A fresh store directory, removed when the test ends.
func temporaryStoreDir(_ test: XCTestCase) throws -> String {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("newt-swift-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
    return dir.path
}

/// The configuration `makeClient` opens a store with (by default), e.g. for a
/// `NotificationDecryptor` on a client's store.
func testConfig(homeserver: String, storeDir: String) -> ClientConfig {
    ClientConfig(homeserver: homeserver, storeDir: storeDir,
                 storeKey: .passphrase(passphrase: "swift-test-key"))
}

func makeClient(_ test: XCTestCase, homeserver: String, storeDir: String? = nil,
                key: StoreKey = .passphrase(passphrase: "swift-test-key")) async throws -> NewtClient {
    let dir = try storeDir ?? temporaryStoreDir(test)
    let client = try await NewtClient.create(
        config: ClientConfig(homeserver: homeserver, storeDir: dir, storeKey: key))
    test.addTeardownBlock { await client.shutdown() }
    return client
}

/// Registers a new account through open registration (`m.login.dummy`); returns (user, password).
func registerUser(homeserver: String, prefix: String) async throws -> (user: String, password: String) {
    let user = "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
    let password = "pw-\(UUID().uuidString)"
    let url = URL(string: homeserver.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        + "/_matrix/client/v3/register")!
    var auth: [String: Any] = ["type": "m.login.dummy"]
    for _ in 0..<2 {
        var request = URLRequest(url: url)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = try JSONSerialization.data(withJSONObject: [
            "username": user, "password": password, "auth": auth, "inhibit_login": true,
        ] as [String: Any])
        let (data, response) = try await URLSession.shared.data(for: request)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        if status == 200 { return (user, password) }
        let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        guard status == 401, let session = json?["session"] as? String else {
            throw NSError(domain: "register", code: status, userInfo: [
                NSLocalizedDescriptionKey: String(decoding: data, as: UTF8.self),
            ])
        }
        auth["session"] = session
    }
    throw NSError(domain: "register", code: 0, userInfo: [NSLocalizedDescriptionKey: "registration did not finish"])
}

/// Waits until `condition` holds, polling; fails the test after `timeout` seconds. The
/// condition may be async (e.g. a `NewtClient` call); an error it throws ends the wait.
func eventually(_ what: String, timeout: TimeInterval = 30,
                file: StaticString = #filePath, line: UInt = #line,
                _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if try await condition() { return }
        if Date() > deadline {
            XCTFail("timed out waiting for \(what)", file: file, line: line)
            return
        }
        try await Task.sleep(nanoseconds: 100_000_000)
    }
}

/// Thread-safe list for values handed to callbacks on Newt worker threads.
final class Recorded<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [T] = []

    func append(_ item: T) {
        lock.lock(); defer { lock.unlock() }
        items.append(item)
    }

    var all: [T] {
        lock.lock(); defer { lock.unlock() }
        return items
    }
}

final class RecordingLogger: Logger, @unchecked Sendable {
    let records = Recorded<LogRecord>()
    func log(record: LogRecord) { records.append(record) }
}

final class FixedTrustPolicy: TrustPolicyProvider, @unchecked Sendable {
    let asked = Recorded<String>()
    let policy: TrustPolicy
    init(_ policy: TrustPolicy) { self.policy = policy }
    func policyForRoom(roomId: String) -> TrustPolicy {
        asked.append(roomId)
        return policy
    }
}

final class RecordingScheduler: BackgroundScheduler, @unchecked Sendable {
    let requests = Recorded<WakeupRequest>()
    func scheduleWakeup(request: WakeupRequest) { requests.append(request) }
}

final class PasswordPrompter: PromptHandler, @unchecked Sendable {
    let prompts = Recorded<Prompt>()
    let password: String
    init(password: String) { self.password = password }
    func onPrompt(prompt: Prompt) -> PromptAnswer {
        prompts.append(prompt)
        if case .password = prompt { return .password(password: SecretText(text: password)) }
        return .dismissed
    }
}

final class NoopListener: TimelineListener, @unchecked Sendable {
    func onUpdate(update: TimelineUpdate) {}
}

/// A logged-in client on a fresh store (closed when the test ends).
struct LoggedIn {
    let user: String
    let password: String
    let client: NewtClient
    let session: Session
}

func login(_ test: XCTestCase, homeserver: String, user: String, password: String,
           storeDir: String? = nil) async throws -> LoggedIn {
    let client = try await makeClient(test, homeserver: homeserver, storeDir: storeDir)
    let session = try await client.loginPassword(user: user, password: password, deviceId: nil)
    return LoggedIn(user: user, password: password, client: client, session: session)
}

/// alice and bob, logged in, in an encrypted room alice created and bob joined.
struct RoomPair {
    let alice: LoggedIn
    let bob: LoggedIn
    let roomId: String
}

func roomPair(_ test: XCTestCase, homeserver: String, bobStoreDir: String? = nil,
              file: StaticString = #filePath, line: UInt = #line) async throws -> RoomPair {
    let (aliceName, alicePassword) = try await registerUser(homeserver: homeserver, prefix: "alice")
    let (bobName, bobPassword) = try await registerUser(homeserver: homeserver, prefix: "bob")
    let alice = try await login(test, homeserver: homeserver, user: aliceName, password: alicePassword)
    let bob = try await login(test, homeserver: homeserver, user: bobName, password: bobPassword,
                              storeDir: bobStoreDir)
    // First syncs: device keys and one-time keys are uploaded.
    try await bob.client.syncOnce(timeoutMs: 0)
    try await alice.client.syncOnce(timeoutMs: 0)
    let roomId = try await alice.client.createEncryptedRoom(name: "swift test", invite: [bob.session.userId])
    try await bob.client.syncOnce(timeoutMs: 0)
    let joined = try await bob.client.joinRoom(roomIdOrAlias: roomId)
    XCTAssertEqual(joined, roomId, file: file, line: line)
    try await bob.client.syncOnce(timeoutMs: 0)
    try await alice.client.syncOnce(timeoutMs: 0)
    return RoomPair(alice: alice, bob: bob, roomId: roomId)
}

/// The first `.appended` item matching `match`, skipping other updates; throws after
/// `timeout` seconds, naming `what` and the updates seen.
func firstAppended(in updates: AsyncStream<TimelineUpdate>, timeout: TimeInterval = 30,
                   what: String = "a matching timeline item",
                   _ match: @escaping @Sendable (TimelineItem) -> Bool) async throws -> TimelineItem {
    try await firstItem(in: updates, timeout: timeout, what: what, updated: false, match)
}

/// The first `.updated` item matching `match` (an earlier item delivered again).
func firstUpdated(in updates: AsyncStream<TimelineUpdate>, timeout: TimeInterval = 30,
                  what: String = "a matching updated item",
                  _ match: @escaping @Sendable (TimelineItem) -> Bool) async throws -> TimelineItem {
    try await firstItem(in: updates, timeout: timeout, what: what, updated: true, match)
}

private func firstItem(in updates: AsyncStream<TimelineUpdate>, timeout: TimeInterval,
                       what: String, updated: Bool,
                       _ match: @escaping @Sendable (TimelineItem) -> Bool) async throws -> TimelineItem {
    let seen = Recorded<TimelineUpdate>()
    return try await withThrowingTaskGroup(of: TimelineItem?.self) { group in
        group.addTask {
            for await update in updates {
                switch update {
                case let .appended(item) where !updated && match(item): return item
                case let .echoReplaced(_, item) where !updated && match(item): return item
                case let .updated(item) where updated && match(item): return item
                default: seen.append(update)
                }
            }
            return nil
        }
        group.addTask {
            try await Task.sleep(nanoseconds: UInt64(timeout * 1_000_000_000))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let item = first else {
            throw TimedOut(what: what, seconds: timeout, seen: seen.all)
        }
        return item
    }
}

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    let seconds: TimeInterval
    let seen: [TimelineUpdate]
    var description: String { "no \(what) within \(Int(seconds)) s; saw: \(seen)" }
}

/// A loopback HTTP server that answers every request with `200` and the same JSON body
/// (a homeserver whose answers cannot be used). One connection at a time, BSD sockets.
final class OneAnswerServer: @unchecked Sendable {
    let url: String
    private let socketFd: Int32
    private let body: String

    init(body: String) throws {
        self.body = body
        socketFd = socket(AF_INET, SOCK_STREAM, 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { ptr -> Int32 in
                guard bind(socketFd, ptr, len) == 0, listen(socketFd, 8) == 0 else { return -1 }
                return getsockname(socketFd, ptr, &len)
            }
        }
        guard bound == 0 else { throw NSError(domain: "OneAnswerServer", code: Int(errno)) }
        url = "http://127.0.0.1:\(UInt16(bigEndian: addr.sin_port))"
        Thread { [self] in serve() }.start()
    }

    private func serve() {
        while true {
            let client = accept(socketFd, nil, nil)
            if client < 0 { return }
            var buffer = [UInt8](repeating: 0, count: 65536)
            _ = read(client, &buffer, buffer.count)
            let response = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
            _ = response.withCString { write(client, $0, strlen($0)) }
            close(client)
        }
    }

    func stop() {
        close(socketFd)
    }
}

/// One progress report of a key export or import.
struct TransferReport: Equatable, CustomStringConvertible {
    let done: UInt64
    let total: UInt64
    var description: String { "\(done)/\(total)" }
}

/// Records each progress report (called on a Newt worker thread).
final class ProgressRecorder: KeyTransferListener, @unchecked Sendable {
    let reports = Recorded<TransferReport>()

    func onProgress(done: UInt64, total: UInt64) {
        reports.append(TransferReport(done: done, total: total))
    }
}

/// The newest version of each item (by event id), whichever update brought it.
func latestItems(_ updates: [TimelineUpdate]) -> [String: TimelineItem] {
    var latest: [String: TimelineItem] = [:]
    for update in updates {
        switch update {
        case .initial(let items, _):
            for item in items { latest[item.eventId] = item }
        case .appended(let item), .updated(let item), .echoReplaced(_, let item):
            latest[item.eventId] = item
        default:
            break
        }
    }
    return latest
}

/// The event ids of the items that came again as `.updated`.
func updatedIds(_ updates: [TimelineUpdate]) -> Set<String> {
    var ids = Set<String>()
    for case .updated(let item) in updates { ids.insert(item.eventId) }
    return ids
}
