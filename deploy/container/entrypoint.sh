#!/bin/sh
# The image's ENTRYPOINT. With no arguments it starts the server named by RUN_MODE:
#
#   production (default)  exec gunicorn -c config/gunicorn.py  (Gunicorn is PID 1 and gets
#                         SIGTERM itself; Uvicorn workers, settings from the environment)
#   development           exec python manage.py runserver 0.0.0.0:$GUNICORN_PORT
#
# RUN_MIGRATIONS=1 applies migrations first: for a single instance only, since every replica
# would run them (in Kubernetes a Job does it once). With arguments it validates the same
# variables and runs them instead: `... image python manage.py migrate --noinput`.
#
# DJANGO_ENV, the settings layer, follows RUN_MODE unless it is set. Everything else is read and
# validated by coffee_payment/conf.py.
set -eu

refuse() {
  echo "configuration error: $1" >&2
  exit 1
}

run_mode="${RUN_MODE:-production}"
case "$run_mode" in
  production | development) ;;
  *) refuse "RUN_MODE='$run_mode' is not a run mode (allowed: production, development)" ;;
esac

case "$(printf '%s' "${RUN_MIGRATIONS:-0}" | tr '[:upper:]' '[:lower:]')" in
  1 | true | yes | on) run_migrations=1 ;;
  0 | false | no | off) run_migrations=0 ;;
  *) refuse "RUN_MIGRATIONS='$RUN_MIGRATIONS' is not a boolean (allowed: 1/0, true/false, yes/no, on/off)" ;;
esac

export DJANGO_ENV="${DJANGO_ENV:-$run_mode}"

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

if [ "$run_migrations" = 1 ]; then
  python manage.py migrate --noinput
fi

if [ "$run_mode" = production ]; then
  exec gunicorn -c config/gunicorn.py
fi
exec python manage.py runserver "0.0.0.0:${GUNICORN_PORT:-8000}"
