#!/bin/sh
# Opt-in: build every image of the compose stack from Debian packages alone, for a host
# that reaches a Debian mirror (and PyPI) but no container image registry.
#
#   sudo deploy/build-local-base.sh            # base, rabbitmq, postgres, prometheus, gateway
#   cd deploy/compose && docker-compose -f compose.yaml -f compose.local.yaml up -d
#
# 1. debootstrap a minimal Debian (SUITE, default bookworm) from the mirror apt already
#    uses here, and `docker import` it as $BASE_TAG (default digipoort-base:bookworm);
# 2. build RabbitMQ, PostgreSQL and Prometheus images on it from Debian's packages
#    (deploy/local/*.Dockerfile; Grafana has no Debian package: not built);
# 3. build the gateway image (deploy/Dockerfile) with --build-arg BASE_IMAGE=$BASE_TAG.
#
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker engine.
# Environment: SUITE, MIRROR, SECURITY_MIRROR, BASE_TAG, REBUILD_BASE=1 (re-bootstrap),
# ONLY_BASE=1 (stop after step 1), GATEWAY_TAG (default digipoort:latest), HOST_CA=0 (do
# not copy the host's /usr/local/share/ca-certificates into the base).
set -eu

SUITE=${SUITE:-bookworm}
BASE_TAG=${BASE_TAG:-digipoort-base:$SUITE}
GATEWAY_TAG=${GATEWAY_TAG:-digipoort:latest}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

say() { printf '%s build-local-base: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The mirror apt is configured with (deb822 *.sources or one-line sources.list).
apt_mirror() { # $1: a pattern the URI must match, $2: one it must not
    {
        cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' \
            | tr ' ' '\n'
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\).*/\2/p'
    } | grep -E "$1" | grep -vE "$2" | head -n 1
}
MIRROR=${MIRROR:-$(apt_mirror '/debian/?$' 'security')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(apt_mirror 'debian-security/?$' '^$')}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and docker import need it)"
command -v docker >/dev/null || die "docker is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd)"

build_base() {
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    work=$(mktemp -d /var/tmp/digipoort-rootfs.XXXXXX)
    trap 'umount "$work/proc" 2>/dev/null || true; rm -rf "$work"' EXIT INT TERM
    say "debootstrap $SUITE from $MIRROR into $work"
    debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv \
        "$SUITE" "$work" "$MIRROR" >"$work.log" 2>&1 \
        || { tail -n 20 "$work.log" >&2; die "debootstrap failed (log: $work.log)"; }
    cat >"$work/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    # as in Debian's own container images: no daemons started by package scripts, no docs
    printf '#!/bin/sh\nexit 101\n' >"$work/usr/sbin/policy-rc.d"
    chmod 755 "$work/usr/sbin/policy-rc.d"
    cat >"$work/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    echo 'APT::Install-Recommends "false";' >"$work/etc/apt/apt.conf.d/00norecommends"
    say "security and point-release updates"
    mount -t proc proc "$work/proc"
    chroot "$work" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade' \
        >>"$work.log" 2>&1 || die "apt-get upgrade in the rootfs failed (log: $work.log)"
    # Behind a TLS-intercepting proxy the image must trust what the host trusts: the
    # host's locally added CAs (HOST_CA=0 to leave them out)
    if [ "${HOST_CA:-1}" = 1 ] && ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        say "adding the host's local CAs ($(ls /usr/local/share/ca-certificates/*.crt | wc -l))"
        cp /usr/local/share/ca-certificates/*.crt "$work/usr/local/share/ca-certificates/"
        chroot "$work" update-ca-certificates >>"$work.log" 2>&1
    fi
    umount "$work/proc"
    chroot "$work" apt-get clean
    rm -rf "$work"/var/lib/apt/lists/* "$work"/var/cache/apt/*.bin "$work"/tmp/* "$work.log"
    say "docker import $BASE_TAG ($(du -sh "$work" | cut -f1))"
    tar --numeric-owner -C "$work" -c . | docker import \
        -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' -m "debootstrap $SUITE $MIRROR" - "$BASE_TAG" >/dev/null
    rm -rf "$work"
    trap - EXIT INT TERM
}

start=$(date +%s)
if [ "${REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    build_base
else
    say "$BASE_TAG exists (REBUILD_BASE=1 to bootstrap again)"
fi
[ "${ONLY_BASE:-0}" = 1 ] && exit 0

for service in rabbitmq postgres prometheus; do
    say "image digipoort-local/$service"
    docker build -q --build-arg "BASE_IMAGE=$BASE_TAG" -t "digipoort-local/$service:latest" \
        -f "$ROOT/deploy/local/$service.Dockerfile" "$ROOT/deploy/local" >/dev/null
done
say "image $GATEWAY_TAG"
docker build -q --build-arg "BASE_IMAGE=$BASE_TAG" -t "$GATEWAY_TAG" \
    -f "$ROOT/deploy/Dockerfile" "$ROOT" >/dev/null
say "done in $(( $(date +%s) - start )) s:"
docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' \
    | grep -E "digipoort-base|digipoort-local|${GATEWAY_TAG%%:*}" >&2
