# CMake toolchain file: cross-compile attnkit's tests and examples for aarch64 (NEON) on a
# Debian 12 x86-64 host, and run them under qemu-user (ctest and add_test use the emulator).
#
#   apt-get install -y g++-aarch64-linux-gnu qemu-user
#   cmake -S . -B /tmp/arm-build -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
#         -DATTNKIT_BUILD_BENCHMARKS=OFF
#   cmake --build /tmp/arm-build -j2 && ctest --test-dir /tmp/arm-build --output-on-failure
#
# Cache variables (set with -D):
#   ATTNKIT_AARCH64_MARCH   -march (default armv8-a: the baseline every aarch64 CPU and Debian's
#                           arm64 port have, NEON included; e.g. armv8.2-a for newer cores)
#   ATTNKIT_AARCH64_SYSROOT the target's libraries for qemu -L (default /usr/aarch64-linux-gnu)
#
# The dependencies are the host's Debian packages, all header-only for our purposes (xsimd,
# Eigen, Catch2; CMakeLists.txt compiles Catch2's main() itself when cross-compiling, since
# Debian's libCatch2WithMain.a is an x86-64 archive, and leaves -march=native off). Their headers
# are in /usr/include, which also holds the host's x86-64 glibc headers: those must never come
# before the cross sysroot's, so /usr/include is searched only *after* the cross compiler's own
# directories (-idirafter, below) and is never passed as -I or -isystem. Benchmarks would need
# the arm64 libbenchmark: keep ATTNKIT_BUILD_BENCHMARKS=OFF.

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(_attnkit_triple aarch64-linux-gnu)
find_program(CMAKE_C_COMPILER NAMES ${_attnkit_triple}-gcc ${_attnkit_triple}-gcc-12 REQUIRED)
find_program(CMAKE_CXX_COMPILER NAMES ${_attnkit_triple}-g++ ${_attnkit_triple}-g++-12 REQUIRED)

set(ATTNKIT_AARCH64_SYSROOT "/usr/${_attnkit_triple}" CACHE PATH
    "aarch64 libraries (qemu-aarch64 -L)")
set(ATTNKIT_AARCH64_MARCH "armv8-a" CACHE STRING
    "-march for the aarch64 build (armv8-a, armv8.2-a, ...)")

find_program(ATTNKIT_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static
             DOC "qemu-user for aarch64 (Debian package qemu-user)")
if(ATTNKIT_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${ATTNKIT_QEMU_AARCH64};-L;${ATTNKIT_AARCH64_SYSROOT}")
endif()

# The host's headers after the cross compiler's own (see above), and the target ISA.
# These initialise the CMAKE_<LANG>_FLAGS cache entries: a -DCMAKE_CXX_FLAGS=... on the first
# configure replaces them, so such flags must repeat "-idirafter /usr/include". Because the
# compiler is probed with them, CMake finds /usr/include among its implicit include directories
# and never passes it as -I/-isystem (Eigen's /usr/include/eigen3 still is, harmlessly).
set(CMAKE_C_FLAGS_INIT "-march=${ATTNKIT_AARCH64_MARCH} -idirafter /usr/include")
set(CMAKE_CXX_FLAGS_INIT "-march=${ATTNKIT_AARCH64_MARCH} -idirafter /usr/include")
# try_compile projects (compiler checks, FindThreads, FindOpenMP) see the same settings.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ATTNKIT_AARCH64_MARCH ATTNKIT_AARCH64_SYSROOT)

# Package configs and headers come from the host (header-only); libraries and programs from the
# cross sysroot (libraries) and the host (programs such as qemu).
set(CMAKE_FIND_ROOT_PATH "${ATTNKIT_AARCH64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_LIBRARY_ARCHITECTURE ${_attnkit_triple})

# Debian installs xsimd's (header-only, architecture-free) package config under the host's
# multiarch directory, /usr/lib/x86_64-linux-gnu/cmake/xsimd, which a search for an aarch64
# target does not visit: point find_package(xsimd) at it. (Eigen's is in /usr/share/eigen3/cmake,
# Catch2's in /usr/lib/cmake/Catch2: found as they are.)
if(NOT DEFINED xsimd_DIR)
  file(GLOB _attnkit_xsimd_configs /usr/lib/*/cmake/xsimd/xsimdConfig.cmake)
  if(_attnkit_xsimd_configs)
    list(GET _attnkit_xsimd_configs 0 _attnkit_xsimd_config)
    get_filename_component(_attnkit_xsimd_dir "${_attnkit_xsimd_config}" DIRECTORY)
    set(xsimd_DIR "${_attnkit_xsimd_dir}" CACHE PATH "Directory of xsimdConfig.cmake (the host's)")
  endif()
endif()
