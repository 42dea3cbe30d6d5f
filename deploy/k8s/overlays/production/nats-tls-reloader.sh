#!/bin/sh
# Runs beside each nats-server (production): when the certificate in the Secret nats-tls changes (cert-manager
# renews it, or an operator replaces it), tells nats-server to reload, which reads the new certificate;
# nats-server itself reads it only at start. The containers share the pod's process namespace, so the
# server's pid file names a process this one may signal.
set -u

tls_dir="${TLS_DIR:-/etc/nats-tls}"
pid_file="${PID_FILE:-/var/run/nats/nats.pid}"
interval="${INTERVAL:-30}"

fingerprint() {
  cat "$tls_dir/tls.crt" "$tls_dir/tls.key" "$tls_dir/ca.crt" 2>/dev/null | sha256sum
}

loaded=$(fingerprint)
while sleep "$interval"; do
  current=$(fingerprint)
  [ "$current" = "$loaded" ] && continue
  if nats-server --signal "reload=$pid_file"; then
    echo "the certificate in $tls_dir changed: nats-server reloaded it"
    loaded=$current
  else
    echo "the certificate in $tls_dir changed, but nats-server could not be told; trying again" >&2
  fi
done
