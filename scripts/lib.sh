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

# Chat servers under load, for the benchmarks that compare against InspIRCd and nchan. They keep
# their PIDs in `pids` and are killed outright (a benchmark measures no shutdown), with their
# children (nginx's worker outlives its master otherwise).
pids=()
stop_servers() {
  # (`wait` with no PIDs would wait for the services too.)
  [ ${#pids[@]} -gt 0 ] || return 0
  local children
  children=$(pgrep -d ' ' -P "$(IFS=,; echo "${pids[*]}")" || true)
  # shellcheck disable=SC2086 # a list of PIDs
  kill -9 "${pids[@]}" $children 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

# start_replicas N BASE-PORT: N servers (the store and bus the environment names, rate limits
# off), their TCP addresses in `endpoints`. BENCH_SERVER_WORKERS=W gives each W Tokio workers
# (default: one per core the process may use; under the chart's CPU limit of 1, one).
start_replicas() {
  local list=() i tcp workers=()
  [ -n "${BENCH_SERVER_WORKERS:-}" ] && workers=(TOKIO_WORKER_THREADS="$BENCH_SERVER_WORKERS")
  for i in $(seq 0 $(($1 - 1))); do
    tcp=$(($2 + 2 * i))
    env "${workers[@]}" INSTANCE_ID="bench-$i" RATE_LIMIT_PER_SEC=1000000 RATE_LIMIT_BURST=1000000 \
      CONNECT_RATE_PER_SEC=100000 BIND_ADDRESS=127.0.0.1 TCP_PORT=$tcp HTTP_PORT=$((tcp + 1)) \
      LOG_LEVEL=warn ./target/release/baby-discord 2>>"$SERVICES_DIR/servers.log" &
    pids+=($!)
    list+=("127.0.0.1:$tcp")
  done
  for e in "${list[@]}"; do wait_for_port "${e#*:}"; done
  endpoints=$(IFS=,; echo "${list[*]}")
}

# start_inspircd PORT: InspIRCd (apt-get install inspircd), limits opened for one client address
# making every connection, no DNS or ident look-ups; its address in `endpoints`.
start_inspircd() {
  local conf="$SERVICES_DIR/inspircd"
  mkdir -p "$conf"
  cat >"$conf/inspircd.conf" <<CONF
<server name="irc.local" description="bench" network="bench">
<admin name="bench" nick="bench" email="bench@localhost">
<bind address="127.0.0.1" port="$1" type="clients">
<power diepass="x" restartpass="x">
<connect allow="*" timeout="60" threshold="1000000" commandrate="1000000" fakelag="off"
         pingfreq="600" hardsendq="4194304" softsendq="1048576" recvq="1048576"
         localmax="100000" globalmax="100000" limit="100000" resolvehostnames="no" useident="no">
<channels users="100" opers="100">
<performance softlimit="30000" somaxconn="4096" nouserdns="yes" quietbursts="yes">
<pid file="$conf/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="$conf/inspircd.log">
CONF
  /usr/sbin/inspircd --nofork --runasroot --config="$conf/inspircd.conf" >"$conf/out.log" 2>&1 &
  pids+=($!)
  wait_for_port "$1"
  endpoints=127.0.0.1:$1
}

BENCH_ROW_HEADER="| server | connections | rooms | target msg/s | sent msg/s | deliveries/s | p50 ms | p99 ms | max ms | lost | cut off | server CPU % | µs CPU per delivery | server RSS MB |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

# measured_run LABEL SECONDS [loadgen chat args...]: one loaded window against the servers in
# `pids`, printed as a row under BENCH_ROW_HEADER; fails when the load generator did. The
# servers' CPU (and RSS, children included) is read over the sending window, which starts when
# every connection is in its room and every stream open; CPU per delivery divides it by the
# deliveries in that window.
measured_run() {
  local label=$1 seconds=$2
  shift 2
  ./target/release/loadgen chat --duration "$seconds" --json "$@" \
    >"$SERVICES_DIR/run.json" 2>"$SERVICES_DIR/run.err" &
  local loadgen=$!
  until grep -qs "sending for" "$SERVICES_DIR/run.err"; do
    kill -0 $loadgen 2>/dev/null || { echo "| $label | loadgen failed: $(grep -m1 -i error "$SERVICES_DIR/run.err") |"; return 1; }
    sleep 0.2
  done
  local before after rss=0 pid
  before=$(cpu_ticks "${pids[*]}")
  sleep "$seconds"
  after=$(cpu_ticks "${pids[*]}")
  # shellcheck disable=SC2046 # a list of PIDs
  for pid in "${pids[@]}" $(pgrep -P "$(IFS=,; echo "${pids[*]}")"); do
    rss=$((rss + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status")))
  done
  wait $loadgen || { echo "| $label | loadgen failed: $(grep -m1 -i error "$SERVICES_DIR/run.err") |"; return 1; }
  python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / 100
window = float(sys.argv[4])
deliveries = r["deliveries_per_sec"] * window
print("| {} | {} | {} | {} | {:.0f} | {:.0f} | {:.2f} | {:.2f} | {:.1f} | {} | {} | {:.0f} | **{:.2f}** | {} |".format(
    sys.argv[5], r["members"] + r["sse_members"], r["rooms"], r["target_rate"], r["send_rate"], r["deliveries_per_sec"],
    r["p50_ms"], r["p99_ms"], r["max_ms"], r["lost"], r["cut_off"], 100 * cpu / window,
    1e6 * cpu / deliveries, int(sys.argv[6]) // 1024))' "$SERVICES_DIR/run.json" "$before" "$after" "$seconds" "$label" "$rss"
}

# start_nchan PORT: nginx with the nchan module (apt-get install nginx-light
# libnginx-mod-nchan), one worker, a channel per room: `POST /pub/<room>` publishes, `GET
# /sub/<room>` is its EventSource stream, the last 10 messages kept; its address in `endpoints`.
start_nchan() {
  local conf="$SERVICES_DIR/nchan"
  mkdir -p "$conf"
  cat >"$conf/nginx.conf" <<CONF
include /etc/nginx/modules-enabled/50-mod-nchan.conf;
user root;
daemon off;
worker_processes 1;
pid $conf/nginx.pid;
error_log $conf/error.log warn;
events { worker_connections 65536; }
http {
  access_log off;
  client_body_temp_path $conf;
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location ~ ^/pub/(\w+)$ { nchan_publisher; nchan_channel_id \$1; nchan_message_buffer_length 10; }
    # A new subscriber gets what is published from now on, as this server's streams do (the
    # default, oldest, would replay the channel's buffer to each).
    location ~ ^/sub/(\w+)$ {
      nchan_subscriber eventsource; nchan_channel_id \$1; nchan_subscriber_first_message newest;
    }
  }
}
CONF
  nginx -c "$conf/nginx.conf" -e "$conf/error.log" >"$conf/out.log" 2>&1 &
  pids+=($!)
  wait_for_port "$1"
  endpoints=127.0.0.1:$1
}
