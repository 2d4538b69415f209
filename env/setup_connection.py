"""Write ssh host entries and a DeepSpeed hostfile for the given node IPs, and install the
cluster's ssh key.

    python env/setup_connection.py 10.0.0.1 10.0.0.2 --key-dir /root/.cogview-keys

~/.ssh/config gets ``Host node<i>`` (root, port 2222, that IP) and ``<repo>/hostfile``
one ``node<i> slots=<GPUs per node>`` line per IP: what scripts/pretrain_multiple_nodes.sh
(hostfile path) and `deepspeed --hostfile` need.  With ``--key-dir`` the key pair there (made
when missing) becomes this node's ssh identity and is trusted for root logins, so every node
given the same folder reaches every other.  Running it again replaces the entries.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import shutil
import subprocess
import sys
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "# >>> cogview nodes >>>", "# <<< cogview nodes <<<"


def ssh_entries(ips: List[str], port: int) -> str:
    lines = [BEGIN]
    for i, ip in enumerate(ips):
        lines += [
            f"Host node{i}",
            f"    HostName {ip}",
            "    User root",
            f"    Port {port}",
            "    StrictHostKeyChecking no",
            "    UserKnownHostsFile /dev/null",
            "    LogLevel ERROR",
        ]
    return "\n".join(lines + [END]) + "\n"


def replace_block(text: str, block: str) -> str:
    """Swap our previous block (if any) for the new one, keeping the user's entries."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        return head + block + tail
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block


def install_key(key_dir: str, ssh_dir: str) -> None:
    """Make the cluster key in key_dir unless it is there (under a lock: nodes starting together
    share the folder), then copy it into ssh_dir and trust its public half."""
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    private = os.path.join(key_dir, "id_ed25519")
    with open(os.path.join(key_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(private):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cogview-nodes", "-f", private], check=True
            )
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    for name in ("id_ed25519", "id_ed25519.pub"):
        shutil.copyfile(os.path.join(key_dir, name), os.path.join(ssh_dir, name))
        os.chmod(os.path.join(ssh_dir, name), 0o600)
    public = open(private + ".pub").read().strip()
    authorized = os.path.join(ssh_dir, "authorized_keys")
    known = open(authorized).read().splitlines() if os.path.exists(authorized) else []
    if public not in known:
        with open(authorized, "a") as f:
            f.write(public + "\n")
    os.chmod(authorized, 0o600)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ips", nargs="+", help="IP of every node, node0 first (the master)")
    parser.add_argument("--slots", type=int, default=8, help="GPUs (processes) per node")
    parser.add_argument("--port", type=int, default=2222, help="sshd port inside the containers")
    parser.add_argument("--hostfile", default=os.path.join(REPO, "hostfile"))
    parser.add_argument("--ssh-config", default=os.path.expanduser("~/.ssh/config"))
    parser.add_argument("--key-dir", help="the cluster's key pair, the same folder on every node (made when missing)")
    args = parser.parse_args(argv)
    for ip in args.ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            print(f"error: {ip!r} is not an IP address", file=sys.stderr)
            return 2
    if args.key_dir:
        if not shutil.which("ssh-keygen") and not os.path.exists(os.path.join(args.key_dir, "id_ed25519")):
            print(
                f"error: --key-dir {args.key_dir} holds no key and ssh-keygen is missing; install openssh-client",
                file=sys.stderr,
            )
            return 2
        install_key(args.key_dir, os.path.dirname(args.ssh_config))
    os.makedirs(os.path.dirname(args.ssh_config), exist_ok=True)
    old = open(args.ssh_config).read() if os.path.exists(args.ssh_config) else ""
    with open(args.ssh_config, "w") as f:
        f.write(replace_block(old, ssh_entries(args.ips, args.port)))
    os.chmod(args.ssh_config, 0o600)
    with open(args.hostfile, "w") as f:
        f.writelines(f"node{i} slots={args.slots}\n" for i in range(len(args.ips)))
    print(f"wrote {len(args.ips)} node(s) to {args.ssh_config} and {args.hostfile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
