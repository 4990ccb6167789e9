#!/usr/bin/env bash
# Idempotent machine setup for lockprof: apt packages, kernel headers (exact or
# wired fallback), tracefs, a venv that sees Debian's bcc, and the package.
# Every step checks before it acts, so a second run is fast and changes nothing.
set -euo pipefail

# --browser: also Debian's chromium, which the report's browser tests drive;
# --bpftrace: also Debian's bpftrace, the independent tracer lockprof's
# figures are checked against (tests/integration/test_agree.py, bench/agree.py).
# `make test` passes both; without them those tests skip, saying so.
browser=0
bpftrace=0
for arg in "$@"; do
    case $arg in
        --browser) browser=1 ;;
        --bpftrace) bpftrace=1 ;;
        *) echo "usage: $0 [--browser] [--bpftrace]" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.venv"
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (apt, tracefs and eBPF need it); try: sudo make setup" >&2
    exit 1
fi

apt_updated=0
apt_install() {
    # Install only the packages that are missing; update the index once.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ $apt_updated -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# python3-bpfcc is BCC's Python binding. PyPI's "bcc" is an unrelated project.
# ca-certificates: Debian's pip in the venv verifies PyPI against the system
# store (/etc/ssl/certs), which a minimal install does not have.
apt_install python3-bpfcc libbpfcc bpftool stress-ng python3-venv gcc make libc6-dev ca-certificates
if [ $browser -eq 1 ] && ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium
fi
if [ $bpftrace -eq 1 ] && ! command -v bpftrace >/dev/null 2>&1; then
    apt_install bpftrace
fi

# Kernel headers: BCC compiles against /lib/modules/$(uname -r)/build.
# Prefer the exact package; else wire the distro's generic headers. Struct
# layouts in a fallback are wrong for this kernel, which is why the probes take
# every struct offset from BTF instead (see profiler/btf.py).
kver=$(uname -r)
moddir="/lib/modules/$kver"
if [ ! -e "$moddir/build/include" ]; then
    if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
        apt_install "linux-headers-$kver"
    else
        apt_install linux-headers-amd64
        arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
        common_dir=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
        if [ -z "$arch_dir" ] || [ -z "$common_dir" ]; then
            echo "setup: no kernel headers found under /usr/src after installing linux-headers-amd64" >&2
            exit 1
        fi
        mkdir -p "$moddir"
        ln -sfn "$arch_dir" "$moddir/build"
        ln -sfn "$common_dir" "$moddir/source"
        say "wired fallback headers $arch_dir for kernel $kver"
    fi
fi

# BCC reads tracepoint formats from tracefs, which is not mounted at boot here.
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing
    say "mounted tracefs"
fi

# A venv on Debian's python so that `import bcc` finds python3-bpfcc.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import bcc" 2>/dev/null; then
    rm -rf "$venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    say "created $venv"
fi

# Reinstall the package only when its metadata changed (editable install:
# source edits need no reinstall).
stamp="$venv/.lockprof-installed"
want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "$venv/bin/lockprof" ]; then
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    # The build backend's notes (editable-install warnings) go to a log,
    # shown only if the install fails.
    pip_log=$(mktemp)
    if ! "$venv/bin/pip" install -q -e "$repo[dev]" >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        echo "setup: installing lockprof into $venv failed (pip output above)" >&2
        exit 1
    fi
    rm -f "$pip_log"
    echo "$want" > "$stamp"
    say "installed lockprof into $venv"
fi

make -s -C "$repo/workloads"

# The probes compiled once for this kernel, into the compiled-probe cache, so
# that the first collection loads them (~1 s less to its first live row).
# Nothing to do once they are there; a failure is the first collection's
# to report (it compiles them itself).
# LOCKPROF_CACHE_DIR=off (or empty) turns the cache off, as lockprof reads it.
cache_setting=$(printf '%s' "${LOCKPROF_CACHE_DIR-default}" | tr -d '[:space:]')
if [ "$cache_setting" != off ] && [ -n "$cache_setting" ]; then
    if out=$("$venv/bin/lockprof" precompile 2>&1); then
        case $out in *" compiled in "*) say "${out#lockprof: }" ;; esac
    else
        say "probes not precompiled (${out#lockprof: }); the first collection compiles them"
    fi
fi
say "ready: $venv/bin/lockprof"
