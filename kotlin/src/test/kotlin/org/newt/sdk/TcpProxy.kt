package org.newt.sdk

import java.io.IOException
import java.net.InetAddress
import java.net.InetSocketAddress
import java.net.ServerSocket
import java.net.Socket
import java.net.URI
import java.util.Collections

/**
 * A loopback TCP proxy to [target] for simulating the network going away: while [online] is
 * false every current connection is closed and new ones are closed right after accept.
 */
class TcpProxy(targetUrl: String) : AutoCloseable {
    private val target: InetSocketAddress =
        URI(targetUrl).let { InetSocketAddress(it.host, if (it.port > 0) it.port else 80) }
    private val server = ServerSocket(0, 50, InetAddress.getLoopbackAddress())
    private val sockets: MutableSet<Socket> = Collections.synchronizedSet(mutableSetOf())
    private val connections: MutableSet<Connection> = Collections.synchronizedSet(mutableSetOf())

    /** One proxied connection; a request is pending from request bytes until response bytes. */
    private class Connection {
        @Volatile var requestPending = false
    }

    /** Connections whose client sent data that the server has not answered yet. */
    val pendingRequests: Int get() = synchronized(connections) { connections.count { it.requestPending } }

    @Volatile private var closed = false

    @Volatile var online = true
        set(value) {
            field = value
            if (!value) closeAll()
        }

    val url: String get() = "http://127.0.0.1:${server.localPort}"

    /** Connections accepted so far (online or not). */
    @Volatile var accepted = 0
        private set

    init {
        thread("newt-test-proxy-accept") {
            while (!closed) {
                val client = try { server.accept() } catch (e: IOException) { break }
                accepted++
                if (!online) {
                    client.closeQuietly()
                    continue
                }
                thread("newt-test-proxy-conn") { connect(client) }
            }
        }
    }

    private fun connect(client: Socket) {
        val upstream = Socket()
        try {
            upstream.connect(target, 5_000)
        } catch (e: IOException) {
            client.closeQuietly()
            return
        }
        sockets += client
        sockets += upstream
        if (!online || closed) {
            closeAll()
            return
        }
        val connection = Connection()
        connections += connection
        thread("newt-test-proxy-up") { pump(client, upstream) { connection.requestPending = true } }
        pump(upstream, client) { connection.requestPending = false }
        connections -= connection
    }

    private fun pump(from: Socket, to: Socket, onData: () -> Unit) {
        val buffer = ByteArray(16 * 1024)
        try {
            val input = from.getInputStream()
            val output = to.getOutputStream()
            while (true) {
                val n = input.read(buffer)
                if (n < 0) break
                onData()
                output.write(buffer, 0, n)
                output.flush()
            }
        } catch (_: IOException) {
        } finally {
            from.closeQuietly()
            to.closeQuietly()
            sockets -= from
            sockets -= to
        }
    }

    private fun closeAll() {
        val current = synchronized(sockets) { sockets.toList().also { sockets.clear() } }
        current.forEach { it.closeQuietly() }
    }

    override fun close() {
        closed = true
        server.closeQuietly()
        closeAll()
    }

    private fun thread(name: String, body: () -> Unit) =
        Thread(body, name).apply { isDaemon = true; start() }

    private fun AutoCloseable.closeQuietly() = try { close() } catch (_: Exception) {}
}
