"""`epic-bridge` command line."""


def main() -> None:
    raise SystemExit("epic-bridge: not built yet")
