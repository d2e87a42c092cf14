#!/usr/bin/env bash
# Checks that the API document (GET /openapi.json) matches the server:
# schemathesis (pinned in requirements.txt) runs every check (`--checks all`)
# against a real `orch serve` on a free loopback port, with the embedded SQLite
# store in a temp dir and an admin key. Exits non-zero on any failure.
#
#   bash tests/schemathesis/run.sh            # uses target/debug/orch
#   ORCH_BIN=/path/to/orch bash tests/schemathesis/run.sh
#   ST_MAX_EXAMPLES=50 ST_SEED=7 bash tests/schemathesis/run.sh
#
# Installs schemathesis into target/schemathesis-venv on first use. Checks no
# schema can state (another key gets 404, a revoked key 401, ...) are Rust
# tests; tests/schemathesis/README.md names them.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
orch_bin=${ORCH_BIN:-$root/target/debug/orch}
venv=$root/target/schemathesis-venv
here=$root/tests/schemathesis

[ -x "$orch_bin" ] || { echo "no orch binary at $orch_bin (cargo build --bin orch)" >&2; exit 1; }
if ! cmp -s "$here/requirements.txt" "$venv/.installed-requirements" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/.installed-requirements"
fi

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# orch alone: nothing of the caller's ORCH_* settings or orch.toml.
for name in $(env | sed -n 's/^\(ORCH_[A-Z0-9_]*\)=.*/\1/p'); do unset "$name"; done
export ORCH_DATA_DIR=$work ORCH_LOG=warn
cd "$work"
port=${ST_PORT:-}
[ -n "$port" ] || port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export ORCH_BIND=127.0.0.1:$port

# The admin key the run uses, and a second key for the operations on one key
# (PATCH, rotate and DELETE /v1/keys/{id}), so the run never revokes its own.
admin=$("$orch_bin" keys create --name schemathesis --scopes admin 2>/dev/null)
"$orch_bin" keys create --name schemathesis-target --scopes jobs:read >/dev/null 2>"$work/second.txt"
ORCH_SECOND_KEY_ID=$(sed -n 's/^Created key \([^ ]*\) .*/\1/p' "$work/second.txt")
[ -n "$ORCH_SECOND_KEY_ID" ] || { echo "could not read the second key's id" >&2; cat "$work/second.txt" >&2; exit 1; }
export ORCH_SECOND_KEY_ID

"$orch_bin" serve >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "orch serve exited:" >&2; cat "$work/serve.log" >&2; exit 1; }
    sleep 0.1
done

status=0
"$venv/bin/st" --config-file "$here/schemathesis.toml" --no-color \
    run "http://127.0.0.1:$port/openapi.json" \
    --checks all \
    --header "Authorization: Bearer $admin" \
    --seed "${ST_SEED:-1}" \
    --max-examples "${ST_MAX_EXAMPLES:-30}" \
    --workers 2 \
    --request-timeout 10 \
    || status=$?
if [ "$status" != 0 ]; then
    echo "== orch serve's log (warnings and errors)" >&2
    tail -n 50 "$work/serve.log" >&2
fi
exit "$status"
