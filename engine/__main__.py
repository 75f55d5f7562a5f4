"""``python -m engine``: the same CLI as the ``engine`` console script."""

from engine.cli import main

if __name__ == "__main__":
    main()
