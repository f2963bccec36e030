#!/usr/bin/env bash
# Bring up everything the gateway needs on a Debian/Ubuntu machine, then serve or test.
#
#   scripts/bootstrap.sh serve   # services, virtualenv, dev environment, migrate, serve
#   scripts/bootstrap.sh test    # services, virtualenv, then lint, type check and tests
#
# PostgreSQL and RabbitMQ are used on localhost when reachable; otherwise (as root) they
# are installed from the distribution's packages and started. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-serve}"
DEV_DIR="${DIGIPOORT_DEV_DIR:-.dev}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root for: $*" >&2; exit 1; fi; }
wait_port() { for _ in $(seq 1 "${2:-60}"); do reachable "$1" && return 0; sleep 1; done
  echo "port $1 did not come up" >&2; return 1; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  reachable 5432 && return 0
  say "PostgreSQL not reachable on 127.0.0.1:5432: installing/starting it"
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local ver; ver=$(ls /etc/postgresql | sort -V | tail -n1)
  local hba="/etc/postgresql/$ver/main/pg_hba.conf"
  # development machine: local TCP connections trusted, as the tests expect
  if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || as_root pg_ctlcluster "$ver" main restart
  wait_port 5432
}

ensure_rabbitmq() {
  if ! reachable 5672; then
    say "RabbitMQ not reachable on 127.0.0.1:5672: installing/starting it"
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    as_root rabbitmq-server -detached || true
    wait_port 5672 120
  fi
  if ! reachable 15672; then
    say "enabling the RabbitMQ management plugin"
    as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
    wait_port 15672 60
  fi
}

ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    say "creating the virtualenv"
    python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; python3 -m venv .venv; }
  fi
  local stamp=.venv/.installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing the project into .venv (log: .venv/pip.log)"
    # quiet: pip's warnings (e.g. about unreachable index locations) go to the log only;
    # on failure the end of the log is shown
    if ! { .venv/bin/pip install -qq --disable-pip-version-check --upgrade pip &&
           .venv/bin/pip install -qq --disable-pip-version-check -e '.[dev]'; } \
           >.venv/pip.log 2>&1; then
      tail -n 30 .venv/pip.log >&2
      echo "pip install failed; the whole log is in .venv/pip.log" >&2
      exit 1
    fi
    touch "$stamp"
  else
    say "virtualenv .venv is up to date"
  fi
}

say "[1/4] PostgreSQL on 127.0.0.1:5432"
ensure_postgres
say "[2/4] RabbitMQ on 127.0.0.1:5672 (management API on 15672)"
ensure_rabbitmq
say "[3/4] virtualenv"
ensure_venv

case "$mode" in
  serve)
    say "[4/4] development environment in $DEV_DIR, database, vhost, registry"
    [ -f "$DEV_DIR/digipoort.toml" ] || .venv/bin/digipoort dev init --dir "$DEV_DIR" >/dev/null
    # validation artefacts (UBL 2.1, EN 16931, SI-UBL 2.0) from $DIGIPOORT_STANDARDS or
    # ../shared/standards when present; otherwise it says how to install them
    .venv/bin/digipoort standards dev --config "$DEV_DIR/digipoort.toml"
    .venv/bin/digipoort setup --config "$DEV_DIR/digipoort.toml"
    say "serving (Ctrl-C stops); config: $DEV_DIR/digipoort.toml"
    exec .venv/bin/digipoort serve --config "$DEV_DIR/digipoort.toml"
    ;;
  test)
    say "[4/4] lint, types and tests"
    # independent peers and checkers used by the tests: xmlsec1 (XML-DSig), curl and lftp
    # (FTPS), swaks (SMTP), mpop (POP3), openssl (s_client), promtool (alert rules, Debian
    # package prometheus), docker-compose (compose file), chromium + npm (portal browser tests)
    missing=()
    for tool in xmlsec1 curl swaks lftp mpop openssl; do
      command -v "$tool" >/dev/null || missing+=("$tool")
    done
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    # the portal's browser tests: Debian's chromium (Playwright never downloads one) and
    # npm for axe-core
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v npm >/dev/null || missing+=(npm)
    if [ "${#missing[@]}" -gt 0 ]; then
      # one package that cannot be installed must not take the others with it
      if [ "$(id -u)" -eq 0 ]; then
        apt_install "${missing[@]}" 2>/dev/null || for pkg in "${missing[@]}"; do
          apt_install "$pkg" 2>/dev/null || say "could not install $pkg: tests needing it are skipped"
        done
      else say "not root: tests needing ${missing[*]} are skipped"; fi
    fi
    say "ruff"
    .venv/bin/ruff check .
    say "mypy"
    .venv/bin/mypy
    say "pytest"
    exec .venv/bin/pytest -q -p no:cacheprovider "${@:2}"
    ;;
  *) echo "usage: $0 serve|test" >&2; exit 2 ;;
esac
