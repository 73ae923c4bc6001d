"""``python -m fedomop``: the same as the ``fedomop`` command."""

from fedomop.cli import main

main()
