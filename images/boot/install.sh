#!/bin/sh
# Build-time half of the cloudsd boot layer. Every cloudsd image runs it once, right after
#   COPY boot/ /opt/cloudsd/boot/
# and after openssh-server and python3 are installed. Needs nothing from the network.
#
# - installs the sshd drop-in and makes sure the main sshd_config reads sshd_config.d/*.conf first;
# - adds `Subsystem sftp internal-sftp` only when no sftp subsystem is defined anywhere;
# - deletes host keys that `apt-get install openssh-server` generated: every container makes its own
#   at boot (entrypoint.sh), so no two rented machines share a host key;
# - puts /opt/cloudsd/venv/bin first on PATH for login shells (/etc/profile.d/cloudsd-venv.sh);
# - creates the boot layer's directories;
# - checks the resulting sshd configuration with `sshd -t`, so a broken image fails at build time.
set -eu

boot=/opt/cloudsd/boot
main=/etc/ssh/sshd_config
dropins=/etc/ssh/sshd_config.d

# COPY keeps the build context's modes, which depend on the checkout; fix them here.
chmod 0755 "$boot/entrypoint.sh" "$boot/install.sh"

mkdir -p "$dropins"
cp "$boot/sshd_config.d/cloudsd.conf" "$dropins/cloudsd.conf"
chmod 0644 "$dropins/cloudsd.conf"

# Bookworm and Ubuntu >= 20.04 already start with this Include; older bases do not.
if ! grep -Eq '^[[:space:]]*Include[[:space:]]+(/etc/ssh/)?sshd_config\.d/\*\.conf' "$main"; then
    sed -i '1i Include /etc/ssh/sshd_config.d/*.conf' "$main"
fi

# A duplicated Subsystem is fatal, so define one only if neither the main file nor a drop-in does.
if ! cat "$main" "$dropins"/*.conf 2>/dev/null | grep -Eqi '^[[:space:]]*Subsystem[[:space:]]+sftp[[:space:]]'; then
    printf 'Subsystem sftp internal-sftp\n' >"$dropins/cloudsd-sftp.conf"
    chmod 0644 "$dropins/cloudsd-sftp.conf"
fi

rm -f /etc/ssh/ssh_host_*

# A shell on the machine (an SSH login) finds the UI's Python first, as the image's own ENV PATH does for
# the UI; images without /opt/cloudsd/venv are unaffected.
mkdir -p /etc/profile.d
cat >/etc/profile.d/cloudsd-venv.sh <<'PROFILE'
# Written by /opt/cloudsd/boot/install.sh: the web UI's Python environment first on PATH.
if [ -d /opt/cloudsd/venv/bin ]; then
    case ":$PATH:" in
    *:/opt/cloudsd/venv/bin:*) ;;
    *) PATH=/opt/cloudsd/venv/bin:$PATH ;;
    esac
    export PATH
fi
PROFILE
chmod 0644 /etc/profile.d/cloudsd-venv.sh

mkdir -p /run/sshd /run/cloudsd /var/log/cloudsd /etc/cloudsd /root/.ssh
chmod 0755 /run/sshd
chmod 0700 /etc/cloudsd /root/.ssh

# sshd -t refuses to run without a host key; lend it a throwaway one.
tmp=$(mktemp -d)
ssh-keygen -q -t ed25519 -N '' -f "$tmp/hostkey"
if ! /usr/sbin/sshd -t -f "$main" -h "$tmp/hostkey"; then
    rm -rf "$tmp"
    echo "install.sh: sshd rejects the configuration above" >&2
    exit 1
fi
rm -rf "$tmp"
echo "cloudsd boot layer installed"
