#!/usr/bin/env bash
# Build the Debian base image that the test images start FROM, without a container registry:
# debootstrap a minimal bookworm root file system and `docker import` it.
#
#   images/base/build.sh [TAG]        (default tag: cloudsd-base:bookworm)
#
# Needs root, debootstrap and a running Docker engine. Skips the work when TAG already exists
# (set CLOUDSD_REBUILD_BASE=1 to force it).
set -euo pipefail

tag=${1:-cloudsd-base:bookworm}
suite=${CLOUDSD_BASE_SUITE:-bookworm}
mirror=${CLOUDSD_BASE_MIRROR:-http://deb.debian.org/debian}
# What every cloudsd machine needs from its base: sshd (with sftp-server) and python3 for the boot layer,
# the stand-in UI and the on-machine helpers; procps for the watchdog; rsync and curl as the
# reference tools the benchmarks compare against (and for users who reach for them).
packages=openssh-server,python3,ca-certificates,procps,rsync,curl
# CLOUDSD_BASE_EXTRA adds packages: the stand-in for a provider's stock PyTorch image that the install-on-boot
# test starts (tests/test_install_ui.py) also has git and python3-venv, as those images do.
packages=$packages${CLOUDSD_BASE_EXTRA:+,$CLOUDSD_BASE_EXTRA}

if [[ -z "${CLOUDSD_REBUILD_BASE:-}" ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already exists"
    exit 0
fi

root=$(mktemp -d /tmp/cloudsd-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror"
# Keep the image lean: no apt lists, caches or docs.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
# Host keys are made per container at boot, never baked into an image.
rm -f "$root"/etc/ssh/ssh_host_*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$tag"
echo "built base image $tag"
