#!/bin/sh
# Builds and tests the Rust client (clients/rust) the way CI has it: with
# Debian's cargo and rustc (apt-get install cargo rustc librust-*-dev, see
# the README), offline against the crates Debian installs under
# /usr/share/cargo/registry (.cargo/config.toml), never crates.io.
#
# Environment (ctest sets it, CMakeLists.txt):
#   CARGO_TARGET_DIR  where cargo builds (inside the CMake build tree)
#   SBRS_SNAPBUSD, SBRS_CLI  the snapbusd and snapbus binaries to test with
#   SBRS_LINT=0       skip cargo fmt --check and clippy (the sanitizer build
#                     runs the tests only: the code is the same)
set -eu
cd "$(dirname "$0")"
# Debian's toolchain first, whatever else is installed (a rustup cargo in
# ~/.cargo/bin would build with another compiler than CI's).
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
: "${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR to a build directory}"
export CARGO_TARGET_DIR
# A cargo home of our own: no user configuration changes the build.
export CARGO_HOME="$CARGO_TARGET_DIR/cargo-home"
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found in /usr/bin: apt-get install cargo rustc librust-zmq-dev" \
         "librust-prost-dev librust-prost-build-dev librust-thiserror-dev" \
         "rust-clippy rustfmt (README)" >&2
    exit 1
fi
cargo --version
rustc --version
if [ "${SBRS_LINT:-1}" != 0 ]; then
    cargo fmt --check
    cargo clippy --offline --all-targets -- -D warnings
fi
# One test thread: the broker tests each start a broker and publish hard;
# in parallel on 2 shared cores they would mostly measure each other.
cargo test --offline -- --test-threads 1
