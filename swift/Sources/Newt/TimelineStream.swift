import NewtFFIBindings

extension NewtClient {
    /// The timeline of one room as an `AsyncStream`.
    ///
    /// The first element is `.initial(items:echoes:)` (the recent items Newt keeps in memory, maybe
    /// none), then one `.appended(item:)` per new item, and `.updated(item:)` when an item
    /// changed (e.g. a late room key decrypted it: replace the item with the same `eventId`).
    /// The stream finishes when the client is shut down (`shutdown()`); the underlying
    /// `TimelineSubscription` is cancelled when the consuming task is cancelled, when the loop
    /// breaks, or when the stream is released.
    ///
    /// Newt calls the listener on its own worker threads; `AsyncStream.Continuation` is safe
    /// to use from any thread, so elements arrive in order on the consuming task.
    ///
    ///     for await update in try client.timelineUpdates(roomId: room) {
    ///         if case .appended(let item) = update { print(item.sender, item.body ?? "") }
    ///     }
    public func timelineUpdates(
        roomId: String,
        bufferingPolicy: AsyncStream<TimelineUpdate>.Continuation.BufferingPolicy = .unbounded
    ) throws -> AsyncStream<TimelineUpdate> {
        var continuation: AsyncStream<TimelineUpdate>.Continuation!
        let stream = AsyncStream<TimelineUpdate>(bufferingPolicy: bufferingPolicy) { continuation = $0 }
        let subscription: TimelineSubscription
        do {
            subscription = try subscribeTimeline(roomId: roomId, listener: StreamTimelineListener(continuation))
        } catch {
            continuation.finish()
            throw error
        }
        // Updates that arrive before this line are buffered, not lost.
        continuation.onTermination = { _ in subscription.cancel() }
        return stream
    }
}

/// Forwards updates into a stream continuation (which is thread-safe by itself). Newt holds
/// the only reference; it releases the listener when the subscription ends (cancelled, or
/// the client shut down), and then the stream finishes.
private final class StreamTimelineListener: TimelineListener, @unchecked Sendable {
    private let continuation: AsyncStream<TimelineUpdate>.Continuation

    init(_ continuation: AsyncStream<TimelineUpdate>.Continuation) {
        self.continuation = continuation
    }

    deinit {
        continuation.finish()
    }

    func onUpdate(update: TimelineUpdate) {
        continuation.yield(update)
    }
}
