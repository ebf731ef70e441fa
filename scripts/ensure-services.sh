#!/usr/bin/env bash
# Starts the local services the tests need when they are not already running:
# PostgreSQL on 127.0.0.1:5432 and NATS JetStream on 127.0.0.1:4222 (Debian
# packages), and installs Chromium for the report rendering test.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! listening 5432; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  else
    echo "ensure-services: PostgreSQL is not running on 127.0.0.1:5432 and no cluster is installed." >&2
    echo "  install it (apt-get install postgresql) or set DATABASE_URL" >&2
    exit 1
  fi
fi
if ! listening 4222; then
  if command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; then
    echo "ensure-services: starting NATS JetStream"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  else
    echo "ensure-services: NATS is not running on 127.0.0.1:4222; install nats-server" >&2
    exit 1
  fi
fi
for i in $(seq 1 50); do
  listening 5432 && listening 4222 && break
  sleep 0.2
done
if ! command -v chromium >/dev/null; then
  echo "ensure-services: installing chromium (report rendering test)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
