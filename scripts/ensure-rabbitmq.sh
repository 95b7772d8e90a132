#!/usr/bin/env bash
# Makes sure a RabbitMQ answers on 127.0.0.1:5672: installs Debian's rabbitmq-server when
# it is missing and starts it when it is not running. Idempotent; used by the quick start
# and by the test command.
set -euo pipefail

host=127.0.0.1
port=5672

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if answers; then
  exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  echo "ensure-rabbitmq: installing Debian's rabbitmq-server" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rabbitmq-server >/dev/null
fi

if ! answers; then
  echo "ensure-rabbitmq: starting rabbitmq-server" >&2
  # Without systemd (containers, CI) the service wrapper may not work; -detached does.
  as_root env PATH="$PATH:/usr/sbin" rabbitmq-server -detached >/dev/null 2>&1 \
    || as_root service rabbitmq-server start >/dev/null 2>&1 || true
fi

for _ in $(seq 1 120); do
  if answers; then
    echo "ensure-rabbitmq: RabbitMQ is up on $host:$port" >&2
    exit 0
  fi
  sleep 1
done
echo "ensure-rabbitmq: RabbitMQ did not come up on $host:$port within 120 s" >&2
exit 1
