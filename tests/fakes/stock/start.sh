#!/bin/bash
# The stand-in stock image's start script, doing what RunPod's PyTorch images' start script does: the
# machine's PUBLIC_KEY into root's authorized_keys, host keys, sshd started, then the script waits as PID 1
# (so /proc/1/environ keeps the machine's environment; sshd as PID 1 would overwrite it with its title).
mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh
printf '%s\n' "${PUBLIC_KEY:-}" >>/root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
ssh-keygen -A >/dev/null
/usr/sbin/sshd
exec sleep infinity
