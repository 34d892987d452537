"""``python -m waconv.cli``: the same as the ``waconv`` command."""

from waconv.cli import main

main()
