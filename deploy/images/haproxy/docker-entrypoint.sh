#!/bin/sh
# The upstream image's rules: bare options are haproxy's; haproxy runs with -W -db
# (master-worker, in the foreground).
set -eu
case "${1:-}" in
    -*) set -- haproxy "$@" ;;
esac
if [ "${1:-}" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
