#!/usr/bin/env bash
# Entry point of the task manager image (deploy/flink/Dockerfile): this container's Beam worker
# pool (deploy/boot.py on POOL_ADDRESS, loopback only) and a Flink task manager in the
# foreground, started with this script's arguments (-Dkey=value Flink settings).
# Either one ending stops the other: a task manager without its pool cannot run Python bundles.
set -euo pipefail

FLINK_HOME=${FLINK_HOME:-/opt/flink}
BOOT=${BOOT:-/opt/stembeam/boot.py}
POOL_ADDRESS=${POOL_ADDRESS:-127.0.0.1:50000}

"$BOOT" --worker_pool --service_address "$POOL_ADDRESS" &
pool=$!
# The JVM keeps its own allocator: the image preloads tcmalloc for the Python workers only.
env -u LD_PRELOAD "$FLINK_HOME/bin/taskmanager.sh" start-foreground "$@" &
taskmanager=$!
trap 'kill -TERM "$taskmanager" "$pool" 2>/dev/null || true' TERM INT

status=0
wait -n "$pool" "$taskmanager" || status=$?
kill -TERM "$taskmanager" "$pool" 2>/dev/null || true
wait || true
exit "$status"
