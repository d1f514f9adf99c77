# Sourced by scripts/setup.sh and scripts/setup-containers.sh: apt_install WHO PACKAGES NEXT AGAIN [APT_FLAGS]
# installs PACKAGES (space-separated, leading space as the callers build them) with apt-get when run as root on
# Debian or Ubuntu and exits 0 saying NEXT; otherwise it prints the exact command to run, then AGAIN, and exits 1.
# WHO prefixes every line. APT_FLAGS go to apt-get install (e.g. --no-install-recommends).
apt_install() {
  who=$1 pkgs=$2 next=$3 again=$4 flags=${5:-}
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$who: installing${pkgs} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $flags $pkgs >/dev/null
    echo "$who: installed${pkgs}; $next"
    exit 0
  fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "$who: missing${pkgs}: run  sudo apt-get install -y${pkgs}  then $again" >&2
    exit 1
  fi
}
