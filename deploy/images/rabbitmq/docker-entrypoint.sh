#!/bin/sh
# The upstream rabbitmq image's start, for the stand-in (Dockerfile beside).
set -eu

case "${1:-}" in
    -*) set -- rabbitmq-server "$@" ;;
esac
if [ "${1:-}" != rabbitmq-server ]; then
    exec "$@"
fi
shift

# The default user, vhost: what the upstream image writes from its environment. (A node
# that loads definitions at its first start creates no default user, as upstream.)
conf=/etc/rabbitmq/conf.d/05-default-user.conf
: > "$conf"
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
    echo "default_user = $RABBITMQ_DEFAULT_USER" >> "$conf"
fi
if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
    echo "default_pass = $RABBITMQ_DEFAULT_PASS" >> "$conf"
fi
if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
    echo "default_vhost = $RABBITMQ_DEFAULT_VHOST" >> "$conf"
fi
chmod 0640 "$conf"

if [ "$(id -u)" = 0 ]; then
    chown rabbitmq:rabbitmq "$conf"
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
        /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
