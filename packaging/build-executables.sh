#!/bin/sh
# Build dist/lambda-runtime-api-daemon and dist/lambda-server, each one statically linked
# file for this machine's architecture that needs nothing from the image it runs in, and
# dist/lambda-rapid/, the same program as a directory that unpacks nothing at start.
#
# PyInstaller freezes the package as one-folder bundles with Debian's /usr/bin/python3
# (two: the Python modules in the archive for the single file, as .pyc files for the
# directory); bundle.py adds the C library and its loader; launcher.c, linked with gcc -static, runs
# the bundle through that loader, from its directory or unpacked from the single file.
# Both files hold the same bytes, as do the directory's two launchers: the name one is
# started under picks the program (lambda-server, or the daemon under any other name).
#
# Environment: BUILD_PYTHON (default /usr/bin/python3), BUILD_DIR (default build/executables:
# the build venv and PyInstaller's work files), DIST_DIR (default dist).
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${BUILD_PYTHON:-/usr/bin/python3}
WORK=${BUILD_DIR:-$REPO/build/executables}
DIST=${DIST_DIR:-$REPO/dist}
VENV=$WORK/venv

say() { echo "build-executables: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
    if [ "$(id -u)" = 0 ] && have apt-get; then
        say "installing $*"
        # A fresh machine's package lists may be missing or old: update once, then retry.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 || {
            apt-get update -q >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
        }
    else
        say "please install $* (Debian package names) and run again"
        exit 1
    fi
}

# ldd finds the C library to bundle; zstd compresses the single file's contents; gcc,
# libc6-dev and libzstd-dev link the launcher statically.
have ldd || apt_install libc-bin
have strip || apt_install binutils
have gcc || apt_install gcc
have zstd || apt_install zstd
[ -n "$(find /usr/lib -name libzstd.a 2>/dev/null)" ] || apt_install libzstd-dev libc6-dev
if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; apt_install python3-venv; "$PYTHON" -m venv "$VENV"; }
fi
DEPENDENCIES=$("$VENV/bin/python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$REPO/pyproject.toml")
say "installing the build tools and the dependencies into $VENV"
printf '%s\n' "$DEPENDENCIES" 'pyinstaller>=6.10' >"$WORK/requirements.txt"
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$WORK/requirements.txt"

# Two bundles: the single file's keeps the Python modules in its archive, read in place
# (unpacking them as files would take longer than it saves); the directory's has them as
# .pyc files, which load faster.
freeze() {
    say "freezing ($1: modules in $2)"
    rm -rf "$WORK/$1"
    LAMBDA_RAPID_MODULES=$2 "$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
        --distpath "$WORK/$1" --workpath "$WORK/pyinstaller-$1" "$REPO/packaging/lambda-rapid.spec"
    "$VENV/bin/python" "$REPO/packaging/bundle.py" complete "$WORK/$1/lambda-rapid"
}
freeze onedir archive
freeze onedir-files files
BUNDLE=$WORK/onedir/lambda-rapid
say "linking the launcher statically"
gcc -static -O2 -Wall -Wextra -Werror -o "$WORK/launcher" "$REPO/packaging/launcher.c" -lzstd
strip "$WORK/launcher"
if ldd "$WORK/launcher" >/dev/null 2>&1; then
    say "$WORK/launcher is still dynamically linked"
    exit 1
fi
"$VENV/bin/python" "$REPO/packaging/bundle.py" pack "$BUNDLE" "$WORK/launcher" "$WORK/single"

mkdir -p "$DIST"
rm -rf "$DIST/.lambda-rapid.new"
cp -a "$WORK/onedir-files/lambda-rapid" "$DIST/.lambda-rapid.new"
for name in lambda-runtime-api-daemon lambda-server; do
    cp "$WORK/launcher" "$DIST/.lambda-rapid.new/$name"
    cp "$WORK/single" "$DIST/.$name.new"
    mv -f "$DIST/.$name.new" "$DIST/$name"
done
rm -rf "$DIST/lambda-rapid"
mv "$DIST/.lambda-rapid.new" "$DIST/lambda-rapid"
say "built $DIST/lambda-runtime-api-daemon and $DIST/lambda-server ($(wc -c <"$DIST/lambda-server") bytes each)"
say "and the directory $DIST/lambda-rapid ($(du -sb "$DIST/lambda-rapid" | cut -f1) bytes): nothing unpacked at start"
