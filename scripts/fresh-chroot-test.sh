#!/usr/bin/env bash
# Check the README's promise that `make test` and `make demo` work as root on a
# machine with nothing preinstalled: debootstrap a minimal Debian bookworm into
# DIR, add only what a bare machine has (make, git, ca-certificates), clone
# this repository at HEAD into it and run, inside the chroot as root,
# `make test`, `make demo` and a second `make setup` (which must change
# nothing). Everything mounted here is unmounted on exit, even on failure.
#
# usage: scripts/fresh-chroot-test.sh [-m MIRROR] [-s SECURITY_MIRROR]
#            [-d DEMO_SECONDS] [-l LOGDIR] [-f] DIR
#   -m  Debian mirror (default: the first one in this machine's apt sources)
#   -s  Debian security mirror (default: derived the same way)
#   -d  DEMO_SECONDS for `make demo` (default 3)
#   -l  where the logs go (default DIR.logs, outside the chroot)
#   -f  delete DIR first if it exists (refused while anything is mounted in it)
#
# What the chroot shares with this machine, so cannot prove (see the README):
# the kernel (BTF, tracepoints, kprobes, BPF itself), the network and the CA
# certificates that this machine trusts (copied in: the machine's trust store
# is not setup's job). /sys is a new sysfs instance, so tracefs is NOT mounted
# in it until setup mounts it; the host's cgroup mounts are bound in.
set -euo pipefail

mirror="" security="" demo_seconds=3 logdir="" force=0
while getopts "m:s:d:l:fh" opt; do
    case $opt in
        m) mirror=$OPTARG ;;
        s) security=$OPTARG ;;
        d) demo_seconds=$OPTARG ;;
        l) logdir=$OPTARG ;;
        f) force=1 ;;
        *) sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-m MIRROR] [-s SECURITY_MIRROR] [-d SECONDS] [-l LOGDIR] [-f] DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "fresh-chroot-test: must run as root (debootstrap, mounts, eBPF)" >&2; exit 1; }

repo=$(cd "$(dirname "$0")/.." && pwd)
root=$(realpath -m "$1")
logdir=$(realpath -m "${logdir:-$root.logs}")
say() { printf 'fresh-chroot-test: %s\n' "$*"; }
die() { printf 'fresh-chroot-test: %s\n' "$*" >&2; exit 1; }
case $root in /|/usr|/usr/*|/etc|/etc/*|"$repo"|"$repo"/*) die "refusing to use $root as the chroot" ;; esac

mounted_under() { findmnt -rn -o TARGET | awk -v r="$root" 'index($0, r "/") == 1 || $0 == r'; }

# Mirrors: the first Debian ones this machine's apt uses (one-line or deb822).
apt_uris() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }'
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }'
}
[ -n "$mirror" ] || mirror=$(apt_uris | grep -E '/debian/?$' | head -n 1 || true)
[ -n "$security" ] || security=$(apt_uris | grep -E '/debian-security/?$' | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
security=${security:-http://deb.debian.org/debian-security}

if [ -e "$root" ]; then
    [ -z "$(mounted_under)" ] || die "something is mounted under $root; unmount it first (findmnt | grep $root)"
    [ $force -eq 1 ] || die "$root exists; pass -f to delete it and start again"
    rm -rf --one-file-system "$root"
fi
mkdir -p "$logdir"
rm -f "$logdir"/*.log

# Processes left running in the chroot keep its mounts busy; they are ours.
kill_chroot_procs() {
    local p pids=()
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && pids+=("${p#/proc/}")
    done
    [ ${#pids[@]} -eq 0 ] && return 0
    say "killing processes left in the chroot: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    sleep 2
    kill -KILL "${pids[@]}" 2>/dev/null || true
}
cleanup() {
    local rc=$? m
    trap - EXIT INT TERM HUP
    kill_chroot_procs
    # Deepest first; umount -R handles the submounts of the recursive binds.
    for m in dev sys proc; do
        if mountpoint -q "$root/$m" 2>/dev/null; then
            umount -R "$root/$m" 2>/dev/null || umount -R -l "$root/$m" || true
        fi
    done
    if [ -n "$(mounted_under)" ]; then
        say "STILL MOUNTED under $root:" >&2
        mounted_under >&2
        rc=1
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

say "debootstrap bookworm (minbase) from $mirror into $root (log: $logdir/debootstrap.log)"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$logdir/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $logdir/debootstrap.log"

# The machine's own configuration (not setup's job): apt sources as a Debian
# install has them, DNS, the CAs this site trusts, no daemons started by dpkg.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/usr/local/share/ca-certificates"
cp -L /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

# A clean environment, as a root login has it; TERM is the caller's (with
# TERM=dumb, rich renders 80 columns and tests/unit/test_render.py fails).
in_chroot() {
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 ${TERM:+TERM=$TERM} \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

say "installing the bare machine's packages: make git ca-certificates"
in_chroot env DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends make git ca-certificates' \
    >"$logdir/base.log" 2>&1 || die "base packages failed; see $logdir/base.log"

# Mounts: a new proc and a new sysfs (so the host's tracefs mount is not
# inherited), the host's cgroup hierarchies and /dev (with pts and shm).
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
if mountpoint -q /sys/fs/cgroup; then
    mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
    mount --make-rslave "$root/sys/fs/cgroup"
fi
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"

kver=$(uname -r)
{
    echo "host kernel: $kver"
    echo "repo: $repo at $(git -C "$repo" rev-parse HEAD) (uncommitted changes are not cloned)"
    echo "tracefs before setup: $(in_chroot sh -c 'test -e /sys/kernel/tracing/events && echo mounted || echo "not mounted"')"
    echo "/lib/modules/$kver before setup: $(test -e "$root/lib/modules/$kver" && echo present || echo absent)"
    echo "python3 before setup: $(in_chroot sh -c 'command -v python3 || echo absent')"
    echo "gcc before setup: $(in_chroot sh -c 'command -v gcc || echo absent')"
} | tee "$logdir/before.log"

git clone -q "$repo" "$root/root/lockprof"

status=0
step() {
    local name=$1 t0 rc
    shift
    say "make $* (log: $logdir/$name.log)"
    t0=$(date +%s)
    set +e
    # In the background, so that a signal to this script runs its traps now,
    # not when make ends.
    in_chroot timeout 3600 sh -c 'cd /root/lockprof && exec make "$@"' make "$@" >"$logdir/$name.log" 2>&1 &
    wait $!
    rc=$?
    set -e
    say "make $*: exit $rc in $(($(date +%s) - t0)) s"
    [ $rc -eq 0 ] || status=1
    return 0
}
step test test
grep -E '^=+ .*(passed|failed|error).* =+$' "$logdir/test.log" | tail -n 1 || true
grep -E '^(SKIPPED|FAILED|ERROR) ' "$logdir/test.log" || true
step demo demo DEMO_SECONDS="$demo_seconds"
tail -n 3 "$logdir/demo.log"
step setup-again setup SETUP_ARGS=--browser
if [ "$(grep -c '^setup: ' "$logdir/setup-again.log")" -ne 1 ] || ! grep -q '^setup: ready' "$logdir/setup-again.log"; then
    say "second setup was not a no-op:"
    cat "$logdir/setup-again.log"
    status=1
fi

if command -v bpftool >/dev/null && bpftool prog list 2>/dev/null | grep -q ' name lp_'; then
    say "note: lp_ BPF programs are loaded (this test's, or another lockprof running on this machine):"
    bpftool prog list | grep ' name lp_' || true
fi
[ $status -eq 0 ] && say "PASS: make test, make demo and an idempotent make setup in $root" ||
    say "FAIL: see the logs in $logdir"
exit $status
