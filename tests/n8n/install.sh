#!/usr/bin/env bash
# Installs real n8n (the version the tests pin) under target/n8n/<version>, with
# the recipe from issue 15: npm install with --ignore-scripts, sqlite3 rebuilt
# from source, and @langchain/langgraph-checkpoint pinned to 1.0.0 (the hoisted
# 1.2.2 needs an export @langchain/core 1.1.8 lacks, so `n8n start` fails with
# 'Command "start" not found'). Idempotent: a finished install leaves a stamp
# and a second run returns at once. Prints the n8n binary's path last.
# Cold: ~3-5 min and ~1.4 GB; warm (stamp present): instant.
set -euo pipefail
cd "$(dirname "$0")/../.."

version="${N8N_VERSION:-1.123.81}"
dir="${N8N_CACHE_DIR:-$PWD/target/n8n}/$version"
stamp="$dir/.installed"

if [ ! -f "$stamp" ]; then
    echo "== installing n8n $version into $dir (first time: a few minutes)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    cd "$dir"
    cat > package.json <<JSON
{"name": "orch-n8n-under-test", "private": true,
 "dependencies": {"n8n": "$version"}, "overrides": {"xlsx": "0.18.5"}}
JSON
    npm install --legacy-peer-deps --no-audit --no-fund --ignore-scripts --loglevel=error >&2
    npm rebuild sqlite3 --build-from-source --loglevel=error >&2
    # Replace the hoisted langgraph-checkpoint by 1.0.0 (see above).
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent @langchain/langgraph-checkpoint@1.0.0 >/dev/null)
    rm -rf node_modules/@langchain/langgraph-checkpoint
    mkdir -p node_modules/@langchain/langgraph-checkpoint
    tar -xzf "$tmp"/langchain-langgraph-checkpoint-1.0.0.tgz --strip-components=1 \
        -C node_modules/@langchain/langgraph-checkpoint
    rm -rf "$tmp"
    touch "$stamp"
    cd - >/dev/null
fi
echo "$dir/node_modules/.bin/n8n"
