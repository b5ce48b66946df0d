"""The `hope-hf` command: `hope-hf train ...` and `hope-hf generate ...` (see `--help` of each)."""

from __future__ import annotations

import sys

COMMANDS = {"train": "hope_hf.train", "generate": "hope_hf.generate"}


def run(main, argv: list[str] | None = None) -> None:
    """Call `main(argv)`; a `ValueError` (bad input) becomes a one-line error and exit status 2."""
    try:
        main(argv)
    except ValueError as e:
        print(f"hope-hf: error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: hope-hf {{{','.join(COMMANDS)}}} [options]   (hope-hf COMMAND --help for the options)",
              file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    import importlib

    run(importlib.import_module(COMMANDS[argv[0]]).main, argv[1:])


if __name__ == "__main__":
    main()
