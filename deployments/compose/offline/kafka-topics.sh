#!/bin/sh
# The subset of Kafka's kafka-topics.sh that compose.yaml uses:
#   --bootstrap-server HOST:PORT --create [--if-not-exists] --topic T --partitions N
#   [--replication-factor 1]
set -eu
server=localhost:9092 topic= partitions=1 create= exists_ok=
while [ $# -gt 0 ]; do
  case "$1" in
    --bootstrap-server) server=$2; shift 2 ;;
    --topic) topic=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --replication-factor) shift 2 ;;
    --create) create=1; shift ;;
    --if-not-exists) exists_ok=1; shift ;;
    *) echo "kafka-topics.sh (tansu shim): unsupported argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$create" ] && [ -n "$topic" ] || { echo "kafka-topics.sh (tansu shim): only --create --topic" >&2; exit 2; }
if out=$(tansu topic create "$topic" --partitions "$partitions" --broker "tcp://$server" 2>&1); then
  echo "Created topic $topic."
elif [ -n "$exists_ok" ] && printf '%s' "$out" | grep -qi 'exist'; then
  :
else
  printf '%s\n' "$out" >&2
  exit 1
fi
