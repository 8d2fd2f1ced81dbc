#!/bin/sh
# `make run`: start Hangar with its embedded defaults and show a first machine working.
# The image is built here from Debian's busybox-static: no registry, no internet.
set -eu
cd "$(dirname "$0")/.."

BIN=target/release
HANGAR="$BIN/hangar"
LOG=target/hangar-server.log
export HANGAR_API_URL="${HANGAR_API_URL:-http://127.0.0.1:4280}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

server_pid=""
if "$HANGAR" apps list >/dev/null 2>&1; then
    say "A Hangar server is already answering at $HANGAR_API_URL"
else
    say "Starting the Hangar server (log: $LOG)"
    "$HANGAR" server >"$LOG" 2>&1 &
    server_pid=$!
    i=0
    until "$HANGAR" apps list >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 150 ] || ! kill -0 "$server_pid" 2>/dev/null; then
            echo "The server did not come up; its log:" >&2
            cat "$LOG" >&2
            exit 1
        fi
        sleep 0.1
    done
    # Ctrl-C stops the server cleanly; machines keep running and are re-attached next time.
    trap 'kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid"; exit 0' INT TERM
fi

say "Building a busybox image locally and importing it as hello:latest"
"$BIN/hangar-mkimage" --docker-archive target/hello-image.tar --tag hello:latest
"$HANGAR" image import target/hello-image.tar hello:latest

say "Creating the app 'hello'"
"$HANGAR" apps list | grep -q '^hello ' || "$HANGAR" apps create hello
for id in $("$HANGAR" machine list -a hello -q); do
    "$HANGAR" machine destroy -a hello --force "$id" >/dev/null
done

say "Running a machine: hangar machine run hello:latest -a hello -- sh -c '...'"
"$HANGAR" machine run hello:latest -a hello --name greeter -- \
    sh -c 'echo "hello from machine $FLY_MACHINE_ID"; while true; do sleep 1; done'
id=$("$HANGAR" machine list -a hello -q | head -n 1)

say "hangar machine list -a hello"
"$HANGAR" machine list -a hello

say "hangar machine exec $id -- sh -c 'hostname; id; ps'"
"$HANGAR" machine exec -a hello "$id" -- sh -c 'echo "hostname: $(hostname)"; id; ps'

say "hangar machine status $id -a hello"
"$HANGAR" machine status -a hello "$id"

cat <<EOM

Machine $id is running. Try:
  $HANGAR machine exec -a hello $id -- ls /
  $HANGAR machine stop -a hello $id
  $HANGAR machine start -a hello $id
  $HANGAR machine destroy -a hello --force $id
EOM

if [ -n "$server_pid" ]; then
    printf '\nThe server runs in the foreground now (pid %s, log %s); Ctrl-C stops it.\n' "$server_pid" "$LOG"
    wait "$server_pid"
fi
