# Shared by the pool benchmarks (sourced): the CLI binary and a pair of free-looking loopback endpoints.

# Sets $bin to the release CLI, building it first, unless --bin gave one.
ensure_bin() {
  if [ -z "$bin" ]; then
    command -v swift >/dev/null 2>&1 || export PATH=/opt/swift/usr/bin:$PATH
    swift build -c release --product autodir-cli >/dev/null
    bin="$(swift build -c release --show-bin-path)/autodir-cli"
  fi
}

# Sets $clients and $workers to two adjacent random loopback ports.
pick_endpoints() {
  local port=$((21000 + RANDOM % 20000))
  clients="tcp://127.0.0.1:$port"; workers="tcp://127.0.0.1:$((port + 1))"
}
