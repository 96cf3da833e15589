"""`epic-sim` command line."""


def main() -> None:
    raise SystemExit("epic-sim: not built yet")
