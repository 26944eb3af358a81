"""``python -m featurepipe.cli``."""

from featurepipe.cli import main

main()
