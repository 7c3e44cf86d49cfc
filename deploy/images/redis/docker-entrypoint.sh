#!/bin/sh
# The upstream image's rules: bare options or a .conf file are redis-server's; redis-server
# drops to the redis user (its data in /data, owned by it).
set -eu
case "${1:-}" in
    -* | *.conf) set -- redis-server "$@" ;;
esac
# Without a config file that says otherwise, protected mode off (as upstream: the port is
# the container's, published or not by its operator).
if [ "${1:-}" = redis-server ]; then
    if ! { [ -f "${2:-}" ] && grep -q '^protected-mode' "$2"; }; then
        set -- "$@" --protected-mode no
    fi
fi
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data 2>/dev/null || true
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
