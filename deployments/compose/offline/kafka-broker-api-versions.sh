#!/bin/sh
# Health check shim: the broker answers a Kafka metadata request.
#   --bootstrap-server HOST:PORT
set -eu
server=localhost:9092
[ "${1:-}" = --bootstrap-server ] && server=$2
exec tansu topic list --broker "tcp://$server" >/dev/null
