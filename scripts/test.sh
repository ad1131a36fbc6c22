#!/usr/bin/env bash
# Runs every check and test of Stowage: formatting, lints, unit tests,
# integration tests and end-to-end tests against real mounts. Installs what
# the tests need when it is missing (Debian packages, and grpcio and
# schemathesis from PyPI). Run as root (the tests mount things).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh must run as root: the end-to-end tests mount filesystems" >&2
  exit 1
fi

# Debian packages the build and tests use: protoc for the CSI schema; mount
# tools and mkfs for the filesystem images; Docker, Podman, runc and crun
# for the engine tests; a static busybox to build their test image from;
# etcd and etcdctl for the cluster store, openssl for its test
# certificates, and ip (iproute2) for the test hosts in network namespaces;
# nbdkit, nbdfuse (libnbd-bin) and fusermount3 (fuse3) for network block
# volumes.
. scripts/lib/packages.sh
ensure_packages protobuf-compiler mount util-linux tar e2fsprogs xfsprogs btrfs-progs \
  docker.io podman runc crun busybox-static etcd-server etcd-client openssl iproute2 \
  nbdkit libnbd-bin fuse3

# From PyPI: grpcio, for the CSI test of a gRPC client other than grpc-go;
# schemathesis, which holds the REST socket to docs/openapi.yaml.
for pkg in grpcio:grpc "schemathesis>=4.32,<5:schemathesis"; do
  if ! python3 -c "import ${pkg#*:}" 2>/dev/null; then
    echo "installing: ${pkg%%:*} (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check "${pkg%%:*}"
  fi
done

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: cargo's own last line belongs to
# whichever test binary ran last.
passed=$(grep -oE '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{n += $4} END {print n + 0}')
failed=$(grep -oE '^test result: .* [0-9]+ failed' "$log" | grep -oE '[0-9]+ failed' | awk '{n += $1} END {print n + 0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
