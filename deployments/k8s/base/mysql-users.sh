#!/bin/sh
# The services' MySQL users: each its own, with every privilege on its own database and
# none on any other (ordersys_user, ordersys_order, ordersys_payment), and — when
# MYSQL_EXPORTER_PASSWORD is set — the Prometheus exporter's, which reads server status.
# Idempotent: run on every deployment, it creates what is missing and sets the
# passwords to those given (a volume or server that predates them included).
# Runs where a `mysql` client is (the mysql:8.0 image, MariaDB's client): the compose
# deployment's mysql-init service and the Kubernetes mysql-users Job run this file.
# Environment: MYSQL_HOST (default mysql), MYSQL_PORT (3306), MYSQL_ADMIN_USER (root),
# MYSQL_ADMIN_PASSWORD, MYSQL_USER_PASSWORD, MYSQL_ORDER_PASSWORD,
# MYSQL_PAYMENT_PASSWORD, MYSQL_EXPORTER_PASSWORD (optional).
set -eu
: "${MYSQL_ADMIN_PASSWORD?}" "${MYSQL_USER_PASSWORD:?}" "${MYSQL_ORDER_PASSWORD:?}" "${MYSQL_PAYMENT_PASSWORD:?}"
quote() { printf "'%s'" "$(printf '%s' "$1" | sed -e "s/\\\\/\\\\\\\\/g" -e "s/'/''/g")"; }
user() { # name password (printf, not echo: dash's echo would read the backslashes)
  printf "%s\n" "CREATE USER IF NOT EXISTS '$1'@'%' IDENTIFIED BY $(quote "$2");"
  printf "%s\n" "ALTER USER '$1'@'%' IDENTIFIED BY $(quote "$2");"
}
{
  for s in user order payment; do
    case $s in
      user) pw="$MYSQL_USER_PASSWORD" ;;
      order) pw="$MYSQL_ORDER_PASSWORD" ;;
      payment) pw="$MYSQL_PAYMENT_PASSWORD" ;;
    esac
    user "ordersys_$s" "$pw"
    # `\_`: the name exactly (in a GRANT, `_` alone matches any character).
    echo "GRANT ALL PRIVILEGES ON \`ordersys\\_$s\`.* TO 'ordersys_$s'@'%';"
  done
  if [ -n "${MYSQL_EXPORTER_PASSWORD:-}" ]; then
    user exporter "$MYSQL_EXPORTER_PASSWORD"
    echo "GRANT PROCESS, REPLICATION CLIENT, SELECT ON *.* TO 'exporter'@'%';"
  fi
} | MYSQL_PWD="$MYSQL_ADMIN_PASSWORD" mysql -h "${MYSQL_HOST:-mysql}" -P "${MYSQL_PORT:-3306}" -u "${MYSQL_ADMIN_USER:-root}"
echo "mysql-users: the services' users are in place on ${MYSQL_HOST:-mysql}"
