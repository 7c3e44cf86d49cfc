#!/bin/sh
# The broker container's entrypoint (docker-compose.yml): fills the passwords of the
# environment into the definitions (deploy/rabbitmq/definitions.json: the operator's user,
# one user per service with its permissions, the topology), then starts RabbitMQ, which
# loads them at every start (deploy/rabbitmq/orderstack.conf). No password is in the
# repository; the rendered file is readable by the broker only. docs/security.md says why.
set -eu

rendered=/var/lib/rabbitmq/orderstack-definitions.json
expression=""
for name in RABBITMQ_ADMIN_USER RABBITMQ_ADMIN_PASSWORD ORDER_SERVICE_BROKER_PASSWORD \
    PRODUCT_SERVICE_BROKER_PASSWORD; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "orderstack: $name is not set (see .env.example)" >&2
        exit 1
    fi
    # They go into JSON here and into amqp:// URLs in the services: URL-safe characters.
    case "$value" in
        *[!A-Za-z0-9._~-]*)
            echo "orderstack: $name may hold only A-Z a-z 0-9 . _ ~ -" >&2
            exit 1
            ;;
    esac
    expression="$expression -e s/__${name}__/${value}/g"
done

umask 077
# shellcheck disable=SC2086 # one -e per placeholder
sed $expression /etc/orderstack/definitions.json > "$rendered"
if [ "$(id -u)" = 0 ]; then
    chown rabbitmq:rabbitmq "$rendered"
fi
exec docker-entrypoint.sh "$@"
