"""``python -m fedomop``: the same as the ``fedomop`` command."""

from fedomop.entry import main

main()
