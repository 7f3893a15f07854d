// Catch2 v2's main(), for builds that cannot link Debian's libCatch2WithMain.a: that archive is
// compiled for the host, so a cross build (cmake/aarch64-linux-gnu.cmake) compiles this instead.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
