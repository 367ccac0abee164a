# Shared by the scripts that need throwaway services on loopback. Source it; call cleanup_services
# on exit.
#   start_postgres PORT DB  -> exports DATABASE_URL
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
    -o "-p $port -k $SERVICES_DIR -c listen_addresses=127.0.0.1" start >/dev/null
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

# CPU ticks (1/100 s) used so far by each group of PIDs and all their descendants, one number per
# argument; an argument may hold several PIDs.
cpu_ticks() {
  python3 - "$@" <<'PY'
import os, sys
stat = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    fields = text[text.rindex(")") + 2:].split()
    stat[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
def tree(root):
    return stat.get(root, (0, 0))[1] + sum(tree(p) for p, (pp, _) in stat.items() if pp == root)
print(" ".join(str(sum(tree(int(p)) for p in group.split())) for group in sys.argv[1:]))
PY
}
