"""Console entry point of `hope-hf` (pyproject `[project.scripts]`).

It runs `hope_hf/cli.py`, which needs only the standard library, without importing the `hope_hf` package first:
that import registers the models with transformers and takes seconds, too slow for `--help`, `--version` and
argument errors. The package is imported normally once the arguments are parsed.
"""

import importlib.util
import os
import sys


def _load_cli():
    spec = importlib.util.find_spec("hope_hf")  # locates the package without running its __init__
    path = os.path.join(spec.submodule_search_locations[0], "cli.py")
    cli_spec = importlib.util.spec_from_file_location("_hope_hf_cli", path)
    module = importlib.util.module_from_spec(cli_spec)
    cli_spec.loader.exec_module(module)
    return module


def main(argv=None):
    """Run `hope-hf ARGV`. The console script exits with what this returns (`sys.exit(main())`), so it returns None:
    exit status 0 once a command succeeded (its result, a path or a text, is already printed; a returned path made
    the main job end with status 1)."""
    _load_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
