#!/usr/bin/env bash
# Conformance test of `keylife serve` with Exoscale's official Python client.
#
#   scripts/conformance/run.sh [PATH/TO/keylife]
#
# Installs exoscale==0.16.4 from PyPI into a virtual environment
# (${CARGO_TARGET_DIR:-target}/conformance-venv, kept between runs), starts the server with two
# zones on free ports, runs conformance.py (all 16 operations and the main refusals, checked
# against the spec shipped in the package and lifecycle.md), stops the server with SIGTERM
# (it must exit 0), starts it again on the same data directory and checks that everything
# acknowledged before is still there. Then the first pass again over HTTPS, on a new data
# directory: a CA and a server certificate for 127.0.0.1/localhost made with openssl, the server
# started with --tls-cert/--tls-key, the client trusting the CA through REQUESTS_CA_BUNDLE (and
# a client without it refused). Last, the zones in separate processes: ch-gva-2 served by one
# `keylife serve`, de-fra-1 by another (own data directory, root key and credentials file each),
# linked with --peer and a link credential each way; the first phase and, after both are
# stopped with SIGTERM and started again, the second; then the replica zone's process is
# killed with SIGKILL while the origin changes keys (phase target-down) and started again: its
# replicas converge and every ciphertext decrypts in both zones (phase target-back).
# Needs Python 3 with venv/pip, PyPI and openssl.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

target_dir=${CARGO_TARGET_DIR:-target}
binary=${1:-$target_dir/debug/keylife}
if [ ! -x "$binary" ]; then
  if [ $# -ge 1 ]; then
    echo "conformance: no executable keylife at $binary" >&2
    exit 1
  fi
  echo "conformance: building $binary"
  cargo build --locked --features server --bin keylife
fi

# The virtual environment, (re)installed when requirements.txt changed since the last install.
venv=$target_dir/conformance-venv
stamp=$venv/.conformance-requirements
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
  echo "conformance: installing $(tr '\n' ' ' <"$here/requirements.txt")into $venv"
  rm -rf "$venv"
  if python3 -m venv "$venv" >/dev/null 2>&1 && [ -x "$venv/bin/pip" ]; then
    pip=("$venv/bin/python" -m pip)
  else
    # Python without ensurepip (Debian's python3 without python3-venv): a venv without pip,
    # filled by the system's pip.
    rm -rf "$venv"
    python3 -m venv --without-pip "$venv"
    pip=(python3 -m pip --python "$venv/bin/python")
  fi
  "${pip[@]}" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi
python=$venv/bin/python

work=$(mktemp -d "${TMPDIR:-/tmp}/keylife-conformance.XXXXXX")
server_pid=""
run=0

# The processes of the cross-process pass, by number (1: ch-gva-2, 2: de-fra-1).
zone_pid=("" "" "")

cleanup() {
  local status=$?
  for pid in "$server_pid" "${zone_pid[@]}"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ "$status" -ne 0 ]; then
    for log in "$work"/server-*.stderr; do
      [ -f "$log" ] || continue
      echo "---- server stderr ($(basename "$log")):"
      cat "$log"
    done
    echo "conformance: FAILED"
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$binary" root-key generate >"$work/root.key"
printf 'EXOconformance %s\n' "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')" >"$work/creds"

zone1=ch-gva-2
zone2=de-fra-1
url1=""
url2=""

# Starts the server on the data directory $1 with the further arguments $2...; sets
# server_pid, url1 and url2.
start_server() {
  run=$((run + 1))
  local out=$work/server-$run.stdout data=$1
  shift
  "$binary" serve --data "$data" \
    --zone "$zone1=127.0.0.1:0" --zone "$zone2=127.0.0.1:0" \
    --root-key-file "$work/root.key" --credentials-file "$work/creds" "$@" \
    >"$out" 2>"$work/server-$run.stderr" &
  server_pid=$!
  local deadline=$((SECONDS + 30))
  local serving=0
  while [ "$serving" -lt 2 ]; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "conformance: the server exited before serving" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "conformance: the server did not serve both zones within 30 s" >&2
      exit 1
    fi
    sleep 0.1
    serving=$(grep -c ' serving ' "$out" || true)
    serving=${serving:-0}
  done
  url1=$(sed -n "s/^keylife: zone $zone1 serving //p" "$out")
  url2=$(sed -n "s/^keylife: zone $zone2 serving //p" "$out")
  if [ -z "$url1" ] || [ -z "$url2" ]; then
    echo "conformance: cannot read the zones' URLs from: $(cat "$out")" >&2
    exit 1
  fi
  echo "conformance: server $run (pid $server_pid): $zone1 at $url1, $zone2 at $url2"
}

# Sends signal $3 (TERM or KILL) to process $1, named $2, and waits at most 10 s for it to
# exit; after SIGTERM it must exit 0.
stop_process() {
  local pid=$1 name=$2 signal=$3 status=0
  kill "-$signal" "$pid"
  local deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "conformance: $name did not exit within 10 s of SIG$signal" >&2
      exit 1
    fi
    sleep 0.1
  done
  wait "$pid" || status=$?
  if [ "$signal" = TERM ] && [ "$status" -ne 0 ]; then
    echo "conformance: $name exited with status $status after SIGTERM (expected 0)" >&2
    exit 1
  fi
}

# SIGTERM; the server must exit 0 within 10 s.
stop_server() {
  stop_process "$server_pid" "the server" TERM
  server_pid=""
  echo "conformance: server $run stopped by SIGTERM, exit status 0"
}

passed=0
# Runs the phase $1 with the state file $2 against url1 and url2; further arguments go to
# conformance.py.
phase() {
  local name=$1 state=$2 failed=0
  shift 2
  local summary=$work/summary-$name-$run
  "$python" -u "$here/conformance.py" --phase "$name" --credentials-file "$work/creds" \
    --state "$state" --summary-file "$summary" "$@" \
    "$zone1=$url1" "$zone2=$url2" || failed=1
  if [ -f "$summary" ]; then
    passed=$((passed + $(cut -d' ' -f1 "$summary")))
  fi
  if [ "$failed" -ne 0 ]; then
    exit 1
  fi
}

# A CA and a server certificate it signed for 127.0.0.1 and localhost, in $work/tls.
make_certificates() {
  local tls=$work/tls
  mkdir "$tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=keylife conformance CA" -keyout "$tls/ca.key" -out "$tls/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>"$tls/openssl.log"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=127.0.0.1" -keyout "$tls/server.key" -out "$tls/server.csr" 2>>"$tls/openssl.log"
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" >"$tls/server.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$tls/server.ext" -out "$tls/server.crt" \
    2>>"$tls/openssl.log"
  chmod 600 "$tls/server.key"
}

start_server "$work/data"
phase first "$work/state.json"
stop_server
start_server "$work/data"
phase after-restart "$work/state.json"
stop_server
passed=$((passed + 2)) # both graceful stops

# The first phase again over HTTPS, on its own data directory.
if ! command -v openssl >/dev/null 2>&1; then
  echo "conformance: openssl is needed for the HTTPS pass (.ci/run installs it)" >&2
  exit 1
fi
make_certificates
start_server "$work/data-tls" --tls-cert "$work/tls/server.crt" --tls-key "$work/tls/server.key"
case "$url1 $url2" in
  https://*" https://"*) ;;
  *)
    echo "conformance: with --tls-cert the zones are not served over https: $url1 $url2" >&2
    exit 1
    ;;
esac
# Without the CA, the client refuses the server's certificate: TLS is in force.
if "$python" -c 'import requests, sys; requests.get(sys.argv[1], timeout=10)' \
  "${url1%/v2}/keylife/v1/health" >/dev/null 2>&1; then
  echo "conformance: a client that does not trust the test CA was served over HTTPS" >&2
  exit 1
fi
passed=$((passed + 1))
REQUESTS_CA_BUNDLE=$work/tls/ca.crt phase first "$work/state-tls.json"
stop_server
passed=$((passed + 1)) # the graceful stop

# The zones in separate processes. Each process needs the other's URL when it starts: two free
# ports are picked first (bound to port 0 and released; the processes bind them right after).
split=$work/split
mkdir "$split"
read -r port1 port2 < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
link12=$(secret) # ch-gva-2 signs its deliveries to de-fra-1 with EXOlink12
link21=$(secret) # de-fra-1 signs its rotation requests (and deliveries) to ch-gva-2 with EXOlink21
(
  umask 077
  "$binary" root-key generate >"$split/root1.key"
  "$binary" root-key generate >"$split/root2.key"
  # The API credential of the other passes (conformance.py signs with the first line), and the
  # link credential the other process signs with, allowed to speak for its zone only.
  { head -n 1 "$work/creds"; printf 'EXOlink21 %s operations=replicate zones=%s\n' "$link21" "$zone2"; } \
    >"$split/creds1"
  { head -n 1 "$work/creds"; printf 'EXOlink12 %s operations=replicate zones=%s\n' "$link12" "$zone1"; } \
    >"$split/creds2"
  printf '%s EXOlink12 %s\n' "$zone2" "$link12" >"$split/peers1"
  printf '%s EXOlink21 %s\n' "$zone1" "$link21" >"$split/peers2"
)
url1=http://127.0.0.1:$port1/v2
url2=http://127.0.0.1:$port2/v2

# Starts process $1 (1: zone1 on port1, naming zone2 as its peer; 2: the reverse) on its data
# directory and waits for its serving line.
start_zone() {
  local n=$1 zone peer port peer_port
  if [ "$n" -eq 1 ]; then
    zone=$zone1 peer=$zone2 port=$port1 peer_port=$port2
  else
    zone=$zone2 peer=$zone1 port=$port2 peer_port=$port1
  fi
  run=$((run + 1))
  local out=$work/server-$run.stdout
  "$binary" serve --data "$split/data$n" --zone "$zone=127.0.0.1:$port" \
    --peer "$peer=http://127.0.0.1:$peer_port/v2" --peer-credentials-file "$split/peers$n" \
    --root-key-file "$split/root$n.key" --credentials-file "$split/creds$n" \
    >"$out" 2>"$work/server-$run.stderr" &
  zone_pid[n]=$!
  local deadline=$((SECONDS + 30))
  until grep -qxF "keylife: zone $zone serving http://127.0.0.1:$port/v2" "$out"; do
    if ! kill -0 "${zone_pid[n]}" 2>/dev/null; then
      echo "conformance: the process of zone $zone exited before serving" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "conformance: zone $zone was not served within 30 s: $(cat "$out")" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "conformance: server $run (pid ${zone_pid[n]}): $zone at http://127.0.0.1:$port/v2, peer $peer"
}

# Stops process $1 with SIGTERM (it must exit 0 within 10 s), or with SIGKILL if $2 is KILL.
stop_zone() {
  local n=$1 signal=${2:-TERM}
  stop_process "${zone_pid[$n]}" "process $n" "$signal"
  zone_pid[n]=""
  if [ "$signal" = TERM ]; then
    passed=$((passed + 1))
  fi
  echo "conformance: process $n stopped by SIG$signal"
}

start_zone 1
start_zone 2
phase first "$work/state-split.json" --separate-processes
stop_zone 1
stop_zone 2
start_zone 1
start_zone 2
phase after-restart "$work/state-split.json" --separate-processes
# The replica zone's process crashes while the origin goes on changing keys.
stop_zone 2 KILL
phase target-down "$work/state-split.json" --separate-processes
start_zone 2
phase target-back "$work/state-split.json" --separate-processes
stop_zone 2
stop_zone 1

echo "conformance: $passed checks passed"
