#!/usr/bin/env bash
# Several "hosts" on one machine, for multi-host MPI runs without a second machine: network
# namespaces, each with its own address on a private bridge, MPICH over TCP between them.
#
#   sudo slurm/dev/fake-hosts.sh up 2             # hosts hpcml-h1, hpcml-h2 (10.231.7.1, .2)
#   sudo slurm/dev/fake-hosts.sh mpiexec -hosts hpcml-h1:2,hpcml-h2:2 -n 4 python -m hpcml.train
#   sudo slurm/dev/fake-hosts.sh bytes hpcml-h2   # bytes that crossed h2's link (rx tx)
#   sudo slurm/dev/fake-hosts.sh down
#
# Follows shared/notes/slurm-and-multihost.md: addresses live on the namespaces' own links
# only (a bridge in a namespace of its own; nothing is added to this machine's network);
# Hydra starts each host's proxy through slurm/dev/netns-rsh (`ip netns exec HOST ...`)
# and mpiexec itself runs in the first host (its proxies connect back to it); MPICH's
# OFI netmod with libfabric's TCP provider carries the messages, so the traffic crosses
# the links (UCX restricted to TCP also crossed them, but left the parameter server's
# any-source receives unmatched: see hpcml/launch.py). HPCML_NETNS_PREFIX and HPCML_NETNS_NET (the first three octets) let two
# sets live side by side.
set -euo pipefail
PREFIX=${HPCML_NETNS_PREFIX:-hpcml-h}
NET=${HPCML_NETNS_NET:-10.231.7}
SW="${PREFIX}sw"
HERE=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}
[ $# -gt 0 ] && shift

hosts() {  # the namespaces of this set, in order
  ip netns list | awk '{print $1}' | grep -E "^${PREFIX}[0-9]+$" | sort -V || true
}

answers() {  # answers FROM_HOST ADDRESS: a refused (or accepted) TCP connection
  ip netns exec "$1" "${PYTHON:-python3}" - "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], 1), timeout=1).close()
except ConnectionRefusedError:
    pass
except OSError:
    sys.exit(1)
PY
}

case "$cmd" in
  up)
    n=${1:-2}
    if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 2 ] || [ "$n" -gt 8 ]; then
      echo "fake-hosts.sh up: the number of hosts must be 2..8, got '$n'" >&2; exit 2
    fi
    [ "$(id -u)" = 0 ] || { echo "fake-hosts.sh: needs root (ip netns)" >&2; exit 2; }
    command -v ip >/dev/null || { echo "fake-hosts.sh: 'ip' (iproute2) not found" >&2; exit 2; }
    "$0" down
    trap '"$0" down' ERR
    ip netns add "$SW"
    ip -n "$SW" link add br0 type bridge
    ip -n "$SW" link set br0 up
    hostsfile=$(mktemp)
    echo "127.0.0.1 localhost" > "$hostsfile"
    for i in $(seq "$n"); do echo "$NET.$i ${PREFIX}$i" >> "$hostsfile"; done
    for i in $(seq "$n"); do
      h="${PREFIX}$i"
      ip netns add "$h"
      ip -n "$h" link set lo up
      # one veth pair per host: eth0 in the host, its peer on the bridge
      ip link add "hpcml$$-$i" type veth peer name "hpcml$$-p$i"
      ip link set "hpcml$$-$i" netns "$h"
      ip link set "hpcml$$-p$i" netns "$SW"
      ip -n "$h" link set "hpcml$$-$i" name eth0
      ip -n "$SW" link set "hpcml$$-p$i" master br0 up
      ip -n "$h" addr add "$NET.$i/24" dev eth0
      ip -n "$h" link set eth0 up
      mkdir -p "/etc/netns/$h"
      cp "$hostsfile" "/etc/netns/$h/hosts"
    done
    rm -f "$hostsfile"
    # until the first host reaches the last one (no ping here: a TCP connection to a
    # closed port that is refused proves the host answered)
    for _ in $(seq 50); do
      answers "${PREFIX}1" "$NET.$n" && break
      sleep 0.1
    done
    answers "${PREFIX}1" "$NET.$n" \
      || { echo "fake-hosts.sh: ${PREFIX}1 cannot reach ${PREFIX}$n" >&2; exit 1; }
    hosts | tr '\n' ' '; echo
    ;;
  down)
    for h in $(hosts); do
      ip netns pids "$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$h" 2>/dev/null || true
      rm -rf "/etc/netns/$h"
    done
    ip netns del "$SW" 2>/dev/null || true
    ;;
  mpiexec)
    # mpiexec in the first host, the others reached through netns-rsh; OFI over TCP
    first=$(hosts | head -n1)
    [ -n "$first" ] || { echo "fake-hosts.sh: no hosts are up (run: $0 up 2)" >&2; exit 2; }
    exec ip netns exec "$first" env MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp \
      mpiexec -launcher rsh -launcher-exec "$HERE/netns-rsh" "$@"
    ;;
  bytes)
    h=${1:?"fake-hosts.sh bytes HOST"}
    ip netns exec "$h" cat /sys/class/net/eth0/statistics/rx_bytes \
      /sys/class/net/eth0/statistics/tx_bytes | tr '\n' ' '; echo
    ;;
  hosts)
    hosts
    ;;
  *)
    echo "usage: $0 up N | down | hosts | mpiexec ARGS... | bytes HOST" >&2; exit 2
    ;;
esac
