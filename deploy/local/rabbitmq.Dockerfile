# RabbitMQ from Debian's package, for hosts without an image registry
# (deploy/build-local-base.sh builds it; compose.local.yaml uses it).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/rabbitmq /etc/rabbitmq \
    && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
COPY rabbitmq-entrypoint.sh /usr/local/bin/rabbitmq-entrypoint.sh
ENV RABBITMQ_LOGS=- PATH=/usr/lib/rabbitmq/bin:$PATH HOME=/var/lib/rabbitmq
USER rabbitmq
EXPOSE 5672 15672 15692
ENTRYPOINT ["/usr/local/bin/rabbitmq-entrypoint.sh"]
