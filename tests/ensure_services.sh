#!/usr/bin/env bash
# Start the services the tests use (PostgreSQL, Redis, RabbitMQ) when the machine is not already
# running them, and install Debian's Chromium for the admin's browser test when it is missing;
# moto (S3) and private Redis servers are started by the tests themselves.
set -u

up() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_for() {  # name port
  for _ in $(seq 1 60); do up "$2" && return 0; sleep 1; done
  echo "ensure_services: $1 did not come up on port $2" >&2
  return 1
}

if ! up 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_for PostgreSQL 5432 || exit 1
fi
if ! up 6379; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/editloop-redis.log
  wait_for Redis 6379 || exit 1
fi
if ! up 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
  wait_for RabbitMQ 5672 || exit 1
fi
# The admin's browser test drives Debian's Chromium headless over its DevTools protocol.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || { echo "ensure_services: could not install chromium" >&2; exit 1; }
fi
