# Sourced by the bench scripts that need a real systemd: boots an instance
# with tests/harness/sysbox, the release daemons at /usr/libexec/rbe and the
# units, sysusers and tmpfiles files from systemd/ installed as the packages
# would. Needs $H (the harness), $T (the cargo target dir) and the repo as
# the working directory.
# Usage: rbe_boot NAME [extra sysbox up arguments...]; sets P (host pid of
# the instance's systemd) and R (its root as seen from the host).
rbe_boot() {
  local name=$1
  shift
  local args=("$@") b f
  for b in rbe-casd rbe-frontend rbe-workerd; do
    args+=(--ro-bind "$T/release/$b:/usr/libexec/rbe/$b")
  done
  P=$($H up "$name" "${args[@]}")
  R=/proc/$P/root
  for f in systemd/*; do
    b=$(basename "$f")
    case $b in
      *.service|*.socket|*.slice) cp "$f" "$R/etc/systemd/system/" ;;
      rbe.sysusers) cp "$f" "$R/usr/lib/sysusers.d/rbe.conf" ;;
      rbe.tmpfiles) cp "$f" "$R/usr/lib/tmpfiles.d/rbe.conf" ;;
    esac
  done
  $H exec "$name" sh -c 'systemd-sysusers && systemd-tmpfiles --create rbe.conf' >/dev/null
}
