#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager 1.20.2 from Debian bookworm's
# `kubernetes` source package, for the suite's real API server fixture
# (tests/support/kube.py). No internet beyond the Debian archive is needed.
#
# The binaries are cached outside the repo, keyed by version:
#   ${DISKPLANE_CACHE_DIR:-~/.cache/diskplane}/kube/1.20.2/{kube-apiserver,kube-controller-manager}
# so only a fresh machine pays the compile (5.5 min here, up to ~12). Idempotent: exits at once
# when both binaries are cached.
#
# Recipe:
#   1. a deb-src entry derived from the machine's own Debian apt source (never a
#      hard-coded mirror), apt-get update, apt-get source kubernetes;
#   2. golang-go, rsync, golang-github-modern-go-reflect2-dev from Debian;
#   3. the vendored github.com/modern-go/reflect2 1.0.1 crashes under Go >= 1.18
#      ("fatal error: fault" in map iteration), so it is replaced by Debian's source;
#   4. GOPATH-mode build: make WHAT="cmd/kube-apiserver cmd/kube-controller-manager".
#
# usage: scripts/build-kube.sh            (needs root only when packages are missing)
set -euo pipefail

version="1.20.2"
cache_root="${DISKPLANE_CACHE_DIR:-$HOME/.cache/diskplane}"
out="$cache_root/kube/$version"
work="$cache_root/kube/build-$version"
targets=(kube-apiserver kube-controller-manager)

have_all() {
  for t in "${targets[@]}"; do
    [[ -x "$out/$t" ]] || return 1
  done
}

if have_all; then
  echo "build-kube: cached in $out"
  exit 0
fi

log() { echo "build-kube: $*"; }
export DEBIAN_FRONTEND=noninteractive

# 1. deb-src entries mirroring the existing Debian `deb` entries.
srcfile=/etc/apt/sources.list.d/diskplane-deb-src.sources
has_deb_src() {
  grep -qsE '^\s*Types:.*deb-src' /etc/apt/sources.list.d/*.sources ||
    grep -qsE '^\s*deb-src\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list
}
write_deb_src() {
  local tmp
  tmp="$(mktemp)"
  # deb822 stanzas: copy every stanza whose Types has `deb`, as `Types: deb-src`.
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" && "$f" != "$srcfile" ]] || continue
    awk 'BEGIN { RS=""; ORS="\n\n" }
      /(^|\n)Types:[^\n]*deb/ && /debian/ {
        gsub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); sub(/^\n/, ""); print }' "$f" >>"$tmp"
  done
  # one-line format: `deb [opts] URI suite comps` -> `deb-src ...`
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    sed -nE 's/^\s*deb(\s+\[[^]]*\])?\s+(\S*debian\S*.*)$/deb-src\1 \2/p' "$f" >"$tmp.list"
    if [[ -s "$tmp.list" ]]; then
      cp "$tmp.list" /etc/apt/sources.list.d/diskplane-deb-src.list
    fi
    rm -f "$tmp.list"
  done
  if [[ -s "$tmp" ]]; then
    cp "$tmp" "$srcfile"
  fi
  rm -f "$tmp"
}

need_pkgs=(golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev make gcc)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! has_deb_src || ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "build-kube: needs root to add deb-src and install ${missing[*]:-nothing}" >&2
    exit 1
  fi
  if ! has_deb_src; then
    log "adding deb-src entries derived from the existing Debian apt sources"
    write_deb_src
    has_deb_src || { echo "build-kube: found no Debian apt source to derive deb-src from" >&2; exit 1; }
  fi
  log "apt-get update"
  apt-get update -q >/dev/null
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# 2. the source tree
mkdir -p "$work" "$out"
src="$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)"
if [[ -z "$src" ]]; then
  log "apt-get source kubernetes into $work"
  (cd "$work" && apt-get source -q kubernetes >/dev/null)
  src="$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)"
fi
[[ -n "$src" ]] || { echo "build-kube: apt-get source kubernetes left no tree in $work" >&2; exit 1; }
log "source tree $src"

# 3. reflect2 from Debian replaces the vendored copy
reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
vendored="$src/vendor/github.com/modern-go/reflect2"
if [[ ! -f "$vendored/.diskplane-debian" ]]; then
  log "replacing vendored reflect2 with $reflect2_src"
  rm -rf "$vendored"
  mkdir -p "$vendored"
  cp -a "$reflect2_src/." "$vendored/"
  touch "$vendored/.diskplane-debian"
fi

# 4. GOPATH-mode build
log "make WHAT='cmd/kube-apiserver cmd/kube-controller-manager' (5-12 minutes on 2 cores)"
start=$(date +%s)
(
  cd "$src"
  export GO111MODULE=off GOFLAGS="" GOPROXY=off
  export KUBE_GIT_VERSION="v$version" KUBE_GIT_TREE_STATE=clean
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
)
end=$(date +%s)
for t in "${targets[@]}"; do
  bin="$(find "$src/_output" -type f -name "$t" -perm -u+x | head -n1)"
  [[ -n "$bin" ]] || { echo "build-kube: make produced no $t" >&2; exit 1; }
  install -m 0755 "$bin" "$out/$t.tmp"
  mv "$out/$t.tmp" "$out/$t"
done
log "built in $((end - start)) s; binaries in $out"
"$out/kube-apiserver" --version
# The 2+ GiB source tree is only needed again for a new version.
if [[ "${DISKPLANE_KEEP_KUBE_BUILD:-0}" != 1 ]]; then
  rm -rf "$work"
fi
