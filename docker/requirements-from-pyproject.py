#!/usr/bin/env python3
"""Print a project's requirements (its dependencies plus the named extras), one a line.

The images install the serving dependencies from pyproject.toml in their own cached layer,
before the application code is copied, so that editing app/ does not reinstall them. The
export extra is complete by itself and is printed without the serving dependencies.

    requirements-from-pyproject pyproject.toml cpu > requirements.txt
"""

import sys
import tomllib

STANDALONE_EXTRAS = {"export"}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(f"usage: {argv[0]} PYPROJECT [EXTRA ...]", file=sys.stderr)
        return 2
    with open(argv[1], "rb") as file:
        project = tomllib.load(file)["project"]
    extras = project.get("optional-dependencies", {})
    names = argv[2:]
    unknown = [name for name in names if name not in extras]
    if unknown:
        print(f"unknown extra(s) {unknown}; {argv[1]} defines {sorted(extras)}", file=sys.stderr)
        return 2
    requirements = [] if set(names) <= STANDALONE_EXTRAS and names else list(project["dependencies"])
    for name in names:
        requirements += extras[name]
    print("\n".join(requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
