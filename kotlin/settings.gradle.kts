// The Newt Android library (AAR). Built by scripts/build-aar.sh, which first puts the
// native libraries into src/main/jniLibs and the generated uniffi bindings into
// src/main/kotlin/uniffi/ (both generated, gitignored).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "newt"
