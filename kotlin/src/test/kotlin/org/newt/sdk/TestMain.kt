// JUnit 4 runner used by scripts/kotlin-test.sh: runs the given test classes, prints one
// line per test with its time and the failure, and writes "passed failed" to the file given
// by -Dnewt.results (the script prints the final summary line).
package org.newt.sdk

import java.io.File
import java.util.concurrent.ConcurrentHashMap
import kotlin.system.exitProcess
import org.junit.runner.Description
import org.junit.runner.JUnitCore
import org.junit.runner.notification.Failure
import org.junit.runner.notification.RunListener

fun main(args: Array<String>) {
    val classes = args.map { Class.forName(it) }
    val starts = ConcurrentHashMap<Description, Long>()
    val failed = ConcurrentHashMap.newKeySet<Description>()
    var passed = 0
    val core = JUnitCore()
    core.addListener(
        object : RunListener() {
            override fun testStarted(description: Description) {
                starts[description] = System.nanoTime()
                println("RUN   ${description.displayName}")
            }

            override fun testFailure(failure: Failure) = report(failure)

            // An assumption failure means the environment is wrong: count it as a failure.
            override fun testAssumptionFailure(failure: Failure) = report(failure)

            private fun report(failure: Failure) {
                failed += failure.description
                println("FAIL  ${failure.description.displayName} (${elapsed(failure.description)})")
                println(failure.trace.prependIndent("      "))
            }

            override fun testIgnored(description: Description) {
                failed += description
                println("FAIL  ${description.displayName} (@Ignore is not allowed here)")
            }

            override fun testFinished(description: Description) {
                if (description !in failed) {
                    passed++
                    println("PASS  ${description.displayName} (${elapsed(description)})")
                }
            }

            private fun elapsed(description: Description): String {
                val start = starts[description] ?: return "-"
                return "%.1fs".format((System.nanoTime() - start) / 1e9)
            }
        },
    )
    val result = core.run(*classes.toTypedArray())
    // Failures outside a test (e.g. in @BeforeClass) have no per-test line above.
    val failedCount = maxOf(failed.size, result.failureCount)
    System.getProperty("newt.results")?.let { File(it).writeText("$passed $failedCount\n") }
    System.out.flush()
    // Newt's runtime threads are not daemons of ours to wait for.
    exitProcess(if (failedCount == 0 && passed > 0) 0 else 1)
}
