"""Write ssh host entries and a DeepSpeed hostfile for the given node IPs.

    python env/setup_connection.py 10.0.0.1 10.0.0.2

~/.ssh/config gets ``Host node<i>`` (root, port 2222, that IP) and ``<repo>/hostfile``
one ``node<i> slots=<GPUs per node>`` line per IP: what scripts/pretrain_multiple_nodes.sh
(hostfile path) and `deepspeed --hostfile` need.  Running it again replaces the entries.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
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
        ]
    return "\n".join(lines + [END]) + "\n"


def replace_block(text: str, block: str) -> str:
    """Swap our previous block (if any) for the new one, keeping the user's entries."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        return head + block + tail
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ips", nargs="+", help="IP of every node, node0 first (the master)")
    parser.add_argument("--slots", type=int, default=8, help="GPUs (processes) per node")
    parser.add_argument("--port", type=int, default=2222, help="sshd port inside the containers")
    parser.add_argument("--hostfile", default=os.path.join(REPO, "hostfile"))
    parser.add_argument("--ssh-config", default=os.path.expanduser("~/.ssh/config"))
    args = parser.parse_args(argv)
    for ip in args.ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            print(f"error: {ip!r} is not an IP address", file=sys.stderr)
            return 2
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
