"""Mints development bearer tokens.

python -m libs.chassis.tokens --subject alice --roles identity.write,feed.read
"""

from __future__ import annotations

import argparse
import sys

from libs.chassis.auth import TokenVerifier, load_secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", required=True, help="who the token speaks for")
    parser.add_argument("--roles", default="", help="comma-separated roles")
    parser.add_argument("--ttl", type=int, default=8 * 3600, help="lifetime in seconds")
    args = parser.parse_args(argv)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    print(TokenVerifier(load_secret()).mint(args.subject, roles, ttl_seconds=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
