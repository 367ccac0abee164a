# Shared by the scripts that need throwaway services on loopback. Source it; call cleanup_services
# on exit.
#   start_postgres PORT DB  -> exports DATABASE_URL (PG_EXTRA_OPTS="-c name=value ...": more settings)
#   start_valkey PORT       -> exports VALKEY_URL
#   wait_for_port PORT
SERVICES_DIR=$(mktemp -d /tmp/baby-discord-services.XXXXXX)
SERVICE_PIDS=()
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$SERVICES_DIR"; runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local port=$1 db=$2
  as_postgres "$PG_BIN/initdb" -D "$SERVICES_DIR/pg" -U postgres -A trust --no-sync >/dev/null
  as_postgres "$PG_BIN/pg_ctl" -D "$SERVICES_DIR/pg" -l "$SERVICES_DIR/pg.log" -w \
    -o "-p $port -k $SERVICES_DIR -c listen_addresses=127.0.0.1 ${PG_EXTRA_OPTS:-}" start >/dev/null
  as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/$db"
}

start_valkey() {
  local port=$1 server
  server=$(command -v valkey-server || command -v redis-server)
  "$server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$SERVICES_DIR/valkey.log" &
  SERVICE_PIDS+=($!)
  wait_for_port "$port"
  export VALKEY_URL="redis://127.0.0.1:$port"
}

wait_for_port() {
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

cleanup_services() {
  kill "${SERVICE_PIDS[@]}" 2>/dev/null || true
  [ -f "$SERVICES_DIR/pg/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$SERVICES_DIR/pg" -m fast stop >/dev/null 2>&1
  rm -rf "$SERVICES_DIR"
}

# CPU ticks (1/100 s) used so far by each group of PIDs and their children, one number per
# argument; an argument may hold several PIDs. Shell built-ins and one pgrep: it runs in the
# middle of a benchmark, where starting an interpreter would take a core away for tens of ms.
cpu_ticks() {
  local group pid line total out=()
  for group in "$@"; do
    total=0
    # shellcheck disable=SC2086 # a group is a space-separated list of PIDs
    for pid in $group $(pgrep -d ' ' -P "${group// /,}"); do
      read -r line 2>/dev/null <"/proc/$pid/stat" || continue
      # After "pid (comm) ", field 12 is utime and 13 stime.
      read -r -a line <<<"${line##*) }"
      total=$((total + line[11] + line[12]))
    done
    out+=("$total")
  done
  echo "${out[*]}"
}
