#!/usr/bin/env bash
# Builds and runs the Stowage daemon on its embedded store, installing what
# the build needs (protoc, for the CSI schema) when it is missing. Run as
# root; arguments go to `stowage serve` (see `stowage serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/serve.sh must run as root: the daemon mounts volumes" >&2
  exit 1
fi
. scripts/lib/packages.sh
# Block volumes need mkfs and the grow tools at run time.
ensure_packages protobuf-compiler e2fsprogs xfsprogs
exec cargo run --release -p stowage -- serve "$@"
