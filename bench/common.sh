# Shell helpers bench/run and bench/ab share; source it. The caller sets WORK (a scratch
# folder), NGINX (the binary), NGINX_WORKERS and PIDS (an array: processes to stop on exit).

# CPU time (utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks) of a process
# (all its threads) and its children (nginx's workers).
cpu_ticks() {
  local total=0 pid stat fields
  for pid in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    stat=$(cat /proc/"$pid"/stat 2>/dev/null) || continue
    # Fields from 3 on follow the last ')' (the command name in field 2 may hold spaces).
    read -r -a fields <<<"${stat##*) }"
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

# nginx as the current user, everything under the work dir.
start_nginx() { # NAME ACCESS_LOG SERVER_BLOCK... ; sets NGINX_PID
  local name=$1 dir=$WORK/$1 access_log=$2 user_line=""
  shift 2
  mkdir -p "$dir/tmp"
  [ "$(id -u)" -ne 0 ] || user_line="user $(id -un) $(id -gn);"
  cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes $NGINX_WORKERS;
daemon off;
pid "$dir/nginx.pid";
error_log "$dir/error.log" warn;
events { worker_connections 4096; }
http {
  access_log $access_log;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path "$dir/tmp/body";
  proxy_temp_path "$dir/tmp/proxy";
  fastcgi_temp_path "$dir/tmp/fastcgi";
  uwsgi_temp_path "$dir/tmp/uwsgi";
  scgi_temp_path "$dir/tmp/scgi";
  $*
}
EOF
  "$NGINX" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
}

# The sink both benchmarks send to: nginx's `return 200` with a chat robot's 27-byte answer.
sink_server() { # PORT
  echo "server { listen 127.0.0.1:$1; location / { default_type application/json; return 200 '{\"errcode\":0,\"errmsg\":\"ok\"}'; } }"
}
