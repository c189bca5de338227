"""Make or revoke API keys: `python -m scripts.api_keys create --tenant acme --scopes submit,read`.

Talks to the Redis in REDIS_URL (and KEY_PREFIX) like the services do; prints a new key once.
"""

import argparse
import sys

import redis

from shared.auth import ApiKeyStore, Scope
from shared.settings import BaseServiceSettings


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit status 1 when a key to revoke does not exist."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key and print it")
    create.add_argument("--tenant", required=True)
    create.add_argument("--scopes", default="submit,read",
                        help=f"comma list of {', '.join(scope.value for scope in Scope)}")
    create.add_argument("--name", default="")
    create.add_argument("--rate-limit-per-minute", type=int)
    revoke = commands.add_parser("revoke", help="delete a key by its id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    settings = BaseServiceSettings()
    keys = ApiKeyStore(redis.Redis.from_url(settings.REDIS_URL, decode_responses=True),
                       settings.KEY_PREFIX)
    if args.command == "create":
        token, record = keys.create(
            tenant_id=args.tenant, name=args.name,
            scopes=[Scope(scope.strip()) for scope in args.scopes.split(",") if scope.strip()],
            rate_limit_per_minute=args.rate_limit_per_minute)
        print(f"key id {record.key_id}, tenant {record.tenant_id}, scopes "
              f"{','.join(record.scopes)}\n{token}")
        return 0
    return 0 if keys.revoke(args.key_id) else 1


if __name__ == "__main__":
    sys.exit(main())
