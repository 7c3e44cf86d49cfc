#!/bin/sh
# The upstream mariadb image's first-start contract, for the stand-in (Dockerfile beside).
set -eu

log() { echo "entrypoint: $*" >&2; }

case "${1:-}" in
    -*) set -- mariadbd "$@" ;;
esac
if [ "${1:-}" != mariadbd ] && [ "${1:-}" != mysqld ]; then
    exec "$@"
fi

# MARIADB_X wins over MYSQL_X, as upstream.
env_of() {
    eval "value=\${MARIADB_$1:-\${MYSQL_$1:-}}"
    printf '%s' "$value"
}
# A string for a single-quoted SQL literal.
sql_quote() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"; }

datadir=/var/lib/mysql
mkdir -p /run/mysqld
chown mysql:mysql /run/mysqld

if [ ! -d "$datadir/mysql" ]; then
    root_password=$(env_of ROOT_PASSWORD)
    # (upstream's MYSQL_ name for it lacks the ROOT_)
    allow_empty=$(env_of ALLOW_EMPTY_ROOT_PASSWORD)
    allow_empty=${allow_empty:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}
    random_root=$(env_of RANDOM_ROOT_PASSWORD)
    database=$(env_of DATABASE)
    user=$(env_of USER)
    password=$(env_of PASSWORD)
    if [ -z "$root_password" ] && [ -z "$allow_empty" ] && [ -z "$random_root" ]; then
        log "database is uninitialized and no root password option is given:"
        log "set MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD or MARIADB_RANDOM_ROOT_PASSWORD"
        exit 1
    fi
    if [ -n "$random_root" ]; then
        root_password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
        log "GENERATED ROOT PASSWORD: $root_password"
    fi
    chown mysql:mysql "$datadir"
    log "initialising $datadir"
    mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
        --auth-root-authentication-method=normal > /dev/null
    socket=/run/mysqld/init.sock
    "$@" --user=mysql --skip-networking --socket="$socket" &
    pid=$!
    i=0
    until mariadb-admin --socket="$socket" -uroot ping > /dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -ge 60 ] || ! kill -0 "$pid" 2> /dev/null; then
            log "the temporary server did not start"
            exit 1
        fi
        sleep 1
    done
    {
        printf '%s\n' "SET @@SESSION.SQL_LOG_BIN=0;"
        printf '%s\n' "DELETE FROM mysql.user WHERE User='' OR (User='root' AND Host NOT IN ('localhost'));"
        rp=$(sql_quote "$root_password")
        printf '%s\n' "ALTER USER 'root'@'localhost' IDENTIFIED BY '$rp';"
        printf '%s\n' "CREATE USER 'root'@'%' IDENTIFIED BY '$rp';"
        printf '%s\n' "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
        if [ -n "$database" ]; then
            printf '%s\n' "CREATE DATABASE IF NOT EXISTS \`$database\`;"
        fi
        if [ -n "$user" ] && [ -n "$password" ]; then
            printf '%s\n' "CREATE USER '$(sql_quote "$user")'@'%' IDENTIFIED BY '$(sql_quote "$password")';"
            if [ -n "$database" ]; then
                printf '%s\n' "GRANT ALL ON \`$database\`.* TO '$(sql_quote "$user")'@'%';"
            fi
        fi
        printf '%s\n' "FLUSH PRIVILEGES;"
    } | mariadb --socket="$socket" -uroot
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) log "running $f"; MYSQL_PWD="$root_password" mariadb --socket="$socket" -uroot ${database:+"$database"} < "$f" ;;
            *.sh) log "running $f"; . "$f" ;;
        esac
    done
    MYSQL_PWD="$root_password" mariadb-admin --socket="$socket" -uroot shutdown
    wait "$pid" || true
    log "initialised"
fi

exec "$@" --user=mysql
