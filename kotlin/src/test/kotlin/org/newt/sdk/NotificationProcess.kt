// The second process of NotificationTest: what an Android push handler (or, in Swift, an iOS
// notification service extension) does. Opens a NotificationDecryptor on the app's store and
// prints the decrypted notification. Arguments: homeserver storeDir passphrase roomId eventId.
package org.newt.sdk

import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking
import uniffi.newt_ffi.ClientConfig
import uniffi.newt_ffi.NewtException
import uniffi.newt_ffi.NotificationDecryptor
import uniffi.newt_ffi.StoreKey

fun main(args: Array<String>) {
    val (homeserver, storeDir, passphrase, roomId, eventId) = args
    val code =
        runBlocking {
            try {
                val config = ClientConfig(homeserver, storeDir, StoreKey.Passphrase(passphrase))
                NotificationDecryptor.open(config).use { decryptor ->
                    val notification = decryptor.decrypt(roomId, eventId, null, 20_000uL)
                    println("BODY:${notification.body}")
                    println("SENDER:${notification.sender}")
                    println("ENCRYPTED:${notification.encrypted}")
                }
                0
            } catch (e: NewtException) {
                println("ERROR:$e")
                1
            }
        }
    System.out.flush()
    exitProcess(code)
}
