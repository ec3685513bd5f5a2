// Android library module `org.newt.sdk`: the uniffi-generated Kotlin API (package
// uniffi.newt_ffi, generated into src/main/kotlin/uniffi/ by scripts/build-aar.sh), a thin
// idiomatic layer (src/main/kotlin/org/newt/sdk/) and libnewt_ffi.so for three ABIs
// (src/main/jniLibs/<abi>/, built with cargo-ndk, 16 KB page aligned).
//
//   scripts/build-aar.sh                -> build/outputs/aar/newt-release.aar
//
// The tests in src/test/kotlin need a homeserver and the host library; they are run on the
// JVM by scripts/kotlin-test.sh (kotlinc + JUnit 4), not by Gradle's unit-test task.
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.21"
}

android {
    namespace = "org.newt.sdk"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
        ndk {
            // The ABIs scripts/build-aar.sh builds with cargo-ndk.
            abiFilters += listOf("arm64-v8a", "armeabi-v7a", "x86_64")
        }
    }

    sourceSets {
        getByName("main") {
            manifest.srcFile("src/main/AndroidManifest.xml")
            java.srcDirs("src/main/kotlin")
            jniLibs.srcDirs("src/main/jniLibs")
        }
        getByName("test") {
            java.srcDirs("src/test/kotlin")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    packaging {
        jniLibs {
            // Stored uncompressed and page aligned in apps (needed for 16 KB page devices).
            useLegacyPackaging = false
        }
    }

    testOptions {
        unitTests.all {
            // See the note at the top: these are JVM integration tests.
            it.enabled = false
        }
    }

    publishing {
        singleVariant("release") {
            withSourcesJar()
        }
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    // The generated bindings call the native library through JNA; the @aar artifact carries
    // JNA's own native dispatch library for every Android ABI.
    implementation("net.java.dev.jna:jna:5.17.0@aar")
    // Flow, suspend functions and Dispatchers.Main appear in the public API.
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.10.2")

    testImplementation("org.jetbrains.kotlin:kotlin-test-junit:2.1.21")
    testImplementation("junit:junit:4.13.2")
    testImplementation("net.java.dev.jna:jna:5.17.0")
}
