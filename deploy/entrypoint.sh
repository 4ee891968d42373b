#!/bin/sh
# The image's entrypoint: start as root only long enough to take in what the
# host mounted, then run fognode as an unprivileged user.
#
# Files bind-mounted from the host keep the host's owner and mode (setup.sh
# writes them 0600 for the operator's uid), which the container's users
# cannot read. So whatever the compose file mounts under /run/host is copied
# into /run/fognode (a tmpfs), owned by the user fognode runs as, 0400.
# Then setpriv switches to that user (IMAGE_RUN_AS, uid:gid) and keeps
# IMAGE_KEEP_CAPS (CAP_NET_BIND_SERVICE, for port 443) as an ambient
# capability, its only one: an ambient capability survives exec under
# no-new-privileges, where a file capability on the interpreter does not.
# Started as another user (docker run --user, Kubernetes), it runs fognode
# as that user directly.
set -eu
RUN_AS=${IMAGE_RUN_AS:-10001:10001}
KEEP=${IMAGE_KEEP_CAPS-net_bind_service}
if [ "$(id -u)" != 0 ]; then
    exec fognode "$@"
fi
if [ -d /run/host ]; then
    # Files first, the directory's owner last: root here has neither
    # CAP_DAC_OVERRIDE nor CAP_FOWNER, so once the directory is the user's,
    # root could neither write into it nor change its mode.
    mkdir -p /run/fognode
    chmod 0700 /run/fognode
    for file in /run/host/*; do
        [ -f "$file" ] || continue
        copy=/run/fognode/$(basename "$file")
        cp "$file" "$copy"
        chmod 0400 "$copy"
        chown "$RUN_AS" "$copy"
    done
    chown "$RUN_AS" /run/fognode
fi
caps="-all"
[ -n "$KEEP" ] && caps="-all,+$KEEP"
exec setpriv --reuid="${RUN_AS%%:*}" --regid="${RUN_AS##*:}" --clear-groups \
    --inh-caps="$caps" --ambient-caps="$caps" --bounding-set="$caps" -- fognode "$@"
