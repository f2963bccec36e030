#!/bin/sh
# Debian 12's RabbitMQ is 3.10: deploy/rabbitmq/rabbitmq.conf is written for 3.13, whose
# `quorum_queue.initial_cluster_size` 3.10 refuses as unknown (and 3.10's default initial
# quorum group size is 3 already). Run on a copy without it; everything else as mounted.
set -eu
sed '/^[[:space:]]*quorum_queue\.initial_cluster_size[[:space:]]*=/d' \
    /etc/rabbitmq/rabbitmq.conf > /var/lib/rabbitmq/rabbitmq.conf
export RABBITMQ_CONFIG_FILE=/var/lib/rabbitmq/rabbitmq.conf
exec rabbitmq-server "$@"
