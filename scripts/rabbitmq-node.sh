#!/usr/bin/env bash
# Starts or stops a private RabbitMQ node beside the shared one, for tests that need a
# broker of their own: a TLS listener, several independent nodes, a node to stop. Loopback
# only; every wait is bounded; a node that does not come up fails with the end of its log.
#
#   rabbitmq-node.sh certs DIR
#   rabbitmq-node.sh start DIR NAME AMQP_PORT DIST_PORT [TLS_PORT]
#   rabbitmq-node.sh stop DIR NAME
#
# `certs` writes a throwaway PKI into DIR/certs with the openssl CLI: ca.pem (+ ca.key),
# server.pem/server.key for `localhost` only (127.0.0.1 is a wrong host), client.pem and
# client.key (CN gateway-client), and other-ca.pem, a CA that signed none of them.
#
# DIR holds everything of the node (config, data, logs, Erlang cookie) and is removed by
# `stop`. With TLS_PORT, DIR/certs must hold ca.pem, server.pem and server.key: the TLS
# listener asks for (but does not require) a client certificate, EXTERNAL login is on
# (plugin rabbitmq_auth_mechanism_ssl, user = the certificate's CN), and when
# EXTERNAL_USER is set that user is created with full rights on the vhost `/`.
set -euo pipefail

usage() {
  echo "usage: $0 certs DIR | start DIR NAME AMQP_PORT DIST_PORT [TLS_PORT] | stop DIR NAME" >&2
  exit 2
}

certs() {
  local d="$1/certs"
  command -v openssl >/dev/null || {
    echo "rabbitmq-node: installing openssl (the CLI, to make test certificates)" >&2
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq openssl >/dev/null
  }
  mkdir -p "$d"
  (
    cd "$d"
    ossl() { openssl "$@" 2>/dev/null; }
    ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=gateway-test-ca"
    ossl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 -subj "/CN=gateway-test-other-ca"
    printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    ossl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
    ossl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    ossl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=gateway-client"
    ossl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.pem
    chmod 644 ./*.key
  )
  [ -s "$d/client.pem" ] && [ -s "$d/server.pem" ] || { echo "rabbitmq-node: openssl failed to make the test certificates" >&2; exit 1; }
}

[ $# -ge 2 ] || usage
if [ "$1" = certs ]; then certs "$2"; exit 0; fi
[ $# -ge 3 ] || usage
cmd=$1 dir=$2 name=$3
node="$name@localhost"
bin=/usr/lib/rabbitmq/bin
[ -x "$bin/rabbitmq-server" ] || {
  echo "rabbitmq-node: $bin/rabbitmq-server not found; run scripts/ensure-rabbitmq.sh" >&2
  exit 1
}

# The node's own files only: Debian's /etc/rabbitmq would name it rabbit@localhost.
node_env() {
  export HOME="$dir/home"
  export RABBITMQ_NODENAME="$node"
  export RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/pid"
  export ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
  # One scheduler: a test node needs little, and CI has two cores shared by every test.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1"
}

ctl() { timeout 30 "$bin/rabbitmqctl" -n "$node" "$@"; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local amqp_port=$1 dist_port=$2 tls_port=${3:-}
  mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  : >"$dir/rabbitmq-env.conf"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie"
  chmod 400 "$dir/home/.erlang.cookie"
  {
    echo "listeners.tcp.1 = 127.0.0.1:$amqp_port"
    echo "log.console = false"
    echo "log.file.level = info"
  } >"$dir/rabbitmq.conf"
  if [ -n "$tls_port" ]; then
    for f in ca.pem server.pem server.key; do
      [ -r "$dir/certs/$f" ] || { echo "rabbitmq-node: $dir/certs/$f missing" >&2; exit 1; }
    done
    cat >>"$dir/rabbitmq.conf" <<EOF
listeners.ssl.1 = 127.0.0.1:$tls_port
ssl_options.cacertfile = $dir/certs/ca.pem
ssl_options.certfile = $dir/certs/server.pem
ssl_options.keyfile = $dir/certs/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
EOF
    echo "[rabbitmq_auth_mechanism_ssl]." >"$dir/enabled_plugins"
  else
    echo "[]." >"$dir/enabled_plugins"
  fi
  export RABBITMQ_DIST_PORT=$dist_port
  node_env
  # Its own session, so that `stop` can end the whole process group it started.
  setsid "$bin/rabbitmq-server" >"$dir/log/console.log" 2>&1 </dev/null &
  echo $! >"$dir/launcher.pid"

  local port=${tls_port:-$amqp_port}
  for _ in $(seq 1 120); do
    if answers "$amqp_port" && answers "$port"; then
      # The listeners can answer a moment before the rabbit application has finished
      # booting, and user management needs it running: wait for it (bounded by ctl).
      ctl await_startup >/dev/null
      if [ -n "${EXTERNAL_USER:-}" ]; then
        ctl add_user "$EXTERNAL_USER" "$(head -c 18 /dev/urandom | base64)" >/dev/null
        ctl set_permissions -p / "$EXTERNAL_USER" ".*" ".*" ".*" >/dev/null
      fi
      echo "rabbitmq-node: $node up on 127.0.0.1:$amqp_port${tls_port:+ (TLS $tls_port)}" >&2
      return 0
    fi
    if ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
  echo "rabbitmq-node: $node did not come up within 60 s; its log ends:" >&2
  tail -n 15 "$dir/log/console.log" >&2 2>/dev/null || true
  stop
  exit 1
}

stop() {
  node_env
  if [ -f "$dir/launcher.pid" ]; then
    ctl stop >/dev/null 2>&1 || true
    local pgid
    pgid=$(cat "$dir/launcher.pid")
    for _ in $(seq 1 40); do
      kill -0 -- "-$pgid" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    if [ -f "$dir/pid" ]; then kill -KILL "$(cat "$dir/pid")" 2>/dev/null || true; fi
  fi
  # `halt` keeps the node's data, for a restart of the same node (a broker restart).
  [ "${KEEP_FILES:-}" = 1 ] || rm -rf "$dir"
}

case $cmd in
  start) [ $# -ge 5 ] || usage; start "$4" "$5" "${6:-}" ;;
  stop) stop ;;
  halt) KEEP_FILES=1 stop ;;
  *) usage ;;
esac
